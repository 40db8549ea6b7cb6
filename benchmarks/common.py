"""Helpers shared by the benchmarks: the machine's description and CSV output.

Every benchmark prints ``machine(device)`` and appends its rows, with the date
and the machine, to ``benchmarks/results/<name>_<device>_torch<version>.csv``.
"""
from __future__ import annotations

import csv
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from spnas.engine.cost import device_description  # noqa: E402


def machine(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3, torch 2.14.1' or 'AMD EPYC (2 cores, 2 threads), torch 2.14.1'."""
    return f"{device_description(device)}, torch {torch.__version__}"


def results_path(name: str, device: torch.device) -> Path:
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower()
    return RESULTS / f"{name}_{slug}_torch{torch.__version__.split('+')[0]}.csv"


def append_rows(name: str, device: torch.device, rows: list[dict]) -> Path:
    """Append ``rows`` (with the date and machine) to the benchmark's CSV; returns its path."""
    out = results_path(name, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(device)}
    fields = [*stamp, *rows[0]]
    if out.exists():
        with open(out, newline="") as f:
            existing = next(csv.reader(f), None)
        if existing and existing != fields:  # a benchmark's columns changed: start afresh
            out.rename(out.with_suffix(".old.csv"))
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows({**stamp, **row} for row in rows)
    print(f"appended {len(rows)} row(s) to {out.relative_to(ROOT)}")
    return out


def cifar_or_random(path: str | None, n: int = 50000):
    """CIFAR-10 training images (uint8) from ``path`` if given, else random ones."""
    if path:
        from spnas.data.datasets import load_dataset
        ds = load_dataset("cifar10", path, download_ok=False)
        return ds.train_x, ds.train_y, f"CIFAR-10 from {path}"
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g), "random images")
