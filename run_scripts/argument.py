"""The seed recipe's flags: the same parser as ``spnas train`` (see spnas/cli/spos.py)."""
import argparse
import os
import sys

try:
    import spnas  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spnas.cli import Parser, add_train_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description="Train a SPOS supernet (seed-compatible flags).")
    return add_train_parser(parser).parse_args(argv)
