"""Architectures as data: one choice per searchable layer, with a written grammar.

String form
-----------
An architecture is written as whitespace-separated tokens, one per searchable
layer, in layer order. Each space names its tokens:

* ``spos``:   ``k3 k5 k7 x``  (ShuffleNetV2 block with a 3x3 / 5x5 / 7x7
  depthwise kernel, or the Xception-style block)
* ``mbconv``: ``k3e3 k3e6 k5e3 k5e6 skip``  (MBConv kernel and expansion, or
  the residual path alone)

A ``|`` may separate stages (``str()`` writes them where the space asks for
it); when given, each bar must stand at a stage boundary. Two other forms are
read too: comma-separated choice indices (``1,0,3,...``, index = position of
the token in the space's list) and, in JSON arch files, either form under
``"arch"``. A bad string fails with an ``ArchError`` naming the 1-based
position of the offending token, so ``Arch.parse(str(a), space) == a`` always.

Arch files (JSON) say what they are::

    {"space": {...SpaceSpec...}, "arch": "k3 k5 ...", "choices": [0, 1, ...],
     "found_by": {...}, "metrics": {...}}
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spnas.errors import SpnasError


class ArchError(SpnasError):
    """An architecture string or file that does not fit its space."""


def _is_list(x) -> bool:
    return isinstance(x, (list, tuple))


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _kind(x) -> str:
    text = f"the string {x!r}" if isinstance(x, str) else f"{type(x).__name__} {x!r}"
    return text if len(text) <= 80 else text[:77] + "..."


def _expect(ok: bool, where: str, key: str, what: str, value) -> None:
    if not ok:
        raise ArchError(f"{where}: space field {key!r} must be {what}, got {_kind(value)}; "
                        "write the file with spnas or copy one it wrote")


@dataclass(frozen=True)
class SpaceSpec:
    """What a search space is, independent of any weights.

    tokens:  the choice vocabulary; a choice is an index into it.
    allowed: per layer, the choice indices that layer may take.
    stages:  number of searchable layers per stage (sums to the layer count).
    bars:    whether ``str(arch)`` writes ``|`` between stages.
    layout:  ``cifar`` or ``imagenet`` (strides); ``name`` picks the network.
    """

    name: str
    layout: str
    tokens: tuple[str, ...]
    allowed: tuple[tuple[int, ...], ...]
    stages: tuple[int, ...]
    bars: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.allowed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "space description") -> "SpaceSpec":
        """Read ``to_dict``'s form back, refusing a field of the wrong type by name."""
        if not isinstance(d, dict):
            raise ArchError(f"{where}: 'space' must be an object, got {_kind(d)}; "
                            "write the file with spnas or copy one it wrote")
        missing = [k for k in ("name", "layout", "tokens", "allowed", "stages") if k not in d]
        if missing:
            raise ArchError(f"{where}: the space lacks {', '.join(map(repr, missing))}; "
                            "write the file with spnas or copy one it wrote")
        for key in ("name", "layout"):
            _expect(isinstance(d[key], str), where, key, "a string", d[key])
        _expect(_is_list(d["tokens"]) and all(isinstance(t, str) for t in d["tokens"]),
                where, "tokens", "a list of strings", d["tokens"])
        _expect(_is_list(d["allowed"]) and all(_is_list(a) and all(map(_is_index, a))
                                               for a in d["allowed"]),
                where, "allowed", "a list of lists of choice indices", d["allowed"])
        _expect(_is_list(d["stages"]) and all(map(_is_index, d["stages"])),
                where, "stages", "a list of layer counts", d["stages"])
        _expect(isinstance(d.get("bars", False), bool), where, "bars", "true or false",
                d.get("bars"))
        return cls(name=d["name"], layout=d["layout"], tokens=tuple(d["tokens"]),
                   allowed=tuple(tuple(a) for a in d["allowed"]),
                   stages=tuple(d["stages"]), bars=d.get("bars", False))

    def stage_starts(self) -> set[int]:
        starts, i = set(), 0
        for n in self.stages[:-1]:
            i += n
            starts.add(i)
        return starts

    def describe(self) -> str:
        return f"{self.name}/{self.layout}, {self.num_layers} layers"


@dataclass(frozen=True)
class Arch:
    """One path through a space: ``choices[i]`` indexes ``space.tokens``."""

    space: SpaceSpec
    choices: tuple[int, ...] = field()

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(int(c) for c in self.choices))
        if len(self.choices) != self.space.num_layers:
            raise ArchError(f"{len(self.choices)} choices given for a space of "
                            f"{self.space.num_layers} layers ({self.space.describe()})")
        for i, c in enumerate(self.choices):
            if c not in self.space.allowed[i]:
                raise ArchError(f"layer {i} (token {i + 1}) cannot be "
                                f"{self._token_name(c)!r}; allowed: "
                                + " ".join(self.space.tokens[a] for a in self.space.allowed[i]))

    def _token_name(self, c: int) -> str:
        return self.space.tokens[c] if 0 <= c < len(self.space.tokens) else str(c)

    def __str__(self) -> str:
        starts = self.space.stage_starts() if self.space.bars else set()
        out = []
        for i, c in enumerate(self.choices):
            if i in starts:
                out.append("|")
            out.append(self.space.tokens[c])
        return " ".join(out)

    def __iter__(self):
        return iter(self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def __getitem__(self, i: int) -> int:
        return self.choices[i]

    # ---- parsing -----------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, space: SpaceSpec) -> "Arch":
        text = text.strip()
        if not text:
            raise ArchError("empty architecture string")
        if "," in text and "|" not in text:
            return cls._parse_indices(text, space)
        tokens = text.replace("|", " | ").split()
        starts, pos = space.stage_starts(), 0
        choices: list[int] = []
        for pos, tok in enumerate(tokens, start=1):
            if tok == "|":
                if len(choices) not in starts:
                    raise ArchError(f"token {pos}: '|' after layer {len(choices)} is not "
                                    f"a stage boundary (stages: {list(space.stages)})")
                continue
            if tok not in space.tokens:
                hint = ("; choice indices are written with commas ('0,1,3,...')"
                        if tok.isdigit() else "")
                raise ArchError(f"token {pos}: unknown choice {tok!r}; "
                                f"expected one of {' '.join(space.tokens)}{hint}")
            c = space.tokens.index(tok)
            layer = len(choices)
            if layer >= space.num_layers:
                raise ArchError(f"token {pos}: {tok!r} is one too many; the space "
                                f"has {space.num_layers} layers")
            if c not in space.allowed[layer]:
                raise ArchError(f"token {pos}: layer {layer} cannot be {tok!r}; allowed: "
                                + " ".join(space.tokens[a] for a in space.allowed[layer]))
            choices.append(c)
        if len(choices) != space.num_layers:
            raise ArchError(f"{len(choices)} layers given, the space "
                            f"({space.describe()}) has {space.num_layers}")
        return cls(space, tuple(choices))

    @classmethod
    def _parse_indices(cls, text: str, space: SpaceSpec) -> "Arch":
        items = [t.strip() for t in text.split(",")]
        for pos, t in enumerate(items, start=1):
            if not t.isdigit() or int(t) >= len(space.tokens):
                hint = (f"; choice tokens are written with spaces ('{space.tokens[0]} "
                        f"{space.tokens[-1]} ...'), choice indices with commas"
                        if t in space.tokens else "")
                raise ArchError(f"token {pos}: {t!r} is not a choice index "
                                f"0..{len(space.tokens) - 1}{hint}")
        return cls.parse(" ".join(space.tokens[int(t)] for t in items), space)

    # ---- files -------------------------------------------------------------------
    def to_json(self, found_by: dict | None = None, metrics: dict | None = None) -> dict:
        return {"space": self.space.to_dict(), "arch": str(self), "choices": list(self.choices),
                "found_by": found_by or {}, "metrics": metrics or {}}

    def save(self, path: str | Path, found_by: dict | None = None,
             metrics: dict | None = None) -> None:
        from spnas.files import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_json(found_by, metrics), indent=2) + "\n")

    @classmethod
    def from_json(cls, d: dict, where: str = "arch file") -> "Arch":
        """Read ``to_json``'s form; the space must be exactly its real space.

        A hand-edited space (a wider ``allowed``, another token, a wrong layer
        count) is refused naming the field, as are ``choices`` that disagree
        with ``arch``.
        """
        if not isinstance(d, dict) or "space" not in d or "arch" not in d:
            raise ArchError(f"{where}: an arch file needs 'space' and 'arch' entries")
        space = SpaceSpec.from_dict(d["space"], where)
        check_real_space(space, where)
        if not isinstance(d["arch"], str):
            raise ArchError(f"{where}: 'arch' must be a string such as "
                            f"'{' '.join(space.tokens[:3])} ...', "
                            f"got {_kind(d['arch'])}")
        try:
            arch = cls.parse(d["arch"], space)
        except ArchError as e:
            raise ArchError(f"{where}: 'arch': {e}") from None
        if "choices" in d and d["choices"] != list(arch.choices):
            raise ArchError(f"{where}: 'choices' {d['choices']} disagree with 'arch' "
                            f"({list(arch.choices)}); fix one of them or delete 'choices'")
        return arch

    @classmethod
    def load(cls, path: str | Path) -> "Arch":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ArchError(f"arch file {path} not found") from None
        except UnicodeDecodeError:
            raise ArchError(f"{path} is not an arch file (JSON text): a checkpoint? Give the "
                            "arch file a search or superkernel run wrote (best_arch.json, "
                            "arch.json), or fine-tune the checkpoint with spnas finetune") from None
        except (OSError, ValueError) as e:
            raise ArchError(f"cannot read arch file {path}: {e}") from None
        return cls.from_json(d, f"arch file {path}")

    # ---- search operators ----------------------------------------------------------
    @classmethod
    def sample(cls, space: SpaceSpec, rng: random.Random) -> "Arch":
        """Uniform over each layer's allowed choices."""
        return cls(space, tuple(rng.choice(a) for a in space.allowed))

    def mutate(self, rng: random.Random, prob: float) -> "Arch":
        """Redraw each layer's choice with probability ``prob`` (may redraw the same)."""
        return Arch(self.space, tuple(rng.choice(a) if rng.random() < prob else c
                                      for c, a in zip(self.choices, self.space.allowed)))

    def crossover(self, other: "Arch", rng: random.Random) -> "Arch":
        """Uniform crossover: each layer from either parent with probability 1/2."""
        if other.space != self.space:
            raise ArchError("crossover of archs from different spaces")
        return Arch(self.space, tuple(a if rng.random() < 0.5 else b
                                      for a, b in zip(self.choices, other.choices)))


def check_real_space(space: SpaceSpec, where: str) -> None:
    """Refuse a space read from a file that its space's builder would not make.

    The real space is built by ``spaces.make_space`` (imported here, when a
    file is read: the spaces import this module). Unknown names pass: they
    fail where a network is built, naming the known spaces.
    """
    from spnas.spaces import real_space_difference
    problem = real_space_difference(space)
    if problem:
        raise ArchError(f"{where}: {problem}; write the file with spnas or copy one it wrote")


def arch_from_text_or_file(text_or_path: str, space: SpaceSpec | None) -> Arch:
    """``--arch`` accepts an arch file (JSON) or a string of the given space."""
    p = Path(text_or_path)
    if text_or_path.endswith(".json") or (p.is_file() and space is None):
        arch = Arch.load(p)
        if space is not None and arch.space != space:
            raise ArchError(f"arch file {p} is for {arch.space.describe()}, "
                            f"expected {space.describe()}")
        return arch
    if space is None:
        raise ArchError("an arch string needs its space; pass an arch file (.json) instead")
    return Arch.parse(text_or_path, space)
