"""Seed-compatible loss plot and comparison: ``python loss.py RUN [--baseline REF_RUN]``.

Draws loss.jpg (and loss.png) in --out (default: here) from the runs' metrics
files, CSV files (columns step, loss) or logs and, with --baseline, prints what
was compared, MeanRelativeError / MeanAbsoluteError and pass or fail (exit
status 0 or 1); --window N compares means over N steps, --max_step M only steps
<= M. A thin wrapper over ``spnas curves``; see docs/curves.md for how the
verdict is decided.
"""
import os
import sys

try:
    import spnas  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spnas.cli import Parser, add_curves_parser, run_curves, run_guarded

if __name__ == "__main__":
    parser = add_curves_parser(Parser(description=__doc__.splitlines()[0]))
    sys.exit(run_guarded(run_curves, parser.parse_args()))
