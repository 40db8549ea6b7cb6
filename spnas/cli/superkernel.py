"""``spnas superkernel``: the Single-Path NAS search, and its two recipes.

The flags are generated from ``defaults.SuperkernelStage``, whose defaults are the
``spnas`` recipe. ``defaults.RECIPES`` is the single source of both presets
(``recipes/superkernel_<name>.yaml`` are written to match; a test checks):
``spnas`` (the default) holds this project's choices, ``paper`` the official
code's (github dstamoulis/single-path-nas, ``nas-search/``). ``--recipe`` fills
every setting that neither ``--config`` nor the command line gives; a flag given
explicitly always wins. docs/superkernel.md says why each spnas choice differs
and what measurement supports it.
"""
from __future__ import annotations

import argparse

from spnas.cli.generate import add_config_args, config_from_args, default_text
from spnas.config import TrainConfig
from spnas.defaults import RECIPES, SuperkernelStage

__all__ = ["RECIPES", "add_superkernel_parser", "run_superkernel", "superkernel_config"]


def _paper_notes() -> dict[str, str]:
    """'--recipe paper: X' after the default of each setting the two recipes set apart."""
    spnas, paper = RECIPES["spnas"], RECIPES["paper"]
    return {k: f"--recipe paper: {default_text(paper[k])}" for k in spnas if spnas[k] != paper[k]}


def _epilog() -> str:
    rows = [f"  --{k:<24}{default_text(RECIPES['spnas'][k]):<14}{default_text(RECIPES['paper'][k])}"
            for k in RECIPES["spnas"]]
    return ("recipes (--recipe; a --config file or a flag given explicitly overrides the "
            f"recipe's value):\n  {'flag':<26}{'spnas':<14}paper\n" + "\n".join(rows) +
            "\n\nlambda: the penalty is lam x lam_scale x ln(R). The paper's code multiplies its "
            "lambda by 1e3,\nso its 0.020 is '--lam 0.02 --lam_scale 1000' (= '--lam 20' at "
            "scale 1); spnas's 0.1 is at scale 1.\nThe paper recipe's lr 0.064 is for 1024 "
            "images per step (--lr_batch), scaled linearly to batch_size x processes.")


def add_superkernel_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas superkernel`` (Single-Path NAS search)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _epilog()
    add_config_args(p, SuperkernelStage(), titles={"model": "superkernel search"},
                    notes=_paper_notes())
    g = p.add_argument_group("latency target (default: none, the penalty applies at any latency)")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target_latency_ms", type=float, default=None,
                   help="penalise only predicted latency above this (needs --latency_table)")
    t.add_argument("--target_mmacs", type=float, default=None,
                   help="the same in millions of MACs, with the MACs table")
    return p


def superkernel_config(args: argparse.Namespace) -> TrainConfig:
    """The ``SuperkernelStage`` of parsed flags: defaults < recipe < --config < flags."""
    extra = {}
    if args.target_latency_ms is not None:
        extra = {"target_latency": args.target_latency_ms, "target_unit": "ms"}
    elif args.target_mmacs is not None:
        extra = {"target_latency": args.target_mmacs, "target_unit": "MMAC"}
    return config_from_args(SuperkernelStage(), args, presets=RECIPES, extra=extra)


def run_superkernel(args: argparse.Namespace) -> dict:
    from spnas.stages.superkernel import search_superkernel
    return search_superkernel(superkernel_config(args))
