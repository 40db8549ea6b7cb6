"""Search spaces. Each has a spec function, a supernet and a standalone network.

``build_child(arch, num_classes)`` builds the standalone network of any
space's arch and ``build_supernet(space, num_classes)`` its supernet; a new
space adds its classes to ``CHILDREN`` and ``SUPERNETS`` (its supernet's also to ``Supernet``).
(``engine.checkpoint.model_from_checkpoint`` rebuilds whatever a checkpoint holds.)
"""
import inspect
import typing
from collections import Counter
from collections.abc import Callable
from typing import TypeAlias, TypeVar

from spnas.arch import Arch, SpaceSpec
from spnas.errors import SpnasError
from spnas.spaces.common import ChildNet
from spnas.spaces.mbconv import MbconvNet, SuperkernelNet, mbconv_space
from spnas.spaces.spos import SposNet, SposSupernet, spos_space

# name -> f(layout=..., **options)
SPACE_SPECS: dict[str, Callable[..., SpaceSpec]] = {"spos": spos_space, "mbconv": mbconv_space}
# name -> the options that would have made a spec (to rebuild its real space from a file)
SPACE_OPTIONS: dict[str, Callable[[SpaceSpec], dict[str, int]]] = {
    "spos": lambda s: {"layers": s.num_layers, "num_choices": _usual_width(s)},
    "mbconv": lambda s: {},
}
# a supernet: all paths of its space (no common base class: each space runs its paths its own way)
Supernet: TypeAlias = SposSupernet | SuperkernelNet
# name -> class(arch, num_classes, **model_args); class(space, num_classes, **model_args)
CHILDREN: dict[str, Callable[..., ChildNet]] = {"spos": SposNet, "mbconv": MbconvNet}
SUPERNETS: dict[str, Callable[..., Supernet]] = {"spos": SposSupernet, "mbconv": SuperkernelNet}
_T = TypeVar("_T")


def _usual_width(spec: SpaceSpec) -> int:
    """The choice count most layers have (the smaller on a tie): one widened layer stands out."""
    counts = Counter(map(len, spec.allowed))
    return min(counts, key=lambda n: (-counts[n], n)) if counts else 0


def _lookup(table: dict[str, _T], name: str, what: str) -> _T:
    try:
        return table[name]
    except KeyError:
        raise SpnasError(f"no {what} for space {name!r}; known: {', '.join(table)}") from None


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _check_option(space: str, key: str, value, param: inspect.Parameter, hint) -> None:
    """An option's value must have the type of the spec function's annotation (or default)."""
    want = hint if hint in _TYPE_WORDS else type(param.default)
    if want not in _TYPE_WORDS:
        return
    ok = (isinstance(value, want) and not (want is not bool and isinstance(value, bool))) \
        or (want is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        default = "" if param.default is inspect.Parameter.empty else f", default {param.default!r}"
        raise SpnasError(f"space {space!r} option {key} must be {_TYPE_WORDS[want]}{default}; "
                         f"got {value!r} (e.g. --option {key}="
                         f"{param.default if default else '...'})")


def make_space(name: str, layout: str = "cifar", **options) -> SpaceSpec:
    """The spec of space ``name`` (e.g. ``make_space("spos", "cifar", layers=8)``).

    Options are checked against the spec function's signature: unknown ones and
    values of the wrong type (``layers="abc"``) are one-line errors.
    """
    spec = _lookup(SPACE_SPECS, name, "space")
    params = inspect.signature(spec).parameters
    known = set(params) - {"layout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpnasError(f"space {name!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(known)) or 'none'}")
    hints = typing.get_type_hints(spec)
    for key, value in options.items():
        _check_option(name, key, value, params[key], hints.get(key))
    if not isinstance(layout, str):
        raise SpnasError(f"layout must be a string (cifar or imagenet), got {layout!r}")
    return spec(layout=layout, **options)


def real_space_difference(spec: SpaceSpec) -> str | None:
    """What differs between ``spec`` (read from a file) and its real space, or None.

    The real space is ``make_space`` of the spec's name, layout and the options
    it implies (``SPACE_OPTIONS``). A space of an unknown name gives None.
    """
    if spec.name not in SPACE_SPECS:
        return None
    options = SPACE_OPTIONS[spec.name](spec)
    try:
        real = make_space(spec.name, spec.layout, **options)
    except SpnasError as e:
        return f"its space cannot be a {spec.name} space ({e})"
    what = f"the real {spec.name}/{spec.layout} space"
    if spec.tokens != real.tokens:
        odd = [t for t in spec.tokens if t not in real.tokens]
        return (f"space field 'tokens' holds the unknown token {odd[0]!r}" if odd else
                f"space field 'tokens' is {list(spec.tokens)}") + \
            f"; {what} has {' '.join(real.tokens)}"
    if spec.num_layers != real.num_layers:
        return (f"space field 'allowed' lists {spec.num_layers} layers; {what} has "
                f"{real.num_layers}")
    if spec.stages != real.stages:
        return (f"space field 'stages' is {list(spec.stages)}; {what} with {real.num_layers} "
                f"layers has stages {list(real.stages)}")
    for i, (have, want) in enumerate(zip(spec.allowed, real.allowed)):
        if have != want:
            return (f"space field 'allowed' of layer {i} is {list(have)}; {what} allows "
                    f"{list(want)} ({' '.join(real.tokens[c] for c in want)})")
    if spec.bars != real.bars:
        return f"space field 'bars' is {spec.bars}; {what} has {real.bars}"
    if spec != real:
        return f"the space differs from {what}"
    return None


def build_child(arch: Arch, num_classes: int, **model_args) -> ChildNet:
    """The standalone network (affine BN) of ``arch``; ``model_args`` e.g. ``dropout=0.2``."""
    return _lookup(CHILDREN, arch.space.name, "standalone network")(arch, num_classes, **model_args)


def build_supernet(space: SpaceSpec, num_classes: int, **model_args) -> Supernet:
    return _lookup(SUPERNETS, space.name, "supernet")(space, num_classes, **model_args)




__all__ = ["CHILDREN", "SPACE_SPECS", "SUPERNETS", "ChildNet", "MbconvNet", "SposNet", "SposSupernet",
           "SuperkernelNet", "Supernet", "build_child", "build_supernet", "make_space", "mbconv_space",
           "real_space_difference", "spos_space"]
