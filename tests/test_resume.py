"""Reproducibility and resume: SIGKILL mid-run, corrupt and mismatched checkpoints, NaN losses."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from test_train import losses, train_argv

import spnas.stages.train
from spnas.cli import main
from spnas.engine.checkpoint import save_checkpoint
from spnas.engine.runlog import read_metrics

FLAGS = {"--epochs": 4, "--num_steps": 5, "--ckpt_interval": 3, "--val_interval": 2}


def weights(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_killed_with_sigkill_and_resumed_matches_the_uninterrupted_run(fake_cifar, tmp_path):
    assert main(train_argv(fake_cifar, tmp_path, "full", **FLAGS)) == 0
    run = tmp_path / "killed"
    argv = [sys.executable, "-m", "spnas"] + train_argv(fake_cifar, tmp_path, "killed", **FLAGS)
    # the same thread count as this process: float sums depend on it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
        if any('"train", "step": 11,' in line for line in text.splitlines()):
            break  # (a line may be half-written while we read: match text, not JSON)
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 9 <= step < 20  # killed midway: a checkpoint of a finished step, not the end
    assert main(train_argv(fake_cifar, tmp_path, "killed", **FLAGS, **{"--resume": None})) == 0
    assert losses(run) == losses(tmp_path / "full")
    assert [r["step"] for r in read_metrics(run) if r["type"] == "val"] == [10, 20]
    full, resumed = weights(tmp_path / "full"), weights(run)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not list(run.glob(".*.tmp"))


def test_truncated_checkpoint_is_a_one_line_error(fake_cifar, tmp_path, capsys):
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 1})) == 0
    capsys.readouterr()
    last = tmp_path / "a" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 2, "--resume": None})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt is corrupt or truncated (PytorchStreamReader" in err[0]
    assert (tmp_path / "a" / "best.pt").stat().st_size > 1000  # the other checkpoint is intact


@pytest.mark.parametrize("flag, value, message", [
    ("--layers", 5, "--layers 5 differs from the run's 4 (config.json)"),
    ("--num_choices", 2, "--num_choices 2 differs from the run's 4 (config.json)"),
    # without config.json, the checkpoint's own space refuses it
    ("--layers", 5, "is for spos/cifar, 4 layers with 4 choices, but this run uses spos/cifar, 5 layers"),
    ("--num_choices", 2, "with 4 choices, but this run uses spos/cifar, 4 layers with 2 choices"),
])
def test_checkpoint_of_another_space_is_refused(fake_cifar, tmp_path, capsys, flag, value, message):
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 1})) == 0
    capsys.readouterr()
    if "config.json" not in message:
        (tmp_path / "a" / "config.json").unlink()
    assert main(train_argv(fake_cifar, tmp_path, "a", **{flag: value, "--resume": None})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_resume_without_a_checkpoint(fake_cifar, tmp_path, capsys):
    assert main(train_argv(fake_cifar, tmp_path, "new", **{"--resume": None})) == 2
    assert "last.pt not found" in capsys.readouterr().err


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(fake_cifar, tmp_path, capsys,
                                                               monkeypatch):
    real = spnas.stages.train.cross_entropy_loss

    def poisoned(smoothing):
        loss = real(smoothing)
        return lambda logits, labels, step: (loss(logits, labels, step)[0] * (
            float("nan") if step >= 7 else 1.0), {})
    monkeypatch.setattr(spnas.stages.train, "cross_entropy_loss", poisoned)
    argv = train_argv(fake_cifar, tmp_path, "nan", **FLAGS)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NaN or infinite at step 8 (epoch 1)" in err and "last.pt is kept" in err
    ckpt = torch.load(tmp_path / "nan" / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["model"].values()
                                     if v.is_floating_point())


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    payload = {"kind": "child", "space": {}, "num_classes": 10, "model": {"w": torch.ones(3)}}
    save_checkpoint(path, payload)
    before = path.read_bytes()

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {**payload, "model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_fresh_run_replaces_the_records_of_one_killed_before_its_first_checkpoint(fake_cifar, tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 9.0}\n{"type": "tr')
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 1})) == 0
    assert [r["step"] for r in read_metrics(run) if r["type"] == "train"] == [1, 2, 3]
    assert 9.0 not in losses(run)
    assert "removed, this run starts afresh" in (run / "train.log").read_text()
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 2, "--resume": None})) == 0
    assert [r["step"] for r in read_metrics(run) if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("stage", ["supernet", "retrain"])
def test_a_stopped_pipeline_stage_resumes_with_the_settings_it_started_with(tmp_path, capsys,
                                                                              stage):
    """A setting the recipe leaves out comes back from the stage's config.json, as with
    ``spnas train --resume``: a default changed since the stage started (the supernet's
    batch, 64 then 96) does not stop the resume; one the recipe gives is compared as before."""
    import dataclasses
    import json

    from spnas.engine.runlog import recorded_config
    from spnas.resume import resume_changes
    from spnas.stages.pipeline import Pipeline
    recipe = {"seed": 3, stage: {"epochs": 2}}
    started = Pipeline(recipe, tmp_path).settings[stage]
    optim = dataclasses.replace(started.optim, batch_size=started.optim.batch_size // 2, lr=0.3)
    elsewhere = dataclasses.replace(started.data, data_path="/another/machine/cifar")
    run = dataclasses.replace(started.run, device="cuda:1", tensorboard=True)
    started = dataclasses.replace(started, optim=optim, data=elsewhere, run=run)
    folder = tmp_path / stage
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(recorded_config(started)))
    (folder / "last.pt").write_bytes(b"")
    pipe = Pipeline(recipe, tmp_path, resume=True)
    placed = pipe._placed(pipe.settings[stage], stage)
    assert placed.run.resume and placed.optim.batch_size == optim.batch_size
    assert placed.optim.lr == 0.3 and placed.optim.epochs == 2 and placed.run.seed == 3
    # this machine's data and device, not those of the machine that started it (allowed
    # changes on resume: the trainer logs them)
    assert (placed.data.data_path, placed.run.device, placed.run.tensorboard) == \
        ("data", "auto", False)
    assert resume_changes(placed, recorded_config(started))[0] == []  # the trainer goes on
    said = capsys.readouterr().out
    assert f"{stage} resumes with its config.json's batch_size {optim.batch_size}, lr 0.3" in said
    # a setting the recipe gives is the recipe's: a change is still refused by the trainer
    pipe = Pipeline({**recipe, stage: {"epochs": 2, "lr": 0.5}}, tmp_path, resume=True)
    placed = pipe._placed(pipe.settings[stage], stage)
    assert placed.optim.lr == 0.5 and placed.optim.batch_size == optim.batch_size
    assert [t for t in resume_changes(placed, recorded_config(started))[0] if "--lr" in t]


def test_a_pipeline_stage_that_cannot_resume_says_what_to_do_in_the_pipeline(tmp_path):
    """Not the trainer's fixes, which name flags a pipeline does not take: a config.json
    value no setting accepts names the file, and a stage that lost its last.pt says so."""
    import json

    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline
    pipe = Pipeline({"seed": 3}, tmp_path, resume=True)
    folder = tmp_path / "supernet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"optim": {"momentum": "abc"}}))
    (folder / "last.pt").write_bytes(b"")
    with pytest.raises(SpnasError, match=r"supernet/config.json: setting momentum must be a "
                                         r"number, got 'abc'.*correct the value there"):
        pipe._placed(pipe.settings["supernet"], "supernet")
    (folder / "last.pt").rename(folder / "best.pt")
    with pytest.raises(SpnasError, match="holds best.pt but no last.pt to resume from"):
        pipe._placed(pipe.settings["supernet"], "supernet")


def test_a_resume_with_fewer_epochs_than_done_is_refused(fake_cifar, tmp_path, capsys):
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 2})) == 0
    capsys.readouterr()
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 1, "--resume": None})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "past this resume's 3 steps (--epochs 1); resume with --epochs 2 " \
        "or more" in err[0], err
    # the same --epochs: nothing to do, and it says so
    assert main(train_argv(fake_cifar, tmp_path, "a", **{"--epochs": 2, "--resume": None})) == 0
    assert "the run had finished all its 6 steps (--epochs 2): nothing to train; resume with " \
        "more --epochs" in capsys.readouterr().err
