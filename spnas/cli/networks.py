"""``spnas retrain``, ``finetune``, ``evaluate``, ``profile`` and ``export``."""
from __future__ import annotations

import argparse
import sys

from spnas.cli.generate import add_config_args, config_from_args
from spnas.config import EvaluateConfig, ExportConfig, ProfileConfig
from spnas.defaults import FinetuneStage, RetrainStage


def add_retrain_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas retrain``, generated from ``RetrainStage``."""
    return add_config_args(p, RetrainStage(), titles={"model": "network"})


def run_retrain(args: argparse.Namespace) -> dict:
    from spnas.stages.retrain import retrain
    return retrain(config_from_args(RetrainStage(), args))


def add_finetune_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas finetune``, generated from ``FinetuneStage``."""
    return add_config_args(p, FinetuneStage(), titles={"model": "fine-tuning"})


def run_finetune(args: argparse.Namespace) -> dict:
    from spnas.stages.finetune import finetune
    return finetune(config_from_args(FinetuneStage(), args))


def add_evaluate_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas evaluate``, generated from ``EvaluateConfig``."""
    return add_config_args(p, EvaluateConfig(), titles={"options": "evaluation"})


def run_evaluate(args: argparse.Namespace) -> dict | int:
    """Exit status 1 (after the files are written) when the outputs were not finite."""
    from spnas.stages.evaluate import evaluate_checkpoint, format_evaluation, nonfinite_warning
    r = evaluate_checkpoint(config_from_args(EvaluateConfig(), args))
    print(format_evaluation(r))
    warning = nonfinite_warning(r)
    if warning:
        print(f"spnas: warning: {warning}", file=sys.stderr)
        return 1
    return r


def add_profile_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas profile``, generated from ``ProfileConfig``."""
    return add_config_args(p, ProfileConfig(), titles={"options": "network"})


def run_profile(args: argparse.Namespace) -> dict:
    from spnas.stages.profile import format_profile, profile
    r = profile(config_from_args(ProfileConfig(), args))
    print(format_profile(r))
    return r


def add_export_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas export``, generated from ``ExportConfig``."""
    return add_config_args(p, ExportConfig(), titles={"options": "export"})


def run_export(args: argparse.Namespace) -> dict:
    from spnas.stages.export import export_checkpoint, format_export
    r = export_checkpoint(config_from_args(ExportConfig(), args))
    print(format_export(r))
    return r
