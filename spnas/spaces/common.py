"""Pieces shared by the spaces: conv-BN-ReLU, weight init, the standalone network shape."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from spnas.arch import Arch


def _format_of(t: torch.Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl and not t.is_contiguous() else torch.contiguous_format


class _ShuffleSplit(torch.autograd.Function):
    """Even and odd channels as two dense tensors, in the input's memory format.

    Plain slicing would hand the backward pass NCHW gradients for a
    channels_last network (``slice_backward`` allocates NCHW), and every op
    after that runs a slow mixed-format kernel; this keeps one format throughout.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.fmt = _format_of(x)
        return _even_odd(x)

    @staticmethod
    def backward(ctx, g_even, g_odd):
        n, c, h, w = g_even.shape
        g = torch.empty((n, 2 * c, h, w), dtype=g_even.dtype, device=g_even.device,
                        memory_format=ctx.fmt)
        g[:, 0::2] = g_even
        g[:, 1::2] = g_odd
        return g


class _ConcatChannels(torch.autograd.Function):
    """``torch.cat(dim=1)`` whose gradients come back dense in the same memory format."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.split, ctx.fmt = a.shape[1], _format_of(a)
        return torch.cat((a, b), 1)

    @staticmethod
    def backward(ctx, g):
        s, fmt = ctx.split, ctx.fmt
        return g[:, :s].contiguous(memory_format=fmt), g[:, s:].contiguous(memory_format=fmt)


class _GlobalAvgPool(torch.autograd.Function):
    """Mean over H and W to [N, C]; the gradient is dense in the input's memory format."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape, ctx.fmt = x.shape, _format_of(x)
        return x.mean((2, 3))

    @staticmethod
    def backward(ctx, g):
        n, c, h, w = ctx.shape
        return (g / (h * w))[:, :, None, None].expand(n, c, h, w).contiguous(memory_format=ctx.fmt)


def _plain_path() -> bool:
    """No backward pass will run (inference, ``torch.jit.trace``, ONNX export).

    The autograd Functions above exist only for their backward; without one,
    the same forward ops run as plain tensor ops, which every tracer and
    exporter understands (``torch.jit.trace`` cannot record a Python Function).
    """
    return not torch.is_grad_enabled() or torch.jit.is_tracing()


def _even_odd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = _format_of(x)
    return x[:, 0::2].contiguous(memory_format=fmt), x[:, 1::2].contiguous(memory_format=fmt)


def shuffle_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _even_odd(x) if _plain_path() else _ShuffleSplit.apply(x)


def concat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat((a, b), 1) if _plain_path() else _ConcatChannels.apply(a, b)


class GlobalAvgPool(nn.Module):
    """Global average pooling to [N, C] (see ``_GlobalAvgPool``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) if _plain_path() else _GlobalAvgPool.apply(x)


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int, affine: bool,
            relu: bool | type[nn.Module]) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> optional activation.

    ``relu`` is True (ReLU), False (none) or an activation class (e.g. ``nn.ReLU6``).
    """
    mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, affine=affine)]
    if relu:
        mods.append((nn.ReLU if relu is True else relu)(inplace=True))
    return nn.Sequential(*mods)


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan out), small-normal classifier, identity BN (the MBConv space)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(\d+)\.(.*)$")


class ChildNet(nn.Module):
    """A standalone network: ``head(layers(stem(x)))``.

    Every space's standalone network has this shape, so the cost model can time
    and count the stem, each searchable layer and the head separately, and a
    supernet's ``layers.<i>.<choice>.*`` weights map onto ``layers.<i>.*``.
    """

    def __init__(self, arch: Arch, stem: nn.Module, layers: Sequence[nn.Module], head: nn.Sequential):
        super().__init__()
        self.arch = arch
        self.stem, self.layers, self.head = stem, nn.ModuleList(layers), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    @property
    def classifier(self) -> nn.Linear:
        """The last module of ``head``."""
        last = self.head[-1]
        if not isinstance(last, nn.Linear):
            raise TypeError(f"{type(self).__name__}.head must end in an nn.Linear, not "
                            f"{type(last).__name__}")
        return last

    def replace_classifier(self, num_classes: int) -> None:
        old = self.classifier
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        nn.init.normal_(new.weight, 0, 0.01)
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        self.head[-1] = new.to(old.weight.device)

    def load_path_weights(self, supernet_state: dict[str, torch.Tensor], arch: Arch) -> None:
        """Copy one path of a supernet state dict; BN without affine maps to identity.

        The affine parameters the supernet lacks are set to weight 1, bias 0, so the
        network computes exactly what the supernet's path does (whatever its init).
        """
        own = self.state_dict()
        mapped = {}
        for key, value in supernet_state.items():
            m = _LAYER_KEY.match(key)
            if m:
                if int(m.group(2)) != arch[int(m.group(1))]:
                    continue
                key = f"layers.{m.group(1)}.{m.group(3)}"
            if key in own:
                mapped[key] = value
        missing = [k for k in own if k not in mapped]
        for k in missing:  # only affine BN parameters may be absent from the supernet
            mod = self.get_submodule(k.rsplit(".", 1)[0])
            if not isinstance(mod, nn.BatchNorm2d):
                raise KeyError(f"supernet state has no weight for {k}")
            mapped[k] = torch.ones_like(own[k]) if k.endswith(".weight") else torch.zeros_like(own[k])
        self.load_state_dict(mapped, strict=False)
