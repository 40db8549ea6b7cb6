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

from .errors import SpnasError


class ArchError(SpnasError):
    """An architecture string or file that does not fit its space."""


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
    def from_dict(cls, d: dict) -> "SpaceSpec":
        try:
            return cls(name=d["name"], layout=d["layout"], tokens=tuple(d["tokens"]),
                       allowed=tuple(tuple(a) for a in d["allowed"]),
                       stages=tuple(d["stages"]), bars=bool(d.get("bars", False)))
        except (KeyError, TypeError) as e:
            raise ArchError(f"malformed space description ({e!r}); "
                            "write the arch file with spnas or copy one it wrote") from None

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
        starts, choices, pos = space.stage_starts(), [], 0
        for pos, tok in enumerate(tokens, start=1):
            if tok == "|":
                if len(choices) not in starts:
                    raise ArchError(f"token {pos}: '|' after layer {len(choices)} is not "
                                    f"a stage boundary (stages: {list(space.stages)})")
                continue
            if tok not in space.tokens:
                raise ArchError(f"token {pos}: unknown choice {tok!r}; "
                                f"expected one of {' '.join(space.tokens)}")
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
                raise ArchError(f"token {pos}: {t!r} is not a choice index "
                                f"0..{len(space.tokens) - 1}")
        return cls.parse(" ".join(space.tokens[int(t)] for t in items), space)

    # ---- files -------------------------------------------------------------------
    def to_json(self, found_by: dict | None = None, metrics: dict | None = None) -> dict:
        return {"space": self.space.to_dict(), "arch": str(self), "choices": list(self.choices),
                "found_by": found_by or {}, "metrics": metrics or {}}

    def save(self, path: str | Path, found_by: dict | None = None,
             metrics: dict | None = None) -> None:
        from .checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_json(found_by, metrics), indent=2) + "\n")

    @classmethod
    def from_json(cls, d: dict) -> "Arch":
        if not isinstance(d, dict) or "space" not in d or "arch" not in d:
            raise ArchError("an arch file needs 'space' and 'arch' entries")
        return cls.parse(str(d["arch"]), SpaceSpec.from_dict(d["space"]))

    @classmethod
    def load(cls, path: str | Path) -> "Arch":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ArchError(f"arch file {path} not found") from None
        except (OSError, ValueError) as e:
            raise ArchError(f"cannot read arch file {path}: {e}") from None
        return cls.from_json(d)

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
