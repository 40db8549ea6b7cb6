"""Checks of the hand-written flags (import-reference).

The stages' flags are generated from their dataclasses (``generate``), whose
fields check themselves (``fields.Checked``).
"""
from __future__ import annotations

import argparse
import math

from spnas.errors import SpnasError


def check_finite(args: argparse.Namespace, *names: str) -> None:
    """Refuse NaN and infinity (``float()`` reads 'nan' and 'inf' without complaint)."""
    for n in names:
        v = getattr(args, n, None)
        if isinstance(v, float) and not math.isfinite(v):
            raise SpnasError(f"--{n} must be a finite number, got {v}")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    check_finite(args, *names)
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise SpnasError(f"--{n} must be positive, got {v}")
