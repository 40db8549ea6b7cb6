"""``spnas superkernel``: the Single-Path NAS search."""
from __future__ import annotations

import argparse

from ..errors import SpnasError
from .flags import add_data_args, add_optim_args, add_run_args, check_positive, train_config


def add_superkernel_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas superkernel`` (Single-Path NAS search)."""
    add_data_args(p)
    add_optim_args(p, epochs=8, lr=0.05, wd=4e-5)
    p.set_defaults(label_smoothing=0.1)
    add_run_args(p, exp_name="superkernel")
    g = p.add_argument_group("superkernel search")
    g.add_argument("--layout", choices=("cifar", "imagenet"), default=None,
                   help="strides of the MBConv space (default: imagenet with --resize, else cifar)")
    g.add_argument("--latency_table", default=None, metavar="FILE",
                   help="per-layer latency table from 'spnas latency-table --space mbconv' "
                        "(default: a table of MACs, no timing)")
    g.add_argument("--lam", type=float, default=0.1, help="weight of ln(predicted latency)")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target_latency_ms", type=float, default=None,
                   help="penalise only predicted latency above this (needs --latency_table)")
    t.add_argument("--target_mmacs", type=float, default=None,
                   help="the same in millions of MACs, with the MACs table")
    g.add_argument("--latency_formula", choices=("paper", "exact"), default="paper",
                   help="paper: the paper's per-layer formula (k3e3 approximated); exact: "
                        "interpolates all five table entries")
    g.add_argument("--warmup_frac", type=float, default=0.625,
                   help="fraction of the steps with lambda 0 and gate dropout")
    g.add_argument("--keep_prob", type=float, default=0.6, help="gate keep probability in warm-up")
    g.add_argument("--threshold_lr_scale", type=float, default=100.0,
                   help="thresholds' learning rate = this x --lr (never weight decay)")
    g.add_argument("--mask_at", choices=("activation", "kernel"), default="activation",
                   help="activation: gated channels are exact zeros; kernel: the paper's "
                        "kernel mask (BN's beta leaks through)")
    g.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    return p


def superkernel_config(args: argparse.Namespace):
    from ..config import SuperkernelConfig, from_namespace
    check_positive(args, "target_latency_ms", "target_mmacs", "keep_prob", "threshold_lr_scale")
    if not 0 <= args.warmup_frac <= 1 or args.keep_prob > 1 or args.lam < 0:
        raise SpnasError("--warmup_frac must be in [0, 1], --keep_prob in (0, 1], --lam >= 0")
    target = args.target_latency_ms if args.target_mmacs is None else args.target_mmacs
    return from_namespace(
        SuperkernelConfig, args, layout=args.layout or ("imagenet" if args.resize else "cifar"),
        target_latency=target, target_unit="ms" if args.target_mmacs is None else "MMAC",
        formula=args.latency_formula)


def run_superkernel(args: argparse.Namespace) -> dict:
    from ..superkernel import search
    return search(train_config(args, superkernel_config(args)))
