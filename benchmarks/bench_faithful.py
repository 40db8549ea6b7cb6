"""Does the spnas supernet learn as the original SPOS CIFAR code does? Its loss curve against the original's.

    python benchmarks/bench_faithful.py --data /path/to/cifar10 [--steps 2500] [--init kaiming]
        [--unsampled_momentum] [--keep DIR]

Trains the SPOS supernet with ``spnas train`` on the recipe of the reference
curve in ``../shared/reference/spos_c10_supernet_b96_steps.csv`` (the original
``train_supernet.py`` run unchanged on one H200): batch 96, lr 0.025, momentum
0.9, cosine over 600 epochs, random crop + flip only, all 50,000 training
images (``--val_size 0``), no weight decay (the original passed its weight
decay into SGD's dampening slot, so its runs had none), and stops after
``--steps`` steps (``--stop_after``). Then compares the two curves with
``spnas curves --window 250``: mean relative error of the 250-step window
means (the acceptance: at most 5%).

Prints the machine, a table of window means (loss and batch accuracy) for
both, and the comparison; writes no file. The run folder (metrics.jsonl, the
log, the comparison plot) is a temporary one, removed at the end, unless
``--keep DIR`` keeps it as ``DIR/supernet_<init>_init``. ``--init kaiming``
builds the supernet with spnas's former init (He-normal fan-out convs, BN bias
0) instead of the original's, to measure what the init alone does.
``--unsampled_momentum`` trains with ``spnas train --unsampled_momentum``: momentum keeps
moving the blocks a step did not sample, as the original code's PyTorch 1.7.1 did (the
reference curve was measured on a PyTorch >= 2.0, which leaves them alone, as spnas's
default does).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from common import ROOT, add_keep_flag, machine, scratch

import spnas.spaces.spos as spos
from spnas.cli import main as spnas_main
from spnas.engine.runlog import read_metrics
from spnas.spaces.common import init_weights

REFERENCE = ROOT.parent / "shared" / "reference" / "spos_c10_supernet_b96_steps.csv"


def window_means(rows: list[tuple[int, float, float]], window: int, last: int) -> list[tuple]:
    """(first step, mean loss, mean acc) of each full window of per-step rows up to ``last``."""
    out = []
    for start in range(1, last + 1, window):
        inside = [(loss, acc) for step, loss, acc in rows if start <= step < start + window]
        if len(inside) == window:
            out.append((start, statistics.fmean(v[0] for v in inside),
                        statistics.fmean(v[1] for v in inside)))
    return out


def reference_rows(path: Path) -> list[tuple[int, float, float]]:
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r["loss"]), float(r["acc"])) for r in csv.DictReader(f)]


def train(data: str, out: Path, steps: int, window: int, device: str, amp: bool, seed: int,
          unsampled_momentum: bool = False) -> float:
    argv = ["train", "--data_path", data, "--no-download", "--save_path", str(out.parent),
            "--exp_name", out.name, "--batch_size", "96", "--epochs", "600", "--lr", "0.025",
            "--momentum", "0.9", "--weight-decay", "0", "--val_size", "0",
            "--print_freq", str(window), "--stop_after", str(steps), "--seed", str(seed),
            "--device", device, "--amp" if amp else "--no-amp"]
    if unsampled_momentum:
        argv.append("--unsampled_momentum")
    t0 = time.perf_counter()
    if spnas_main(argv) != 0:
        raise SystemExit("the training run failed")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 folder (any layout spnas reads)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps to train and compare (default: 2500 on CUDA, 500 on the CPU)")
    p.add_argument("--window", type=int, default=250, help="steps per compared window")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CUDA (default: fp32, as the original and spnas's default)")
    p.add_argument("--init", choices=("original", "kaiming"), default="original")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unsampled_momentum", action="store_true",
                   help="momentum keeps moving the blocks a step skips (PyTorch 1.7.1's zero_grad)")
    add_keep_flag(p, "the run folder (metrics, log, comparison plot)")
    p.add_argument("--reference", default=str(REFERENCE))
    a = p.parse_args()
    device = torch.device(a.device)
    steps = a.steps or (2500 if device.type == "cuda" else 500)
    if a.init == "kaiming":
        spos.init_spos_weights = init_weights
    print(f"machine: {machine(device)}\ndata: {a.data}\nrecipe: batch 96, lr 0.025, momentum 0.9, "
          f"no weight decay, crop+flip, {steps} steps, {a.init} init, "
          f"amp {a.amp and device.type == 'cuda'}, unsampled momentum {a.unsampled_momentum}"
          f"\nreference: {a.reference}", flush=True)
    with scratch(a.keep, "faithful_") as folder:
        out = folder / f"supernet_{a.init}_init{'_unsampled_momentum' * a.unsampled_momentum}"
        seconds = train(a.data, out, steps, a.window, a.device, a.amp, a.seed,
                        a.unsampled_momentum)
        mine = {r["step"]: r for r in read_metrics(out) if r["type"] == "train"}
        ref = window_means(reference_rows(Path(a.reference)), a.window, steps)
        kept = f"run folder {out}" if a.keep else "temporary run folder (--keep DIR keeps it)"
        print(f"\ntrained {steps} steps in {seconds:.0f} s; {kept}\n")
        print(f"{'steps':>11s} {'loss ref':>9s} {'spnas':>7s} {'rel':>7s} {'acc ref':>8s} {'spnas':>7s}")
        for start, loss, acc in ref:
            r = mine.get(start + a.window - 1)
            if r:
                print(f"{start:5d}-{start + a.window - 1:<5d} {loss:9.3f} {r['loss']:7.3f} "
                      f"{(r['loss'] - loss) / loss:+7.1%} {acc:8.1%} {r['acc']:7.1%}")
        print(flush=True)
        code = spnas_main(["curves", str(out), "--baseline", a.reference, "--window", str(a.window),
                           "--max_step", str(steps), "--out", str(out)])
    print(f"comparison exit status {code} (0: within 5%)")


if __name__ == "__main__":
    main()
