"""Loss curves from run folders, and the comparison of a run with a reference run.

A run is read from its ``metrics.jsonl`` (a run folder or the file), or, for
logs of other tools, from text lines holding ``step N`` and ``loss X``.

The comparison aligns two runs by step and prints, in the seed recipe's
format, the *signed* means ``MeanRelativeError = mean((loss - base) / base)``
and ``MeanAbsoluteError = mean(loss - base)``. Signed means let a run that
diverges downward pass and let errors of opposite sign cancel, so the verdict
uses the means of the *absolute* differences instead: the run passes when
``mean(|loss - base| / |base|) <= rtol`` or ``mean(|loss - base|) <= atol``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpnasError
from .runlog import read_metrics

_LOG_LINE = re.compile(r"\bstep[ :=]+(\d+)\b.*?\bloss[ :=]+([-+0-9.eE]+|nan|inf)", re.IGNORECASE)


@dataclass
class Curve:
    """Training loss per step, and validation points (step, value), of one run."""

    name: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)


def _from_metrics(path: Path, name: str) -> Curve:
    curve = Curve(name)
    for rec in read_metrics(path):
        if rec.get("type") == "train" and "loss" in rec:
            curve.steps.append(int(rec["step"]))
            curve.losses.append(float(rec["loss"]))
        elif rec.get("type") == "val" and "val_loss" in rec:
            curve.val_steps.append(int(rec["step"]))
            curve.val_losses.append(float(rec["val_loss"]))
    return curve


def _from_log(path: Path, name: str) -> Curve:
    curve = Curve(name)
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_LINE.search(line)
        if m:
            curve.steps.append(int(m.group(1)))
            curve.losses.append(float(m.group(2)))
    return curve


def load_curve(path: str | Path, name: str | None = None) -> Curve:
    """A run folder, its ``metrics.jsonl``, or a text log with 'step N ... loss X' lines."""
    p = Path(path)
    name = name or (p.name if p.is_dir() else p.parent.name if p.name == "metrics.jsonl" else p.stem)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise SpnasError(f"{path}: no run there; give a run folder, its metrics.jsonl or a log file")
    curve = _from_metrics(p, name) if p.suffix == ".jsonl" else _from_log(p, name)
    if not curve.steps:
        raise SpnasError(f"{p} holds no training-loss records")
    return curve


def plot_curves(curves: list[Curve], out_dir: str | Path) -> list[Path]:
    """Training loss per step (lines) and validation loss (markers), one colour per run."""
    from .plots import figure
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = figure(8, 4.5, dpi=120)
    ax = fig.subplots()
    for i, c in enumerate(curves):
        colour = f"C{i}"
        ax.plot(c.steps, c.losses, color=colour, lw=1.2, label=f"{c.name} (train)")
        if c.val_steps:
            ax.plot(c.val_steps, c.val_losses, "o", color=colour, ms=4, label=f"{c.name} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = [out / "loss.jpg", out / "loss.png"]
    for p in paths:
        fig.savefig(p)
    return paths


@dataclass
class Comparison:
    steps: int                  # steps compared (common to both runs)
    only_in_one: int            # steps present in just one of the runs
    mean_relative_error: float  # signed, as the seed printed it
    mean_absolute_error: float  # signed
    mean_abs_relative_error: float
    mean_abs_error: float
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.mean_abs_relative_error <= self.rtol or self.mean_abs_error <= self.atol

    def lines(self) -> list[str]:
        """The seed's two lines, then the verdict on the absolute differences."""
        rel, ab = self.mean_abs_relative_error, self.mean_abs_error
        verdict = (f"pass mean_abs_relative_error={rel} <= {self.rtol} or mean_abs_error={ab} "
                   f"<= {self.atol}" if self.passed else
                   f"fail mean_abs_relative_error={rel} > {self.rtol} and mean_abs_error={ab} "
                   f"> {self.atol}")
        return [f"MeanRelativeError: {self.mean_relative_error}",
                f"MeanAbsoluteError: {self.mean_absolute_error}", verdict]


def compare(run: Curve, baseline: Curve, rtol: float = 0.05, atol: float = 0.0002) -> Comparison:
    """Align by step; compare the losses at the steps both runs logged."""
    base = dict(zip(baseline.steps, baseline.losses))
    mine = dict(zip(run.steps, run.losses))
    common = sorted(base.keys() & mine.keys())
    if not common:
        raise SpnasError(f"{run.name} and {baseline.name} share no logged step; "
                         "compare runs logged with the same --print_freq")
    diffs = [mine[s] - base[s] for s in common]
    rels = [d / base[s] if base[s] != 0 else math.copysign(math.inf, d) if d else 0.0
            for d, s in zip(diffs, common)]
    n = len(common)
    return Comparison(n, len(base.keys() ^ mine.keys()), sum(rels) / n, sum(diffs) / n,
                      sum(abs(r) for r in rels) / n, sum(abs(d) for d in diffs) / n, rtol, atol)
