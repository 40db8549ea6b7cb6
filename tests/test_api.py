"""The package is its API: each stage is one call, and one version source."""
import importlib.metadata
import re
from pathlib import Path

import pytest

import spnas
from spnas.engine.curves import compare_runs
from spnas.stages import (
    evaluate,
    export,
    finetune,
    import_reference,
    pipeline,
    profile,
    retrain,
    search,
    superkernel,
    train,
)


@pytest.mark.parametrize("name, function", [
    ("train_supernet", train.train_supernet), ("search", search.search_supernet),
    ("superkernel", superkernel.search_superkernel), ("retrain", retrain.retrain),
    ("finetune", finetune.finetune), ("pipeline", pipeline.pipeline),
    ("evaluate", evaluate.evaluate_checkpoint), ("export", export.export_checkpoint),
    ("profile", profile.profile), ("import_reference", import_reference.import_reference),
    ("curves", compare_runs)])
def test_every_stage_is_a_call_on_the_package(name, function):
    assert getattr(spnas, name) is function and name in spnas.__all__


def test_stage_dataclasses_hold_each_commands_defaults():
    assert (spnas.SupernetStage().optim.lr, spnas.RetrainStage().optim.lr) == (0.025, 0.1)
    assert spnas.SuperkernelStage().optim.label_smoothing == 0.1


def test_profile_takes_its_dataclass_as_the_command_takes_its_flags(capsys):
    from spnas.cli import main
    arch = "k3 " * 19 + "x"
    r = spnas.profile(spnas.ProfileConfig(arch=arch, classes=100, warmup=0, repeats=1, batch_size=2))
    assert main(["profile", "--arch", arch, "--classes", "100", "--warmup", "0", "--repeats", "1",
                 "--batch_size", "2"]) == 0
    assert (r["num_classes"], r["resolution"]) == (100, 32)
    assert f"{r['params']:,}" in capsys.readouterr().out


def test_one_version():
    root = Path(__file__).resolve().parents[1]
    project = (root / "pyproject.toml").read_text().split("[project]")[1].split("\n[")[0]
    assert not re.search(r"^version\s*=", project, re.M) and 'dynamic = ["version"]' in project
    assert importlib.metadata.version("spnas") == spnas.__version__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError):
        spnas.trian_supernet


@pytest.mark.parametrize("name, stage", [
    ("train_supernet", "SupernetStage"), ("retrain", "RetrainStage"),
    ("finetune", "FinetuneStage"), ("superkernel", "SuperkernelStage"),
    ("search", "SearchRunConfig")])
def test_a_stage_called_with_another_stages_config_is_a_type_error(name, stage):
    other = spnas.RetrainStage() if stage != "RetrainStage" else spnas.SupernetStage()
    for call in ((other,), ("runs/x",), ()):
        with pytest.raises(TypeError, match=rf"takes an? {stage} \(spnas.{stage}\("):
            getattr(spnas, name)(*call)


def test_a_section_takes_its_dataclass_or_a_dict_of_its_settings():
    cfg = spnas.SupernetStage(optim={"lr": 0.1})
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (0.1, 96, 600)  # the stage's
    with pytest.raises(spnas.SpnasError, match="SupernetStage.optim has no setting lrr"):
        spnas.SupernetStage(optim={"lrr": 0.1})
    with pytest.raises(spnas.SpnasError, match="--lr must be positive"):
        spnas.SupernetStage(optim={"lr": -1})
    with pytest.raises(TypeError, match="RetrainStage.model must be a RetrainConfig"):
        spnas.RetrainStage(model=spnas.SupernetStage().model)
    with pytest.raises(TypeError, match="SearchRunConfig.search must be a SearchConfig"):
        spnas.SearchRunConfig(checkpoint="x", search=5)


@pytest.mark.parametrize("args, message", [
    (({}, 5), "out must be str or a path, got int"),
    ((5, "out"), "recipe must be dict or str or a path, got int"),
    (({}, "out", "yes"), "resume must be bool, got str"),
    (({}, "out", False, [("seed", 1)]), "overrides must be dict or None, got list")])
def test_the_pipeline_call_checks_its_arguments(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=message):
        spnas.pipeline(*args)
    assert not list(tmp_path.iterdir())


def test_numpy_numbers_and_budget_text_are_taken_as_the_flags_take_them():
    import numpy as np

    import spnas
    from spnas.errors import SpnasError
    optim = spnas.RetrainStage(optim={"batch_size": np.int64(8), "lr": np.float32(0.5)}).optim
    assert (optim.batch_size, optim.lr) == (8, 0.5)
    assert type(optim.batch_size) is int and type(optim.lr) is float
    search = spnas.SearchRunConfig(checkpoint="x", search={"max_flops": "175M"}).search
    assert search.max_flops == 175e6
    with pytest.raises(SpnasError, match="--max_flops: 'abc' is not a count"):
        spnas.SearchRunConfig(checkpoint="x", search={"max_flops": "abc"})
    with pytest.raises(SpnasError, match="--batch_size must be a whole number"):
        spnas.RetrainStage(optim={"batch_size": np.float64(8.5)})
    with pytest.raises(SpnasError, match="--batch_size must be a whole number, got True"):
        spnas.RetrainStage(optim={"batch_size": True})


def test_a_sigterm_stop_is_a_keyboard_interrupt_a_caller_can_tell_apart():
    """From Python a SIGTERM during training raises spnas.Terminated (the command line exits
    143 on it); code that handles KeyboardInterrupt handles it too."""
    from spnas.engine.signals import Terminated
    assert spnas.Terminated is Terminated and issubclass(Terminated, KeyboardInterrupt)
    assert "Terminated" in spnas.__all__
