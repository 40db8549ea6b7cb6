"""The accuracy / latency trade-off of the superkernel search over lambda.

Runs ``spnas superkernel`` once per ``--lams`` value (same seed, same flags
otherwise: everything after ``--`` is passed on) and collects, per lambda,
the arch found, its predicted latency (table lookup), its measured latency
when the table is a measured one, and the validation accuracy of the
superkernel network with those gates (a proxy: the searched weights, not a
retrained network).

    PYTHONPATH=. python benchmarks/superkernel_lambda_sweep.py --lams 0 0.02 0.1 0.5 -- \\
        --data_path /tmp/c10 --epochs 8 --batch_size 128 --lr 0.05 --threshold_lr_scale 100 \\
        --latency_table benchmarks/results/mbconv_cifar_<device>_torch<ver>.json

Prints one line per lambda and the machine. ``--results DIR`` (before ``--``)
also appends the rows to DIR/superkernel_sweep_<device>_torch<ver>.csv (the
repository's are in benchmarks/results). The runs' folders are temporary unless
``--keep DIR`` keeps them as DIR/lam<lambda>.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import add_keep_flag, add_results_flag, machine, scratch, write_rows

from spnas.cli import build_parser
from spnas.cli.superkernel import run_superkernel
from spnas.errors import SpnasError
from spnas.runtime import resolve_device, tune_allocator

FIELDS = ("lam", "arch", "latency", "latency_unit", "measured_latency_ms", "supernet_val_acc",
          "steps", "run")


def main() -> None:
    argv = sys.argv[1:]
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.02, 0.1, 0.5])
    add_results_flag(p)
    add_keep_flag(p, "the runs' folders")
    args = p.parse_args(own)
    tune_allocator()
    rows = []
    with scratch(args.keep, "lambda_sweep_") as save_path:
        for lam in args.lams:
            flags = build_parser().parse_args(["superkernel", *passed, "--lam", str(lam),
                                               "--save_path", str(save_path),
                                               "--exp_name", f"lam{lam:g}"])
            device = resolve_device(flags.device)
            try:
                result = run_superkernel(flags)
            except SpnasError as e:
                sys.exit(f"spnas: error: {e}")
            row = {k: result.get(k) for k in FIELDS}
            row.update(lam=lam, run=str(Path(save_path) / f"lam{lam:g}") if args.keep else "")
            rows.append(row)
            print(f"lambda {lam:g}: {row['latency']:.3f} {row['latency_unit']}, supernet val acc "
                  f"{row['supernet_val_acc']:.4f}, {row['arch']}", flush=True)
    print(f"machine: {machine(device)}")
    write_rows(args.results, "superkernel_sweep", device, rows)


if __name__ == "__main__":
    main()
