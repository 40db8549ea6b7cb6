import json
import math
import random

import pytest
import torch

from spnas.arch import Arch
from spnas.checkpoint import load_checkpoint
from spnas.cli import main
from spnas.cost import LatencyTable, count_macs, macs_latency_table
from spnas.runlog import read_metrics
from spnas.spaces import build_child, model_from_checkpoint
from spnas.spaces.mbconv import SuperkernelNet, arch_gates, mbconv_space
from spnas.superkernel import LatencyModel, latency_penalty, search_param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_table(layout: str = "imagenet", seed: int = 0, skip_ms: float = 0.0) -> LatencyTable:
    """A 'measured' table with random per-layer milliseconds (batch 1 at 32x32 on the CPU)."""
    space = mbconv_space(layout)
    rng = random.Random(seed)
    layers = []
    for allowed in space.allowed:  # k3e3 < k3e6, k5e3 < k5e6; k5e6 is not k3e6 * k5e3 / k3e3
        b, x, y, z = (rng.uniform(*r) for r in ((0.1, 1.0), (1.5, 2.2), (1.05, 1.5), (0.96, 1.1)))
        row = {"k3e3": b, "k3e6": b * x, "k5e3": b * y, "k5e6": b * x * y * z, "skip": skip_ms}
        layers.append({c: row[space.tokens[c]] for c in allowed})
    return LatencyTable(space, "cpu", "test CPU", 1, 32, 1, 1.5, layers)


def paper_formula_by_hand(table: LatencyTable, arch: Arch) -> float:
    """The paper's formula at hard gates, option by option (skip costs 0)."""
    total = table.constant
    for i, c in enumerate(arch):
        r = {table.space.tokens[k]: v for k, v in table.layers[i].items()}
        token = table.space.tokens[c]
        if token == "k3e3":
            total += r["k5e3"] * r["k3e6"] / r["k5e6"]
        elif token != "skip":
            total += r[token]
    return total


@pytest.mark.parametrize("scale", [1.0, 1.25])
def test_latency_formulas_at_hard_gates_against_the_table(scale):
    table = synthetic_table(skip_ms=0.01)
    table.scale = scale  # a calibrated table: both sides scale alike
    paper, exact = LatencyModel(table, "paper"), LatencyModel(table, "exact")
    rng = random.Random(1)
    for _ in range(25):
        arch = Arch.sample(table.space, rng)
        assert exact.of_arch(arch) == pytest.approx(table.predict(arch), rel=1e-12)
        assert paper.of_arch(arch) == pytest.approx(scale * paper_formula_by_hand(table, arch),
                                                    rel=1e-12)
    # without k3e3 layers and with free skips, the paper's formula is the table lookup too
    no_k3e3 = synthetic_table()
    space = no_k3e3.space
    for _ in range(10):
        arch = Arch(space, tuple(rng.choice([c for c in a if space.tokens[c] != "k3e3"])
                                 for a in space.allowed))
        expected = no_k3e3.predict(arch)
        assert LatencyModel(no_k3e3).of_arch(arch) == pytest.approx(expected, rel=1e-12)


def test_latency_formula_is_differentiable_and_rises_with_each_gate():
    table = synthetic_table()
    for formula in ("paper", "exact"):
        gates = arch_gates(Arch.sample(table.space, random.Random(0))).double().requires_grad_()
        LatencyModel(table, formula)(gates).backward()
        assert torch.isfinite(gates.grad).all()
        assert (gates.grad[:, 1] > 0).all()  # d_e3 on always costs (where it can be off)
        on = gates.detach()[:, 1] == 1
        assert (gates.grad[on][:, [0, 2]] > 0).all()  # 5x5 and expansion 6 cost more


def test_penalty_plain_and_above_a_target():
    r = torch.tensor(50.0, requires_grad=True)
    for target, value, grad in ((None, 0.1 * math.log(50), 0.1 / 50), (60.0, 0.0, 0.0),
                                (40.0, 0.1 * math.log(50 / 40), 0.1 / 50)):
        r.grad = None
        p = latency_penalty(r, 0.1, target)
        p.backward()
        assert p.item() == pytest.approx(value) and r.grad.item() == pytest.approx(grad)


def test_thresholds_have_their_own_group_without_weight_decay():
    model = SuperkernelNet(mbconv_space("imagenet"), 10)
    groups = search_param_groups(model, 4e-5, 7.0)
    thresholds = {id(t) for t in model.thresholds()}
    assert {id(p) for p in groups[-1]["params"]} == thresholds and len(thresholds) == 20
    assert groups[-1]["weight_decay"] == 0.0 and groups[-1]["lr_scale"] == 7.0
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(p.dim() > 1 for p in decayed)


def test_macs_table_sums_to_counting_the_whole_network():
    space = mbconv_space("imagenet")
    table = macs_latency_table(space, lambda a: build_child(a, 10), 10, resolution=32)
    assert table.unit == "MMAC" and table.to_json()["unit"] == "MMAC"
    arch = Arch.sample(space, random.Random(3))
    whole = count_macs(build_child(arch, 10).eval(), torch.zeros(1, 3, 32, 32)) / 1e6
    assert table.predict(arch) == pytest.approx(whole, rel=1e-9)


def search_argv(data, save, exp, **over):
    flags = {"--exp_name": exp, "--save_path": save, "--data_path": data, "--no-download": None,
             "--classes": 10, "--val_size": 50, "--batch_size": 8, "--epochs": 1,
             "--num_steps": 5, "--print_freq": 1, "--layout": "imagenet", "--seed": 0,
             "--warmup_frac": 0.4, "--lam": 5.0, "--threshold_lr_scale": 1000.0}
    flags.update(over)
    argv = ["superkernel"]
    for k, v in flags.items():
        argv += [k] if v is None else [k, str(v)]
    return argv


def test_search_with_a_large_lambda_shrinks_the_network(fake_cifar, tmp_path):
    assert main(search_argv(fake_cifar, tmp_path, "s")) == 0
    run = tmp_path / "s"
    records = read_metrics(run)
    train = [r for r in records if r["type"] == "train"]
    decided = {r["step"]: r for r in records if r["type"] == "decisions"}
    assert sorted(decided) == [1, 2, 3, 4, 5]
    for r in train:  # warm-up (steps 1-2): lambda 0; then CE + lambda ln(R)
        penalty = 0.0 if r["step"] <= 2 else 5.0 * math.log(r["latency"])
        assert r["loss"] == pytest.approx(r["ce"] + penalty, rel=1e-5)
    assert decided[5]["latency"] < decided[2]["latency"]
    arch = Arch.load(run / "arch.json")
    info = json.loads((run / "arch.json").read_text())
    assert str(arch) == decided[5]["arch"] and info["found_by"]["method"] == "superkernel"
    table = macs_latency_table(arch.space, lambda a: build_child(a, 10), 10, resolution=32)
    assert info["metrics"]["latency"] == pytest.approx(table.predict(arch))
    assert info["metrics"]["latency_unit"] == "MMAC"
    assert "measured_latency_ms" not in info["metrics"]  # MACs: nothing to measure
    for png in ("latency.png", "decisions.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    model = model_from_checkpoint(load_checkpoint(run / "last.pt", kinds=("superkernel",)))
    assert isinstance(model, SuperkernelNet) and model.decode() == arch


def test_search_with_a_measured_table_and_a_target(fake_cifar, tmp_path):
    table = synthetic_table()
    table.save(tmp_path / "table.json")
    top = table.predict(Arch(table.space, (3,) * 20))  # all k5e6
    argv = search_argv(fake_cifar, tmp_path, "t", **{
        "--latency_table": tmp_path / "table.json", "--target_latency_ms": top * 2,
        "--num_steps": 2, "--warmup_frac": 0, "--latency_formula": "exact"})
    assert main(argv) == 0
    info = json.loads((tmp_path / "t" / "arch.json").read_text())
    assert info["found_by"]["latency_table"] == str(tmp_path / "table.json")
    assert info["metrics"]["latency_unit"] == "ms" and info["metrics"]["measured_latency_ms"] > 0
    train = [r for r in read_metrics(tmp_path / "t") if r["type"] == "train"]
    assert all(r["loss"] == pytest.approx(r["ce"]) for r in train)  # below the target: no penalty


@pytest.mark.parametrize("over, message", [
    ({"--target_latency_ms": 5}, "--target_latency_ms needs a table in ms"),
    ({"--latency_table": "missing.json"}, "latency table missing.json not found"),
    ({"--layout": "cifar", "--latency_table": "TABLE"}, "is for mbconv/imagenet, 20 layers"),
    ({"--keep_prob": 1.5}, "--keep_prob in (0, 1]"),
])
def test_bad_search_flags_are_one_line_errors(fake_cifar, tmp_path, capsys, over, message):
    synthetic_table().save(tmp_path / "table.json")
    over = {k: (tmp_path / "table.json" if v == "TABLE" else v) for k, v in over.items()}
    assert main(search_argv(fake_cifar, tmp_path, "x", **over)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "last.pt").exists()
