import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch

from spnas.arch import Arch
from spnas.cli import build_parser, main
from spnas.cli.superkernel import superkernel_config
from spnas.defaults import RECIPES, SuperkernelStage, superkernel_recipe
from spnas.engine.checkpoint import load_checkpoint, model_from_checkpoint
from spnas.engine.counting import count_macs
from spnas.engine.latency import LatencyTable, macs_latency_table
from spnas.engine.runlog import read_metrics
from spnas.engine.schedule import effective_optim, lr_at
from spnas.fields import to_flat
from spnas.spaces import build_child
from spnas.spaces.mbconv import SuperkernelNet, arch_gates, mbconv_space
from spnas.stages.superkernel import (
    LatencyModel,
    RMSpropTF,
    build_task,
    latency_penalty,
    make_ema,
    optimizer_factory,
    search_param_groups,
)

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


@pytest.mark.parametrize("over, said", [
    ({"--target_mmacs": 1}, "WARNING: the target latency 1 MMAC is below the cheapest network's"),
    ({"--target_mmacs": 1e5}, "WARNING: the target latency 100000 MMAC is above the dearest "
                              "network's"),
    ({"--warmup_frac": 1, "--threshold_lr_scale": 1e-9},  # the thresholds stay at 0: all k5e6
     "every layer stayed k5e6: the warm-up (--warmup_frac) covered every step"),
])
def test_a_search_that_cannot_trade_latency_says_why(fake_cifar, tmp_path, over, said):
    argv = search_argv(fake_cifar, tmp_path, "t", **{"--num_steps": 2, **over})
    assert main(argv) == 0
    log = (tmp_path / "t" / "train.log").read_text()
    assert said in log, log[-600:]
    assert ("WARNING: the target" in log) == ("--target_mmacs" in over)


@pytest.mark.parametrize("side, over", [(32, {}), (224, {})])
def test_a_table_timed_on_other_inputs_is_warned_of(fake_cifar, tmp_path, side, over):
    table = synthetic_table()
    table.resolution = side
    table.save(tmp_path / "table.json")
    argv = search_argv(fake_cifar, tmp_path, "t", **{
        "--latency_table": tmp_path / "table.json", "--num_steps": 1, "--epochs": 1, **over})
    assert main(argv) == 0
    log = (tmp_path / "t" / "train.log").read_text()
    assert ("WARNING: the latency table was measured at" in log) == (side != 32)
    assert ("measured at 224x224, the networks take 32x32" in log) == (side != 32)
    assert "spnas latency-table --space mbconv --layout imagenet --resolution 32" in log \
        or side == 32


@pytest.mark.parametrize("over, message", [
    ({"--target_latency_ms": 5}, "--target_latency_ms needs a table in ms"),
    ({"--latency_table": "missing.json"}, "latency table missing.json not found"),
    ({"--layout": "cifar", "--latency_table": "TABLE"}, "is for mbconv/imagenet, 20 layers"),
    ({"--keep_prob": 1.5}, "--keep_prob must be in (0, 1], got 1.5"),
])
def test_bad_search_flags_are_one_line_errors(fake_cifar, tmp_path, capsys, over, message):
    synthetic_table().save(tmp_path / "table.json")
    over = {k: (tmp_path / "table.json" if v == "TABLE" else v) for k, v in over.items()}
    assert main(search_argv(fake_cifar, tmp_path, "x", **over)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "last.pt").exists()


# ---- the recipes ---------------------------------------------------------------------------
def configs(*flags: str):
    """(TrainConfig) of ``spnas superkernel FLAGS`` with the recipe applied, as the CLI does."""
    return superkernel_config(build_parser().parse_args(["superkernel", *flags]))


def tiny_groups():
    return [{"params": [torch.zeros(3, requires_grad=True)], "weight_decay": 0.0},
            {"params": [torch.zeros(2, requires_grad=True)], "weight_decay": 0.0, "lr_scale": 7.0}]


def applied_lrs(cfg, steps_per_epoch: int, steps: list[int]) -> dict[int, float]:
    """The lr each step is taken with, driving the Task's optimizer as the Trainer does
    (lr_batch scaled to the batch, one process)."""
    o, _ = effective_optim(cfg.optim, world=1)
    opt = optimizer_factory(cfg.model)(tiny_groups(), o)
    total, seen = o.epochs * steps_per_epoch, {}
    def record(opt, args, kwargs):
        seen[len(seen)] = opt.param_groups[0]["lr"]
    opt.register_step_pre_hook(record)
    for step in range(max(steps) + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, o, steps_per_epoch) * g.get("lr_scale", 1.0)
            for p in g["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
    return {s: seen[s] for s in steps}


def test_stage_defaults_are_the_papers_in_both_recipes():
    for recipe in RECIPES:
        cfg = configs("--recipe", recipe)
        sk = cfg.model
        assert (cfg.optim.epochs, sk.warmup_frac, sk.keep_prob) == (8, 0.625, 0.6)
        assert (cfg.optim.label_smoothing, sk.dropout, sk.latency_formula) == (0.1, 0.2, "paper")
    # the dataclass defaults are the spnas recipe (one set of defaults), every key a setting
    defaults, spnas = to_flat(SuperkernelStage()), RECIPES["spnas"]
    assert {k: defaults[k] for k in spnas} == spnas
    assert set(RECIPES["paper"]) == set(spnas)
    assert to_flat(superkernel_recipe("paper")) == to_flat(configs("--recipe", "paper"))


def test_paper_recipe_sets_every_row_of_the_comparison(tmp_path):
    cfg = configs("--recipe", "paper", "--batch_size", "256")
    sk, o = cfg.model, cfg.optim
    assert sk.recipe == "paper" and (sk.lam, sk.lam_scale) == (0.02, 1000.0)
    # optimizer: TF1 RMSProp, decay 0.9, momentum 0.9, eps 1e-3
    opt = optimizer_factory(sk)(tiny_groups(), o)
    assert type(opt) is RMSpropTF and (o.momentum, sk.rmsprop_alpha, sk.rmsprop_eps) == (0.9, 0.9, 1e-3)
    # lr 0.064 per 1024 images, scaled to 256 (0.016, the official base lr), constant, x0.97
    # every 2.4 epochs (staircase): at 10 steps/epoch, steps 0-23 x1, 24-47 x0.97, 48- x0.97^2
    scaled, note = effective_optim(o, world=1)
    assert scaled.lr == pytest.approx(0.016) and scaled.lr_batch is None and "1024" in note
    assert o.lr == 0.064 and o.lr_batch == 1024  # the config keeps the settings as given
    lrs = applied_lrs(cfg, 10, [0, 23, 24, 47, 48, 79])
    assert [lrs[s] / 0.016 for s in (0, 23, 24, 47, 48, 79)] == pytest.approx(
        [1, 1, 0.97, 0.97, 0.97 ** 2, 0.97 ** 3])
    torch.manual_seed(0)
    net = SuperkernelNet(mbconv_space("imagenet"), 10, sk.dropout, sk.mask_at, sk.bn_eps,
                         sk.bn_momentum, sk.init)
    # BN eps 1e-3 and TF decay 0.99 = torch momentum 0.01
    assert {(m.eps, m.momentum) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == \
        {(1e-3, 0.01)}
    # depthwise init: normal with fan-out k k, part norms about 10-38
    assert 9 < net.layers[0].dw[0].weight.mul(net.layers[0].ring_mask).norm() < 13
    assert sk.mask_at == "kernel"
    # weight decay 1e-5 on every non-BN variable; thresholds at the weights' lr, decay 1e-5
    groups = search_param_groups(net, o.weight_decay, sk.threshold_lr_scale,
                                 sk.threshold_weight_decay, sk.weight_decay_on)
    decay = {id(p) for g in groups if g["weight_decay"] == 1e-5 for p in g["params"]}
    bn = {id(p) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert decay == {id(p) for p in net.parameters()} - bn and id(net.head[-1].bias) in decay
    assert groups[-1]["lr_scale"] == 1.0 and groups[-1]["weight_decay"] == 1e-5
    # the Task: dropout rescaled in warm-up only, lambda x 1e3 x ln R after it, an EMA evaluated
    table = synthetic_table()
    ema = make_ema(net, sk)
    task = build_task(net, table, cfg, 80, 10, lambda m, s: {}, ema)
    calls = []
    task.forward(lambda x, **kw: calls.append(kw), None, 49)
    task.forward(lambda x, **kw: calls.append(kw), None, 50)
    assert calls == [{"keep_prob": 0.6, "rescale": True}, {"keep_prob": 1.0, "rescale": True}]
    logits, labels = torch.randn(4, 10), torch.arange(4)
    loss, extra = task.loss(logits, labels, 50)
    r = LatencyModel(table, "paper")(net.gates())
    assert loss.item() == pytest.approx(extra["ce"].item() + 0.02 * 1e3 * math.log(r.item()), rel=1e-6)
    assert lr_at(50, 80, scaled, 10) == pytest.approx(0.016 * 0.97 ** 2)
    assert task.deploy is ema.deploy and sk.ema_decay == 0.9999
    assert ema.decay_at(0) == pytest.approx(2 / 11) and ema.decay_at(10 ** 6) == 0.9999


def test_spnas_recipe_keeps_its_choices_and_explicit_flags_override_a_recipe():
    cfg = configs()
    sk, o = cfg.model, cfg.optim
    assert (sk.recipe, sk.optimizer, o.decay_factor, o.lr_batch, sk.ema_decay) == \
        ("spnas", "sgd", None, None, 0.0)
    assert (o.lr, o.schedule, o.weight_decay, sk.threshold_lr_scale, sk.threshold_weight_decay) == \
        (0.05, "cosine", 4e-5, 100.0, 0.0)
    assert (sk.lam, sk.lam_scale, sk.gate_dropout_rescale, sk.mask_at, sk.init) == \
        (0.1, 1.0, False, "activation", "spnas")
    assert (sk.bn_eps, sk.bn_momentum, sk.weight_decay_on) == (1e-5, 0.1, "weights")
    opt = optimizer_factory(sk)(tiny_groups(), o)
    assert type(opt) is torch.optim.SGD
    lrs = applied_lrs(cfg, 10, [0, 30, 79])  # cosine over 80 steps, to 0
    cosine = [0.05 * 0.5 * (1 + math.cos(math.pi * s / 80)) for s in (0, 30, 79)]
    assert [lrs[s] for s in (0, 30, 79)] == pytest.approx(cosine)
    mixed = configs("--recipe", "paper", "--optimizer", "sgd", "--lam", "0.5", "--mask_at",
                    "activation", "--no-gate_dropout_rescale", "--lr", "0.1")
    assert (mixed.model.optimizer, mixed.model.lam, mixed.model.mask_at) == ("sgd", 0.5, "activation")
    assert not mixed.model.gate_dropout_rescale and mixed.optim.lr == 0.1
    assert (mixed.model.lam_scale, mixed.model.init, mixed.model.bn_eps) == (1000.0, "paper", 1e-3)


def test_rmsprop_tf_is_tf1s_update_rule():
    """ms starts at 1; mom = 0.9 mom + lr g / sqrt(ms + eps) (eps inside); w -= mom; L2 in g."""
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = RMSpropTF([w], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=0.01)
    ref_w, ms, mom = torch.tensor([1.0, -2.0]), torch.ones(2), torch.zeros(2)
    for grad in ([0.5, 0.1], [-0.2, 0.003], [0.0, 1e-4]):
        g = torch.tensor(grad) + 0.01 * ref_w
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.9 * mom + 0.1 * g / torch.sqrt(ms + 1e-3)
        ref_w = ref_w - mom
        w.grad = torch.tensor(grad)
        opt.step()
        torch.testing.assert_close(w.detach(), ref_w)


def test_staircase_and_constant_schedule_are_pure_functions_of_the_step():
    """lr_at holds the paper's schedule (constant x 0.97 every 2.4 epochs, staircase), so a
    resumed run, whose step comes back from last.pt, continues it exactly; no optimizer state."""
    o, _ = effective_optim(configs("--recipe", "paper").optim)
    assert (o.schedule, o.decay_factor, o.decay_epochs) == ("constant", 0.97, 2.4)
    lrs = [lr_at(s, 80, o, 10) for s in range(80)]
    assert lrs[:24] == [o.lr] * 24 and lrs[24] == pytest.approx(o.lr * 0.97)
    assert lrs[30] == pytest.approx(o.lr * 0.97) and lrs[79] == pytest.approx(o.lr * 0.97 ** 3)
    cosine = configs().optim  # the staircase multiplies any schedule, the warm-up included
    stair = dataclasses.replace(cosine, decay_factor=0.5, decay_epochs=1.0, warmup_epochs=1.0)
    for s in (0, 9, 10, 25, 39):
        plain = lr_at(s, 40, dataclasses.replace(stair, decay_factor=None), 10)
        assert lr_at(s, 40, stair, 10) == pytest.approx(plain * 0.5 ** (s // 10))


def _flat_yaml(path):
    """The recipe files are flat 'flag: value' lists (no YAML loader in spnas yet)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        literal = {"true": True, "false": False, "null": None}
        if value in literal:
            out[key] = literal[value]
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value.strip("'\"")
    return out


@pytest.mark.parametrize("recipe", ["spnas", "paper"])
def test_recipe_files_match_the_preset_table(recipe):
    path = Path(__file__).resolve().parents[1] / "recipes" / f"superkernel_{recipe}.yaml"
    assert _flat_yaml(path) == {"recipe": recipe, **RECIPES[recipe]}
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(path.read_text()) == {"recipe": recipe, **RECIPES[recipe]}
    # a valid --config: the same settings as --recipe
    assert to_flat(configs("--config", str(path))) == to_flat(configs("--recipe", recipe))


def test_search_with_the_paper_recipe(fake_cifar, tmp_path):
    """End to end: lr scaled to the batch and decayed in steps, lambda x 1e3, the EMA
    shipped as the checkpoint's model and evaluated, the trained weights beside it."""
    argv = search_argv(fake_cifar, tmp_path, "p", **{"--recipe": "paper", "--epochs": 3,
                                                     "--num_steps": 2, "--warmup_frac": 0.5,
                                                     "--lam": 0.02})
    i = argv.index("--threshold_lr_scale")  # the recipe's (1.0), not search_argv's
    del argv[i:i + 2]
    assert main(argv) == 0
    run = tmp_path / "p"
    config = json.loads((run / "config.json").read_text())  # the settings as given
    assert (config["optim"]["lr"], config["optim"]["lr_batch"]) == (0.064, 1024)
    assert config["model"]["recipe"] == "paper" and config["model"]["optimizer"] == "rmsprop_tf"
    train = {r["step"]: r for r in read_metrics(run) if r["type"] == "train"}
    assert train[5]["lr"] == pytest.approx(0.0005) and train[6]["lr"] == pytest.approx(0.0005 * 0.97)
    for step in (4, 5, 6):  # warm-up: steps 1-3
        assert train[step]["loss"] == pytest.approx(
            train[step]["ce"] + 20 * math.log(train[step]["latency"]), rel=1e-5)
    ckpt = load_checkpoint(run / "last.pt", kinds=("superkernel",))
    assert ckpt["train_model"] is not None and ckpt["model_args"]["bn_eps"] == 1e-3
    ema = model_from_checkpoint(ckpt)
    assert ema.layers[0].dw[1].eps == 1e-3
    key = "layers.0.dw.0.weight"
    assert not torch.equal(ckpt["model"][key], ckpt["train_model"][key])


@pytest.mark.slow
def test_the_paper_recipe_resumes_exactly_across_a_staircase_step(fake_cifar, tmp_path):
    """Stopped at step 3 and resumed (same flags): the same lrs (x0.97 from step 6 on),
    losses and weights as the run that was never stopped."""
    over = {"--recipe": "paper", "--epochs": 3, "--num_steps": 2, "--warmup_frac": 0.5,
            "--lam": 0.02}
    assert main(search_argv(fake_cifar, tmp_path, "full", **over)) == 0
    assert main(search_argv(fake_cifar, tmp_path, "part", **over, **{"--stop_after": 3})) == 0
    assert main(search_argv(fake_cifar, tmp_path, "part", **over, **{"--resume": None})) == 0
    full, part = ({r["step"]: (r["lr"], r["loss"]) for r in read_metrics(tmp_path / name)
                   if r["type"] == "train"} for name in ("full", "part"))
    assert part == full and sorted(full) == [1, 2, 3, 4, 5, 6]
    assert full[6][0] == pytest.approx(full[5][0] * 0.97)
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("full", "part"))
    assert all(torch.equal(a[key][k], b[key][k]) for key in ("model", "train_model")
               for k in a[key])

