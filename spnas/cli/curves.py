"""``spnas curves``: loss plots and the comparison with a reference run."""
from __future__ import annotations

import argparse
import math


def tolerance_arg(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def steps_arg(text: str) -> int:
    """A whole number of steps > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of steps")
    return value


def fraction_arg(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction from 0 to 1")
    return value


def add_curves_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("runs", nargs="+",
                   help="run folders, metrics.jsonl files, CSV files (columns step, loss) or text logs")
    p.add_argument("--baseline", help="reference run to compare each run with (same kinds of input)")
    p.add_argument("--out", default=".", help="folder for loss.jpg and loss.png (default: .)")
    p.add_argument("--rtol", type=tolerance_arg, default=0.05,
                   help="pass when the mean |relative difference| is at most this (default: 0.05) ...")
    p.add_argument("--atol", type=tolerance_arg, default=0.0002,
                   help="... or the mean |difference| is at most this (default: 0.0002)")
    p.add_argument("--window", type=steps_arg, default=None, metavar="N",
                   help="compare (and plot) mean losses over windows of N steps, steps (w*N, (w+1)*N], "
                        "instead of the losses per logged step (default: per logged step)")
    p.add_argument("--max_step", type=steps_arg, default=None, metavar="M",
                   help="compare and plot only steps <= M (default: all)")
    p.add_argument("--min_overlap", type=fraction_arg, default=0.0, metavar="F",
                   help="fail when less than this fraction of the baseline's steps is compared "
                        "(default: 0; under 0.25 prints a WARNING)")
    return p


def run_curves(args: argparse.Namespace) -> int:
    """Plot the runs (and the baseline); compare each run with the baseline: 0 pass, 1 fail."""
    from spnas.engine.curves import compare, load_curve, plot_comparison
    curves = [load_curve(r) for r in args.runs]
    base = load_curve(args.baseline) if args.baseline else None
    for path in plot_comparison(curves + ([base] if base else []), args.out, args.window, args.max_step):
        print(f"wrote {path}")
    if base is None:  # nothing to compare with
        return 0
    failed = False
    for c in curves:
        result = compare(c, base, args.rtol, args.atol, window=args.window, max_step=args.max_step,
                         min_overlap=args.min_overlap)
        print("\n".join(result.describe(c.name, base.name) + result.lines()))
        failed |= not result.passed
    return 1 if failed else 0
