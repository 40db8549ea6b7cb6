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

Prints one line per search and the machine. ``--results DIR`` also appends the
rows to DIR/superkernel_recipes_<device>_torch<ver>.csv (one row per search:
recipe, lambda, seed, arch, table latency, measured latency when the table's
device is here, supernet validation accuracy, retrained test accuracy, seconds;
the repository's are in benchmarks/results) and draws the plots next to it
(.png: latency against retrained accuracy, one colour per recipe;
``_thresholds.png``: each run's mean thresholds over the steps); ``--plot FILE``
draws them at FILE and ``<FILE>_thresholds.png`` instead. The runs' folders (and
a latency table measured here) are temporary unless ``--keep DIR`` keeps them.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from common import add_keep_flag, add_results_flag, machine, result_path, scratch, shown, write_rows

from spnas.cli import build_parser, main
from spnas.cli.networks import run_retrain
from spnas.cli.superkernel import run_superkernel
from spnas.errors import SpnasError
from spnas.runtime import resolve_device, tune_allocator
from spnas.stages.superkernel_plots import plot_recipes, plot_thresholds


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
    add_results_flag(p, "the rows and the plots")
    add_keep_flag(p, "the runs' folders and a latency table measured here")
    p.add_argument("--plot", default=None,
                   help="draw the plots here (default: next to the CSV with --results, else none)")
    return p.parse_args()


def latency_table(args, device, save_path: Path) -> str:
    if args.latency_table:
        return args.latency_table
    out = save_path / f"mbconv_cifar_{device.type}.json"
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
    with scratch(args.keep, "recipes_") as save_path:
        searches(args, device, save_path)


def searches(args, device, save_path: Path) -> None:
    table = latency_table(args, device, save_path)
    common = ["--data_path", args.data_path, "--no-download", "--device", str(device)]
    rows, retrained, runs = [], {}, {}
    for recipe, lams in (("spnas", args.spnas_lams), ("paper", args.paper_lams)):
        for lam in lams:
            for seed in args.seeds:
                name = f"{recipe}_lam{lam:g}_seed{seed}"
                found, search_s = run("superkernel", run_superkernel, [
                    *common, *shlex.split(args.search), "--recipe", recipe, "--lam", str(lam),
                    "--seed", str(seed), "--latency_table", table, "--save_path", str(save_path),
                    "--exp_name", name])
                runs[f"{recipe} lambda {lam:g} seed {seed}"] = save_path / name
                key = (found["arch"], seed)
                if key not in retrained:
                    arch_file = str(save_path / name / "arch.json")
                    retrained[key] = run("retrain", run_retrain, [
                        *common, *shlex.split(args.retrain), "--arch", arch_file, "--seed",
                        str(seed), "--save_path", str(save_path), "--exp_name", f"{name}_retrain"])
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
    csv = write_rows(args.results, "superkernel_recipes", device, rows)
    plot = Path(args.plot) if args.plot else result_path(args.results, "superkernel_recipes", device, ".png")
    if plot:  # while the runs' folders (their decisions) are still there
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_recipes(rows, plot)
        thresholds = plot_thresholds(runs, plot.with_name(plot.stem + "_thresholds.png"))
        print(f"wrote {', '.join(shown(f) for f in (csv, plot, thresholds) if f)}")
    if args.keep:
        print(f"runs in {save_path}")


if __name__ == "__main__":
    compare()
