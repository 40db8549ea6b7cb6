"""``spnas profile``: parameters, MACs and measured latency of an architecture's network.

MACs are multiply-accumulates, what NAS papers call "FLOPs" (``counting.count_macs``;
BN, ReLU and pooling not counted). Latency is the median wall time of an
inference forward pass (eval mode, no autograd) on the chosen device, at
batch 1 and at a throughput batch, after warm-up calls.
"""
from __future__ import annotations

import torch

from spnas.arch import Arch
from spnas.config import DataConfig, ProfileConfig, channels_last_on
from spnas.engine.counting import count_macs, count_params, default_resolution
from spnas.engine.evaluation import autocast
from spnas.engine.latency import random_input, time_ms
from spnas.fields import takes_config
from spnas.runtime import device_description, place, resolve_device
from spnas.spaces import build_child


@takes_config(ProfileConfig, "arch")
def profile(cfg: ProfileConfig) -> dict:
    """``spnas profile``: the figures of ``profile_arch`` for the network ``cfg`` names."""
    from spnas.stages.retrain import load_arch
    arch = load_arch(cfg, DataConfig(resize=cfg.resize))
    return profile_arch(arch, cfg.classes, cfg.resolution, resolve_device(cfg.device),
                        cfg.batch_size, cfg.channels_last, cfg.amp, cfg.warmup, cfg.repeats)


def profile_arch(arch: Arch, num_classes: int = 10, resolution: int | None = None,
                 device: torch.device = torch.device("cpu"), batch: int = 128,
                 channels_last: bool | None = None, amp: bool = False, warmup: int = 10,
                 repeats: int = 30) -> dict:
    """Count and time the standalone network of ``arch``; returns the figures.
    ``channels_last`` none: the device's default (``config.channels_last_on``)."""
    channels_last = channels_last_on(device, channels_last)
    res = resolution or default_resolution(arch.space)
    net = build_child(arch, num_classes).eval()
    probe = torch.zeros(1, 3, res, res)
    out = {"arch": str(arch), "space": arch.space.describe(), "resolution": res,
           "num_classes": num_classes, "params": count_params(net),
           "macs": count_macs(net, probe), "device": device_description(device),
           "channels_last": channels_last, "amp": amp and device.type == "cuda"}
    net = place(net, device, channels_last).eval()
    times = {}
    for b in sorted({1, batch}):
        x = random_input(b, res, device, channels_last)
        with autocast(device, amp):
            times[b] = time_ms(lambda: net(x), device, warmup, repeats)
    return {**out, "batch1_ms": times[1], "throughput_batch": batch, "batch_ms": times[batch],
            "images_per_s": batch / times[batch] * 1e3}


def format_profile(r: dict) -> str:
    return "\n".join([
        f"arch         {r['arch']}",
        f"space        {r['space']}, input {r['resolution']}x{r['resolution']}, "
        f"{r['num_classes']} classes",
        f"params       {r['params'] / 1e6:.3f} M ({r['params']:,})",
        f"MACs         {r['macs'] / 1e6:.1f} M ({r['macs']:,}) "
        "(multiply-accumulates, the 'FLOPs' of NAS papers)",
        f"device       {r['device']}" + (", channels_last" if r["channels_last"] else "")
        + (", bf16 autocast" if r["amp"] else ""),
        f"latency      {r['batch1_ms']:.2f} ms at batch 1 (median)",
        f"throughput   {r['images_per_s']:.0f} images/s at batch {r['throughput_batch']} "
        f"({r['batch_ms']:.2f} ms per batch)",
    ])
