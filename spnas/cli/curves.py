"""``spnas curves``: loss plots and the comparison with a reference run (the flags of the
seed's ``run_scripts/loss.py``), generated from ``config.CurvesConfig``."""
from __future__ import annotations

import argparse

from spnas.cli.generate import add_config_args, config_from_args
from spnas.config import CurvesConfig


def add_curves_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return add_config_args(p, CurvesConfig(), titles={"options": "comparison"})


def run_curves(args: argparse.Namespace) -> int:
    """Plot the runs (and the baseline); compare each run with the baseline: 0 pass, 1 fail."""
    from spnas.engine.curves import compare_runs
    return compare_runs(config_from_args(CurvesConfig(), args))
