"""Architecture search: evolution (as in SPOS) and random sampling, under a cost budget.

The searches know nothing of networks or data: they take ``score(arch) -> dict``
(its ``"val_acc"`` is the fitness, higher is better) and ``cost(arch) -> dict``,
so any supernet with ``forward(x, arch)`` can be searched (``stages.search`` wires
up the supernet, the data and the output folder). A score with a ``many(archs)``
method and a ``width`` is handed ``width`` candidates at a time (``score_all``): that
is how a search is split across processes, one candidate each. Every candidate is
handed to ``on_candidate`` as soon as it is scored (a stopped search keeps them).

Both are pure functions of the seed and of the scores they are handed: every
draw comes from one ``random.Random(seed)``, and a score only decides which
candidates become parents. Handed the same scores, a search proposes the same
candidates in the same order; ``stages.search`` resumes a stopped search that way,
replaying the recorded scores.

Evolution (Guo et al. 2019, sec. 3.3): generation 0 is ``population`` uniform
random archs. Each later generation is ``population // 2`` mutations of a random
top-k parent (each layer redrawn with probability ``mutation_prob``), as many
uniform crossovers of two distinct top-k parents, and random archs for the
rest. The top-k are the best ``top_k`` candidates of all generations so far.
A proposal already seen or over the budget is rejected and drawn again, at most
``max_tries`` times per wanted candidate for mutation and crossover; the shortfall
is topped up with random archs. A search of a small space ends early when no
unseen arch within the budget can be found.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from spnas.arch import Arch, SpaceSpec
from spnas.config import SearchConfig
from spnas.engine.counting import CostTable
from spnas.engine.latency import LatencyTable
from spnas.errors import SpnasError

FITNESS = "val_acc"
MAX_REJECTS = 20000  # consecutive rejected random draws after which the space counts as exhausted

Score = Callable[[Arch], dict]
Cost = Callable[[Arch], dict]


def score_all(score: Score, archs: list[Arch]) -> list[dict]:
    """The scores of ``archs``, in order: ``score.many(archs)`` where the score has it."""
    many = getattr(score, "many", None)
    return list(many(archs)) if many is not None else [score(a) for a in archs]


# ---- costs and the budget ----------------------------------------------------------------
class CostModel:
    """Exact MACs (``flops``) and ``params`` of an arch's standalone network, and its latency.

    ``latency_ms`` is the latency table's prediction (None without a table).
    """

    def __init__(self, table: CostTable, latency: LatencyTable | None = None):
        if latency is not None and latency.space != table.space:
            raise SpnasError(f"the latency table is for {latency.space.describe()}, the search "
                             f"space is {table.space.describe()}; make a table for this space "
                             "with 'spnas latency-table --checkpoint CKPT'")
        self.table, self.latency = table, latency

    def __call__(self, arch: Arch) -> dict:
        return {"flops": self.table.arch_macs(arch), "params": self.table.arch_params(arch),
                "latency_ms": self.latency.predict(arch) if self.latency else None}

    def minimum(self) -> dict:
        """Each cost's smallest value over the space (every layer at its cheapest choice)."""
        t, lat = self.table, self.latency
        return {"flops": t.const_macs + sum(min(d.values()) for d in t.macs),
                "params": t.const_params + sum(min(d.values()) for d in t.params),
                "latency_ms": lat.minimum() if lat else None}

    def maximum(self) -> dict:
        """Each cost's largest value over the space (every layer at its dearest choice)."""
        t, lat = self.table, self.latency
        return {"flops": t.const_macs + sum(max(d.values()) for d in t.macs),
                "params": t.const_params + sum(max(d.values()) for d in t.params),
                "latency_ms": lat.maximum() if lat else None}


BUDGET_KEYS = {"flops": "max_flops", "params": "max_params", "latency_ms": "max_latency_ms"}


@dataclass(frozen=True)
class Budget:
    """Upper limits on costs; None = no limit."""

    max_flops: float | None = None       # multiply-accumulates
    max_params: float | None = None
    max_latency_ms: float | None = None  # as predicted by the latency table

    @classmethod
    def of(cls, cfg: SearchConfig) -> "Budget":
        return cls(cfg.max_flops, cfg.max_params, cfg.max_latency_ms)

    def excess(self, cost: dict) -> list[str]:
        """The names of the costs over their limit."""
        return [k for k, attr in BUDGET_KEYS.items()
                if getattr(self, attr) is not None and cost[k] > getattr(self, attr)]

    def admits(self, cost: dict) -> bool:
        return not self.excess(cost)


# ---- the record of a search --------------------------------------------------------------
@dataclass
class Candidate:
    arch: Arch
    generation: int
    origin: str          # random | mutation | crossover
    cost: dict
    score: dict = field(default_factory=dict)

    @property
    def fitness(self) -> float:
        return self.score[FITNESS]

    def to_json(self, index: int) -> dict:
        return {"index": index, "generation": self.generation, "origin": self.origin,
                "arch": str(self.arch), "choices": list(self.arch.choices), **self.cost,
                **self.score}


def rank_key(score: dict) -> tuple:
    """Sort key of a candidate's score (or its candidates.jsonl record): best first."""
    return -score[FITNESS], score.get("val_loss", 0.0)


def rank(candidates: list[Candidate], k: int | None = None) -> list[Candidate]:
    """Best first; equal fitness: lower ``val_loss`` first, then the earlier candidate."""
    return sorted(candidates, key=lambda c: rank_key(c.score))[:k]


class _Pool:
    """The candidates of one search: unique, within the budget, scored in proposal order."""

    def __init__(self, cost: Cost, budget: Budget, score: Score,
                 on_candidate: Callable[[Candidate], None] | None):
        self.cost, self.budget, self.score, self.on_candidate = cost, budget, score, on_candidate
        self.seen: set[tuple[int, ...]] = set()
        self.scored: list[Candidate] = []

    def draw(self, make: Callable[[], Arch], n: int, max_draws: int, origin: str,
             generation: int, in_a_row: bool = False) -> list[Candidate]:
        """Up to ``n`` new admissible candidates from ``make()``, within ``max_draws`` draws
        (``in_a_row``: ``max_draws`` rejected draws in a row)."""
        out: list[Candidate] = []
        draws = 0
        while len(out) < n and draws < max_draws:
            arch = make()
            draws += 1
            if arch.choices in self.seen:
                continue
            cost = self.cost(arch)
            if not self.budget.admits(cost):
                continue
            self.seen.add(arch.choices)
            out.append(Candidate(arch, generation, origin, cost))
            if in_a_row:
                draws = 0
        return out

    def evaluate(self, batch: list[Candidate]) -> list[Candidate]:
        width = max(1, getattr(self.score, "width", 1))
        for i in range(0, len(batch), width):
            part = batch[i:i + width]
            for cand, score in zip(part, score_all(self.score, [c.arch for c in part])):
                cand.score = dict(score)
                self.scored.append(cand)
                if self.on_candidate:
                    self.on_candidate(cand)
        return batch


def _random_fill(pool: _Pool, space: SpaceSpec, rng: random.Random, n: int,
                 generation: int) -> list[Candidate]:
    return pool.draw(lambda: Arch.sample(space, rng), n, MAX_REJECTS, "random", generation,
                     in_a_row=True)


def random_search(space: SpaceSpec, score: Score, cost: Cost, budget: Budget, num: int,
                  seed: int, on_candidate: Callable[[Candidate], None] | None = None
                  ) -> list[Candidate]:
    """``num`` distinct uniformly random archs within the budget, scored; in draw order."""
    rng = random.Random(seed)
    pool = _Pool(cost, budget, score, on_candidate)
    batch = _random_fill(pool, space, rng, num, 0)
    if not batch:
        raise SpnasError("no architecture within the budget was found; raise the budget")
    return pool.evaluate(batch)


def evolution_search(space: SpaceSpec, score: Score, cost: Cost, budget: Budget,
                     cfg: SearchConfig, seed: int,
                     on_candidate: Callable[[Candidate], None] | None = None,
                     on_generation: Callable[[int, list[Candidate], list[Candidate]], None] | None = None
                     ) -> list[Candidate]:
    """Evolution as the module docstring says; returns every candidate in scoring order.

    ``on_generation(g, new, top)`` is called after generation ``g`` with its
    candidates and the top-k so far.
    """
    rng = random.Random(seed)
    pool = _Pool(cost, budget, score, on_candidate)
    top: list[Candidate] = []
    half = cfg.population // 2
    for gen in range(cfg.generations):
        batch: list[Candidate] = []
        if top:
            batch += pool.draw(lambda: rng.choice(top).arch.mutate(rng, cfg.mutation_prob),
                               half, half * cfg.max_tries, "mutation", gen)
            batch += pool.draw(lambda: _crossover(top, rng), half, half * cfg.max_tries,
                               "crossover", gen)
        batch += _random_fill(pool, space, rng, cfg.population - len(batch), gen)
        if not batch:
            if gen == 0:
                raise SpnasError("no architecture within the budget was found; raise the budget")
            break  # every arch within the budget has been seen
        new = pool.evaluate(batch)
        top = rank(top + new, cfg.top_k)
        if on_generation:
            on_generation(gen, new, top)
    return pool.scored


def _crossover(top: list[Candidate], rng: random.Random) -> Arch:
    if len(top) < 2:
        return top[0].arch
    a, b = rng.sample(top, 2)
    return a.arch.crossover(b.arch, rng)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats: cheaper-or-equal and
    at least as accurate, better in one. Sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -float("inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
