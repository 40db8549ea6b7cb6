"""Latency of an architecture on a device: tables of per-(layer, choice) times.

A ``LatencyTable`` holds the median time of each (layer, choice) measured on
one device, plus the stem and head, so a network's latency is predicted as
their sum (times a calibration ``scale``); ``validate_latency_table`` measures
whole networks and reports how far the prediction is off. ``macs_latency_table``
is the same table in millions of MACs, for when timing is not wanted. The
``spnas latency-table`` command is ``stages.latency_table``.
"""
from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn

from spnas.arch import Arch, SpaceSpec
from spnas.engine.counting import build_cost_table, capture_layer_inputs, default_resolution, uniform_archs
from spnas.errors import SpnasError
from spnas.runtime import device_description, place, sync
from spnas.spaces.common import ChildNet
from spnas.spaces.spos import spos_options, spos_space


@torch.inference_mode()
def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 10, repeats: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)




UNITS = ("ms", "MMAC")  # a measured table's, and the counted fallback's (macs_latency_table)


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

    def resolution_warning(self, resolution: int) -> str | None:
        """A warning when the table was timed on inputs of another side than ``resolution``'s
        (its numbers are then for other inputs than the networks it scores); else None."""
        if self.resolution == resolution:
            return None
        r, space = self.resolution, self.space
        sizes = ""
        if space.name == "spos":  # the options that size it, where they are not the defaults
            full = spos_options(spos_space())
            sizes = "".join(f" --option {k}={v}" for k, v in spos_options(space).items()
                            if v != full[k])
        return (f"WARNING: the latency table was measured at {r}x{r}, the networks take "
                f"{resolution}x{resolution}, so its {self.unit} are for other inputs; measure "
                f"one at theirs: spnas latency-table --space {space.name} --layout "
                f"{space.layout}{sizes} --resolution {resolution}")

    def to_json(self) -> dict:
        return {"space": self.space.to_dict(), "device": self.device,
                "device_name": self.device_name, "batch": self.batch,
                "resolution": self.resolution, "threads": self.threads, "unit": self.unit,
                "channels_last": self.channels_last,
                "torch": self.torch_version, "constant": self.constant, "scale": self.scale,
                "layers": [{self.space.tokens[c]: v for c, v in d.items()} for d in self.layers],
                **({"validation": self.validation} if self.validation else {})}

    def save(self, path: str | Path) -> None:
        from spnas.files import atomic_write_text
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
        unit = d.get("unit", "ms")
        if unit not in UNITS:  # predictions would be printed and compared in it
            raise SpnasError(f"{where} has unit {unit!r}; spnas writes {' or '.join(UNITS)} "
                             f"(measured, or counted multiply-accumulates); {fix}")
        ints = {k: _table_number(d[k], k, where, fix, whole=True, least=1)
                for k in ("batch", "resolution")}
        return cls(space, str(d["device"]), str(d["device_name"]), ints["batch"],
                   ints["resolution"], _table_number(d["threads"], "threads", where, fix,
                                                     whole=True, least=0),
                   _table_number(d["constant"], "constant", where, fix, least=0),
                   layers, bool(d.get("channels_last", True)), str(d.get("torch", "?")),
                   unit, d.get("validation"),
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


def random_input(batch: int, res: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, res, res, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def build_latency_table(space: SpaceSpec, build_child: Callable[[Arch], ChildNet],
                        device: torch.device, batch: int = 1, resolution: int | None = None,
                        warmup: int = 10, repeats: int = 30, channels_last: bool = True,
                        progress: bool = False) -> LatencyTable:
    """Time every (layer, choice) alone on its real input shape, and the stem + head."""
    res = resolution or default_resolution(space)
    x = random_input(batch, res, device, channels_last)
    layers: list[dict[int, float]] = [{} for _ in range(space.num_layers)]
    constant: float | None = None
    archs = uniform_archs(space)
    for choice, arch in enumerate(archs):  # arch: ``choice`` on every layer that allows it
        net = place(build_child(arch), device, channels_last).eval()
        inputs = capture_layer_inputs(net, x)
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
            print(f"timed choice {space.tokens[choice]} on every layer that has it", flush=True)
    if constant is None:  # no arch was timed
        raise SpnasError(f"space {space.describe()} has no choices: no latency table to build")
    return LatencyTable(space, str(device), device_description(device), batch, res,
                        torch.get_num_threads(), constant, layers, channels_last=channels_last)


def macs_latency_table(space: SpaceSpec, build_child: Callable[[Arch], ChildNet],
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
    x = random_input(table.batch, table.resolution, device, table.channels_last)
    net = place(build_child(arch), device, table.channels_last).eval()
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


class _ArchTiming(TypedDict):
    arch: str
    predicted_ms: float
    measured_ms: float


def validate_latency_table(table: LatencyTable, build_child: Callable[[Arch], nn.Module],
                           device: torch.device, num_archs: int = 20, seed: int = 0,
                           warmup: int = 10, repeats: int = 30) -> dict:
    """Measure ``num_archs`` random whole networks; compare with the table's prediction."""
    rng = random.Random(seed)
    rows: list[_ArchTiming] = []
    for _ in range(num_archs):
        arch = Arch.sample(table.space, rng)
        measured = measure_arch_ms(arch, table, build_child, device, warmup, repeats)
        rows.append({"arch": str(arch), "predicted_ms": table.predict(arch), "measured_ms": measured})
    errs = [(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows]
    raw = [(r["predicted_ms"] / table.scale - r["measured_ms"]) / r["measured_ms"] for r in rows]
    return {"archs": rows, "mean_abs_rel_error": statistics.mean(abs(e) for e in errs),
            "max_abs_rel_error": max(abs(e) for e in errs), "mean_rel_error": statistics.mean(errs),
            "uncalibrated_mean_abs_rel_error": statistics.mean(abs(e) for e in raw)}


