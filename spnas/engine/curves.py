"""Loss curves from run folders, and the comparison of a run with a reference run.

A run is read from its ``metrics.jsonl`` (a run folder or the file), from a CSV
file whose header line names at least the columns ``step`` and ``loss`` (other
columns ignored), or, for logs of other tools, from text lines holding
``step N`` and ``loss X``. Steps are 1-based, as spnas logs them: a record at
step ``s`` holds the mean loss of the steps after the previous record's step up
to ``s`` (the first record: steps 1 to ``s``).

Two ways to compare a run with a baseline, either limited to steps <= ``max_step``:

- per logged step (the default): the losses at the steps both runs logged;
- over windows of N steps (``window=N``): window w covers steps (w*N, (w+1)*N];
  a curve's value there is the mean of its records whose step falls in the
  window, weighted by the steps each record covers. Only windows that both
  curves cover completely are compared (both logged up to (w+1)*N), from step 1.

Either way the comparison prints, in the seed recipe's format, the *signed*
means ``MeanRelativeError = mean((loss - base) / base)`` and
``MeanAbsoluteError = mean(loss - base)`` over the compared points. Signed means
let a run that diverges downward pass and let errors of opposite sign cancel,
so the verdict uses the means of the *absolute* differences instead: the run
passes when ``mean(|loss - base| / |base|) <= rtol`` or
``mean(|loss - base|) <= atol`` (and at least ``min_overlap`` of the baseline
was compared).
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from spnas.config import CurvesConfig
from spnas.engine.runlog import read_metrics
from spnas.errors import SpnasError
from spnas.fields import takes_config

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|nan|inf"  # what float() reads
_LOG_LINE = re.compile(rf"\bstep[ :=]+(\d+)\b.*?\bloss[ :=]+({_NUMBER})", re.IGNORECASE)
SHORT_OVERLAP = 0.25  # a comparison covering less of the baseline than this gets a WARNING line


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
    for i, rec in enumerate(read_metrics(path), start=1):
        kind = rec.get("type")
        keys: dict[object, str] = {"train": "loss", "val": "val_loss"}  # kind: any JSON value
        key = keys.get(kind)
        if key is None or key not in rec:
            continue
        step, value = rec.get("step"), rec[key]
        if not (isinstance(step, int) and not isinstance(step, bool) and step > 0) or \
                not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise SpnasError(f"{path} record {i}: a {kind} record needs a whole step >= 1 and a "
                             f"number {key}, got step {step!r}, {key} {value!r}; fix or drop "
                             "that line")
        steps, values = (curve.steps, curve.losses) if kind == "train" else \
            (curve.val_steps, curve.val_losses)
        steps.append(step)
        values.append(float(value))
    return curve


def _from_log(path: Path, name: str) -> Curve:
    curve = Curve(name)
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_LINE.search(line)
        if m:
            curve.steps.append(int(m.group(1)))
            curve.losses.append(float(m.group(2)))
    return curve


@overload
def _csv_number(text: str, column: str, where: str, whole: Literal[True]) -> int: ...
@overload
def _csv_number(text: str, column: str, where: str, whole: Literal[False]) -> float: ...
def _csv_number(text: str, column: str, where: str, whole: bool) -> float:
    """The number ``text`` of a CSV cell: an int when ``whole``, else a float."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or (whole and not (math.isfinite(value) and value.is_integer())):
        kind = "a whole number" if whole else "a number"
        raise SpnasError(f"{where}: {column} {text.strip()!r} is not {kind}")
    return int(value) if whole else value


def _from_csv(path: Path, name: str) -> Curve:
    """Columns ``step`` and ``loss`` of a CSV file with a header line; other columns ignored."""
    curve = Curve(name)
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = csv.reader(f)
        try:
            header = next((r for r in rows if any(c.strip() for c in r)), None)
            if header is None:
                raise SpnasError(f"{path} is empty; a CSV curve needs a header line naming the "
                                 "columns step and loss")
            names = [c.strip().lower() for c in header]
            missing = [c for c in ("step", "loss") if c not in names]
            if missing:
                raise SpnasError(f"{path} line {rows.line_num}: the header {','.join(header)!r} has "
                                 f"no column {' or '.join(missing)}; a CSV curve needs step and loss")
            i_step, i_loss = names.index("step"), names.index("loss")
            seen: dict[int, int] = {}  # step -> its line
            for row in rows:
                if not any(c.strip() for c in row):
                    continue
                where = f"{path} line {rows.line_num}"
                if len(row) <= max(i_step, i_loss):
                    raise SpnasError(f"{where}: {len(row)} fields, the header has {len(header)}")
                step = _csv_number(row[i_step], "step", where, whole=True)
                if step < 0:
                    raise SpnasError(f"{where}: step {step} is negative; steps count from 0 or 1")
                if step in seen:
                    raise SpnasError(f"{where}: step {step} is given twice (line {seen[step]} "
                                     "too); keep one row per step, e.g. the later run's")
                seen[step] = rows.line_num
                curve.steps.append(step)
                curve.losses.append(_csv_number(row[i_loss], "loss", where, whole=False))
        except csv.Error as e:
            raise SpnasError(f"{path} line {rows.line_num}: {e}; is this a CSV file?") from None
    return curve


def load_curve(path: str | Path, name: str | None = None) -> Curve:
    """A run folder, its ``metrics.jsonl``, a CSV with step and loss columns, or a text log."""
    p = Path(path)
    name = name or (p.name if p.is_dir() else p.parent.name if p.name == "metrics.jsonl" else p.stem)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise SpnasError(f"{path}: no run there; give a run folder, its metrics.jsonl, a CSV file "
                         "or a log file")
    read = {".jsonl": _from_metrics, ".csv": _from_csv}.get(p.suffix.lower(), _from_log)
    curve = read(p, name)
    if not curve.steps:
        raise SpnasError(f"{p} holds no training-loss records")
    return curve


def window_means(curve: Curve, window: int, count: int) -> list[float | None]:
    """Mean loss in each of the first ``count`` windows of ``window`` steps (None: no record there).

    Window w covers steps (w*window, (w+1)*window]. A record at step s counts in the
    window holding s, weighted by the steps it covers: s minus the previous record's
    step (the first record: s, as logging starts at step 1).
    """
    sums, spans = [0.0] * count, [0] * count
    prev = 0
    for step, loss in sorted(zip(curve.steps, curve.losses)):
        if step <= 0:
            continue  # covers no step
        if step == prev:
            raise SpnasError(f"{curve.name} logs step {step} twice; window means need one record "
                             "per logged step")
        w = (step - 1) // window
        if w >= count:
            break
        sums[w] += loss * (step - prev)
        spans[w] += step - prev
        prev = step
    return [s / n if n else None for s, n in zip(sums, spans)]


def _straddling(curve: Curve, window: int, last: int) -> int:
    """Records up to step ``last`` that cover steps of two windows (their first step is in another)."""
    steps = sorted(s for s in set(curve.steps) if 0 < s <= last)
    return sum(p // window != (s - 1) // window for p, s in zip([0] + steps, steps))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class Comparison:
    steps: int                  # logged steps (or windows) compared, common to both runs
    only_in_one: int            # logged steps (or windows) covered by just one of the runs
    mean_relative_error: float  # signed, as the seed printed it
    mean_absolute_error: float  # signed
    mean_abs_relative_error: float
    mean_abs_error: float
    rtol: float
    atol: float
    window: int | None = None   # steps per window; None: compared per logged step
    first: int = 0              # first and last step of the compared part
    last: int = 0
    covered: int = 0            # baseline steps compared (per step: its logged steps compared)
    baseline_steps: int = 0     # the baseline's steps (its last step; per step: its logged steps)
    skipped: int = 0            # fully covered windows left out: no record of one run there
    straddling: int = 0         # compared records covering steps of two windows
    min_overlap: float = 0.0

    @property
    def overlap(self) -> float:
        """The fraction of the baseline's steps that was compared."""
        return self.covered / self.baseline_steps if self.baseline_steps else 1.0

    @property
    def passed(self) -> bool:
        return self.overlap >= self.min_overlap and (
            self.mean_abs_relative_error <= self.rtol or self.mean_abs_error <= self.atol)

    def describe(self, run: str, baseline: str) -> list[str]:
        """What was compared, and a WARNING when it is a small part of the baseline."""
        unit = "steps" if self.window else "logged steps"
        left = self.baseline_steps - self.covered
        if self.window:
            what = f"{_plural(self.steps, 'window')} of {self.window} steps"
        else:
            what = _plural(self.steps, "logged step")
        lines = [f"{run} vs {baseline}: compared {what} (steps {self.first}-{self.last}); the baseline "
                 f"has {_plural(self.baseline_steps, unit[:-1])}, {left} not compared"]
        if self.skipped:
            lines[0] += (f"; {_plural(self.skipped, 'window')} left out, holding no record of one run "
                         "(is --window shorter than its logging interval?)")
        if self.straddling:
            lines[0] += (f"; {_plural(self.straddling, 'record')} straddling two windows, each counted "
                         "in its step's window (make --window a multiple of the logging interval)")
        if self.only_in_one and not self.window:
            both = "the 1 logged step" if self.steps == 1 else f"the {self.steps} logged steps"
            one = "1 step is" if self.only_in_one == 1 else f"{self.only_in_one} steps are"
            lines.append(f"{run} vs {baseline}: compared {both} both runs have; {one} in only "
                         "one of them")
        if self.overlap < SHORT_OVERLAP:
            lines.append(f"WARNING: the comparison covers {self.covered} of the baseline's "
                         f"{_plural(self.baseline_steps, unit[:-1])} ({self.overlap:.1%}), under a quarter; "
                         "it says little about the rest (--min_overlap makes this a failure"
                         f"{'' if self.window else '; --window N compares means over N steps'})")
        return lines

    def lines(self) -> list[str]:
        """The seed's two lines, then the verdict (on the absolute differences)."""
        rel, ab = self.mean_abs_relative_error, self.mean_abs_error
        if self.overlap < self.min_overlap:
            verdict = (f"fail overlap={self.overlap:.4f} < min_overlap {self.min_overlap}: compared "
                       f"{self.covered} of the baseline's {self.baseline_steps} "
                       f"{'steps' if self.window else 'logged steps'}")
        elif self.passed:
            verdict = (f"pass mean_abs_relative_error={rel} <= {self.rtol} or "
                       f"mean_abs_error={ab} <= {self.atol}")
        else:
            verdict = (f"fail mean_abs_relative_error={rel} > {self.rtol} and "
                       f"mean_abs_error={ab} > {self.atol}")
        return [f"MeanRelativeError: {self.mean_relative_error}",
                f"MeanAbsoluteError: {self.mean_absolute_error}", verdict]


def _errors(mine: list[float], base: list[float]) -> tuple[float, float, float, float]:
    """Signed mean relative and absolute differences, then the means of their sizes."""
    diffs = [m - b for m, b in zip(mine, base)]
    rels = [d / b if b != 0 else math.copysign(math.inf, d) if d else 0.0 for d, b in zip(diffs, base)]
    n = len(diffs)
    return (sum(rels) / n, sum(diffs) / n, sum(abs(r) for r in rels) / n,
            sum(abs(d) for d in diffs) / n)


def _compare_steps(run: Curve, baseline: Curve, max_step: int | None) -> dict:
    base = dict(zip(baseline.steps, baseline.losses))
    mine = dict(zip(run.steps, run.losses))
    upto = (lambda s: s <= max_step) if max_step else (lambda s: True)
    common = sorted(s for s in base.keys() & mine.keys() if upto(s))
    if not common:
        raise SpnasError(f"{run.name} and {baseline.name} share no logged step"
                         f"{f' up to step {max_step}' if max_step else ''}; "
                         "compare runs logged with the same --print_freq, or use --window")
    errors = _errors([mine[s] for s in common], [base[s] for s in common])
    return dict(steps=len(common), only_in_one=sum(map(upto, base.keys() ^ mine.keys())),
                errors=errors, first=common[0], last=common[-1], covered=len(common),
                baseline_steps=len(base))


def _compare_windows(run: Curve, baseline: Curve, window: int, max_step: int | None) -> dict:
    ends = [min(max(c.steps, default=0), max_step or math.inf) for c in (run, baseline)]
    counts = [int(e // window) for e in ends]
    n = min(counts)
    if n == 0:
        raise SpnasError(f"no window of {window} steps is covered by both {run.name} (logged to step "
                         f"{max(run.steps, default=0)}) and {baseline.name} (to step "
                         f"{max(baseline.steps, default=0)})"
                         f"{f' up to step {max_step}' if max_step else ''}; use a smaller --window")
    pairs = [(m, b) for m, b in zip(window_means(run, window, n), window_means(baseline, window, n))
             if m is not None and b is not None]
    if not pairs:
        raise SpnasError(f"no window of {window} steps holds records of both {run.name} and "
                         f"{baseline.name}; use a --window of at least their logging interval")
    errors = _errors([m for m, _ in pairs], [b for _, b in pairs])
    return dict(steps=len(pairs), only_in_one=abs(counts[0] - counts[1]), errors=errors, first=1,
                last=n * window, covered=len(pairs) * window,
                baseline_steps=max(baseline.steps), skipped=n - len(pairs),
                straddling=sum(_straddling(c, window, n * window) for c in (run, baseline)))


def compare(run: Curve, baseline: Curve, rtol: float = 0.05, atol: float = 0.0002,
            window: int | None = None, max_step: int | None = None,
            min_overlap: float = 0.0) -> Comparison:
    """Compare ``run`` with ``baseline`` per logged step, or over windows of ``window`` steps.

    Per step: the losses at the steps both runs logged. Windows: the weighted means over
    the windows both runs cover completely (see ``window_means``). Either: steps <= max_step.
    """
    bad = next(((st, loss) for st, loss in zip(baseline.steps, baseline.losses)
                if (not math.isfinite(loss) or loss == 0) and (not max_step or st <= max_step)), None)
    if bad is not None:
        raise SpnasError(f"the baseline {baseline.name} has loss {bad[1]:g} at step {bad[0]}; a "
                         "baseline needs finite, non-zero losses (relative errors divide by them): "
                         "give another baseline, or --max_step below that step")
    got = (_compare_windows(run, baseline, window, max_step) if window
           else _compare_steps(run, baseline, max_step))
    errors: tuple[float, float, float, float] = got.pop("errors")  # as _errors returns them
    return Comparison(got.pop("steps"), got.pop("only_in_one"), *errors, rtol, atol, window=window,
                      min_overlap=min_overlap, **got)


def _clip(curve: Curve, max_step: int | None) -> Curve:
    if not max_step:
        return curve
    keep = [i for i, s in enumerate(curve.steps) if s <= max_step]
    vals = [i for i, s in enumerate(curve.val_steps) if s <= max_step]
    return Curve(curve.name, [curve.steps[i] for i in keep], [curve.losses[i] for i in keep],
                 [curve.val_steps[i] for i in vals], [curve.val_losses[i] for i in vals])


def draw_curves(ax, curves: list[Curve], window: int | None = None) -> None:
    """Training loss (lines), validation loss (markers) and, with ``window``, window means."""
    for i, c in enumerate(curves):
        colour = f"C{i}"
        if window:  # raw curves thin and translucent under the window means
            ax.plot(c.steps, c.losses, color=colour, lw=0.6, alpha=0.35, zorder=1,
                    label=f"{c.name} (train)")
            count = max(c.steps, default=0) // window
            pts = [(w * window + window / 2, m)
                   for w, m in enumerate(window_means(c, window, count)) if m is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour, lw=1.8, ms=4, zorder=3,
                        label=f"{c.name} (mean per {window} steps)")
        else:  # a lone point is a line of no length: give it a marker
            ax.plot(c.steps, c.losses, color=colour, lw=1.2, label=f"{c.name} (train)",
                    marker="." if len(c.steps) == 1 else None)
        if c.val_steps:
            ax.plot(c.val_steps, c.val_losses, "s" if window else "o", color=colour, ms=4,
                    mec="black" if window else colour, zorder=4, label=f"{c.name} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_comparison(curves: list[Curve], out_dir: str | Path, window: int | None = None,
                max_step: int | None = None) -> list[Path]:
    """loss.jpg and loss.png in ``out_dir``: see ``draw_curves``; only steps <= max_step."""
    from spnas.engine.plots import figure
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpnasError(f"--out {out} is a file; give a folder for loss.jpg and loss.png")
    out.mkdir(parents=True, exist_ok=True)
    fig = figure(8, 4.5, dpi=120)
    draw_curves(fig.subplots(), [_clip(c, max_step) for c in curves], window)
    paths = [out / "loss.jpg", out / "loss.png"]
    for p in paths:
        fig.savefig(p)
    return paths


@takes_config(CurvesConfig, "runs")
def compare_runs(cfg: CurvesConfig) -> int:
    """``spnas curves``: plot the runs (and the baseline), print each run's comparison with
    the baseline; 0 when every run passes (or there is no baseline), 1 when one fails."""
    if not cfg.runs:
        raise SpnasError("give a run to plot (RUN: a run folder, metrics.jsonl, CSV file with "
                         "columns step and loss, or text log), or runs: [...] in --config")
    curves = [load_curve(r) for r in cfg.runs]
    base = load_curve(cfg.baseline) if cfg.baseline else None
    # compared before anything is drawn: a comparison that cannot be made keeps the old plots
    described = [] if base is None else [
        (compare(c, base, cfg.rtol, cfg.atol, window=cfg.window, max_step=cfg.max_step,
                 min_overlap=cfg.min_overlap), c.name, base.name) for c in curves]
    for path in plot_comparison(curves + ([base] if base else []), cfg.out, cfg.window,
                                cfg.max_step):
        print(f"wrote {path}")
    for result, name, base_name in described:
        print("\n".join(result.describe(name, base_name) + result.lines()))
    return 1 if any(not result.passed for result, _, _ in described) else 0
