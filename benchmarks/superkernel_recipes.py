"""The two superkernel recipes side by side: search at several lambdas, retrain what each finds.

For every recipe (``--recipe spnas`` and ``--recipe paper``), lambda (each in its
recipe's own convention: the paper's is x1e3) and seed: ``spnas superkernel``,
then ``spnas retrain`` of the decoded arch (the same retrain flags for every
arch; an arch found twice at one seed is retrained once). The latency table is
``--latency_table`` or one measured here first (``spnas latency-table``).

Full comparison on a GPU (about 3 lambdas x 2 recipes x 3 seeds searches of 8
epochs and retrains of 100 epochs):

    PYTHONPATH=. python benchmarks/superkernel_recipes.py --data_path /data/cifar10 --device cuda \\
        --spnas_lams 0.03 0.1 0.3 --paper_lams 0.005 0.02 0.08 --seeds 0 1 2 \\
        --search="--batch_size 128" --retrain="--epochs 100 --batch_size 128 --lr 0.1 --cutout"

The small CPU run of docs/superkernel.md (one thread, minutes):

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/superkernel_recipes.py --data_path /tmp/c10 \\
        --device cpu --threads 1 --spnas_lams 0.1 2 --paper_lams 0.02 2 --seeds 0 \\
        --search="--epochs 1 --num_steps 48 --batch_size 32 --val_size 1000 --print_freq 8" \\
        --retrain="--epochs 1 --num_steps 60 --batch_size 64 --lr 0.05 --val_size 1000"

Writes benchmarks/results/superkernel_recipes_<device>_torch<ver>.csv (one row per
search: recipe, lambda, seed, arch, table latency, measured latency when the
table's device is here, supernet validation accuracy, retrained test accuracy,
seconds), ``--plot`` (latency against retrained accuracy, one colour per recipe) and
``<plot>_thresholds.png`` (each run's mean thresholds over the steps).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from common import ROOT, append_rows, machine, results_path  # noqa: E402  (repo on sys.path)

from spnas.cli import build_parser, main, run_superkernel  # noqa: E402
from spnas.cli.networks import run_retrain  # noqa: E402
from spnas.engine.runtime import tune_allocator  # noqa: E402
from spnas.engine.trainer import resolve_device  # noqa: E402
from spnas.errors import SpnasError  # noqa: E402
from spnas.stages.superkernel_plots import plot_recipes, plot_thresholds  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_path", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the latency table")
    p.add_argument("--latency_table", default=None, help="default: measure one here first")
    p.add_argument("--spnas_lams", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    p.add_argument("--paper_lams", type=float, nargs="+", default=[0.005, 0.02, 0.08],
                   help="in the paper's convention (x1e3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--search", default="", help="flags for every 'spnas superkernel' run")
    p.add_argument("--retrain", default="--epochs 100 --batch_size 128 --lr 0.1 --cutout",
                   help="flags for every 'spnas retrain' run")
    p.add_argument("--save_path", default="checkpoints/recipes")
    p.add_argument("--plot", default=None, help="default: next to the CSV, .png")
    return p.parse_args()


def latency_table(args, device) -> str:
    if args.latency_table:
        return args.latency_table
    out = Path(args.save_path) / f"mbconv_cifar_{device.type}.json"
    argv = ["latency-table", "--space", "mbconv", "--layout", "cifar", "--device", str(device),
            "--out", str(out), "--overwrite"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    if main(argv) != 0:
        sys.exit("the latency table failed")
    print(f"latency table {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return str(out)


def run(command: str, fn, argv: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    try:
        result = fn(build_parser().parse_args([command, *argv]))
    except SpnasError as e:
        sys.exit(f"spnas: error: {e}")
    return result, time.perf_counter() - t0


def compare() -> None:
    args = parse_args()
    tune_allocator()
    device = resolve_device(args.device)
    table = latency_table(args, device)
    common = ["--data_path", args.data_path, "--no-download", "--device", str(device)]
    rows, retrained, runs = [], {}, {}
    for recipe, lams in (("spnas", args.spnas_lams), ("paper", args.paper_lams)):
        for lam in lams:
            for seed in args.seeds:
                name = f"{recipe}_lam{lam:g}_seed{seed}"
                found, search_s = run("superkernel", run_superkernel, [
                    *common, *shlex.split(args.search), "--recipe", recipe, "--lam", str(lam),
                    "--seed", str(seed), "--latency_table", table, "--save_path", args.save_path,
                    "--exp_name", name])
                runs[f"{recipe} lambda {lam:g} seed {seed}"] = Path(args.save_path) / name
                key = (found["arch"], seed)
                if key not in retrained:
                    arch_file = str(Path(args.save_path) / name / "arch.json")
                    retrained[key] = run("retrain", run_retrain, [
                        *common, *shlex.split(args.retrain), "--arch", arch_file, "--seed",
                        str(seed), "--save_path", args.save_path, "--exp_name", f"{name}_retrain"])
                result, retrain_s = retrained[key]
                row = {"recipe": recipe, "lam": lam, "seed": seed, "arch": found["arch"],
                       "latency_ms": found["latency"],
                       "measured_latency_ms": found.get("measured_latency_ms"),
                       "supernet_val_acc": found.get("supernet_val_acc"),
                       "test_acc": result["last"]["test_acc"], "params": result["params"],
                       "search_s": round(search_s, 1), "retrain_s": round(retrain_s, 1)}
                rows.append(row)
                print(f"{recipe} lambda {lam:g} seed {seed}: {row['latency_ms']:.3f} ms, test acc "
                      f"{row['test_acc']:.4f} ({search_s:.0f} s + {retrain_s:.0f} s) {row['arch']}",
                      flush=True)
    print(f"machine: {machine(device)}")
    csv = append_rows("superkernel_recipes", device, rows)
    plot = Path(args.plot) if args.plot else results_path("superkernel_recipes", device).with_suffix(".png")
    plot_recipes(rows, plot)
    thresholds = plot_thresholds(runs, plot.with_name(plot.stem + "_thresholds.png"))
    print(f"wrote {csv.relative_to(ROOT)}, {plot} and {thresholds}")


if __name__ == "__main__":
    compare()
