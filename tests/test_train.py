import json
import math
import os
import signal
import sys

import pytest
import torch
from conftest import cli_argv
from torch import nn

from spnas.cli import main
from spnas.config import OptimConfig, RunConfig
from spnas.data.augment import AugmentConfig, BatchTransform
from spnas.data.loading import DeviceLoader
from spnas.engine.checkpoint import load_checkpoint, model_from_checkpoint
from spnas.engine.evaluation import evaluate, plain_forward, recalibrate_bn
from spnas.engine.runlog import read_metrics
from spnas.engine.schedule import lr_at, param_groups
from spnas.engine.signals import StopSignals, Terminated, shutdown_timeout, slow_stop_note
from spnas.engine.trainer import eval_mode_note, most_steps_between_looks
from spnas.spaces.spos import SposSupernet, spos_space
from spnas.stages.train import sample_path


def test_cosine_and_linear_schedules_with_warmup():
    cfg = OptimConfig(lr=0.1, warmup_epochs=1, min_lr=0.0)
    lrs = [lr_at(s, 100, cfg, steps_per_epoch=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    mid = lr_at(55, 100, cfg, 10)  # halfway through the cosine part
    assert mid == pytest.approx(0.05)
    lin = OptimConfig(lr=0.1, schedule="linear")
    assert lr_at(50, 100, lin, 10) == pytest.approx(0.05)


def test_weight_decay_only_on_weights():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    decay, no_decay = param_groups(net, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
    assert all(p.dim() > 1 for p in decay["params"]) and len(decay["params"]) == 2
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias


def test_recalibration_gives_exactly_the_set_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, affine=False))
    images = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(5)]
    net[1].running_mean.fill_(7.0)
    assert recalibrate_bn(net, plain_forward, images) == 2
    first = torch.cat([net[0](x) for x in images])  # BN 1's inputs, directly
    torch.testing.assert_close(net[1].running_mean, first.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, first.var((0, 2, 3), unbiased=True),
                               rtol=1e-4, atol=1e-5)
    net.train()  # BN 2 sees BN 1 normalise each batch by its own statistics, as in training
    with torch.no_grad():
        second = torch.cat([net[3](net[2](net[1](net[0](x)))) for x in images])
    torch.testing.assert_close(net[4].running_mean, second.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[4].running_var, second.var((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_evaluation_numbers_equal_a_direct_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    x = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (37,))
    t = BatchTransform(AugmentConfig())
    r = evaluate(net, plain_forward, x, y, t, 10, batch_size=8)
    with torch.no_grad():
        logits = net(t.plain(x))
    assert r["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert r["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    assert r["top5"] == pytest.approx(top5)
    assert r["confusion"].sum() == 37 and r["confusion"][y[0], logits[0].argmax()] >= 1


def train_argv(data, save, exp="run", **over):
    flags = {"--exp_name": exp, "--layers": 4, "--num_choices": 4, "--batch_size": 16,
             "--epochs": 2, "--num_steps": 3, "--lr": 0.05, "--print_freq": 1,
             "--val_interval": 1, "--save_path": save, "--seed": 0, "--data_path": data,
             "--classes": 10, "--dataset": "cifar10", "--val_size": 50, "--val_paths": 1,
             "--recal_images": 32, "--no-download": None}
    flags.update(over)
    return cli_argv("train", flags)


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["type"] == "train"]


def test_short_supernet_run_leaves_checkpoints_metrics_and_log(fake_cifar, tmp_path):
    assert main(train_argv(fake_cifar, tmp_path, "a")) == 0
    run = tmp_path / "a"
    for name in ("last.pt", "best.pt", "metrics.jsonl", "train.log", "config.json"):
        assert (run / name).is_file(), name
    recs = read_metrics(run)
    assert [r["step"] for r in recs if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in recs if r["type"] == "val"] == [3, 6]
    assert all(math.isfinite(r["loss"]) for r in recs if r["type"] == "train")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["kind"] == "supernet" and ckpt["step"] == 6 and ckpt["space"]["name"] == "spos"
    assert set(ckpt) >= {"model", "optimizer", "config", "metrics"}
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.05
    rebuilt = model_from_checkpoint(load_checkpoint(run))  # best.pt, rebuilt with no other input
    assert isinstance(rebuilt, SposSupernet) and len(rebuilt.layers) == 4


def test_amp_on_the_cpu_trains_in_fp32_and_says_so(fake_cifar, tmp_path, capsys):
    assert main(train_argv(fake_cifar, tmp_path, "fp32", **{"--epochs": 1})) == 0
    assert "--amp" not in capsys.readouterr().err
    assert main(train_argv(fake_cifar, tmp_path, "amp", **{"--epochs": 1, "--amp": None})) == 0
    assert "--amp: bf16 autocast runs on CUDA only; this run trains in fp32" in \
        capsys.readouterr().err
    assert losses(tmp_path / "amp") == losses(tmp_path / "fp32")


def test_same_seed_same_curve_other_seed_other_curve(fake_cifar, tmp_path):
    for exp, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(train_argv(fake_cifar, tmp_path, exp, **{"--seed": seed, "--epochs": 1})) == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_existing_run_needs_resume(fake_cifar, tmp_path, capsys):
    argv = train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 1})
    assert main(argv) == 0
    before = (tmp_path / "a" / "last.pt").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spnas: error:") and "--resume" in err[-1]
    assert (tmp_path / "a" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("over", [{"--val_size": 60000}, {"--data_path": "nowhere"}])
def test_a_run_refused_before_it_starts_leaves_no_folder(fake_cifar, tmp_path, capsys, over):
    """Only its lock was there: the folders it made go, one that was there stays, empty."""
    save = tmp_path / "runs" / "deeper"
    assert main(train_argv(fake_cifar, save, "a", **over)) == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    (tmp_path / "mine").mkdir()
    assert main(train_argv(fake_cifar, tmp_path, "mine", **over)) == 2
    assert list((tmp_path / "mine").iterdir()) == []
    # a run that refuses to resume leaves the folder as it found it, lock and all
    assert main(train_argv(fake_cifar, tmp_path, "b", **{"--epochs": 1})) == 0
    held = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert main(train_argv(fake_cifar, tmp_path, "b", **{"--resume": None, **over})) == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == held


def test_resume_in_process_continues_the_same_curve(fake_cifar, tmp_path, monkeypatch):
    flags = {"--epochs": 3, "--ckpt_interval": 4, "--val_interval": 5}
    assert main(train_argv(fake_cifar, tmp_path, "full", **flags)) == 0
    real_batch = DeviceLoader.batch

    def crash_at_step_6(self, epoch, i):  # steps are 1-based in the logs: index 5 is step 6
        if epoch * 3 + i == 5:
            raise KeyboardInterrupt
        return real_batch(self, epoch, i)
    monkeypatch.setattr(DeviceLoader, "batch", crash_at_step_6)
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags)) == 130
    part = tmp_path / "part"
    assert torch.load(part / "last.pt", weights_only=True)["step"] == 4
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(DeviceLoader, "batch", real_batch)
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--resume": None})) == 0
    assert losses(part) == losses(tmp_path / "full")
    assert [r["step"] for r in read_metrics(part) if r["type"] == "train"] == list(range(1, 10))
    full_w = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    part_w = torch.load(part / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


@pytest.mark.parametrize("flag, value, message", [
    ("--classes", 100, "--classes 100 but cifar10"),
    ("--layers", 21, "--layers must be 1..20"),
    ("--batch_size", 0, "--batch_size must be positive"),
    ("--batch_size", 4096, "larger than the 200 training images"),
])
def test_bad_flags_are_one_line_errors(fake_cifar, tmp_path, capsys, flag, value, message):
    assert main(train_argv(fake_cifar, tmp_path, "x", **{flag: value})) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_stop_after_keeps_the_schedule_and_resumes_to_the_same_curve(fake_cifar, tmp_path):
    """--stop_after N stops at step N with last.pt, at the learning rate of the full schedule."""
    flags = {"--epochs": 3, "--val_interval": 5}
    assert main(train_argv(fake_cifar, tmp_path, "full", **flags)) == 0
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--stop_after": 5})) == 0
    part = tmp_path / "part"
    assert torch.load(part / "last.pt", weights_only=True)["step"] == 5
    full_lr = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "full") if r["type"] == "train"}
    part_lr = {r["step"]: r["lr"] for r in read_metrics(part) if r["type"] == "train"}
    assert max(part_lr) == 5 and all(part_lr[s] == full_lr[s] for s in part_lr)
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--resume": None})) == 0
    assert losses(part) == losses(tmp_path / "full")


def block_weights(run_dir, layer, choice):
    """The conv weights of block (layer, choice) in ``run_dir``'s last.pt."""
    model = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    return [w for k, w in model.items() if k.startswith(f"layers.{layer}.{choice}.") and w.dim() > 1]


@pytest.mark.parametrize("unsampled_momentum", [False, True])
def test_unsampled_momentum_moves_a_block_on_the_steps_that_skip_it(fake_cifar, tmp_path,
                                                                     unsampled_momentum):
    """Off (PyTorch >= 2.0's zero_grad): a block trained at step 1 and not sampled at step 2
    keeps its weights through step 2. On (PyTorch 1.7.1's): its momentum moves it."""
    flags = {"--weight-decay": 0, "--unsampled_momentum": None if unsampled_momentum else False}
    for n in (1, 2):
        assert main(train_argv(fake_cifar, tmp_path, f"s{n}", **flags, **{"--stop_after": n})) == 0
    first, second = (sample_path(spos_space(4, 4), 0, step).choices for step in (0, 1))
    skipped = [(i, c) for i, c in enumerate(first) if second[i] != c]
    never = [(i, c) for i in range(4) for c in range(4) if c not in (first[i], second[i])]
    assert skipped and never
    for i, c in skipped:
        moved = [not torch.equal(a, b) for a, b in zip(block_weights(tmp_path / "s1", i, c),
                                                     block_weights(tmp_path / "s2", i, c))]
        assert moved and all(m == unsampled_momentum for m in moved), (i, c)
    for i, c in never:  # no gradient yet, no weight decay: nothing moves them either way
        assert all(torch.equal(a, b) for a, b in zip(block_weights(tmp_path / "s1", i, c),
                                                     block_weights(tmp_path / "s2", i, c)))


def test_unsampled_momentum_resumes_exactly(fake_cifar, tmp_path):
    """Grads are not checkpointed: a resumed run zero-fills them again, so the blocks the first
    step after the resume skips still move as in the uninterrupted run."""
    flags = {"--epochs": 3, "--val_interval": 5, "--unsampled_momentum": None}
    assert main(train_argv(fake_cifar, tmp_path, "full", **flags)) == 0
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--stop_after": 4})) == 0
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--resume": None})) == 0
    full_w = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    part_w = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


@pytest.mark.parametrize("left", ["none", "damaged"])
def test_a_run_stopped_between_last_and_best_writes_best_on_resume(fake_cifar, tmp_path, monkeypatch,
                                                                  left):
    from spnas.engine.trainer import Trainer
    flags = {"--epochs": 2, "--val_interval": 1}
    assert main(train_argv(fake_cifar, tmp_path, "full", **flags)) == 0
    real_save = Trainer.save

    def stop_before_best(self, name):
        if name == "best.pt":
            raise KeyboardInterrupt
        real_save(self, name)
    monkeypatch.setattr(Trainer, "save", stop_before_best)
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags)) == 130
    part = tmp_path / "part"
    assert (part / "last.pt").is_file() and not (part / "best.pt").exists()
    if left == "damaged":  # an unreadable best.pt is no better than none
        (part / "best.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(Trainer, "save", real_save)
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--resume": None})) == 0
    assert "wrote best.pt" in (part / "train.log").read_text()
    full_b = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    part_b = torch.load(part / "best.pt", weights_only=True)
    assert full_b["step"] == part_b["step"] and full_b["metrics"] == part_b["metrics"]
    assert all(torch.equal(full_b["model"][k], part_b["model"][k]) for k in full_b["model"])


def test_a_fresh_run_never_replaces_a_best_pt(fake_cifar, tmp_path, capsys):
    argv = train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 1})
    assert main(argv) == 0
    (tmp_path / "a" / "last.pt").unlink()
    before = (tmp_path / "a" / "best.pt").read_bytes()
    assert main(argv) == 2
    assert "already holds a run (best.pt); it has no last.pt" in capsys.readouterr().err
    assert (tmp_path / "a" / "best.pt").read_bytes() == before


def test_validation_as_the_original_one_random_path_per_batch(fake_cifar, tmp_path):
    """--no-val_recal: each batch of --batch_size validation images through its own seeded
    path, with the BN statistics training left (none recalibrated), as the original did."""
    import random

    from spnas.arch import Arch
    from spnas.config import DataConfig, derive_seed
    from spnas.data.loading import build_transform, load_splits
    assert main(train_argv(fake_cifar, tmp_path, "orig", **{"--epochs": 1,
                                                            "--no-val_recal": None})) == 0
    val = [r for r in read_metrics(tmp_path / "orig") if r["type"] == "val"][-1]
    assert "val_acc_min" not in val  # not the mean over fixed paths
    ckpt = load_checkpoint(tmp_path / "orig" / "last.pt")
    net = model_from_checkpoint(ckpt).eval()
    data = DataConfig(data_path=str(fake_cifar), val_size=50, download=False)
    x, y = load_splits(data, 0).val
    t = build_transform(data, channels_last=True)
    rng = random.Random(derive_seed(0, "validation batch paths", val["step"]))
    space = spos_space(4, 4)
    with torch.no_grad():
        right = sum(int((net(t.plain(x[i:i + 16]), Arch.sample(space, rng)).argmax(1)
                         == y[i:i + 16]).sum()) for i in range(0, len(x), 16))
    assert val["val_acc"] == pytest.approx(right / len(x))


@pytest.mark.parametrize("at, said", [
    (2, "interrupted after step 2 of 6: no checkpoint had been written yet, so those steps are "
        "lost"),
    (3, "interrupted after step 3 of 6; {run}/last.pt holds step 3: --resume continues from "
        "there\n"),
    (4, "interrupted after step 4 of 6; {run}/last.pt holds step 3: --resume continues from there "
        "(step 4 is trained again)"),
])
def test_an_interrupted_run_says_what_it_kept(fake_cifar, tmp_path, monkeypatch, capsys, at, said):
    real_batch = DeviceLoader.batch

    def ctrl_c_at(self, epoch, i):
        if epoch * self.steps_per_epoch + i == at:
            raise KeyboardInterrupt
        return real_batch(self, epoch, i)

    monkeypatch.setattr(DeviceLoader, "batch", ctrl_c_at)
    assert main(train_argv(fake_cifar, tmp_path)) == 130
    err = capsys.readouterr().err
    assert said.format(run=tmp_path / "run") in err and err.endswith("spnas: interrupted\n")


@pytest.fixture
def sigint_as_python_sets_it():
    """SIGINT, SIGTERM and SIGHUP handled as a fresh Python handles them (a test run started
    under nohup, or in a script's background job, would ignore some, and spnas then leaves
    them alone)."""
    fresh = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL,
             signal.SIGHUP: signal.SIG_DFL}
    previous = {s: signal.signal(s, handler) for s, handler in fresh.items()}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def _ctrl_c_at(monkeypatch, at: int, presses: int = 1, signum=signal.SIGINT) -> None:
    """Ctrl-C (a real SIGINT, ``presses`` times) or another ``signum`` as the loader makes step
    index ``at``'s batch."""
    real_batch = DeviceLoader.batch

    def batch(self, epoch, i):
        if epoch * self.steps_per_epoch + i == at:
            for _ in range(presses):
                if signal.getsignal(signum) is signal.SIG_DFL:  # it would end pytest
                    raise AssertionError(f"{signal.Signals(signum).name} is not handled")
                signal.raise_signal(signum)
        return real_batch(self, epoch, i)
    monkeypatch.setattr(DeviceLoader, "batch", batch)


@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGINT, 130, ("Ctrl-C", "press", "interrupted", "interrupted")),
    # a scheduler's (or `kill`'s, `docker stop`'s) SIGTERM loses no step either
    (signal.SIGTERM, 143, ("SIGTERM", "send", "terminated (SIGTERM)", "terminated (SIGTERM)")),
    # nor does a closed terminal's (an ssh session that dropped)
    (signal.SIGHUP, 129, ("SIGHUP", None, "terminated (SIGHUP)", "terminated (SIGHUP)")),
])
def test_a_ctrl_c_sigterm_or_sighup_finishes_the_step_writes_last_pt_and_resumes_the_curve(
        fake_cifar, tmp_path, monkeypatch, capfd, sigint_as_python_sets_it, signum, code, said):
    name, verb, how, end = said
    # no checkpoint before the end but the stop's, which comes between two log lines: the
    # first after the resume averages the same steps as the uninterrupted run's
    flags = {"--epochs": 3, "--val_interval": 5, "--print_freq": 2}
    assert main(train_argv(fake_cifar, tmp_path, "full", **flags)) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    _ctrl_c_at(monkeypatch, 4, signum=signum)  # during step 5 (1-based): step 5 is finished, kept
    capfd.readouterr()
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags)) == code
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    err = capfd.readouterr().err
    part = tmp_path / "part"
    again = f"; {verb} it again to stop at once" if verb else "\n"  # none after a SIGHUP
    assert (f"{name}: finishing the step under way (and a validation, if one is running), then "
            f"writing last.pt{again}") in err
    assert (f"{how} after step 5 of 9; {part}/last.pt holds step 5: --resume continues "
            "from there\n") in err
    assert err.endswith(f"spnas: {end}\n")
    assert torch.load(part / "last.pt", weights_only=True)["step"] == 5
    monkeypatch.undo()
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--resume": None})) == 0
    assert losses(part) == losses(tmp_path / "full")
    full_w = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    part_w = torch.load(part / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


def test_a_second_ctrl_c_stops_at_once(fake_cifar, tmp_path, monkeypatch, capfd,
                                       sigint_as_python_sets_it):
    _ctrl_c_at(monkeypatch, 1, presses=2)
    assert main(train_argv(fake_cifar, tmp_path)) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    err = capfd.readouterr().err
    assert "Ctrl-C: finishing the step under way" in err  # the first press was the handler's
    assert "interrupted after step 1 of 6: no checkpoint had been written yet" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_ctrl_c_at_the_last_step_keeps_the_finished_run(fake_cifar, tmp_path, monkeypatch, capfd,
                                                          sigint_as_python_sets_it):
    _ctrl_c_at(monkeypatch, 5)
    assert main(train_argv(fake_cifar, tmp_path)) == 130
    run = tmp_path / "run"
    assert f"interrupted after step 6 of 6; {run}/last.pt holds step 6" in capfd.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 6
    assert [r["step"] for r in read_metrics(run) if r["type"] == "val"] == [3, 6]


def test_a_ctrl_c_after_the_last_look_before_the_handlers_go_still_stops(
        fake_cifar, tmp_path, monkeypatch, capfd, sigint_as_python_sets_it):
    """The press lands once the loop has ended and looked for the last time: the run is
    written, but it stops as interrupted (a pipeline must not go on to its next stage)."""
    from spnas.engine.trainer import Trainer
    real, looks = Trainer._agreed_signal, []

    def look(self, stop):
        signum = real(self, stop)
        looks.append(self.step)
        if looks.count(self.total) == 2:  # the loop's look at the last step, then fit's
            signal.raise_signal(signal.SIGINT)
        return signum
    monkeypatch.setattr(Trainer, "_agreed_signal", look)
    assert main(train_argv(fake_cifar, tmp_path)) == 130
    assert "interrupted after step 6 of 6" in capfd.readouterr().err


def test_after_the_first_signal_sigint_and_sigterm_are_the_defaults_again(
        sigint_as_python_sets_it):
    """So a SIGTERM after a Ctrl-C (or a Ctrl-C after a SIGTERM) stops at once as well; a
    SIGHUP only records itself again (a closing terminal may send two)."""
    stop = StopSignals()
    with stop.watching():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
        signal.raise_signal(signal.SIGHUP)
    assert stop.signum == signal.SIGINT  # the first one
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_a_second_sighup_is_only_recorded(capfd, sigint_as_python_sets_it):
    stop = StopSignals()
    with stop.watching():
        for _ in range(2):
            if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
                raise AssertionError("a second SIGHUP would stop this process at once")
            signal.raise_signal(signal.SIGHUP)
    assert stop.signum == signal.SIGHUP
    err = capfd.readouterr().err
    assert err.count("SIGHUP: finishing the step under way") == 1 and "again" not in err


def test_a_terminated_stop_names_its_signal_and_survives_a_pickle():
    import pickle
    for t, name in ((Terminated(), "SIGTERM"), (Terminated(signal.SIGHUP), "SIGHUP"),
                    (Terminated(signal.SIGUSR1), "SIGUSR1")):
        again = pickle.loads(pickle.dumps(t))
        assert (str(t), t.name, again.signum, again.name) == (name, name, t.signum, name)
        assert type(t.signum) is int


def test_under_torchrun_a_second_signal_is_only_recorded(sigint_as_python_sets_it):
    """A scheduler that signals every process, and torchrun passing the same signal on: the
    second must not kill a process on its way to last.pt (torchrun's kill is the stop at once)."""
    stop = StopSignals(None, again=False)
    with stop.watching():
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                raise AssertionError("a second signal would stop this process at once")
            signal.raise_signal(signum)
    assert stop.signum == signal.SIGTERM  # the first one
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def closed_pipe():
    """A text file whose reader is gone: a flushed write raises BrokenPipeError. Something is
    still buffered in it at the end (the test wrote to it): closing it raises too."""
    read, write = os.pipe()
    os.close(read)
    closed = open(write, "w")
    yield closed
    with pytest.raises(BrokenPipeError):
        closed.close()


def test_a_ctrl_c_that_also_ends_stderrs_reader_still_writes_last_pt(
        fake_cifar, tmp_path, monkeypatch, closed_pipe, sigint_as_python_sets_it):
    """`spnas train 2>&1 | tee log`: the Ctrl-C ends tee too, and the next log line meets a
    closed pipe; the run still stops as interrupted, with last.pt, its log file complete."""
    real_batch = DeviceLoader.batch

    def batch(self, epoch, i):
        if epoch * self.steps_per_epoch + i == 1:
            signal.raise_signal(signal.SIGINT)
            monkeypatch.setattr(sys, "stderr", closed_pipe)
        return real_batch(self, epoch, i)
    monkeypatch.setattr(DeviceLoader, "batch", batch)
    # a BrokenPipeError that reached the command's guard would send its stdout to /dev/null
    monkeypatch.setattr(sys, "stdout", open(tmp_path / "stdout", "w"))
    try:
        assert main(train_argv(fake_cifar, tmp_path)) == 130  # --print_freq 1: a log line
    finally:
        sys.stdout.close()
        monkeypatch.undo()  # before closed_pipe is closed
    run = tmp_path / "run"
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    log = (run / "train.log").read_text()
    assert "(stderr closed: the rest is logged here only)" in log
    assert f"interrupted after step 2 of 6; {run}/last.pt holds step 2" in log


@pytest.mark.parametrize("per_step, val_seconds, limit, said", [
    (0.14, 0, 30, None),  # 100 steps in 14 s: they stop in time
    (0.16, 0, 30, "stops the processes at the next log line, validation or checkpoint, up to "
                  "100 steps away, which take about 16 s here, over half of the 30 s torchrun "
                  "waits before it kills them (its --shutdown_timeout; set "
                  "TORCH_ELASTIC_SHUTDOWN_TIMEOUT to tell spnas a longer one); with a lower "
                  "--print_freq (or a smaller --val_size) they stop in time"),
    (0.16, 0, 60, None),
    (0.10, 6, 30, "up to 100 steps and a validation away, which take about 16 s here"),
])
def test_a_torchrun_run_whose_log_lines_are_too_far_apart_to_stop_in_time_is_told(
        per_step, val_seconds, limit, said):
    note = slow_stop_note(per_step, 100, val_seconds, limit)
    assert note == said if said is None else said in note


@pytest.mark.parametrize("run, most", [
    (RunConfig(print_freq=100, val_interval=5), 100),
    (RunConfig(print_freq=100, val_interval=5, ckpt_interval=40), 40),
    (RunConfig(print_freq=100, val_interval=1), 30),  # 30 steps per epoch
])
def test_the_processes_agree_on_a_stop_at_every_log_line_validation_and_checkpoint(run, most):
    assert most_steps_between_looks(run, 30) == most


@pytest.mark.parametrize("env, limit", [
    ({}, 30), ({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "90"}, 90),
    ({"PET_SHUTDOWN_TIMEOUT": "120", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "90"}, 120),  # the flag's
    ({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "x"}, 30)])
def test_torchruns_shutdown_timeout_is_read_as_torch_reads_it(env, limit):
    assert shutdown_timeout(env) == limit


def test_a_commands_last_line_meets_a_closed_stderr_without_a_traceback(monkeypatch,
                                                                        closed_pipe):
    from spnas.cli import run_guarded
    from spnas.errors import SpnasError
    monkeypatch.setattr(sys, "stderr", closed_pipe)

    def refused(args):
        raise SpnasError("--lr nan is not a number")
    try:
        assert run_guarded(refused, None) == 2
    finally:
        monkeypatch.undo()  # before closed_pipe is closed


def test_a_sigterm_handler_of_the_callers_is_left_alone(fake_cifar, tmp_path, monkeypatch,
                                                        sigint_as_python_sets_it):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        _ctrl_c_at(monkeypatch, 1, signum=signal.SIGTERM)
        assert main(train_argv(fake_cifar, tmp_path)) == 0  # the caller's handler took it
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigint_handler_of_the_callers_is_left_alone(fake_cifar, tmp_path, monkeypatch):
    """A program that handles SIGINT itself keeps its handler: spnas installs none over it."""
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        _ctrl_c_at(monkeypatch, 1)
        assert main(train_argv(fake_cifar, tmp_path)) == 0  # the caller's handler took it
        assert seen == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is not \
            signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_with_stderr_gone_still_only_sets_the_flag(monkeypatch, sigint_as_python_sets_it):
    """``spnas train 2>&1 | tee log``: the same Ctrl-C ends tee, so the handler's notice meets a
    broken pipe; that must not become an error in the middle of a step."""
    def closed(fd, data):
        raise BrokenPipeError(32, "Broken pipe")
    stop = StopSignals()
    with stop.watching():
        monkeypatch.setattr(os, "write", closed)
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            monkeypatch.undo()
        assert stop.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("val_loss, train_loss, classes, momentum, said", [
    (16.91, 2.381, 10, 0.01, "note: the validation loss 16.91 is over 3x both the training loss "
     "2.381 and a uniform guess's 2.303: in eval mode BN uses its running statistics, which may "
     "lag weights that move fast (BN momentum 0.01: they average about the last 100 steps); for "
     "a short run, --bn_momentum 0.1"),
    (388.0, 2.5, 10, 0.1, "which may lag weights that move fast; a lower --lr, or a longer run, "
     "lets them catch up"),
    (0.5, 0.01, 10, 0.01, None),   # overfit: 50x the training loss, below a uniform guess
    (12.0, 0.05, 100, 0.01, None),  # under 3x ln(100) = 13.8
    (7.0, 2.5, 10, 0.01, None),    # over 3x ln(10) but not 3x the training loss
    (2.3, None, 10, 0.01, None),   # no training loss logged yet
])
def test_a_validation_loss_blown_past_the_training_loss_gets_a_note(val_loss, train_loss, classes,
                                                                     momentum, said):
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=momentum))
    note = eval_mode_note(val_loss, train_loss, classes, net)
    assert note is None if said is None else (note is not None and said in note)


def test_the_note_is_logged_once_by_a_run(fake_cifar, tmp_path, monkeypatch):
    import spnas.stages.train as stage
    monkeypatch.setattr(stage, "make_path_validator",
                        lambda *a, **k: lambda model, step: {"val_acc": 0.1, "val_loss": 500.0})
    assert main(train_argv(fake_cifar, tmp_path)) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("note: the validation loss 500 is over 3x both the training loss") == 1
    assert log.count("validation after epoch") == 2
