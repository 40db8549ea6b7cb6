"""How well a per-layer latency table of the MBConv space predicts whole networks.

Builds the table on this machine with ``latency.build_latency_table`` (each
layer option timed alone on its real input: warm-up, median of repeats,
fixed threads; plus the stem and head), then measures ``--archs`` random
whole networks and compares. Also reports the paper's latency formula: it
has no k3e3 entry and prices a k3e3 layer at R[k5e3] R[k3e6] / R[k5e6].

    PYTHONPATH=. python benchmarks/superkernel_latency.py --layout cifar --device cpu
    PYTHONPATH=. python benchmarks/superkernel_latency.py --layout imagenet --device cuda --batch 1
    PYTHONPATH=. python benchmarks/superkernel_latency.py --layout cifar --results benchmarks/results

Prints the machine and the figures. ``--results DIR`` also writes the table to
DIR/mbconv_<layout>_<device>_torch<ver>.json (usable as ``spnas superkernel
--latency_table``) and appends one CSV row per arch to
DIR/superkernel_latency_<layout>_<device>_torch<ver>.csv (the repository's are
in benchmarks/results). ``spnas latency-table --out FILE`` also writes a table.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from common import add_results_flag, machine, result_path, shown, write_rows

from spnas.arch import Arch
from spnas.engine.latency import build_latency_table, validate_latency_table
from spnas.runtime import resolve_device
from spnas.spaces import build_child, make_space
from spnas.stages.superkernel import LatencyModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=("cifar", "imagenet"), default="cifar")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    add_results_flag(p, "the table (.json) and the rows")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    space = make_space("mbconv", args.layout)
    child = lambda a: build_child(a, 10)  # noqa: E731
    print(f"machine: {machine(device)}; mbconv/{args.layout}, batch {args.batch}")
    table = build_latency_table(space, child, device, batch=args.batch, warmup=args.warmup,
                                repeats=args.repeats, progress=True)
    table_path = result_path(args.results, f"mbconv_{args.layout}", device, ".json")
    if table_path:
        table.save(table_path)
    report = validate_latency_table(table, child, device, args.archs, 0, args.warmup, args.repeats)
    paper = LatencyModel(table, "paper")
    rows = []
    for r in report["archs"]:
        arch = Arch.parse(r["arch"], space)
        measured, formula = r["measured_ms"], paper.of_arch(arch)
        rows.append({**r, "paper_formula_ms": formula,
                     "rel_error": (r["predicted_ms"] - measured) / measured,
                     "paper_rel_error": (formula - measured) / measured})
    k33, k36, k53, k56 = (space.tokens.index(t) for t in ("k3e3", "k3e6", "k5e3", "k5e6"))
    approx = [(row[k53] * row[k36] / row[k56] - row[k33]) / row[k33] for row in table.layers]
    write_rows(args.results, f"superkernel_latency_{args.layout}", device, rows)
    largest = Arch(space, (k56,) * space.num_layers)
    smallest = Arch(space, tuple(a[-1] if len(a) == 5 else k33 for a in space.allowed))
    print(f"table: constant {table.constant:.3f} ms; largest network {table.predict(largest):.3f}"
          f" ms, smallest {table.predict(smallest):.3f} ms")
    mean_err, max_err = report["mean_abs_rel_error"], report["max_abs_rel_error"]
    print(f"table vs whole networks ({args.archs} random archs): mean |error| "
          f"{100 * mean_err:.1f}%, max {100 * max_err:.1f}%")
    print(f"paper formula vs whole networks: mean |error| "
          f"{100 * statistics.mean(abs(r['paper_rel_error']) for r in rows):.1f}%")
    print(f"paper's k3e3 estimate vs the timed k3e3, per layer: mean "
          f"{100 * statistics.mean(approx):+.1f}%, range {100 * min(approx):+.1f}% .. "
          f"{100 * max(approx):+.1f}%")
    if table_path:
        print(f"wrote {shown(table_path)}")


if __name__ == "__main__":
    main()
