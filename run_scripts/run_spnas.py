"""Seed-compatible entry point: ``python run_spnas.py --exp_name ... --resize`` trains a supernet.

A thin wrapper: the flags are ``spnas train``'s, the work is ``spnas.stages.train``'s.
"""
import sys

from argument import parse_args

from spnas.cli import run_guarded, run_train

if __name__ == "__main__":
    sys.exit(run_guarded(run_train, parse_args()))
