"""Helpers shared by the benchmarks: the machine's description and CSV output."""
from __future__ import annotations

import csv
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    """'AMD EPYC, 2 cores, torch 2.14.1' or the GPU's name."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def device_tag(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return name.replace(" ", "_").replace("/", "_")


def write_csv(name: str, device: torch.device, rows: list[dict]) -> Path:
    version = torch.__version__.split("+")[0]
    out = ROOT / "benchmarks" / "results" / f"{name}-{device_tag(device)}-torch{version}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def cifar_or_random(path: str | None, n: int = 50000):
    """CIFAR-10 training images (uint8) from ``path`` if given, else random ones."""
    if path:
        from spnas.data import load_dataset
        ds = load_dataset("cifar10", path, download_ok=False)
        return ds.train_x, ds.train_y, f"CIFAR-10 from {path}"
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g), "random images")
