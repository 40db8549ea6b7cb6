"""Retraining throughput (training images/s) of a standalone network, through the real trainer.

Runs ``spnas.stages.retrain.child_task`` with the ``Trainer`` for a few hundred
steps per setting, on CIFAR-shaped data held on the device (random uint8
images unless ``--data_path`` is given; the speed does not depend on the
pixels), and reads the ``img_per_s`` of the metrics windows after the first
(warm-up: allocator, cudnn.benchmark). Augmentation, the optimizer step, the
EMA and the logging are all included, as in a real run.

    PYTHONPATH=. python benchmarks/bench_retrain.py                      # CPU or the GPU present
    PYTHONPATH=. python benchmarks/bench_retrain.py --batch_sizes 128 256 512 --ema
    PYTHONPATH=. python benchmarks/bench_retrain.py --results benchmarks/results  # and record the rows
    PYTHONPATH=. python benchmarks/bench_retrain.py --compile none default reduce-overhead

``--compile``: the training forward through ``torch.compile`` in each given mode
(``none``: eager, what spnas runs; ``reduce-overhead`` adds CUDA graphs on a GPU),
to measure before spnas offers it; ``warmup_s`` then includes the compile time.
``cuda-graphs`` is no compiler but spnas's ``--cuda_graphs`` (each layer's forward and
backward captured once; its capture time is in ``warmup_s``).

Then, per batch size, a plain row: the same network in a loop written the way the
original code's retrain script is (``common.original_style_rate``: PIL transforms with
cutout when ``--cutout``, DataLoader with ``--workers``, fp32, NCHW, one ``.item()`` per
step), and each setting's speed over it (``--no-plain`` skips it).

Prints the machine and one line per setting; ``--results DIR`` also appends the
rows to DIR/retrain_<device>_torch<version>.csv (the repository's are in
benchmarks/results). The run folders are temporary. The last column is
what the old recipe's 600 epochs of 50,000 images would take at that speed
(target on one H100: under 1 hour).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import add_results_flag, kept_when_interrupted, machine, original_style_rate, write_rows

from spnas.arch import Arch
from spnas.config import DataConfig, OptimConfig, RetrainConfig, RunConfig, TrainConfig
from spnas.data.datasets import Splits
from spnas.data.loading import load_splits, train_loader
from spnas.engine.runlog import read_metrics
from spnas.engine.trainer import Trainer
from spnas.runtime import place, resolve_device, setup_torch, tune_allocator
from spnas.spaces import build_child, make_space
from spnas.stages.retrain import child_task

OLD_BEST = "k5 k3 x k5 x k3 x k3 k3 x x k3 k5 k3 k5 k7 k7 k5 k5 x"
EPOCH_IMAGES, RECIPE_EPOCHS = 50_000, 600


def synthetic_splits(n: int, seed: int = 0) -> Splits:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    small = (x[:256], y[:256])
    return Splits((x, y), small, small, [str(i) for i in range(10)], False)


def measure(splits: Splits, arch: Arch, cfg: TrainConfig, device: torch.device,
            compile_mode: str = "none") -> dict:
    """Train ``cfg.optim.num_steps`` steps; median img/s over the windows after the first,
    and the warm-up: the wall time beyond the steps at that rate (compiling included)."""
    torch.manual_seed(0)
    if compile_mode == "cuda-graphs":
        cfg = replace(cfg, run=replace(cfg.run, cuda_graphs=True))
    model = place(build_child(arch, len(splits.classes), dropout=cfg.model.dropout), device,
                  cfg.run.channels_last_for(device))
    task = child_task(model, splits, cfg, device, {"dropout": cfg.model.dropout})
    if compile_mode not in ("none", "cuda-graphs"):
        compiled = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
        task = replace(task, forward=lambda m, x, step: compiled(x))
    loader = train_loader(splits, cfg, device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        Trainer(task, loader, replace(cfg, run=replace(cfg.run, save_path=tmp)),
                Path(tmp) / cfg.run.exp_name).fit()
        wall = time.perf_counter() - t0
        rates = [r["img_per_s"] for r in read_metrics(Path(tmp) / cfg.run.exp_name)
                 if r["type"] == "train"][1:]
    ips = statistics.median(rates)
    steps = cfg.optim.num_steps or 0
    return {"img_per_s": ips, "ms_per_step": cfg.optim.batch_size / ips * 1e3,
            "epoch_s": EPOCH_IMAGES / ips, "recipe_h": RECIPE_EPOCHS * EPOCH_IMAGES / ips / 3600,
            "wall_s": wall, "warmup_s": max(0.0, wall - steps * cfg.optim.batch_size / ips)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=OLD_BEST)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[128])
    p.add_argument("--steps", type=int, default=None,
                   help="steps per setting (default: 300 on CUDA, 12 on the CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CUDA (default: fp32, as spnas retrain)")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: the device's, as spnas retrain)")
    p.add_argument("--ema", action="store_true")
    p.add_argument("--cutout", action="store_true")
    p.add_argument("--auto_aug", action="store_true")
    p.add_argument("--data_path", default=None, help="real CIFAR-10 instead of random images")
    p.add_argument("--compile", nargs="+", default=["none"],
                   choices=("none", "default", "reduce-overhead", "max-autotune", "cuda-graphs"),
                   help="torch.compile modes of the training forward to measure (none: eager; "
                        "cuda-graphs: no compiler, spnas's --cuda_graphs)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the plain rows (default: 8 on CUDA, as the "
                        "original's retrain script, 2 on the CPU)")
    p.add_argument("--no-plain", dest="plain", action="store_false",
                   help="skip the plain rows (the original code's way)")
    add_results_flag(p)
    args = p.parse_args()
    tune_allocator()
    device = resolve_device(args.device)
    if "cuda-graphs" in args.compile and device.type != "cuda":
        p.error(f"--compile cuda-graphs needs a CUDA device, not {device}")
    steps = args.steps or (300 if device.type == "cuda" else 12)
    data = DataConfig(cutout=args.cutout, auto_aug=args.auto_aug,
                      data_path=args.data_path or "", download=False)
    run = RunConfig(exp_name="bench", device=str(device), amp=args.amp,
                    channels_last=args.channels_last, print_freq=max(steps // 6, 2),
                    val_interval=10 ** 6)
    setup_torch(run, device)
    splits = (load_splits(replace(data, val_size=256), 0) if args.data_path
              else synthetic_splits(max(args.batch_sizes) * steps))
    arch = Arch.parse(args.arch, make_space("spos", "cifar"))
    amp = args.amp and device.type == "cuda"
    channels_last = run.channels_last_for(device)
    print(f"machine: {machine(device)} | arch {arch} | "
          f"{'real' if args.data_path else 'random'} 32x32 images | amp {amp} | "
          f"channels_last {channels_last} | ema {args.ema} | {steps} steps per batch size")
    rows = []
    with kept_when_interrupted("the rows"):
        for mode, batch in itertools.product(args.compile, args.batch_sizes):
            cfg = TrainConfig(data, OptimConfig(epochs=1, num_steps=steps, batch_size=batch,
                                                lr=0.05),
                              run, RetrainConfig(arch=str(arch), ema=args.ema))
            r = measure(splits, arch, cfg, device, mode)
            print(f"compile {mode:15s} batch {batch:5d}: {r['img_per_s']:9.0f} img/s  "
                  f"{r['ms_per_step']:8.2f} ms/step  epoch {r['epoch_s']:7.1f} s  600 epochs "
                  f"{r['recipe_h']:6.2f} h  warm-up {r['warmup_s']:6.1f} s", flush=True)
            rows.append({"arch": str(arch), "compile": mode,
                         "batch": batch, "amp": amp,
                         "channels_last": channels_last, "ema": args.ema,
                         "cutout": args.cutout, "auto_aug": args.auto_aug, "steps": steps,
                         "threads": torch.get_num_threads(),
                         **{k: round(v, 3) for k, v in r.items()}})
        if args.plain:  # inside: a time limit here keeps the rows before it
            workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 2)
            window = max(steps // 6, 2)
            for batch in args.batch_sizes:
                torch.manual_seed(0)
                net = build_child(arch, len(splits.classes))
                ips = original_style_rate(*splits.train, net, lambda m, xb: m(xb), steps, window,
                                          device, batch, workers, cutout=16 if args.cutout else 0)
                spnas = [r for r in rows if r["batch"] == batch]
                print(f"plain (PIL, DataLoader x{workers}, fp32, NCHW) batch {batch:5d}: "
                      f"{ips:9.0f} img/s; " + ", ".join(
                          f"{r['compile']} {r['img_per_s'] / ips:.2f}x" for r in spnas), flush=True)
                for r in spnas:
                    r["x_plain"] = round(r["img_per_s"] / ips, 2)
                rows.append({"arch": str(arch), "compile": f"plain, DataLoader x{workers}",
                             "batch": batch, "amp": False, "channels_last": False, "ema": False,
                             "cutout": args.cutout, "auto_aug": False, "steps": steps,
                             "threads": torch.get_num_threads(), "img_per_s": round(ips, 3),
                             "epoch_s": round(EPOCH_IMAGES / ips, 3), "x_plain": 1.0})
    write_rows(args.results, "retrain", device, rows)


if __name__ == "__main__":
    main()
