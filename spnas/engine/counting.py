"""Counting an architecture's cost: multiply-accumulates (MACs) and parameters.

"FLOPs" in NAS papers (SPOS's 330M, MobileNet's 300M) are multiply-
accumulates; torch's ``FlopCounterMode`` counts 2 FLOPs per MAC, so
``count_macs`` halves it. BatchNorm, ReLU and pooling are not counted (as in
those papers).

Every space's standalone network is ``head(layers(stem(x)))`` and a layer's
cost depends only on its own choice (its input shape is fixed by the layout),
so the cost of an arch is exactly ``constant + sum of per-layer costs``. The
``CostTable`` caches those per (layer, choice); a test checks the sum against
counting the whole network. Timing lives in ``engine.latency``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spnas.arch import Arch, SpaceSpec
from spnas.config import RESIZED
from spnas.errors import SpnasError
from spnas.spaces.common import ChildNet


def default_resolution(space: SpaceSpec) -> int:
    """Input size a layout is built for: 32 (CIFAR) or 224 (ImageNet / --resize)."""
    return RESIZED if space.layout == "imagenet" else 32


def count_macs(module: nn.Module, *inputs) -> int:
    """Multiply-accumulates of one forward pass (torch's FLOP count / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def capture_layer_inputs(net: ChildNet, x: torch.Tensor) -> list[torch.Tensor]:
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


def build_cost_table(space: SpaceSpec, build_child: Callable[[Arch], ChildNet],
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
    const_macs: int | None = None
    const_params: int | None = None
    for arch in uniform_archs(space):
        with torch.device("meta"):
            net = build_child(arch).eval()
        inputs = capture_layer_inputs(net, x)
        for i, (layer, inp) in enumerate(zip(net.layers, inputs)):
            macs[i][arch[i]] = count_macs(layer, inp)
            params[i][arch[i]] = count_params(layer)
        if const_macs is None:
            const_macs = count_macs(net, x) - sum(macs[i][arch[i]] for i in range(len(arch)))
            const_params = count_params(net) - sum(params[i][arch[i]] for i in range(len(arch)))
    if const_macs is None or const_params is None:  # no arch was counted
        raise SpnasError(f"space {space.describe()} has no choices: no cost table to build")
    return CostTable(space, res, num_classes, const_macs, const_params, macs, params)
