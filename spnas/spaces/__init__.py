"""Search spaces. Each has a spec function, a supernet and a standalone network.

``build_child(arch, num_classes)`` builds the standalone network of any
space's arch; a new space adds its class to ``CHILDREN``.
"""
from torch import nn

from ..arch import Arch
from ..errors import SpnasError
from .spos import SposNet, SposSupernet, spos_space

CHILDREN: dict[str, type[nn.Module]] = {"spos": SposNet}


def build_child(arch: Arch, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """The standalone network (affine BN) of ``arch``."""
    try:
        cls = CHILDREN[arch.space.name]
    except KeyError:
        raise SpnasError(f"unknown space {arch.space.name!r}; known: {', '.join(CHILDREN)}") from None
    return cls(arch, num_classes, dropout=dropout)


__all__ = ["CHILDREN", "SposNet", "SposSupernet", "build_child", "spos_space"]
