"""Supernet-training throughput (images/s), batch 64 by default: spnas's pipeline against a plain one.

    python benchmarks/bench_train.py --data /path/to/cifar10 [--steps 30] [--no-224] [--batch 256] \
        [--results benchmarks/results]

Rows, in this order (a time limit, SIGINT, keeps the rows measured before it):
  spnas 32x32 crop+flip          the trainer as a run uses it: data on the device, batch
                                 augmentation; channels_last and bf16 autocast on CUDA (the
                                 CPU's default; CUDA's until 0.2: --amp --channels_last)
  spnas ... fp32 NCHW            the same trainer in fp32 NCHW (CUDA's default since 0.2)
  spnas ... CUDA graphs          (CUDA) and --cuda_graphs, in fp32 NCHW and with the first row's
                                 settings
  plain 32x32                    a loop written the way the original code is: PIL transforms,
                                 DataLoader (--workers), fp32, NCHW, cuDNN deterministic without
                                 autotuning, one .item() per step, same
                                 supernet; every row's "x plain" is its speed over this one
  spnas ... cudnn.benchmark      (CUDA) and --cudnn_benchmark: cuDNN autotuning, off by default
  spnas 32x32 seed augmentation  + cutout 16 + AutoAugment (the seed command without --resize)
  spnas 224 seed augmentation    the seed command (--resize: RandomResizedCrop 224, ImageNet layout)

Each row trains real steps (random paths, SGD) and reports the median of its
logging windows after a warm-up window, and for spnas rows the warm-up: the run's
wall time beyond what its steps take at that median rate (start-up, cuDNN autotuning).
Prints the machine and the figures; ``--results DIR`` also appends the rows to
DIR/train_<device>_torch<version>.csv (the repository's are in benchmarks/results).
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import (
    add_results_flag,
    cifar_or_random,
    kept_when_interrupted,
    machine,
    original_style_rate,
    write_rows,
)

from spnas.arch import Arch
from spnas.config import DataConfig, OptimConfig, RunConfig, SupernetConfig, TrainConfig
from spnas.data.loading import DeviceLoader, build_transform
from spnas.engine.runlog import read_metrics
from spnas.engine.schedule import param_groups
from spnas.engine.trainer import Task, Trainer, cross_entropy_loss
from spnas.runtime import place, setup_torch, tune_allocator
from spnas.spaces.spos import SposSupernet, spos_space
from spnas.stages.train import supernet_space, supernet_step_forward


def train_steps(x, y, data: DataConfig, steps: int, window: int, device, batch: int = 64,
                amp: bool = True, channels_last: bool = True, cudnn_benchmark: bool = False,
                cuda_graphs: bool = False, seed: int = 0) -> tuple[list[dict], float]:
    """Run the real trainer on the supernet for ``steps`` steps, each on the path
    ``train.sample_path`` gives it (with ``--cuda_graphs``: from the blocks' graphs, as
    ``spnas train`` runs them): (the train records of metrics.jsonl, wall seconds)."""
    cfg = TrainConfig(data, OptimConfig(epochs=1, num_steps=steps, batch_size=batch),
                      RunConfig(print_freq=window, val_interval=1, device=str(device), amp=amp,
                                channels_last=channels_last, cudnn_benchmark=cudnn_benchmark,
                                cuda_graphs=cuda_graphs, seed=seed),
                      SupernetConfig())
    setup_torch(cfg.run, device)
    space = supernet_space(cfg.model, data)
    torch.manual_seed(seed)
    model = place(SposSupernet(space, 10), device, channels_last)
    task = Task("supernet", model, space, 10,
                forward=supernet_step_forward(model, space, seed, cfg.run),
                loss=cross_entropy_loss(0.0), validate=lambda m, step: {},
                param_groups=param_groups(model, 3e-4))
    loader = DeviceLoader(x, y, batch, build_transform(data, channels_last), device, seed, steps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        Trainer(task, loader, cfg, Path(tmp)).fit()
        wall = time.perf_counter() - t0
        return [r for r in read_metrics(tmp) if r["type"] == "train"], wall


def spnas_throughput(x, y, data: DataConfig, steps: int, window: int, device, batch: int = 64,
                     amp: bool = True, channels_last: bool = True, cudnn_benchmark: bool = False,
                     cuda_graphs: bool = False) -> tuple[float, float]:
    """``train_steps``' (median img/s of the windows after the first, seconds of warm-up: the
    wall time beyond ``steps`` at that rate)."""
    records, wall = train_steps(x, y, data, steps, window, device, batch, amp, channels_last,
                                cudnn_benchmark, cuda_graphs)
    rate = statistics.median(r["img_per_s"] for r in records[1:])
    return rate, max(0.0, wall - steps * batch / rate)


def plain_throughput(x, y, steps: int, window: int, device, batch: int = 64,
                     workers: int = 2) -> tuple[float, None]:
    """``common.original_style_rate`` on the same supernet, one random path per step."""
    space, rng = spos_space(), random.Random(0)
    rate = original_style_rate(x, y, SposSupernet(space, 10), lambda m, xb: m(xb, Arch.sample(
        space, rng)), steps, window, device, batch, workers)
    return rate, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="CIFAR-10 folder (any layout spnas reads); random images if absent")
    p.add_argument("--steps", type=int, default=40, help="steps per 32x32 row (first window is warm-up)")
    p.add_argument("--window", type=int, default=10, help="steps per timing window")
    p.add_argument("--steps_224", type=int, default=8)
    p.add_argument("--no-224", dest="big", action="store_false")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the plain row (default: 8 on CUDA, as the original's "
                        "measured run, 2 on the CPU)")
    p.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain row")
    add_results_flag(p)
    a = p.parse_args()
    tune_allocator()
    device = torch.device(a.device)
    x, y, source = cifar_or_random(a.data)
    print(f"machine: {machine(device)}\ndata: {source}\nbatch {a.batch}, {a.steps} steps per row")
    seed_aug = DataConfig(cutout=True, auto_aug=True)
    workers = a.workers if a.workers is not None else (8 if device.type == "cuda" else 2)
    cuda = device.type == "cuda"
    # the figures the issue asks for first (a time limit may cut the list): the default, the
    # CUDA graphs, and the plain loop the ratios are taken against; then the other settings
    rows = [("spnas 32x32 crop+flip",
             lambda: spnas_throughput(x, y, DataConfig(), a.steps, a.window, device, a.batch)),
            ("spnas 32x32 crop+flip fp32 NCHW", lambda: spnas_throughput(
                x, y, DataConfig(), a.steps, a.window, device, a.batch, False, False)),
            *([("spnas 32x32 crop+flip fp32 NCHW CUDA graphs", lambda: spnas_throughput(
                x, y, DataConfig(), a.steps, a.window, device, a.batch, False, False,
                cuda_graphs=True)),
               ("spnas 32x32 crop+flip CUDA graphs", lambda: spnas_throughput(
                   x, y, DataConfig(), a.steps, a.window, device, a.batch, cuda_graphs=True))]
              if cuda else [])]
    if a.plain:
        rows.append((f"plain 32x32 crop+flip (PIL, DataLoader x{workers}, fp32, NCHW)",
                     lambda: plain_throughput(x, y, a.steps, a.window, device, a.batch, workers)))
    rows += [*([("spnas 32x32 crop+flip fp32 NCHW cudnn.benchmark", lambda: spnas_throughput(
                 x, y, DataConfig(), a.steps, a.window, device, a.batch, False, False, True))]
               if cuda else []),
             ("spnas 32x32 seed augmentation",
              lambda: spnas_throughput(x, y, seed_aug, a.steps, a.window, device, a.batch))]
    if a.big:
        w = max(a.steps_224 // 4, 1)
        rows.append(("spnas 224 seed augmentation (--resize)", lambda: spnas_throughput(
            x, y, DataConfig(cutout=True, auto_aug=True, resize=True), a.steps_224, w, device,
            a.batch)))
    results = []
    with kept_when_interrupted("the rows"):
        for name, run in rows:
            rate, warm = run()
            print(f"{name:52s} {rate:8.1f} img/s  (50,000-image epoch {50_000 / rate:7.1f} s)"
                  + (f", warm-up {warm:.1f} s" if warm is not None else ""), flush=True)
            results.append({"row": name, "batch": a.batch, "images_per_s": round(rate, 1),
                            "epoch_s": round(50_000 / rate, 1),
                            "warmup_s": None if warm is None else round(warm, 1), "data": source})
    plain = next((r["images_per_s"] for r in results if r["row"].startswith("plain")), None)
    if plain:
        print("\nspeed over the plain loop (the original code's way):")
        for r in results:
            r["x_plain"] = round(r["images_per_s"] / plain, 2)
            print(f"  {r['row']:50s} {r['x_plain']:5.2f}x")
    write_rows(a.results, "train", device, results)


if __name__ == "__main__":
    main()
