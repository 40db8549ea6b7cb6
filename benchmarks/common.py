"""Helpers shared by the benchmarks: the machine's description, result files, scratch folders.

Run a benchmark as ``python benchmarks/NAME.py`` with spnas installed
(``pip install -e .``) or on ``PYTHONPATH``: Python puts the script's own folder
on ``sys.path``, which is how ``import common`` finds this file.

Every benchmark prints ``machine(device)`` and its figures to stdout and writes
nothing by default. ``--results DIR`` (``add_results_flag``) asks for its files:
the rows, with the date and the machine, appended to
``DIR/<name>_<device>_torch<version>.csv`` (``write_rows``), and any table or
plot it makes next to them (``result_path``); the repository's own are in
``benchmarks/results``. A benchmark that needs run folders makes them in a
temporary folder, removed at the end, unless ``--keep DIR`` (``add_keep_flag``,
``scratch``) names one to keep them in.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from spnas.runtime import device_description

ROOT = Path(__file__).resolve().parents[1]


def machine(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3, torch 2.14.1' or 'AMD EPYC (2 cores, 2 threads), torch 2.14.1'."""
    return f"{device_description(device)}, torch {torch.__version__}"


def add_results_flag(p: argparse.ArgumentParser, what: str = "the rows") -> None:
    p.add_argument("--results", metavar="DIR", default=None,
                   help=f"write {what} into DIR (appending to DIR/<name>_<device>_torch<version>.csv; "
                        "the repository's are in benchmarks/results); default: print only")


def add_keep_flag(p: argparse.ArgumentParser, what: str = "the run folders") -> None:
    p.add_argument("--keep", metavar="DIR", default=None,
                   help=f"keep {what} in DIR (default: a temporary folder, removed at the end)")


@contextlib.contextmanager
def scratch(keep: str | Path | None, prefix: str = "spnas_bench_") -> Iterator[Path]:
    """``keep`` (created if needed) or a temporary folder removed on leaving."""
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def shown(path: Path) -> str:
    """``path`` relative to the working folder where it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def result_path(results: str | Path | None, name: str, device: torch.device,
                suffix: str = ".csv") -> Path | None:
    """``results/<name>_<device>_torch<version><suffix>`` (the folder made), or None when not asked."""
    if not results:
        return None
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower()
    out = Path(results) / f"{name}_{slug}_torch{torch.__version__.split('+')[0]}{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_rows(results: str | Path | None, name: str, device: torch.device, rows: list[dict]) -> Path | None:
    """Append ``rows`` (with the date and machine) to the benchmark's CSV in ``results`` if one was
    asked for (``--results DIR``); returns its path, or None when nothing was written."""
    out = result_path(results, name, device)
    if out is None or not rows:
        return None
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(device)}
    fields = [*stamp, *dict.fromkeys(k for row in rows for k in row)]  # a cut run may lack some
    if out.exists():
        with open(out, newline="") as f:
            existing = next(csv.reader(f), None)
        if existing and set(fields) <= set(existing):
            fields = existing  # the file's columns; a row's missing cells stay empty
        elif existing:  # a benchmark's columns changed: start afresh
            out.rename(out.with_suffix(".old.csv"))
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows({**stamp, **row} for row in rows)
    print(f"appended {len(rows)} row(s) to {shown(out)}")
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


class _OriginalCutout:
    """The original code's Cutout (utils.py): after normalisation, a ``length`` square
    centred anywhere (clipped at the border) is zeroed, one image at a time."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.length // 2
        img[:, max(cy - half, 0):min(cy + half, h), max(cx - half, 0):min(cx + half, w)] = 0
        return img


class _PilCifar(torch.utils.data.Dataset):
    """uint8 CIFAR images through torchvision's PIL transforms, as the original code's loader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cutout: int):
        import torchvision.transforms as T
        self.x, self.y = x, y
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                 T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]
        self.tf = T.Compose(steps + ([_OriginalCutout(cutout)] if cutout else []))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.tf(Image.fromarray(self.x[i].permute(1, 2, 0).numpy())), int(self.y[i])


def original_style_rate(x, y, model: torch.nn.Module, forward, steps: int, window: int,
                        device: torch.device, batch: int, workers: int, cutout: int = 0) -> float:
    """Training images/s of a loop written the way the original SPOS code is: torchvision PIL
    transforms (crop, flip, normalise, ``cutout``) in a DataLoader with ``workers`` processes
    and pinned memory, fp32, NCHW, cuDNN deterministic without autotuning (its
    ``utils.set_seed``), SGD with momentum, and the loss read (``.item()``) every step;
    ``forward(model, images)``. The median of the ``window``-step windows after the first."""
    import statistics
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        loader = torch.utils.data.DataLoader(_PilCifar(x, y, cutout), batch_size=batch,
                                             shuffle=True, num_workers=workers, drop_last=True,
                                             persistent_workers=workers > 0,
                                             pin_memory=device.type == "cuda")
        model = model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9)
        rates, t0, total = [], time.perf_counter(), 0.0
        for step, (xb, yb) in enumerate(loader, start=1):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(forward(model, xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()  # as the original's running mean: a host sync per step
            if step % window == 0:
                rates.append(window * batch / (time.perf_counter() - t0))
                t0 = time.perf_counter()
            if step == steps:
                break
        return statistics.median(rates[1:])
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


class kept_when_interrupted(contextlib.AbstractContextManager):  # noqa: N801 (used as a with)
    """Ends the block quietly on Ctrl-C or SIGINT (``gpu_check.sh`` stops a step at its time
    limit with SIGINT, then kills it 10 s later), so that the rows measured so far are still
    printed and written."""

    def __init__(self, what: str):
        self.what = what

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is KeyboardInterrupt:
            print(f"interrupted (a time limit?): {self.what} measured so far kept", flush=True)
            return True
        return False
