"""``spnas latency-table``: time every (layer, choice) of a space on this device, check the
table against whole networks, and save it for a latency-budgeted search or superkernel."""
from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from spnas.arch import SpaceSpec
from spnas.config import LatencyConfig
from spnas.engine.checkpoint import checkpoint_space, load_checkpoint
from spnas.engine.latency import (
    LatencyTable,
    build_latency_table,
    calibrate_latency_table,
    validate_latency_table,
)
from spnas.errors import SpnasError
from spnas.files import folder_to_write, remove_empty_folders
from spnas.runtime import device_description, resolve_device, torch_threads
from spnas.spaces import build_child, make_space


def measure_latency_table(cfg: LatencyConfig, log: Callable[[str], None] = print) -> LatencyTable:
    """Build, check against whole networks (``cfg.validate`` random archs) and save a table."""
    out = Path(cfg.out).expanduser()
    ckpt = load_checkpoint(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt is not None and out.exists() and out.resolve() == Path(ckpt["path"]).resolve():
        raise SpnasError(f"--out {out} is the checkpoint itself; choose another --out")
    if out.is_dir():
        raise SpnasError(f"--out {out} is a folder; give the table's file name, e.g. "
                         f"{out / 'latency.json'}")
    if out.exists() and not cfg.overwrite:
        raise SpnasError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    if ckpt is not None:
        space, num_classes = checkpoint_space(ckpt), int(ckpt["num_classes"])
        _check_as_the_checkpoint(cfg, space, num_classes)
    else:
        space = make_space(cfg.space or "spos", cfg.layout or "cifar", **cfg.options)
        num_classes = cfg.classes or 10
    device = resolve_device(cfg.device)
    child = lambda a: build_child(a, num_classes)  # noqa: E731
    made = folder_to_write(out, "--out")  # before the timing, not after it
    try:
        with torch_threads(cfg.threads):
            table = _measure_and_check(space, child, device, cfg, log)
        table.save(out)
    except BaseException:
        remove_empty_folders(made)
        raise
    log(f"wrote {out}")
    return table


def _check_as_the_checkpoint(cfg: LatencyConfig, space: SpaceSpec, num_classes: int) -> None:
    """The checkpoint fixes the space and classes: a --space, --layout or --classes given
    that says otherwise is refused, not silently ignored."""
    has = {"space": space.name, "layout": space.layout, "classes": num_classes}
    for name, value in has.items():
        given = getattr(cfg, name)
        if given is not None and given != value:
            raise SpnasError(f"--checkpoint {cfg.checkpoint} has {name} {value}, not --{name} "
                             f"{given}; drop --{name}: the checkpoint fixes the space and classes")


def _measure_and_check(space: SpaceSpec, child, device: torch.device, cfg: LatencyConfig,
                       log: Callable[[str], None]) -> LatencyTable:
    log(f"timing {space.describe()} on {device_description(device)}, batch {cfg.batch_size}")
    table = build_latency_table(space, child, device, cfg.batch_size, cfg.resolution, cfg.warmup,
                                cfg.repeats, cfg.channels_last_for(device), progress=True)
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
