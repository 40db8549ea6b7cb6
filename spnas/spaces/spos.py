"""The SPOS space: 20 choice layers of ShuffleNetV2-style blocks (Guo et al. 2019).

Each layer is one of four blocks (tokens ``k3 k5 k7 x``): a ShuffleNetV2 unit
whose depthwise conv is 3x3, 5x5 or 7x7, or the Xception-style unit (three
depthwise 3x3 convs, each followed by a pointwise conv).

Widths: stem 16; layers 0-3: 64, 4-7: 160, 8-15: 320, 16-19: 640; a 1x1 conv
to 1024, global average pooling, classifier. Strides (layout):

* ``cifar``:    stem 1, stride 2 at layers 4 and 8 (32x32 -> 8x8)
* ``imagenet``: stem 2, stride 2 at layers 0, 4, 8 and 16 (224 -> 7), used with
  ``--resize``.

Every unit of stride 1 splits its input by a channel shuffle: the even
channels go through the branch, the odd ones pass through, and the output is
``[branch, passed]``; where the width changes at stride 1 (layers 0 and 16 of
the CIFAR layout: 16 -> 64, 320 -> 640) the branch maps ``cin / 2`` channels
to ``cout - cin / 2``. A unit of stride 2 runs the branch and a projection
(depthwise conv + 1x1 conv) on the whole input and outputs ``[branch,
projection]``. Stem and last 1x1 conv use ReLU6, the blocks ReLU; the
classifier has no bias. This is the structure, channel order and init of the
original SPOS CIFAR code (ShunLu91/Single-Path-One-Shot-NAS), so its
published sizes hold here and its checkpoints import without permutation
(``spnas import-reference``).

Init, as the original's: conv weights normal(0, std 1 / weight.shape[1]) (a
depthwise kernel: std 1; a 1x1 conv with 320 inputs: std 1/320), affine BN
weight 1 and bias 1e-4, classifier normal(0, 0.01). With BatchNorm after
every conv the scale of a weight sets its effective step size (lr / |w|^2),
so the init is part of the training recipe (the README measures it).

The supernet's BatchNorm has no affine parameters (as in SPOS: a shared
scale would be trained by every path); standalone networks have affine BN.
``extract`` sets their affine parameters to the identity so that it
reproduces the supernet's path exactly.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

from spnas.arch import Arch, SpaceSpec
from spnas.errors import SpnasError
from spnas.spaces.common import ChildNet, GlobalAvgPool, concat_channels, conv_bn, shuffle_split

TOKENS = ("k3", "k5", "k7", "x")
KERNELS = (3, 5, 7, 3)
XCEPTION = 3
WIDTHS = (64,) * 4 + (160,) * 4 + (320,) * 8 + (640,) * 4
STEM_WIDTH, LAST_WIDTH = 16, 1024
STRIDES = {"cifar": (1, {4, 8}), "imagenet": (2, {0, 4, 8, 16})}


def spos_space(layers: int = 20, num_choices: int = 4, layout: str = "cifar") -> SpaceSpec:
    """The spec of the first ``layers`` layers with the first ``num_choices`` blocks."""
    if not 1 <= layers <= len(WIDTHS):
        raise SpnasError(f"--layers must be 1..{len(WIDTHS)}, got {layers}")
    if not 1 <= num_choices <= len(TOKENS):
        raise SpnasError(f"--num_choices must be 1..{len(TOKENS)}, got {num_choices}")
    if layout not in STRIDES:
        raise SpnasError(f"layout must be one of {sorted(STRIDES)}, got {layout!r}")
    stages: list[int] = []
    for i in range(layers):
        if i == 0 or WIDTHS[i] != WIDTHS[i - 1]:
            stages.append(0)
        stages[-1] += 1
    return SpaceSpec(name="spos", layout=layout, tokens=TOKENS,
                     allowed=(tuple(range(num_choices)),) * layers, stages=tuple(stages))


def spos_options(space: SpaceSpec) -> dict[str, int]:
    """The options ``spos_space`` makes ``space`` with: its layers and blocks per layer."""
    return {"layers": space.num_layers, "num_choices": len(space.allowed[0])}


def init_spos_weights(model: nn.Module) -> None:
    """The original SPOS code's init (see the module docstring)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 1.0 / m.weight.shape[1])
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ShuffleUnit(nn.Module):
    """One ShuffleNetV2 (or Xception-style) unit; see the module docstring."""

    def __init__(self, cin: int, cout: int, choice: int, stride: int, affine: bool):
        super().__init__()
        self.split = stride == 1
        k = KERNELS[choice]
        inp = cin // 2 if self.split else cin
        mid, out = cout // 2, cout - inp
        if choice == XCEPTION:
            self.main = nn.Sequential(
                conv_bn(inp, inp, 3, stride, inp, affine, relu=False),
                conv_bn(inp, mid, 1, 1, 1, affine, relu=True),
                conv_bn(mid, mid, 3, 1, mid, affine, relu=False),
                conv_bn(mid, mid, 1, 1, 1, affine, relu=True),
                conv_bn(mid, mid, 3, 1, mid, affine, relu=False),
                conv_bn(mid, out, 1, 1, 1, affine, relu=True))
        else:
            self.main = nn.Sequential(
                conv_bn(inp, mid, 1, 1, 1, affine, relu=True),
                conv_bn(mid, mid, k, stride, mid, affine, relu=False),
                conv_bn(mid, out, 1, 1, 1, affine, relu=True))
        self.proj = None if self.split else nn.Sequential(
            conv_bn(cin, cin, k, stride, cin, affine, relu=False),
            conv_bn(cin, cin, 1, 1, 1, affine, relu=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            branch, keep = shuffle_split(x)
            return concat_channels(self.main(branch), keep)
        if self.proj is None:  # set whenever the unit does not split (stride 2)
            raise RuntimeError("a ShuffleUnit of stride 2 lost its projection branch")
        return concat_channels(self.main(x), self.proj(x))


def _layer_geometry(spec: SpaceSpec) -> list[tuple[int, int, int]]:
    """(in width, out width, stride) of each choice layer."""
    _, down = STRIDES[spec.layout]
    geo, cin = [], STEM_WIDTH
    for i in range(spec.num_layers):
        geo.append((cin, WIDTHS[i], 2 if i in down else 1))
        cin = WIDTHS[i]
    return geo


def _stem(spec: SpaceSpec, affine: bool) -> nn.Module:
    return conv_bn(3, STEM_WIDTH, 3, STRIDES[spec.layout][0], 1, affine, relu=nn.ReLU6)


def _head(spec: SpaceSpec, num_classes: int, affine: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(conv_bn(WIDTHS[spec.num_layers - 1], LAST_WIDTH, 1, 1, 1, affine, nn.ReLU6),
                         GlobalAvgPool(), nn.Dropout(dropout),
                         nn.Linear(LAST_WIDTH, num_classes, bias=False))


class SposSupernet(nn.Module):
    """All choices of every layer; ``forward(x, arch)`` runs one path."""

    def __init__(self, spec: SpaceSpec, num_classes: int):
        super().__init__()
        if spec.name != "spos":
            raise ValueError(f"SposSupernet needs an spos space, got {spec.name}")
        self.spec, self.num_classes = spec, num_classes
        self.stem = _stem(spec, affine=False)
        self.layers = nn.ModuleList(
            nn.ModuleList(ShuffleUnit(cin, cout, c, s, affine=False)
                          if c in spec.allowed[i] else nn.Identity()
                          for c in range(len(TOKENS)))
            for i, (cin, cout, s) in enumerate(_layer_geometry(spec)))
        self.head = _head(spec, num_classes, affine=False, dropout=0.0)
        init_spos_weights(self)

    def path_blocks(self, arch: Arch | Sequence[int]) -> list[nn.Module]:
        """The block of each layer that ``arch`` takes, in order."""
        layers = cast(Iterable[nn.ModuleList], self.layers)  # per layer, its choices' blocks
        return [layer[c] for layer, c in zip(layers, arch, strict=True)]

    def forward(self, x: torch.Tensor, arch: Arch | Sequence[int]) -> torch.Tensor:
        x = self.stem(x)
        for block in self.path_blocks(arch):
            x = block(x)
        return self.head(x)

    def extract(self, arch: Arch) -> "SposNet":
        """A standalone network (affine BN) holding this path's weights and BN statistics."""
        net = SposNet(arch, self.num_classes)
        net.load_path_weights(self.state_dict(), arch)
        return net.to(next(self.parameters()).device)


class SposNet(ChildNet):
    """A standalone SPOS network for one arch (affine BN, optional dropout)."""

    def __init__(self, arch: Arch, num_classes: int, dropout: float = 0.0):
        spec = arch.space
        layers = [ShuffleUnit(cin, cout, c, s, affine=True)
                  for (cin, cout, s), c in zip(_layer_geometry(spec), arch)]
        super().__init__(arch, _stem(spec, True), layers, _head(spec, num_classes, True, dropout))
        init_spos_weights(self)
