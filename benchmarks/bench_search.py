"""Candidates per second of search scoring, against the old recipe's evaluation of one path.

Search (``spnas search`` defaults): per candidate, exact BN recalibration on
2,560 training images (batch 512), then accuracy on 5,000 validation images
(batch 1,000), images prepared once on the device. Timed after a warm-up that
runs every block once (its time is printed too: a search pays it once); before
2026-12-01 the warm-up was one candidate, so the timed candidates also paid
cuDNN's autotuning of the blocks they met first. Old recipe: one path on
the 10,000 test images at batch 256, no recalibration. Both on a 20-layer SPOS
supernet at 32x32 with random weights and random images (timing only).

    python benchmarks/bench_search.py                       # the defaults
    python benchmarks/bench_search.py --candidates 1 --recal_images 128 \\
        --val_images 256 --baseline_images 256              # a smoke run
    python benchmarks/bench_search.py --results benchmarks/results   # and record the row

Prints the machine and the figures; ``--results DIR`` also appends a row to
DIR/search_<device>_torch<version>.csv (the repository's are in benchmarks/results).
"""
from __future__ import annotations

import argparse
import random
import time

import torch
from common import add_results_flag, machine, write_rows

from spnas.arch import Arch
from spnas.config import RunConfig, SearchRunConfig
from spnas.data.augment import AugmentConfig, BatchTransform
from spnas.engine.evaluation import evaluate
from spnas.engine.scoring import SupernetScorer, input_dtype, recal_set, val_set
from spnas.runtime import place, resolve_device, setup_torch, tune_allocator
from spnas.spaces.spos import SposSupernet, spos_space


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--candidates", type=int, default=20, help="timed candidates (after one warm-up)")
    p.add_argument("--recal_images", type=int, default=2560)
    p.add_argument("--recal_batch", type=int, default=512)
    p.add_argument("--val_images", type=int, default=5000)
    p.add_argument("--eval_batch", type=int, default=1000)
    p.add_argument("--baseline_images", type=int, default=10000)
    p.add_argument("--baseline_batch", type=int, default=256)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CUDA (default: fp32, as spnas search)")
    p.add_argument("--cudnn_benchmark", action=argparse.BooleanOptionalAction, default=False,
                   help="cuDNN autotuning (default: off, as spnas search); its cost is in the "
                        "printed warm-up")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: the device's, as spnas search: on for the "
                        "CPU, off for CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    add_results_flag(p, "the row")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    a = parse_args(argv)
    tune_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    setup_torch(RunConfig(device=str(device), amp=a.amp, cudnn_benchmark=a.cudnn_benchmark),
                device)  # as spnas search sets torch up (its default: no autotuning)
    torch.manual_seed(0)
    space = spos_space(a.layers)
    channels_last = SearchRunConfig(channels_last=a.channels_last).channels_last_for(device)
    model = place(SposSupernet(space, 10), device, channels_last)
    n = max(a.recal_images, a.val_images, a.baseline_images)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    transform = BatchTransform(AugmentConfig(), memory_format=torch.channels_last if channels_last
                               else torch.contiguous_format)
    dtype = input_dtype(device, a.amp)
    t0 = time.perf_counter()
    recal = recal_set(x, a.recal_images, a.recal_batch, transform, 1, device, dtype, 64 * 2 ** 30)
    val = val_set(x[:a.val_images], y[:a.val_images], None, a.eval_batch, transform, 2, device,
                  dtype, 64 * 2 ** 30)
    sync(device)
    prepare_s = time.perf_counter() - t0
    scorer = SupernetScorer(model, recal, val, 10, device, a.amp)
    # warm-up: one path per choice, all layers on it, so every block's kernels are chosen
    # (cuDNN autotuning, once per convolution shape) and its memory allocated before the
    # timing; a search pays this once, over its first candidates
    t0 = time.perf_counter()
    for c in range(len(space.tokens)):
        scorer(Arch(space, (c,) * space.num_layers))
    warmup_s = time.perf_counter() - t0
    rng = random.Random(0)
    archs = [Arch.sample(space, rng) for _ in range(a.candidates)]
    t0 = time.perf_counter()
    for arch in archs:
        scorer(arch)  # ends in .item(): synchronised
    per_candidate = (time.perf_counter() - t0) / a.candidates

    path = archs[0]
    fwd = lambda m, images: m(images, path)  # noqa: E731
    bx, by = x[:a.baseline_images], y[:a.baseline_images]
    evaluate(model, fwd, bx[:a.baseline_batch], by[:a.baseline_batch], transform, 10,
             a.baseline_batch, device, a.amp)  # warm-up
    t0 = time.perf_counter()
    evaluate(model, fwd, bx, by, transform, 10, a.baseline_batch, device, a.amp)
    baseline_s = time.perf_counter() - t0

    row = {"device": str(device), "threads": torch.get_num_threads(), "amp": a.amp,
           "channels_last": channels_last, "cudnn_benchmark": a.cudnn_benchmark,
           "layers": a.layers, "recal_images": a.recal_images, "recal_batch": a.recal_batch,
           "val_images": a.val_images, "eval_batch": a.eval_batch, "candidates": a.candidates,
           "prepare_s": round(prepare_s, 3), "warmup_s": round(warmup_s, 3),
           "s_per_candidate": round(per_candidate, 4),
           "candidates_per_s": round(1 / per_candidate, 3),
           "images_per_s": round((a.recal_images + a.val_images) / per_candidate, 1),
           "baseline_images": a.baseline_images, "baseline_batch": a.baseline_batch,
           "baseline_s": round(baseline_s, 4),
           "baseline_images_per_s": round(a.baseline_images / baseline_s, 1)}
    print(f"machine: {machine(device)}")
    print(f"search scoring: {row['s_per_candidate']:.3f} s per candidate = "
          f"{row['candidates_per_s']:.2f} candidates/s ({a.recal_images} recal + "
          f"{a.val_images} val images, {row['images_per_s']:.0f} img/s); prepared in "
          f"{prepare_s:.2f} s once; warm-up (every block once) {warmup_s:.2f} s once")
    print(f"old recipe: one path on {a.baseline_images} images at batch {a.baseline_batch}, "
          f"no recalibration: {baseline_s:.3f} s ({row['baseline_images_per_s']:.0f} img/s)")
    print(f"a search candidate costs {per_candidate / baseline_s:.2f}x an old-recipe evaluation"
          + ("; target on one H100: >= 10 candidates/s" if device.type == "cuda" else ""))
    write_rows(a.results, "search", device, [row])
    return row


if __name__ == "__main__":
    main()
