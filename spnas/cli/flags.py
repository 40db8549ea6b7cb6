"""Checks of the hand-written flags (evaluate, export, profile, import-reference).

The stages' flags are generated from their dataclasses (``generate``), whose
fields check themselves (``fields.Checked``).
"""
from __future__ import annotations

import argparse
import math

from spnas.errors import SpnasError

B = argparse.BooleanOptionalAction


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


def check_range(args: argparse.Namespace, name: str, low: float, high: float | None = None,
                high_open: bool = True) -> None:
    """``low <= value`` (``< high`` or ``<= high``), finite; None (not given) passes."""
    check_finite(args, name)
    v = getattr(args, name, None)
    if v is None:
        return
    above = high is not None and (v >= high if high_open else v > high)
    if v < low or above:
        want = (f"in [{low:g}, {high:g}{')' if high_open else ']'}" if high is not None
                else f"{low:g} or more")
        raise SpnasError(f"--{name} must be {want}, got {v}")
