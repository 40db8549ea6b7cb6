"""``spnas import-reference``: a state_dict saved by the original SPOS CIFAR code, as a
checkpoint; the flags are generated from ``config.ImportReferenceConfig``."""
from __future__ import annotations

import argparse

from spnas.cli.generate import add_config_args, config_from_args
from spnas.config import ImportReferenceConfig


def add_import_reference_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return add_config_args(p, ImportReferenceConfig(), titles={"options": "import"})


def run_import_reference(args: argparse.Namespace) -> dict:
    from spnas.stages.import_reference import format_import, import_reference
    r = import_reference(config_from_args(ImportReferenceConfig(), args))
    print(format_import(r))
    return r
