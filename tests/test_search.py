"""The search algorithms on toy fitness functions: no networks, no data."""
import random

import pytest

from spnas.arch import Arch, SpaceSpec
from spnas.config import SearchConfig
from spnas.engine.counting import build_cost_table
from spnas.engine.evolution import Budget, CostModel, evolution_search, pareto_front, random_search, rank
from spnas.engine.latency import LatencyTable, macs_latency_table
from spnas.errors import SpnasError
from spnas.spaces import build_child
from spnas.spaces.spos import spos_space


def free(arch):
    return {"flops": 0, "params": 0, "latency_ms": None}


def matches(target):
    """Fitness: how many layers agree with ``target`` (its optimum is ``target`` alone)."""
    return lambda arch: {"val_acc": sum(a == b for a, b in zip(arch, target))}


def test_evolution_finds_the_optimum_far_faster_than_random_sampling():
    space = spos_space(layers=12)
    target = Arch.sample(space, random.Random(42))
    score = matches(target)
    evo = evolution_search(space, score, free, Budget(), SearchConfig(), seed=0)
    first_hit = next(i for i, c in enumerate(evo) if c.fitness == 12)
    rnd = random_search(space, score, free, Budget(), len(evo), seed=0)
    assert len(evo) == len(rnd) == 1000
    # random sampling needs 4**12 = 16.8M draws on average to hit the optimum
    assert first_hit < 600 and max(c.fitness for c in rnd) <= 10
    assert rank(evo)[0].arch == target


@pytest.fixture(scope="module")
def costs():
    space = spos_space(layers=8)
    table = build_cost_table(space, lambda a: build_child(a, 10), 10)
    rng = random.Random(0)
    latency = LatencyTable(space, "cpu", "test", 1, 32, 1, 0.5,
                           [{c: rng.uniform(0.1, 1.0) for c in range(4)} for _ in range(8)])
    return CostModel(table, latency)


@pytest.mark.parametrize("method", ["evolution", "random"])
def test_the_budget_is_never_exceeded(costs, method):
    space = costs.table.space
    sample = [costs(Arch.sample(space, random.Random(i))) for i in range(50)]
    mid = {k: sorted(c[k] for c in sample)[25] for k in ("flops", "params", "latency_ms")}
    budget = Budget(mid["flops"], mid["params"] * 1.05, mid["latency_ms"] * 1.1)
    greedy = lambda arch: {"val_acc": costs(arch)["flops"]}  # noqa: E731  rewards going over
    cfg = SearchConfig(population=20, top_k=5, generations=6)
    if method == "evolution":
        found = evolution_search(space, greedy, costs, budget, cfg, seed=1)
    else:
        found = random_search(space, greedy, costs, budget, 120, seed=1)
    assert len(found) == 120
    for c in found:
        assert c.cost == costs(c.arch) and budget.admits(c.cost)
        assert c.cost["flops"] <= budget.max_flops and c.cost["params"] <= budget.max_params
        assert c.cost["latency_ms"] <= budget.max_latency_ms
    assert max(c.cost["flops"] for c in found) > 0.97 * budget.max_flops  # the limit was hit


def test_mutation_and_crossover_only_produce_valid_new_archs():
    """In a space whose layers allow different choices, every candidate is valid and new."""
    allowed = ((0, 1), (1, 2, 3), (0, 3), (2,), (0, 1, 2, 3), (1, 3)) * 2
    space = SpaceSpec("spos", "cifar", ("k3", "k5", "k7", "x"), allowed, (6, 6))
    target = tuple(a[-1] for a in allowed)
    cfg = SearchConfig(population=16, top_k=4, generations=8)
    found = evolution_search(space, matches(target), free, Budget(), cfg, seed=3)
    assert {"random", "mutation", "crossover"} <= {c.origin for c in found}
    assert len({c.arch.choices for c in found}) == len(found) == 128
    for c in found:
        assert all(ch in allowed[i] for i, ch in enumerate(c.arch.choices))
        assert Arch.parse(str(c.arch), space) == c.arch
    assert [c.generation for c in found] == sorted(c.generation for c in found)


def test_a_search_is_a_pure_function_of_its_seed_and_scores():
    space = spos_space(layers=10)
    score = matches(Arch.sample(space, random.Random(5)))
    cfg = SearchConfig(population=10, top_k=3, generations=4)
    runs = [[(str(c.arch), c.origin) for c in evolution_search(space, score, free, Budget(), cfg, s)]
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_a_small_space_ends_when_every_arch_was_seen():
    space = spos_space(layers=2, num_choices=2)  # 4 archs
    found = evolution_search(space, matches((1, 1)), free, Budget(), SearchConfig(), seed=0)
    assert sorted(c.arch.choices for c in found) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_an_impossible_budget_is_an_error(costs):
    with pytest.raises(SpnasError, match="no architecture within the budget"):
        random_search(costs.table.space, matches((0,) * 8), costs, Budget(max_flops=1), 5, 0)


def test_cheapest_costs_equal_the_minimum_over_all_archs():
    space = spos_space(layers=3)
    child = lambda a: build_child(a, 10)  # noqa: E731
    latency = macs_latency_table(space, child, 10)
    latency.scale = 1.3  # a calibrated table: the minimum is scaled like every prediction
    model = CostModel(build_cost_table(space, child, 10), latency)
    every = [model(Arch(space, (a, b, c))) for a in range(4) for b in range(4) for c in range(4)]
    least = model.minimum()
    assert least["flops"] == min(c["flops"] for c in every)
    assert least["params"] == min(c["params"] for c in every)
    assert least["latency_ms"] == pytest.approx(min(c["latency_ms"] for c in every), rel=1e-12)


def test_pareto_front():
    points = [(3, 0.5), (1, 0.2), (2, 0.6), (2, 0.4), (4, 0.6), (5, 0.9), (1, 0.1)]
    assert pareto_front(points) == [1, 2, 5]


@pytest.mark.parametrize("side", [32, 64])
def test_the_search_warns_of_a_latency_table_timed_on_other_inputs(tmp_path, side):
    from spnas.engine.runlog import RunLog
    from spnas.stages.search import cost_model
    space = spos_space(layers=2)
    table = LatencyTable(space, "cpu", "test CPU", 1, side, 1, 0.5,
                         [{c: 0.1 * (c + 1) for c in range(4)} for _ in range(2)])
    table.save(tmp_path / "lat.json")
    costs = cost_model(space, 10, 32, str(tmp_path / "lat.json"), RunLog(tmp_path, console=False))
    assert costs.latency is not None and costs.latency.resolution == side
    log = (tmp_path / "train.log").read_text()
    assert ("WARNING: the latency table was measured at 64x64, the networks take 32x32" in log) \
        == (side == 64)
    assert ("spnas latency-table --space spos --layout cifar --option layers=2 --resolution 32"
            in log) == (side == 64)
