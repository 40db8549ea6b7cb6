"""Typed settings with help, units and checks: the machinery behind ``config``'s dataclasses.

A setting is declared once, with everything the command line and the checks
need::

    lr: float = opt(0.025, "peak learning rate", unit="per step of batch_size images",
                    check="positive")

``Checked`` dataclasses check their values on construction (``__post_init__``),
so a bad value is the same one-line ``SpnasError`` from Python as from a flag,
named by its flag (``--lr must be positive, got -1.0``). Checks: ``positive``,
``nonneg``, ``prob`` ([0, 1]), ``open_prob`` ((0, 1]), ``fraction`` ([0, 1)), or
a callable returning the error text (after the flag's name) or None. Every
float must be finite, and every value of the field's type (an int where a float
is due becomes a float). Other metadata: ``choices``; ``flags`` (extra
spellings); ``parse`` (a text parser such as ``count_arg``, for flags and
files); ``cli=False`` (no generated flag); ``group`` (the help section);
``label`` (the flag named in errors); ``default_text`` (the default as help
states it); ``metavar``; ``path=True`` (a file or folder, or a tuple of them: a
leading ``~`` is the home folder, as a shell has it, from a file or Python too);
``positional`` (a positional argument, shown as its ``metavar``, named in errors as
the setting, which is how a settings file gives it: a ``tuple[str, ...]`` takes any
number, a ``str`` one or none).

Settings are addressed by their leaf names (``lr``, ``cutout``), unique within a
stage's config, so a flat file, a nested ``config.json`` and the flags all name
them alike (``leaf_fields``, ``flat_fields``, ``from_flat``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from dataclasses import MISSING, field
from typing import Any

from spnas.errors import SpnasError

_CHECKS = {
    "positive": (lambda v: v > 0, "must be positive"),
    "nonneg": (lambda v: v >= 0, "must be 0 or more"),
    "prob": (lambda v: 0 <= v <= 1, "must be within 0..1"),
    "open_prob": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    # torch's generators take a 64-bit seed
    "seed": (lambda v: -2**63 <= v < 2**63, f"must be a whole number in {-2**63}..{2**63 - 1}"),
}
_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def opt(default: Any = MISSING, help: str = "", *, unit: str = "", check=None,
        choices: tuple | None = None, flags: tuple[str, ...] = (), factory=None, **meta) -> Any:
    """A dataclass field with the metadata the CLI generator and ``Checked`` read."""
    if check is not None and not callable(check) and check not in _CHECKS:
        raise ValueError(f"unknown check {check!r}")
    metadata = {"help": help, "unit": unit, "check": check, "choices": choices, "flags": flags,
                **meta}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(name: str, f: dataclasses.Field | None = None) -> str:
    """The flag a setting is known by in messages: ``--lr``; a positional argument by its
    name (``runs``), as a settings file gives it."""
    meta = f.metadata if f is not None else {}
    label = meta.get("label") or name
    return label if meta.get("positional") else "--" + label


def check_value(name: str, value, f: dataclasses.Field) -> None:
    """Raise the one-line error for a bad ``value`` of setting ``name``."""
    if value is None:
        return
    flag = flag_of(name, f)
    if isinstance(value, float) and not math.isfinite(value):
        raise SpnasError(f"{flag} must be a finite number, got {value}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SpnasError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")
    check = f.metadata.get("check")
    if check is None:
        return
    if callable(check):
        problem = check(value)
        if problem:
            raise SpnasError(f"{flag} {problem}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ok, text = _CHECKS[check]
    if not ok(value):
        raise SpnasError(f"{flag} {text}, got {value}")


@functools.lru_cache(maxsize=None)
def _cached_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, computed once per class."""
    # a plain ``type`` parameter: mypy takes ``type[X]`` for unhashable (python/mypy#11470)
    return _cached_hints(cls)


def base_type(hint):
    """``int | None`` -> int; ``float`` -> float; ``tuple[str, ...]`` stays."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    return next(a for a in typing.get_args(hint) if a is not type(None))


def _typed(name: str, value, f: dataclasses.Field, hint):
    """``value`` if it is of the setting's type (an int for a float becomes a float)."""
    kind = base_type(hint)
    if value is None and kind in _KIND_NAMES and type(None) not in typing.get_args(hint):
        raise SpnasError(f"{flag_of(name, f)} must be {_KIND_NAMES[kind]}, got none (null); "
                         "give a value, or leave the setting out for its default")
    if value is None or kind not in _KIND_NAMES:
        return value
    if kind is str and isinstance(value, os.PathLike):  # a Path for a file or folder setting
        value = os.fspath(value)
    parse = f.metadata.get("parse")
    if parse is not None and kind is not str and isinstance(value, str):  # '175M', as the flag
        try:
            value = parse(value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise SpnasError(f"{flag_of(name, f)}: {e}") from None
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)  # an int, or numpy's float32/int64
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, kind) and not isinstance(value, bool))
    if not ok:
        raise SpnasError(f"{flag_of(name, f)} must be {_KIND_NAMES[kind]}, got {value!r}")
    return value


def expand_home(value):
    """A path setting's value with a leading ``~`` expanded (each of a tuple's paths)."""
    if isinstance(value, (str, os.PathLike)):
        return os.path.expanduser(os.fspath(value))
    if isinstance(value, tuple):
        return tuple(expand_home(v) if isinstance(v, (str, os.PathLike)) else v for v in value)
    return value


class Checked:
    """Mixin for dataclasses whose fields carry ``opt`` metadata: checked on construction.

    A subclass with cross-field checks defines ``__post_init__``, calls this one
    first, then raises its own one-line ``SpnasError``.
    """

    if typing.TYPE_CHECKING:  # what @dataclass gives every subclass (dataclasses.fields needs it)
        __dataclass_fields__: typing.ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            if "help" not in f.metadata:
                self._check_section(f, hints[f.name])
                continue
            value = _typed(f.name, getattr(self, f.name), f, hints[f.name])
            if f.metadata.get("path"):
                value = expand_home(value)
            object.__setattr__(self, f.name, value)
            check_value(f.name, value, f)

    def _check_section(self, f: dataclasses.Field, hint) -> None:
        """A section (a dataclass field, such as ``optim``) holds its dataclass; a dict of its
        settings is read as the section's default with those set (the stage's own default:
        ``SupernetStage(optim={"lr": 0.1})`` keeps batch 96)."""
        kind = base_type(hint)
        value = getattr(self, f.name)
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)) or value is None:
            return
        if isinstance(value, dict) and f.default_factory is not MISSING:
            default = f.default_factory()
            unknown = sorted(set(value) - {g.name for g in dataclasses.fields(default)})
            if unknown:
                raise SpnasError(f"{type(self).__name__}.{f.name} has no setting "
                                 f"{', '.join(map(str, unknown))}; see {kind.__name__}'s fields")
            value = dataclasses.replace(default, **value)
            object.__setattr__(self, f.name, value)
        if not isinstance(value, kind):
            article = "an" if kind.__name__[0] in "AEIOU" else "a"
            raise TypeError(f"{type(self).__name__}.{f.name} must be {article} {kind.__name__} "
                            f"(or a dict of its settings), got {type(value).__name__}")


_Call = typing.TypeVar("_Call", bound=typing.Callable[..., Any])


def takes_config(cls: type, required: str = "", *, model: type | None = None,
                 name: str = "") -> typing.Callable[[_Call], _Call]:
    """Decorator of a stage call that takes one ``cls`` instance (positionally or as ``cfg=``),
    whose ``model`` section, with ``model``, is one of those: any other call, such as spnas
    0.1's positional and keyword arguments (``evaluate_checkpoint(path, split)``) or a
    training stage's config given to another stage, is a ``TypeError`` naming the dataclass
    (``name``, else ``cls``'s) and ``required``, the setting it needs."""
    shown = name or cls.__name__

    def fits(cfg) -> bool:
        return isinstance(cfg, cls) and (model is None or isinstance(getattr(cfg, "model", None), model))

    def wrap(fn: _Call) -> _Call:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not args and set(kwargs) == {"cfg"}:
                args, kwargs = (kwargs["cfg"],), {}
            if len(args) != 1 or kwargs or not fits(args[0]):
                article = "an" if shown[0] in "AEIOU" else "a"
                got = ", ".join([type(a).__name__ for a in args] + [f"{k}=" for k in kwargs])
                if len(args) == 1 and not kwargs and isinstance(args[0], cls) and model:
                    got += f" with a {type(getattr(args[0], 'model', None)).__name__} model"
                given = f"{required}=..." if required else ""
                raise TypeError(f"{fn.__name__} takes {article} {shown} "
                                f"(spnas.{shown}({given})), got {got or 'nothing'}")
            return fn(args[0])
        return typing.cast(_Call, call)
    return wrap


def leaf_fields(obj, path: tuple[str, ...] = ()):
    """(path, field, type hint, value) of every non-dataclass field, depth first."""
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_fields(value, (*path, f.name))
        else:
            yield (*path, f.name), f, hints[f.name], value


def section_names(obj) -> set[str]:
    """The names of the sub-configs nested in ``obj`` (``data``, ``optim``, ...)."""
    out = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out |= {f.name} | section_names(value)
    return out


SECTIONS = {"data", "optim", "run", "model", "search", "scoring"}  # nested sub-configs


def flat_fields(data: dict, renames: dict[str, str] | None = None) -> dict:
    """{name: value} of a nested settings dict (sections flattened; leaf names are unique).

    ``renames`` maps old names (of configs written by earlier versions) to today's.
    """
    out: dict = {}
    for k, v in data.items():
        if isinstance(v, dict) and k in SECTIONS:
            out.update(flat_fields(v, renames))
        else:
            out[(renames or {}).get(k, k)] = v
    return out


def from_flat(default, values: dict):
    """A copy of the dataclass ``default`` with the leaf settings in ``values`` replaced
    (checked again: a bad value or combination raises ``SpnasError``)."""
    changes = {}
    for f in dataclasses.fields(default):
        current = getattr(default, f.name)
        if dataclasses.is_dataclass(current):
            changes[f.name] = from_flat(current, values)
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(default, **changes)


def to_flat(obj) -> dict:
    """{leaf name: value} of a (nested) settings dataclass."""
    return {path[-1]: value for path, _, _, value in leaf_fields(obj)}


def settings_of(default) -> dict[str, tuple[dataclasses.Field, Any]]:
    """{name: (field, type hint)} of every leaf setting of the dataclass ``default``."""
    return {f.name: (f, hint) for _, f, hint, _ in leaf_fields(default)}


def coerce_settings(default, values: dict) -> dict:
    """``values`` (names of ``default``'s settings) each as its setting's type (``coerce``)."""
    known = settings_of(default)
    return {k: coerce(k, v, *known[k]) for k, v in values.items()}


def coerce(name: str, value, f: dataclasses.Field, hint):
    """``value`` (from a YAML/JSON file) as the setting's type; e.g. YAML's '3e-4' string -> 3e-4."""
    if value is None:
        return None
    kind, parse = base_type(hint), f.metadata.get("parse")
    try:
        if parse is not None and isinstance(value, str):
            return parse(value)
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"  # quoted in YAML ('true'), as --set takes it
        if kind in _KIND_NAMES and isinstance(value, bool) != (kind is bool):
            raise ValueError
        if kind is float:
            return float(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is str:
            if not isinstance(value, (int, float, str)):
                raise ValueError
            return str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        detail = f" ({e})" if str(e) else ""
        raise SpnasError(f"setting {name} must be {_KIND_NAMES.get(kind, kind)}, got "
                         f"{value!r}{detail}") from None
    return value


# ---- value parsers shared by the settings and the command line --------------------------
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def count_arg(text: str) -> float:
    """A count such as 330M, 1.5G, 2e8 or 330000000."""
    scale = _SUFFIX.get(text[-1:], 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 330M, 2.5e8)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value
