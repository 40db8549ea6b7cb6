"""``spnas curves``: loss plots and the comparison with a reference run."""
from __future__ import annotations

import argparse


def add_curves_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("runs", nargs="+", help="run folders, metrics.jsonl files or text logs")
    p.add_argument("--baseline", help="reference run to compare each run with")
    p.add_argument("--out", default=".", help="folder for loss.jpg and loss.png")
    p.add_argument("--rtol", type=float, default=0.05,
                   help="pass when the mean |relative difference| is at most this ...")
    p.add_argument("--atol", type=float, default=0.0002,
                   help="... or the mean |difference| is at most this")
    return p


def run_curves(args: argparse.Namespace) -> int:
    """Plot the runs (and the baseline); compare each run with the baseline: 0 pass, 1 fail."""
    from ..curves import compare, load_curve, plot_curves
    curves = [load_curve(r) for r in args.runs]
    base = load_curve(args.baseline) if args.baseline else None
    for path in plot_curves(curves + ([base] if base else []), args.out):
        print(f"wrote {path}")
    failed = False
    for c in curves if base else []:
        result = compare(c, base, args.rtol, args.atol)
        if result.only_in_one:
            print(f"{c.name} vs {base.name}: compared the {result.steps} logged steps both runs "
                  f"have; {result.only_in_one} steps are in only one of them")
        print("\n".join(result.lines()))
        failed |= not result.passed
    return 1 if failed else 0
