"""The MBConv space of Single-Path NAS (Stamoulis et al. 2019), and its standalone network.

An MnasNet-like backbone: a 3x3 stem conv with 32 channels; a fixed depthwise-
separable block (3x3, 16 channels, no residual); five searchable stages of 4
layers with 24, 40, 80, 96 and 192 channels; a fixed MBConv (3x3, expansion 6)
to 320 channels; a 1x1 conv to 1280, global average pooling, dropout and the
classifier. ReLU throughout, no squeeze-excitation.

Each searchable layer is one of ``k3e3 k3e6 k5e3 k5e6 skip``: an MBConv
(1x1 expansion to ``e x`` the input width, ``k x k`` depthwise conv, linear
1x1 projection; a residual when the stride is 1 and the widths agree) or the
residual path alone. The first layer of a stage changes the width or the
resolution, so it cannot be ``skip``. Strides (layout):

* ``cifar``:    stem 1; stages 1, 2, 2, 1, 2   (32x32 -> 4x4)
* ``imagenet``: stem 2; stages 2, 2, 2, 1, 2   (224 -> 7)

Arch strings have ``|`` between stages, e.g. the paper's published network
(``PUBLISHED``)::

    k3e3 k3e3 k3e3 skip | k5e6 k3e3 k3e3 k3e3 | k5e6 k3e3 k3e3 k3e3 |
    k5e6 k5e3 k5e3 k5e3 | k5e6 k5e6 k5e6 k5e6

``MbconvNet`` follows ``spaces.common.ChildNet``: ``stem`` is the stem conv
plus the fixed block, ``layers`` the 20 searchable layers (``skip`` is
``nn.Identity``), ``head`` the fixed MBConv, the 1x1 conv, pooling, dropout
and the classifier; so the cost tables of ``engine.counting`` and ``engine.latency`` count and time it as
they do every space.

The superkernel
---------------
``SuperkernelNet`` holds every searchable layer at its largest, k5e6. Per
layer, with W the 5x5 depthwise kernel, three gates decide the layer::

    d_k5 = I(||W_ring|| - t_k5)           W' = W_3x3 + d_k5 * W_ring
    d_e6 = I(||W'_high|| - t_e6)          (the second half of the channels)
    d_e3 = I(||W'_low||  - t_e3)          (the first half; off = skip)

``I`` is a step forward and the sigmoid's gradient backward (``indicator``);
the thresholds ``t`` start at 0, so the search starts from k5e6 everywhere.
The ring's gate is decided first and the channel norms are taken of W' (the
kernel with the ring as decided); norms are plain (not squared) L2 norms
over the whole part.
``d_e3`` is fixed to 1 where the layer cannot skip. A gate vector per layer
(``gates``) is all the network needs: ``forward(x)`` computes them from the
weights, ``forward(x, arch)`` fixes them to an arch (``arch_gates``), and
``decode_gates`` reads them back into an arch string, token by token.

Where the channel gates apply (``mask_at``):

* ``"activation"`` (default): the second half of the depthwise output is
  multiplied by ``d_e6`` after its BN and ReLU, and the whole branch by
  ``d_e3`` after the projection's BN. A gated-off channel is exactly 0, so
  the superkernel at hard gates computes exactly its standalone network.
* ``"kernel"``: as the paper's code, the gates multiply the depthwise kernel:
  W'' = d_e3 (W'_low + d_e6 W'_high). A zeroed channel still leaves its BN
  as beta (training) or (beta - gamma mean / std) (eval), ReLU passes it on,
  and the projection adds it to every pixel: "dropped" channels leak a
  constant, and a skipped layer adds the projection BN's beta. BN also makes
  the output blind to a channel group's scale, so the cross-entropy sends
  almost no gradient to d_e3 and d_e6 through the kernel.

Initialisation (``init``) and BatchNorm (``bn_eps``, ``bn_momentum``, torch's
convention: momentum = 1 - TF's decay):

* ``"spnas"`` (default): ``common.init_weights``, torch's He-normal fan-out,
  which for a depthwise conv counts every channel (fan-out C k k): a part of
  a 5x5 superkernel has an L2 norm near 1 whatever its width.
* ``"paper"``: the official code's ``conv_kernel_initializer`` (and timm's
  ``_init_weight_goog``): normal(0, sqrt(2 / fan_out)) with fan_out =
  k k out / groups, i.e. k k for a depthwise conv, so the parts' norms are
  about 10 to 38; the classifier uniform(-1/sqrt(out), 1/sqrt(out)), bias 0.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from spnas.arch import Arch, SpaceSpec
from spnas.errors import SpnasError
from spnas.spaces.common import ChildNet, GlobalAvgPool, conv_bn, init_weights

TOKENS = ("k3e3", "k3e6", "k5e3", "k5e6", "skip")
SKIP = TOKENS.index("skip")
STAGE_WIDTHS = (24, 40, 80, 96, 192)
LAYERS_PER_STAGE = 4
STEM_WIDTH, FIXED_WIDTH, TAIL_WIDTH, LAST_WIDTH = 32, 16, 320, 1280
STRIDES = {"cifar": (1, (1, 2, 2, 1, 2)), "imagenet": (2, (2, 2, 2, 1, 2))}
# The network the paper published (ImageNet, 74.96% top-1 at 79 ms on a Pixel 1).
PUBLISHED = ("k3e3 k3e3 k3e3 skip | k5e6 k3e3 k3e3 k3e3 | k5e6 k3e3 k3e3 k3e3 | "
             "k5e6 k5e3 k5e3 k5e3 | k5e6 k5e6 k5e6 k5e6")


def token_shape(token: str) -> tuple[int, int]:
    """(kernel, expansion) of an MBConv token, e.g. ``"k5e3"`` -> (5, 3)."""
    return int(token[1]), int(token[3])


def mbconv_space(layout: str = "cifar") -> SpaceSpec:
    """The spec: 20 layers of ``k3e3 k3e6 k5e3 k5e6 skip``; a stage's first cannot skip."""
    if layout not in STRIDES:
        raise SpnasError(f"layout must be one of {sorted(STRIDES)}, got {layout!r}")
    no_skip = tuple(c for c in range(len(TOKENS)) if c != SKIP)
    allowed = []
    for _ in STAGE_WIDTHS:
        allowed += [no_skip] + [tuple(range(len(TOKENS)))] * (LAYERS_PER_STAGE - 1)
    return SpaceSpec(name="mbconv", layout=layout, tokens=TOKENS, allowed=tuple(allowed),
                     stages=(LAYERS_PER_STAGE,) * len(STAGE_WIDTHS), bars=True)


def layer_geometry(spec: SpaceSpec) -> list[tuple[int, int, int]]:
    """(in width, out width, stride) of each searchable layer."""
    _, strides = STRIDES[spec.layout]
    geo, cin = [], FIXED_WIDTH
    for width, stride in zip(STAGE_WIDTHS, strides):
        for j in range(LAYERS_PER_STAGE):
            geo.append((cin, width, stride if j == 0 else 1))
            cin = width
    return geo


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand + BN + ReLU, kxk depthwise + BN + ReLU, 1x1 project + BN."""

    def __init__(self, cin: int, cout: int, kernel: int, expansion: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.expand = conv_bn(cin, mid, 1, 1, 1, True, relu=True)
        self.dw = conv_bn(mid, mid, kernel, stride, mid, True, relu=True)
        self.project = conv_bn(mid, cout, 1, 1, 1, True, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.residual else out


def make_stem(spec: SpaceSpec) -> nn.Sequential:
    """Stem conv (3x3, 32 channels) and the fixed depthwise-separable block to 16."""
    stride = STRIDES[spec.layout][0]
    return nn.Sequential(conv_bn(3, STEM_WIDTH, 3, stride, 1, True, relu=True),
                         conv_bn(STEM_WIDTH, STEM_WIDTH, 3, 1, STEM_WIDTH, True, relu=True),
                         conv_bn(STEM_WIDTH, FIXED_WIDTH, 1, 1, 1, True, relu=False))


def make_head(num_classes: int, dropout: float) -> nn.Sequential:
    """Fixed MBConv k3e6 to 320, 1x1 conv to 1280, pooling, dropout, classifier."""
    return nn.Sequential(MBConv(STAGE_WIDTHS[-1], TAIL_WIDTH, 3, 6, 1),
                         conv_bn(TAIL_WIDTH, LAST_WIDTH, 1, 1, 1, True, relu=True),
                         GlobalAvgPool(), nn.Dropout(dropout), nn.Linear(LAST_WIDTH, num_classes))


def make_layer(cin: int, cout: int, stride: int, token: str) -> nn.Module:
    if token == "skip":
        return nn.Identity()
    return MBConv(cin, cout, *token_shape(token), stride)


INITS = ("spnas", "paper")


def init_paper(model: nn.Module) -> None:
    """The official Single-Path NAS init (``conv_kernel_initializer``, ``dense_kernel_initializer``;
    timm's ``_init_weight_goog``): convs normal(0, sqrt(2 / fan_out)), fan_out = k k out / groups
    (k k for a depthwise conv); linear uniform(-1/sqrt(out), 1/sqrt(out)), bias 0; BN 1, 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k_h, k_w = m.kernel_size
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k_h * k_w * m.out_channels // m.groups)))
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def configure(model: nn.Module, init: str, bn_eps: float, bn_momentum: float) -> None:
    """Initialise ``model`` (``init`` in ``INITS``) and set every BN's eps and momentum (torch's:
    the weight of the new batch in the running statistics, 1 - TF's decay)."""
    if init not in INITS:
        raise SpnasError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    (init_weights if init == "spnas" else init_paper)(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = bn_eps, bn_momentum


class MbconvNet(ChildNet):
    """The standalone network of one MBConv arch (affine BN, dropout before the classifier)."""

    def __init__(self, arch: Arch, num_classes: int, dropout: float = 0.2, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, init: str = "spnas"):
        spec = arch.space
        if spec.name != "mbconv":
            raise SpnasError(f"MbconvNet needs an mbconv arch, got {spec.describe()}")
        layers = [make_layer(cin, cout, s, spec.tokens[c])
                  for (cin, cout, s), c in zip(layer_geometry(spec), arch)]
        super().__init__(arch, make_stem(spec), layers, make_head(num_classes, dropout))
        configure(self, init, bn_eps, bn_momentum)


# ---- the superkernel --------------------------------------------------------------------
MASK_AT = ("activation", "kernel")


def indicator(x: torch.Tensor) -> torch.Tensor:
    """1(x >= 0) forward; the gradient of sigmoid(x) backward."""
    s = torch.sigmoid(x)
    return ((x >= 0).to(s.dtype) - s).detach() + s


def drop_gate(gate: torch.Tensor, keep_prob: float, rescale: bool = False) -> torch.Tensor:
    """Keep ``gate`` with probability ``keep_prob``, else 0 (torch's global RNG).

    ``rescale`` divides a kept gate by ``keep_prob``, as TF1's ``tf.nn.dropout`` in the
    paper's code does (a kept ring then enters the kernel at 1/keep_prob its weight)."""
    if keep_prob >= 1.0:
        return gate
    kept = (torch.rand((), device=gate.device) < keep_prob).to(gate.dtype)
    return gate * (kept / keep_prob if rescale else kept)


class SuperkernelMBConv(nn.Module):
    """One searchable layer built at k5e6; ``forward(x, gates)`` with gates (d_k5, d_e3, d_e6)."""

    ring_mask: torch.Tensor  # a buffer: 1 on the ring of a 5x5 kernel outside its 3x3 centre

    def __init__(self, cin: int, cout: int, stride: int, can_skip: bool, mask_at: str):
        super().__init__()
        self.mid, self.stride = cin * 6, stride
        self.residual, self.can_skip, self.mask_at = stride == 1 and cin == cout, can_skip, mask_at
        self.expand = conv_bn(cin, self.mid, 1, 1, 1, True, relu=True)
        self.dw = conv_bn(self.mid, self.mid, 5, stride, self.mid, True, relu=True)
        self.project = conv_bn(self.mid, cout, 1, 1, 1, True, relu=False)
        self.thresholds = nn.Parameter(torch.zeros(3))  # t_k5, t_e3, t_e6
        ring = torch.ones(1, 1, 5, 5)
        ring[..., 1:4, 1:4] = 0
        self.register_buffer("ring_mask", ring, persistent=False)

    def _dw_weight(self) -> torch.Tensor:
        """The 5x5 depthwise kernel: ``dw`` is conv_bn's (Conv2d, BatchNorm2d, ReLU)."""
        return cast(nn.Conv2d, self.dw[0]).weight

    def _kernel(self, d_k5: torch.Tensor) -> torch.Tensor:
        w = self._dw_weight()
        ring = w * self.ring_mask
        return w - ring + d_k5 * ring

    def gates(self, keep_prob: float = 1.0, rescale: bool = False) -> torch.Tensor:
        """(d_k5, d_e3, d_e6) from the weight norms and thresholds; dropout during warm-up.

        The ring is decided first; the channel halves' norms are of the kernel with the
        ring as decided (dropped, rescaled), as the paper's code does."""
        t = self.thresholds
        w = self._dw_weight()
        d_k5 = drop_gate(indicator((w * self.ring_mask).norm() - t[0]), keep_prob, rescale)
        kernel, half = self._kernel(d_k5), self.mid // 2
        d_e6 = drop_gate(indicator(kernel[half:].norm() - t[2]), keep_prob, rescale)
        if self.can_skip:
            d_e3 = drop_gate(indicator(kernel[:half].norm() - t[1]), keep_prob, rescale)
        else:
            d_e3 = torch.ones((), dtype=w.dtype, device=w.device)
        return torch.stack((d_k5, d_e3, d_e6))

    def _channel_gate(self, d_e3: torch.Tensor, d_e6: torch.Tensor) -> torch.Tensor:
        """Per-channel gate of the depthwise conv: its low half and its high half."""
        if self.mask_at == "kernel":  # the paper: W'' = d_e3 (W'_low + d_e6 W'_high)
            low, high = d_e3, d_e3 * d_e6
        else:  # d_e3 gates the whole branch after the projection instead
            low, high = torch.ones_like(d_e6), d_e6
        half = self.mid // 2
        return torch.cat((low.expand(half), high.expand(self.mid - half)))

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        d_k5, d_e3, d_e6 = gates.unbind()
        kernel = self._kernel(d_k5)
        channels = self._channel_gate(d_e3, d_e6)
        if self.mask_at == "kernel":
            kernel = kernel * channels.view(-1, 1, 1, 1)
        h = self.expand(x)
        h = F.conv2d(h, kernel.to(h.dtype), None, self.stride, 2, 1, self.mid)
        h = self.dw[2](self.dw[1](h))
        if self.mask_at == "activation":
            h = h * channels.view(1, -1, 1, 1).to(h.dtype)
        out = self.project(h)
        if self.mask_at == "activation" and self.can_skip:
            out = out * d_e3.to(out.dtype)
        return x + out if self.residual else out


def arch_gates(arch: Arch, device: torch.device | str = "cpu") -> torch.Tensor:
    """Hard gates [layers, 3] = (d_k5, d_e3, d_e6) that select ``arch`` in the superkernel."""
    rows = []
    for c in arch:
        token = arch.space.tokens[c]
        if token == "skip":
            rows.append((0.0, 0.0, 0.0))
        else:
            k, e = token_shape(token)
            rows.append((float(k == 5), 1.0, float(e == 6)))
    return torch.tensor(rows, device=device)


def decode_gates(gates: torch.Tensor, space: SpaceSpec) -> Arch:
    """Read hard gates into an arch of the MBConv grammar, one token per layer."""
    tokens = []
    for d_k5, d_e3, d_e6 in gates.detach().cpu().tolist():
        kernel, expansion = (5 if d_k5 > 0.5 else 3), (6 if d_e6 > 0.5 else 3)
        tokens.append("skip" if d_e3 < 0.5 else f"k{kernel}e{expansion}")
    return Arch.parse(" ".join(tokens), space)


def _slice_to(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first channels along dims 0-1 and the centre along dims 2-3 (kernels)."""
    index = []
    for d, size in enumerate(shape):
        start = (src.shape[d] - size) // 2 if d >= 2 else 0
        index.append(slice(start, start + size))
    return src[tuple(index)]


class SuperkernelNet(nn.Module):
    """The superkernel network: ``forward(x)`` runs the layers its thresholds select."""

    def __init__(self, spec: SpaceSpec, num_classes: int, dropout: float = 0.2,
                 mask_at: str = "activation", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 init: str = "spnas"):
        super().__init__()
        if spec.name != "mbconv":
            raise SpnasError(f"SuperkernelNet needs an mbconv space, got {spec.describe()}")
        if mask_at not in MASK_AT:
            raise SpnasError(f"mask_at must be one of {', '.join(MASK_AT)}, got {mask_at!r}")
        self.spec, self.num_classes, self.dropout = spec, num_classes, dropout
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum
        self.stem = make_stem(spec)
        self.layers = nn.ModuleList(
            SuperkernelMBConv(cin, cout, s, SKIP in spec.allowed[i], mask_at)
            for i, (cin, cout, s) in enumerate(layer_geometry(spec)))
        self.head = make_head(num_classes, dropout)
        configure(self, init, bn_eps, bn_momentum)

    def _searchable(self) -> Iterable[SuperkernelMBConv]:
        return cast(Iterable[SuperkernelMBConv], self.layers)  # as __init__ builds them

    def gates(self, keep_prob: float = 1.0, rescale: bool = False) -> torch.Tensor:
        return torch.stack([layer.gates(keep_prob, rescale) for layer in self._searchable()])

    def thresholds(self) -> list[nn.Parameter]:
        return [layer.thresholds for layer in self._searchable()]

    def forward(self, x: torch.Tensor, arch: Arch | None = None, keep_prob: float = 1.0,
                rescale: bool = False) -> torch.Tensor:
        gates = self.gates(keep_prob, rescale) if arch is None else arch_gates(arch, x.device)
        x = self.stem(x)
        for layer, g in zip(self.layers, gates):
            x = layer(x, g)
        return self.head(x)

    @torch.no_grad()
    def decode(self) -> Arch:
        """The arch the thresholds select now."""
        return decode_gates(self.gates(), self.spec)

    def extract(self, arch: Arch | None = None) -> MbconvNet:
        """The standalone network of ``arch`` (default: ``decode()``) holding these weights."""
        arch = self.decode() if arch is None else arch
        net = MbconvNet(arch, self.num_classes, self.dropout, self.bn_eps, self.bn_momentum)
        own = self.state_dict()
        net.load_state_dict({k: _slice_to(own[k], v.shape).clone()
                             for k, v in net.state_dict().items()})
        return net.to(next(self.parameters()).device)
