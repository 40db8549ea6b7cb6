"""A run folder's logs: ``metrics.jsonl`` (data), ``train.log`` (text), console output.

Logs are data: one JSON object per line, ``{"type": "train" | "val" | ..., "step": ...}``.
Plots and comparisons read only these files. The console shows a progress bar
when it is a terminal and plain lines otherwise; ``train.log`` always gets
plain lines.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .checkpoint import atomic_write_text
from .errors import SpnasError


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    return v


class RunLog:
    """Append-only metrics and log lines for one run folder (rank 0 writes, others stay quiet)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, console: bool = True,
                 metrics_name: str = "metrics.jsonl", log_name: str = "train.log"):
        self.dir = Path(run_dir)
        self.enabled, self.console = enabled, console
        self.metrics_path = self.dir / metrics_name
        self.log_path = self.dir / log_name
        self._bar: tqdm | None = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def metric(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a") as f:
            f.write(f"{stamp} {msg}\n")
        if self.console:
            if self._bar is not None:
                self._bar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)

    def progress(self, total: int, initial: int = 0, desc: str = "train") -> None:
        """Show a progress bar when stderr is a terminal."""
        if self.enabled and self.console and sys.stderr.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                             file=sys.stderr)

    def advance(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from)."""
        if not (self.enabled and self.metrics_path.is_file()):
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in keep))


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file (a run folder or the file itself).

    A line that is not JSON is a one-line ``SpnasError`` naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise SpnasError(f"{path} line {n} is not JSON; is this a metrics.jsonl "
                                     "file?") from None
    return records
