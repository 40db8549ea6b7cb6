"""Search spaces. Each has a spec function, a supernet and a standalone network.

``build_child(arch, num_classes)`` builds the standalone network of any
space's arch and ``build_supernet(space, num_classes)`` its supernet; a new
space adds its classes to ``CHILDREN`` and ``SUPERNETS``.
``model_from_checkpoint`` rebuilds whatever a checkpoint holds, with no other input.
"""
import inspect

from torch import nn

from ..arch import Arch, SpaceSpec
from ..errors import SpnasError
from .mbconv import MbconvNet, SuperkernelNet, mbconv_space
from .spos import SposNet, SposSupernet, spos_space

SPACE_SPECS = {"spos": spos_space, "mbconv": mbconv_space}  # name -> f(layout=..., **options)
CHILDREN: dict[str, type[nn.Module]] = {"spos": SposNet, "mbconv": MbconvNet}
SUPERNETS: dict[str, type[nn.Module]] = {"spos": SposSupernet, "mbconv": SuperkernelNet}


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise SpnasError(f"no {what} for space {name!r}; known: {', '.join(table)}") from None


def make_space(name: str, layout: str = "cifar", **options) -> SpaceSpec:
    """The spec of space ``name`` (e.g. ``make_space("spos", "cifar", layers=8)``)."""
    spec = _lookup(SPACE_SPECS, name, "space")
    known = set(inspect.signature(spec).parameters) - {"layout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpnasError(f"space {name!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(known)) or 'none'}")
    return spec(layout=layout, **options)


def build_child(arch: Arch, num_classes: int, **model_args) -> nn.Module:
    """The standalone network (affine BN) of ``arch``; ``model_args`` e.g. ``dropout=0.2``."""
    return _lookup(CHILDREN, arch.space.name, "standalone network")(arch, num_classes, **model_args)


def build_supernet(space: SpaceSpec, num_classes: int, **model_args) -> nn.Module:
    return _lookup(SUPERNETS, space.name, "supernet")(space, num_classes, **model_args)


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild and load the network a checkpoint (``checkpoint.load_checkpoint``) describes."""
    from ..checkpoint import checkpoint_arch, checkpoint_space, load_model_state
    args = dict(ckpt.get("model_args") or {})
    if ckpt["kind"] == "child":
        model = build_child(checkpoint_arch(ckpt), ckpt["num_classes"], **args)
    else:
        model = build_supernet(checkpoint_space(ckpt), ckpt["num_classes"], **args)
    load_model_state(model, ckpt["model"], ckpt["path"])
    return model


__all__ = ["CHILDREN", "SPACE_SPECS", "SUPERNETS", "MbconvNet", "SposNet", "SposSupernet",
           "SuperkernelNet", "build_child", "build_supernet", "make_space", "mbconv_space",
           "model_from_checkpoint", "spos_space"]
