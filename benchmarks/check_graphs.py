"""``--cuda_graphs`` against eager training on a GPU: outputs, gradients, BatchNorm statistics,
weights, a loss curve, host synchronisations and speed.

    python benchmarks/check_graphs.py --data /path/to/cifar10 [--steps 200] [--batch 96]

1. steps: two copies of one supernet take the same steps (same batches, same paths), one
   eagerly and one from its blocks' graphs (``GraphedBlocks``, as ``spnas train
   --cuda_graphs`` runs them); per step the largest difference of the logits and of the
   gradients, and after the steps of the weights and BN running statistics, each relative
   to the largest value. fp32 NCHW (CUDA's default), then bf16 autocast with channels_last.
2. curve: the trainer with the device's defaults (fp32; NCHW on CUDA) for ``--steps`` steps
   each way from the same seed; the mean relative error of the loss over windows of
   ``--curve_window`` steps (issue 11's bar: 2%), and each way's img/s and warm-up.
3. syncs: host synchronisations the trainer makes in ``--steps`` graphed steps with logging
   only at the end (``torch.cuda.set_sync_debug_mode``): a step should make none.

Prints every figure with pass or fail. On a CPU the capture is ``capture_eagerly`` (the
stand-in the tests use), so a CPU run checks this script, not CUDA graphs.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch
import torch.nn.functional as F
from bench_train import train_steps
from common import cifar_or_random, machine

from spnas.config import DataConfig, RunConfig, SupernetConfig
from spnas.data.loading import DeviceLoader, build_transform
from spnas.engine.evaluation import autocast
from spnas.engine.graphs import GraphedBlocks, capture_eagerly
from spnas.engine.schedule import param_groups
from spnas.runtime import place, tune_allocator
from spnas.spaces.spos import SposSupernet
from spnas.stages.train import sample_path, supernet_space

TOLERANCE = {False: 1e-3, True: 3e-2}  # relative, by amp: fp32 (TF32 convolutions), bf16


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=1e-12)).item()


def compare_steps(x, y, device, batch: int, steps: int, amp: bool, channels_last: bool,
                  capture) -> dict:
    """The largest relative differences, graphed against eager, over ``steps`` steps."""
    space = supernet_space(SupernetConfig(), DataConfig())
    torch.manual_seed(0)
    eager = place(SposSupernet(space, 10), device, channels_last).train()
    graphed = copy.deepcopy(eager)
    blocks = GraphedBlocks(amp, capture)
    opts = [torch.optim.SGD(param_groups(m, 3e-4), lr=0.025, momentum=0.9)
            for m in (eager, graphed)]
    loader = DeviceLoader(x, y, batch, build_transform(DataConfig(), channels_last), device, 0,
                          steps)
    worst = {"logits": 0.0, "grads": 0.0}
    for step in range(steps):
        images, labels = loader.batch(0, step)
        arch = sample_path(space, 0, step)
        grads = []
        for model, opt, graphs in ((eager, opts[0], None), (graphed, opts[1], blocks)):
            with autocast(device, amp):
                logits = (model(images, arch) if graphs is None else
                          graphs.forward(model.stem, model.path_blocks(arch), model.head, images))
                loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()
                                            if p.grad is not None]))
            opt.step()
        (le, ge), (lg, gg) = grads
        worst["logits"] = max(worst["logits"], rel(le, lg))
        assert len(ge) == len(gg), "the graphed step gave gradients to other parameters"
        worst["grads"] = max([worst["grads"]] + [rel(a, b) for a, b in zip(ge, gg)])
    se, sg = eager.state_dict(), graphed.state_dict()
    stats = [k for k in se if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in se if se[k].is_floating_point() and k not in stats]
    worst["bn statistics"] = max(rel(se[k], sg[k]) for k in stats)
    worst["weights"] = max(rel(se[k], sg[k]) for k in weights)
    worst["replays"] = blocks.replays
    return worst


def curve_error(a: list[dict], b: list[dict], window_steps: int) -> tuple[float, list[float]]:
    """Mean relative error of b's loss against a's over windows of ``window_steps`` steps
    (each record is the mean loss of its logging window)."""
    def windows(records):
        out: dict[int, list[float]] = {}
        for r in records:
            out.setdefault((r["step"] - 1) // window_steps, []).append(r["loss"])
        return [statistics.fmean(v) for _, v in sorted(out.items())]
    wa, wb = windows(a), windows(b)
    errors = [abs(q - p) / p for p, q in zip(wa, wb)]
    return statistics.fmean(errors), errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="CIFAR-10 folder (any layout spnas reads); random images if absent")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=96, help="images per step")
    p.add_argument("--compare_steps", type=int, default=4, help="steps of part 1")
    p.add_argument("--steps", type=int, default=200, help="steps of the loss curve (part 2)")
    p.add_argument("--window", type=int, default=10, help="steps per logging window")
    p.add_argument("--curve_window", type=int, default=50, help="steps per compared window")
    a = p.parse_args()
    tune_allocator()
    device = torch.device(a.device)
    capture = None if device.type == "cuda" else capture_eagerly
    if capture is not None:  # the trainer's GraphedBlocks take the stand-in too
        torch.cuda.make_graphed_callables = capture_eagerly  # type: ignore[assignment]
    x, y, source = cifar_or_random(a.data)
    print(f"machine: {machine(device)}\ndata: {source}\nbatch {a.batch}"
          + ("" if device.type == "cuda" else "\nCPU: the stand-in capture, not CUDA graphs"))
    failed = []
    print("\n1. the same steps, eager and graphed (largest difference / largest value)")
    for amp, cl in ((False, False), (True, True)):
        w = compare_steps(x, y, device, a.batch, a.compare_steps, amp, cl, capture)
        name = "bf16 channels_last" if amp else "fp32 NCHW"
        for k in ("logits", "grads", "weights", "bn statistics"):
            ok = w[k] <= TOLERANCE[amp and device.type == "cuda"]
            failed += [] if ok else [f"{name} {k}"]
            print(f"  {name:20s} {k:14s} {w[k]:.2e}  {'pass' if ok else 'FAIL'}")
        expected = a.compare_steps * supernet_space(SupernetConfig(), DataConfig()).num_layers
        ok = w["replays"] == expected  # else the graphs fell back to eager: nothing was compared
        failed += [] if ok else [f"{name} block calls from graphs"]
        print(f"  {name:20s} block calls from graphs: {w['replays']} of {expected}  "
              f"{'pass' if ok else 'FAIL'}")

    print(f"\n2. loss curve, {a.steps} steps from the same seed (bar: 2% mean relative error)")
    runs = {}
    cuda_default_cl = RunConfig().channels_last_for(device)  # the device's defaults, fp32
    for graphs in (False, True):
        records, wall = train_steps(x, y, DataConfig(), a.steps, a.window, device, a.batch,
                                    amp=False, channels_last=cuda_default_cl,
                                    cuda_graphs=graphs)
        rate = statistics.median(r["img_per_s"] for r in records[1:])
        runs[graphs] = records
        print(f"  {'graphed' if graphs else 'eager':8s} final window loss "
              f"{records[-1]['loss']:.4f}  {rate:9.1f} img/s  "
              f"warm-up {max(0.0, wall - a.steps * a.batch / rate):.1f} s")
    mre, errors = curve_error(runs[False], runs[True], a.curve_window)
    failed += [] if mre <= 0.02 else ["loss curve"]
    print(f"  mean relative error {mre:.2%} over {len(errors)} windows of {a.curve_window} steps "
          f"(largest {max(errors):.2%})  {'pass' if mre <= 0.02 else 'FAIL'}")

    if device.type == "cuda":
        print(f"\n3. host synchronisations in {a.steps} graphed steps (logging at the end only)")
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_steps(x, y, DataConfig(), a.steps, a.steps, device, a.batch, amp=False,
                        channels_last=cuda_default_cl, cuda_graphs=True)
        torch.cuda.set_sync_debug_mode("default")
        syncs = [str(c.message).splitlines()[0] for c in caught if "synchroniz" in str(c.message)]
        print(f"  {len(syncs)} synchronising calls ({len(syncs) / a.steps:.2f} per step)")
        for text in sorted(set(syncs))[:8]:
            print(f"    {syncs.count(text)} x {text[:120]}")
    print("\nall pass" if not failed else f"\nFAIL: {', '.join(failed)}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
