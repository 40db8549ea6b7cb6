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

Prints one line per lambda and writes
benchmarks/results/superkernel_sweep_<device>_torch<ver>.csv.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import append_rows, machine  # noqa: E402  (puts the repository on sys.path)

from spnas.cli import build_parser, run_superkernel  # noqa: E402
from spnas.engine.runtime import tune_allocator  # noqa: E402
from spnas.engine.trainer import resolve_device  # noqa: E402
from spnas.errors import SpnasError  # noqa: E402

FIELDS = ("lam", "arch", "latency", "latency_unit", "measured_latency_ms", "supernet_val_acc",
          "steps", "run")


def main() -> None:
    argv = sys.argv[1:]
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.02, 0.1, 0.5])
    p.add_argument("--save_path", default="checkpoints/lambda_sweep")
    args = p.parse_args(own)
    tune_allocator()
    rows = []
    for lam in args.lams:
        flags = build_parser().parse_args(["superkernel", *passed, "--lam", str(lam),
                                           "--save_path", args.save_path,
                                           "--exp_name", f"lam{lam:g}"])
        device = resolve_device(flags.device)
        try:
            result = run_superkernel(flags)
        except SpnasError as e:
            sys.exit(f"spnas: error: {e}")
        row = {k: result.get(k) for k in FIELDS}
        row.update(lam=lam, run=str(Path(args.save_path) / f"lam{lam:g}"))
        rows.append(row)
        print(f"lambda {lam:g}: {row['latency']:.3f} {row['latency_unit']}, supernet val acc "
              f"{row['supernet_val_acc']:.4f}, {row['arch']}", flush=True)
    print(f"machine: {machine(device)}")
    append_rows("superkernel_sweep", device, rows)


if __name__ == "__main__":
    main()
