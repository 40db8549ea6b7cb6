"""Cost of an architecture: multiply-accumulates, parameters, latency.

"FLOPs" in NAS papers (SPOS's 330M, MobileNet's 300M) are multiply-
accumulates (MACs); torch's ``FlopCounterMode`` counts 2 FLOPs per MAC, so
``count_macs`` halves it. BatchNorm, ReLU and pooling are not counted (as in
those papers).

Every space's standalone network is ``head(layers(stem(x)))`` and a layer's
cost depends only on its own choice (its input shape is fixed by the layout),
so the cost of an arch is exactly ``constant + sum of per-layer costs``. The
``CostTable`` caches those per (layer, choice); a test checks the sum against
counting the whole network.

Latency tables hold the median time of each (layer, choice) measured on a
device, plus the stem and head; ``validate_latency_table`` measures whole
networks and reports how far the sum is off.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spnas.arch import Arch, SpaceSpec
from spnas.config import LatencyConfig
from spnas.engine.runtime import torch_threads
from spnas.errors import SpnasError


def default_resolution(space: SpaceSpec) -> int:
    """Input size a layout is built for: 32 (CIFAR) or 224 (ImageNet / --resize)."""
    return 224 if space.layout == "imagenet" else 32


def count_macs(module: nn.Module, *inputs) -> int:
    """Multiply-accumulates of one forward pass (torch's FLOP count / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _capture_layer_inputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of each of ``net.layers`` for input ``x`` (one forward pass)."""
    seen: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
             for layer in net.layers]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def uniform_archs(space: SpaceSpec) -> list[Arch]:
    """One arch per choice c: every layer takes c where allowed (else its first choice).

    Together they visit every (layer, choice) pair of the space once.
    """
    return [Arch(space, tuple(c if c in allowed else allowed[0] for allowed in space.allowed))
            for c in range(len(space.tokens))]


@dataclass
class CostTable:
    """Exact MACs and parameters per (layer, choice), plus the fixed stem and head."""

    space: SpaceSpec
    resolution: int
    num_classes: int
    const_macs: int
    const_params: int
    macs: list[dict[int, int]]
    params: list[dict[int, int]]

    def arch_macs(self, arch: Arch) -> int:
        return self.const_macs + sum(self.macs[i][c] for i, c in enumerate(arch))

    def arch_params(self, arch: Arch) -> int:
        return self.const_params + sum(self.params[i][c] for i, c in enumerate(arch))


def build_cost_table(space: SpaceSpec, build_child: Callable[[Arch], nn.Module],
                     num_classes: int, resolution: int | None = None) -> CostTable:
    """Count every (layer, choice) once. ``build_child(arch)`` gives a standalone network.

    The networks are built and run on the ``meta`` device: torch's FLOP counter
    needs only shapes, so no arithmetic is done and the count takes the same
    time on any machine.
    """
    res = resolution or default_resolution(space)
    x = torch.zeros(1, 3, res, res, device="meta")
    macs: list[dict[int, int]] = [{} for _ in range(space.num_layers)]
    params: list[dict[int, int]] = [{} for _ in range(space.num_layers)]
    const_macs = const_params = None
    for arch in uniform_archs(space):
        with torch.device("meta"):
            net = build_child(arch).eval()
        inputs = _capture_layer_inputs(net, x)
        for i, (layer, inp) in enumerate(zip(net.layers, inputs)):
            macs[i][arch[i]] = count_macs(layer, inp)
            params[i][arch[i]] = count_params(layer)
        if const_macs is None:
            const_macs = count_macs(net, x) - sum(macs[i][arch[i]] for i in range(len(arch)))
            const_params = count_params(net) - sum(params[i][arch[i]] for i in range(len(arch)))
    return CostTable(space, res, num_classes, const_macs, const_params, macs, params)


# ---- latency ---------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 10, repeats: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ('AMD EPYC ...'), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def device_description(device: torch.device) -> str:
    """'NVIDIA H200' or 'AMD EPYC 7B13 (2 cores, 2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@dataclass
class LatencyTable:
    """Median milliseconds per (layer, choice) on one device, plus the stem and head.

    ``unit`` is "ms" for a measured table; ``macs_latency_table`` makes one in
    millions of MACs ("MMAC") where timing is not wanted.
    """

    space: SpaceSpec
    device: str
    device_name: str
    batch: int
    resolution: int
    threads: int
    constant: float
    layers: list[dict[int, float]]
    channels_last: bool = True
    torch_version: str = torch.__version__
    unit: str = "ms"
    validation: dict | None = None  # validate_latency_table's summary, when it was run
    scale: float = 1.0              # whole network / sum of parts, fitted by calibrate_latency_table

    def predict(self, arch: Arch) -> float:
        if arch.space != self.space:
            raise SpnasError(f"latency table is for {self.space.describe()}, "
                             f"the arch is {arch.space.describe()}")
        return self.scale * (self.constant + sum(self.layers[i][c] for i, c in enumerate(arch)))

    def minimum(self) -> float:
        """The smallest prediction over the space: every layer at its cheapest choice."""
        return self.scale * (self.constant + sum(min(d.values()) for d in self.layers))

    def maximum(self) -> float:
        """The largest prediction over the space: every layer at its dearest choice."""
        return self.scale * (self.constant + sum(max(d.values()) for d in self.layers))

    def to_json(self) -> dict:
        return {"space": self.space.to_dict(), "device": self.device,
                "device_name": self.device_name, "batch": self.batch,
                "resolution": self.resolution, "threads": self.threads, "unit": self.unit,
                "channels_last": self.channels_last,
                "torch": self.torch_version, "constant": self.constant, "scale": self.scale,
                "layers": [{self.space.tokens[c]: v for c, v in d.items()} for d in self.layers],
                **({"validation": self.validation} if self.validation else {})}

    def save(self, path: str | Path) -> None:
        from spnas.engine.checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        """Read a table that ``save`` wrote; any bad entry is a one-line error naming it."""
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpnasError(f"latency table {path} not found; make one with "
                             "'spnas latency-table'") from None
        except (OSError, ValueError) as e:
            raise SpnasError(f"latency table {path} is unreadable ({e!r}); make it again "
                             "with 'spnas latency-table'") from None
        return cls.from_dict(d, f"latency table {path}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "latency table") -> "LatencyTable":
        """``to_json``'s form, checked: the real space, every (layer, choice) of it, and
        finite positive numbers (a skip may cost 0), so no prediction is negative or NaN."""
        from spnas.arch import check_real_space
        fix = "make the table again with 'spnas latency-table'"
        if not isinstance(d, dict):
            raise SpnasError(f"{where} is not a JSON object; {fix}")
        missing = [k for k in ("space", "device", "device_name", "batch", "resolution",
                               "threads", "constant", "layers") if k not in d]
        if missing:
            raise SpnasError(f"{where} lacks {', '.join(map(repr, missing))}; {fix}")
        space = SpaceSpec.from_dict(d["space"], where)
        check_real_space(space, where)
        rows = d["layers"]
        if not isinstance(rows, list) or len(rows) != space.num_layers:
            have = f"{len(rows)} layer rows" if isinstance(rows, list) else f"'layers' {rows!r}"
            raise SpnasError(f"{where} has {have}, but its space ({space.describe()}) has "
                             f"{space.num_layers} layers; {fix}")
        layers = [_table_row(row, i, space, where, fix) for i, row in enumerate(rows)]
        ints = {k: _table_number(d[k], k, where, fix, whole=True, least=1)
                for k in ("batch", "resolution")}
        return cls(space, str(d["device"]), str(d["device_name"]), ints["batch"],
                   ints["resolution"], _table_number(d["threads"], "threads", where, fix,
                                                     whole=True, least=0),
                   _table_number(d["constant"], "constant", where, fix, least=0),
                   layers, bool(d.get("channels_last", True)), str(d.get("torch", "?")),
                   str(d.get("unit", "ms")), d.get("validation"),
                   _table_number(d.get("scale", 1.0), "scale", where, fix, least=None))


def _table_number(v, name: str, where: str, fix: str, whole: bool = False,
                  least: float | None = 0):
    """A finite number >= ``least`` (None: > 0); ``whole``: an int."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (not whole or float(v).is_integer())
    if ok:
        ok = v > 0 if least is None else v >= least
    if not ok:
        what = ("a whole number" if whole else "a finite number") + \
            (" above 0" if least is None else f" of {least} or more")
        raise SpnasError(f"{where}: {name} is {v!r}, it must be {what}; {fix}")
    return int(v) if whole else float(v)


def _table_row(row, i: int, space: SpaceSpec, where: str, fix: str) -> dict[int, float]:
    """One layer's {token: time}: every allowed choice, each finite and positive."""
    if not isinstance(row, dict):
        raise SpnasError(f"{where}: layer {i} must be {{choice: time}}, got {row!r}; {fix}")
    unknown = [t for t in row if t not in space.tokens]
    if unknown:
        raise SpnasError(f"{where}: layer {i} has the unknown choice {unknown[0]!r} (the "
                         f"space's: {' '.join(space.tokens)}); {fix}")
    out = {space.tokens.index(t): v for t, v in row.items()}
    for c in space.allowed[i]:
        if c not in out:
            raise SpnasError(f"{where}: layer {i} has no entry for {space.tokens[c]!r}; {fix}")
        v = out[c]
        free = space.tokens[c] == "skip" and v == 0  # the paper counts a skipped layer as 0
        if not free and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                             and math.isfinite(v) and v > 0):
            raise SpnasError(f"{where}: layer {i} entry {space.tokens[c]!r} is {v!r}, it "
                             f"must be a finite number above 0; {fix}")
    return {c: float(v) for c, v in out.items()}


def _to_device(net: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    net = net.to(device).eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _input(batch: int, res: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, res, res, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def build_latency_table(space: SpaceSpec, build_child: Callable[[Arch], nn.Module],
                        device: torch.device, batch: int = 1, resolution: int | None = None,
                        warmup: int = 10, repeats: int = 30, channels_last: bool = True,
                        progress: bool = False) -> LatencyTable:
    """Time every (layer, choice) alone on its real input shape, and the stem + head."""
    res = resolution or default_resolution(space)
    x = _input(batch, res, device, channels_last)
    layers: list[dict[int, float]] = [{} for _ in range(space.num_layers)]
    constant = None
    archs = uniform_archs(space)
    for arch in archs:
        net = _to_device(build_child(arch), device, channels_last)
        inputs = _capture_layer_inputs(net, x)
        for i, (layer, inp) in enumerate(zip(net.layers, inputs)):
            if arch[i] not in layers[i]:
                layers[i][arch[i]] = time_ms(lambda: layer(inp), device, warmup, repeats)
        if constant is None:
            feats = inputs[-1]
            with torch.inference_mode():
                last = net.layers[-1](feats)
            constant = (time_ms(lambda: net.stem(x), device, warmup, repeats)
                        + time_ms(lambda: net.head(last), device, warmup, repeats))
        if progress:
            print(f"timed choice {space.tokens[arch[0]]} on every layer", flush=True)
    return LatencyTable(space, str(device), device_description(device), batch, res,
                        torch.get_num_threads(), constant, layers, channels_last=channels_last)


def macs_latency_table(space: SpaceSpec, build_child: Callable[[Arch], nn.Module],
                       num_classes: int, resolution: int | None = None) -> LatencyTable:
    """A table in millions of MACs instead of milliseconds: the fallback with no timing."""
    costs = build_cost_table(space, build_child, num_classes, resolution)
    return LatencyTable(space, "macs", "multiply-accumulates (not timed)", 1, costs.resolution,
                        0, costs.const_macs / 1e6,
                        [{c: m / 1e6 for c, m in row.items()} for row in costs.macs],
                        unit="MMAC")


def measure_arch_ms(arch: Arch, table: LatencyTable, build_child: Callable[[Arch], nn.Module],
                    device: torch.device, warmup: int = 10, repeats: int = 30) -> float:
    """Median ms of the whole network of ``arch`` at the table's batch, size and format."""
    x = _input(table.batch, table.resolution, device, table.channels_last)
    net = _to_device(build_child(arch), device, table.channels_last)
    return time_ms(lambda: net(x), device, warmup, repeats)


def calibrate_latency_table(table: LatencyTable, build_child: Callable[[Arch], nn.Module],
                            device: torch.device, num_archs: int = 10, seed: int = 1,
                            warmup: int = 10, repeats: int = 30) -> float:
    """Fit ``table.scale`` to ``num_archs`` random whole networks (least squares); return it.

    Layers timed one at a time run with warm caches and no hand-over between
    them, so on some devices a whole network is consistently slower than the
    sum of its parts (on the 2-core CPU here, 10-25 %). One factor fitted on
    whole networks removes that bias; ``validate_latency_table`` then reports
    the error on other archs (another seed).
    """
    rng = random.Random(seed)
    table.scale = 1.0
    sums, measured = [], []
    for _ in range(num_archs):
        arch = Arch.sample(table.space, rng)
        sums.append(table.predict(arch))
        measured.append(measure_arch_ms(arch, table, build_child, device, warmup, repeats))
    table.scale = sum(p * m for p, m in zip(sums, measured)) / sum(p * p for p in sums)
    return table.scale


def validate_latency_table(table: LatencyTable, build_child: Callable[[Arch], nn.Module],
                           device: torch.device, num_archs: int = 20, seed: int = 0,
                           warmup: int = 10, repeats: int = 30) -> dict:
    """Measure ``num_archs`` random whole networks; compare with the table's prediction."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_archs):
        arch = Arch.sample(table.space, rng)
        measured = measure_arch_ms(arch, table, build_child, device, warmup, repeats)
        rows.append({"arch": str(arch), "predicted_ms": table.predict(arch), "measured_ms": measured})
    errs = [(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows]
    raw = [(r["predicted_ms"] / table.scale - r["measured_ms"]) / r["measured_ms"] for r in rows]
    return {"archs": rows, "mean_abs_rel_error": statistics.mean(abs(e) for e in errs),
            "max_abs_rel_error": max(abs(e) for e in errs), "mean_rel_error": statistics.mean(errs),
            "uncalibrated_mean_abs_rel_error": statistics.mean(abs(e) for e in raw)}


def measure_latency_table(cfg: LatencyConfig, log: Callable[[str], None] = print) -> LatencyTable:
    """Build, check against whole networks (``cfg.validate`` random archs) and save a table."""
    from spnas.engine.checkpoint import checkpoint_space, load_checkpoint
    from spnas.engine.trainer import resolve_device
    from spnas.spaces import build_child, make_space
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise SpnasError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    if cfg.checkpoint:
        ckpt = load_checkpoint(cfg.checkpoint)
        space, num_classes = checkpoint_space(ckpt), int(ckpt["num_classes"])
    else:
        space, num_classes = make_space(cfg.space, cfg.layout, **cfg.options), cfg.num_classes
    device = resolve_device(cfg.device)
    child = lambda a: build_child(a, num_classes)  # noqa: E731
    with torch_threads(cfg.threads):
        table = _measure_and_check(space, child, device, cfg, log)
    table.save(out)
    log(f"wrote {out}")
    return table


def _measure_and_check(space: SpaceSpec, child, device: torch.device, cfg: LatencyConfig,
                       log: Callable[[str], None]) -> LatencyTable:
    log(f"timing {space.describe()} on {device_description(device)}, batch {cfg.batch}")
    table = build_latency_table(space, child, device, cfg.batch, cfg.resolution, cfg.warmup,
                                cfg.repeats, cfg.channels_last, progress=True)
    if cfg.calibrate:
        scale = calibrate_latency_table(table, child, device, cfg.calibrate, 1, cfg.warmup,
                                        cfg.repeats)
        log(f"calibrated on {cfg.calibrate} random whole networks: whole network = "
            f"{scale:.3f} x the sum of its parts")
    if cfg.validate:
        report = validate_latency_table(table, child, device, cfg.validate, 0, cfg.warmup,
                                        cfg.repeats)
        table.validation = {**report, "num_archs": cfg.validate}
        meas = statistics.mean(r["measured_ms"] for r in report["archs"])
        log(f"table vs whole networks ({cfg.validate} random archs, mean {meas:.3f} ms): "
            f"mean |error| {report['mean_abs_rel_error']:.1%}, max {report['max_abs_rel_error']:.1%}, "
            f"mean signed {report['mean_rel_error']:+.1%} (without calibration: mean |error| "
            f"{report['uncalibrated_mean_abs_rel_error']:.1%})")
    return table
