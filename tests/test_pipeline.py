"""``spnas pipeline``: the whole chain on tiny data, resume, and recipe errors."""
import json
import time
from pathlib import Path

import pytest

from spnas.cli import main

pytestmark = pytest.mark.slow  # end to end: about a minute

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "val_size=50", "--set", "supernet.batch_size=16", "--set", "supernet.num_steps=3",
        "--set", "retrain.batch_size=16", "--set", "retrain.num_steps=3",
        "--set", "search.val_images=50", "--set", "evaluate.batch_size=100"]


def run(recipe, out, data, *extra):
    return main(["pipeline", "--config", str(recipe), "--out", str(out), "--data_path", str(data),
                 "--device", "cpu", *TINY, *extra])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from conftest import write_official
    root = tmp_path_factory.mktemp("pipe")
    write_official(root / "data")
    out = root / "run"
    assert run(ROOT / "recipes" / "smoke.yaml", out, root / "data") == 0
    return root, out


def test_every_stage_leaves_its_output_and_the_report(smoke):
    _, out = smoke
    for stage in ("supernet", "search", "retrain", "evaluate", "export"):
        assert (out / stage / "done.json").is_file(), stage
    assert (out / "supernet" / "best.pt").is_file()
    best = json.loads((out / "search" / "best_arch.json").read_text())
    results = json.loads((out / "retrain" / "results.json").read_text())
    assert results["arch"] == best["arch"]  # the retrained network is the search's best arch
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    assert ev["n"] == 100 and 0 <= ev["top1"] <= 1
    assert (out / "export" / "model.torchscript.pt").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert best["arch"] in report and "test top-1" in report and "time: all stages" in report
    assert f"| network tested | `{out / 'retrain' / 'best.pt'}` |" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # loss curve, search plot, retrain, confusion


def test_resume_keeps_finished_stages_and_runs_the_stopped_one(smoke):
    root, out = smoke
    kept = {s: (out / s / "done.json").stat().st_mtime_ns for s in ("supernet", "search")}
    (out / "evaluate" / "done.json").unlink()  # as if the run had stopped during evaluate
    (out / "export" / "done.json").unlink()  # its model file is there: export replaces it
    assert run(ROOT / "recipes" / "smoke.yaml", out, root / "data", "--resume") == 0
    assert {s: (out / s / "done.json").stat().st_mtime_ns for s in kept} == kept
    assert (out / "evaluate" / "done.json").is_file() and (out / "export" / "done.json").is_file()


def test_a_pipeline_moved_elsewhere_finishes_its_stages_again_there(smoke, tmp_path):
    """A damaged done.json's advice (delete it, --resume) works, in a copy of the folder:
    the finished supernet ends at once, and the search replays its record though its
    supernet's path has changed."""
    import shutil
    root, out = smoke
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    for stage in ("supernet", "search"):
        (moved / stage / "done.json").unlink()
    assert run(ROOT / "recipes" / "smoke.yaml", moved, root / "data", "--resume") == 0
    assert (moved / "search" / "candidates.jsonl").read_text() == \
        (out / "search" / "candidates.jsonl").read_text()
    best, before = (json.loads((o / "search" / "best_arch.json").read_text()) for o in (moved, out))
    assert (best["arch"], best["metrics"]) == (before["arch"], before["metrics"])
    assert "replaying them" in (moved / "search" / "search.log").read_text()


SHORT = {  # each shipped recipe cut to a few steps per stage; every other setting its own
    "spos_c10_fast.yaml": ["--set", "val_size=50", "--set", "search.population=4",
                           "--set", "search.top_k=2", "--set", "search.generations=2",
                           "--set", "search.recal_images=64", "--set", "search.val_images=50"],
    "spos_c10_original.yaml": ["--set", "search.num=3"],  # val_size 0: its test set validates
}


@pytest.mark.parametrize("name", SHORT)
def test_each_shipped_recipe_runs_end_to_end_when_cut_short(tmp_path, fake_cifar, name):
    for module in ("onnx", "onnxscript", "onnxruntime"):  # both recipes export ONNX
        pytest.importorskip(module)
    cut = ["--set", "supernet.epochs=1", "--set", "supernet.num_steps=3",
           "--set", "supernet.batch_size=16", "--set", "retrain.epochs=1",
           "--set", "retrain.num_steps=3", "--set", "retrain.batch_size=16",
           "--set", "evaluate.batch_size=100", *SHORT[name]]
    out = tmp_path / "out"
    assert main(["pipeline", "--config", str(ROOT / "recipes" / name), "--out", str(out),
                 "--data_path", str(fake_cifar), "--device", "cpu", *cut]) == 0
    for stage in ("supernet", "search", "retrain", "evaluate", "export"):
        assert (out / stage / "done.json").is_file(), stage
    assert (out / "export" / "model.onnx").stat().st_size > 0 and (out / "report.html").is_file()


@pytest.mark.parametrize("extra, message", [
    ((), "already holds this pipeline; pass --resume"),
    (("--resume", "--set", "supernet.lr=0.5"), "ran another recipe (supernet.lr "),
    (("--resume", "--set", "export.check_images=4"), "(export.check_images 8, now 4; see"),  # finished last
])
def test_a_finished_pipeline_is_never_overwritten(smoke, capsys, extra, message):
    root, out = smoke
    before = sorted(p.name for p in out.rglob("*"))
    assert run(ROOT / "recipes" / "smoke.yaml", out, root / "data", *extra) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize("recipe, message", [
    ({"supernet": {"epochz": 1}}, "recipe section 'supernet' has no setting epochz"),
    ({"searhc": {"num": 1}}, "the recipe has sections searhc"),
    ({"supernet": {"lr": "fast"}}, "setting lr must be a number, got 'fast'"),
])
def test_recipe_mistakes_are_one_line_errors(tmp_path, fake_cifar, capsys, recipe, message):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    assert run(path, tmp_path / "out", fake_cifar) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("setting, message", [
    ("retrain.epochz=2", "recipe section 'retrain' has no setting epochz (did you mean epochs?); "
                         "see 'spnas retrain --help'"),
    ("retrain.epochs=abc", "retrain stage: setting epochs must be a whole number, got 'abc'"),
    ("retrain.epochs=-1", "retrain stage: --epochs must be positive, got -1"),
    ("search.max_flops=1M", "search stage: --max_flops 1M is below the cheapest arch"),
    ("search.max_latency_ms=3", "search stage: --max_latency_ms needs --latency_table"),
    ("val_sise=64", "top-level val_sise is no stage's setting (did you mean val_size?)"),
    ("evaluate.split=tset", "evaluate stage: --split must be one of test, val, train"),
    ("evaluate.batchsize=8", "section 'evaluate' has no setting batchsize (did you mean "
                             "batch_size?); see 'spnas evaluate --help'"),
    ("export.format=onnxx", "export stage: --format must be one of onnx, torchscript"),
    ("export.overwrite=true", "sets overwrite, which the pipeline sets itself"),
    ("evaluate.checkpoint=a.pt", "sets checkpoint, which the pipeline sets itself"),
    ("export.tolerance=0", "export stage: --tolerance must be positive"),
    ("retrain.arch=a.json", "sets arch, which the pipeline sets itself"),
])
def test_a_mistake_in_any_stage_fails_before_any_stage_runs(tmp_path, fake_cifar, capsys,
                                                           setting, message):
    out = tmp_path / "out"
    assert run(ROOT / "recipes" / "smoke.yaml", out, fake_cifar, "--set", setting) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # no stage ran, no recipe.json: the fixed command starts afresh


def test_a_second_pipeline_in_a_live_ones_out_is_refused(tmp_path, fake_cifar, capsys):
    from spnas.engine.runlog import RunLock
    out = tmp_path / "out"
    live = RunLock(out).acquire()  # as a running pipeline holds it
    try:
        assert run(ROOT / "recipes" / "smoke.yaml", out, fake_cifar) == 2
    finally:
        live.release()
    err = capsys.readouterr().err
    assert "is in use by another run" in err and err.strip().endswith("choose another --out")
    assert not out.exists()  # nothing written: the live one's .lock went with it


def test_a_budget_is_checked_early_at_an_image_folders_side(tmp_path, capsys):
    from conftest import write_image_folders
    data = write_image_folders(tmp_path / "data", n_train=10, n_test=10, size=64)
    flags = ["--set", "dataset=folder", "--set", "classes=10", "--set", "image_size=64"]
    # the smoke recipe's cheapest arch: 69M FLOPs at 32x32, 276M at 64x64
    assert run(ROOT / "recipes" / "smoke.yaml", tmp_path / "out", data, *flags,
               "--set", "search.max_flops=200M") == 2
    assert "search stage: --max_flops 200M is below the cheapest arch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe, message", [
    ({"retrain": 5}, "recipe section 'retrain' must be a mapping of settings, got 5"),
    ({"out": "x"}, "the recipe's top level sets out, which the pipeline sets itself"),
    ({"supernet": {"epochs": 1}, "export": None}, None),  # an empty section
])
def test_the_settings_are_checked_when_the_pipeline_is_made(tmp_path, recipe, message):
    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline
    if message is None:
        assert Pipeline(recipe, tmp_path).settings["supernet"].optim.epochs == 1
        return
    with pytest.raises(SpnasError, match=message):
        Pipeline(recipe, tmp_path)


@pytest.mark.parametrize("held", [["last.pt", "config.json"], None])  # a supernet run; no folder
def test_resume_needs_a_pipeline_folder(tmp_path, fake_cifar, capsys, held):
    out = tmp_path / "run"
    for name in held or []:
        out.mkdir(exist_ok=True)
        (out / name).write_text("{}")
    assert run(ROOT / "recipes" / "smoke.yaml", out, fake_cifar, "--resume") == 2
    err = capsys.readouterr().err
    assert "holds no pipeline (no recipe.json): nothing to --resume" in err
    assert len(err.strip().splitlines()) == 1
    assert (sorted(p.name for p in out.iterdir()) == sorted(held)) if held else not out.exists()


@pytest.mark.parametrize("recipe, message", [
    ({"supernet": {"layers": 2}, "retrain": {"layers": 3}},
     "gives the retrain stage layers 3 but the supernet layers 2"),
    ({"retrain": {"space": "mbconv"}}, "gives the retrain stage space mbconv but the supernet "
                                       "space spos"),
    ({"retrain": {"num_choices": 1}}, "retrain stage num_choices 1 but the supernet num_choices 4"),
    ({"supernet": {"resize": True}}, "gives the retrain stage resize False but the supernet "
                                     "resize True"),
    ({"layers": 2, "resize": True}, None),  # at the top level: both stages
    ({"supernet": {"layers": 2}}, None),  # retrain's default: the arch file says
])
def test_a_retrain_stage_of_another_space_than_the_supernet_fails_first(tmp_path, recipe,
                                                                       message):
    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline
    if message is None:
        Pipeline(recipe, tmp_path / "p")._check_recipe()
        assert (tmp_path / "p" / "recipe.json").is_file()
        return
    with pytest.raises(SpnasError, match=message):
        Pipeline(recipe, tmp_path / "p")._check_recipe()
    assert not (tmp_path / "p").exists()


def test_a_pipeline_refused_before_its_first_stage_starts_afresh(tmp_path, capsys):
    """Its recipe.json alone (the first stage left no folder): a new start, even with another
    recipe, needs no --resume; once a stage has its folder, it does."""
    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline
    out = tmp_path / "p"
    Pipeline({"seed": 0}, out)._check_recipe()
    Pipeline({"seed": 1}, out)._check_recipe()
    assert "started no stage; it starts afresh" in capsys.readouterr().out
    assert json.loads((out / "recipe.json").read_text()) == {"seed": 1}
    (out / "supernet").mkdir()
    with pytest.raises(SpnasError, match="already holds this pipeline; pass --resume"):
        Pipeline({"seed": 1}, out)._check_recipe()


def test_a_resume_may_change_only_stages_not_started(tmp_path, capsys):
    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline
    out = tmp_path / "p"
    first = {"seed": 0, "supernet": {"epochs": 1}, "retrain": {"epochs": 1}}
    Pipeline(first, out)._check_recipe()
    (out / "supernet").mkdir()  # supernet started; search, retrain ... not yet
    later = {**first, "retrain": {"epochs": 2}, "export": {"format": "onnx"}}
    Pipeline(later, out, resume=True)._check_recipe()
    assert "export.format, retrain.epochs changed since" in capsys.readouterr().out
    assert json.loads((out / "recipe.json").read_text()) == later
    for change, differ in [({"supernet": {"epochs": 2}}, "supernet.epochs 1, now 2"),
                           ({"seed": 1}, "seed 0, now 1")]:
        with pytest.raises(SpnasError, match=rf"ran another recipe \({differ}; see .* supernet "
                                             "started with it"):
            Pipeline({**later, **change}, out, resume=True)._check_recipe()
    (out / "retrain").mkdir()  # retrain started: it, and every stage before it, are fixed now
    fixed = r"\(search.population not set, now 3; see .* and search started with it"
    with pytest.raises(SpnasError, match=fixed):
        Pipeline({**later, "search": {"population": 3}}, out, resume=True)._check_recipe()
    Pipeline({**later, "evaluate": {"batch_size": 50}}, out, resume=True)._check_recipe()
    assert json.loads((out / "recipe.json").read_text())["evaluate"] == {"batch_size": 50}


def test_a_flag_without_a_stage_beats_every_sections_own_value(tmp_path, monkeypatch):
    from spnas.fields import to_flat
    from spnas.stages.pipeline import Pipeline, apply_settings, pipeline
    recipe = {"seed": 0, "supernet": {"seed": 5, "data_path": "/recipe"},
              "retrain": {"seed": 6, "epochs": 1}, "evaluate": {"data_path": "/other"}}
    monkeypatch.setattr(Pipeline, "run", lambda self: (self.recipe, self.settings))
    given, settings = pipeline(apply_settings(recipe, [("seed", "3")]), tmp_path / "p",
                               overrides={"data_path": "/mine", "device": None})
    flat = {stage: to_flat(cfg) for stage, cfg in settings.items()}
    assert {stage: f["seed"] for stage, f in flat.items() if "seed" in f} == {
        "supernet": 3, "search": 3, "retrain": 3}
    assert flat["supernet"]["data_path"] == flat["retrain"]["data_path"] == "/mine"
    assert flat["evaluate"]["data_path"] == "/other"  # other data, named in its own section
    assert given["retrain"] == {"epochs": 1} and "device" not in given
    assert apply_settings(recipe, [("retrain.seed", "7")])["retrain"]["seed"] == 7


def test_a_resume_elsewhere_may_change_a_sections_data_path(tmp_path, capsys):
    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline
    out = tmp_path / "p"
    first = {"supernet": {"epochs": 1, "data_path": "/there"}}
    Pipeline(first, out)._check_recipe()
    (out / "supernet").mkdir()
    Pipeline({"supernet": {"epochs": 1, "data_path": "/here"}}, out, resume=True)._check_recipe()
    with pytest.raises(SpnasError, match=r"\(supernet.epochs 1, now 2; see"):
        Pipeline({"supernet": {"epochs": 2}}, out, resume=True)._check_recipe()


def test_a_cutout_larger_than_the_images_fails_before_any_stage_runs(tmp_path, fake_cifar, capsys):
    out = tmp_path / "out"
    assert run(ROOT / "recipes" / "smoke.yaml", out, fake_cifar, "--set", "retrain.cutout=true",
               "--set", "retrain.cutout_length=40") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retrain stage: --cutout_length 40 is larger than the 32x32" in err[0]
    assert not out.exists()


def test_a_resumed_stage_counts_the_time_of_the_process_that_stopped(tmp_path, monkeypatch):
    from spnas.stages import pipeline as P
    clock = iter(range(0, 1000, 10))  # each reading of the clock is 10 s after the last
    monkeypatch.setattr(P.time, "perf_counter", lambda: float(next(clock)))

    def ctrl_c():
        raise KeyboardInterrupt

    out = tmp_path / "p"
    first = P.Pipeline({"seed": 0}, out)
    first._check_recipe()
    monkeypatch.setattr(first, "_run_supernet", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        first._stage("supernet")  # 10 s, then stopped
    again = P.Pipeline({"seed": 0}, out, resume=True)
    monkeypatch.setattr(again, "_run_supernet", lambda: {"best": 0.5})
    again._stage("supernet")  # 10 s more
    assert again.times["supernet"] == 20
    assert json.loads(again.done_path("supernet").read_text())["seconds"] == 20


def test_a_running_stage_writes_its_time_so_far_for_a_process_killed_outright(tmp_path,
                                                                              monkeypatch):
    from spnas.stages import pipeline as P
    monkeypatch.setattr(P, "SPENT_EVERY", 0.01)
    out = tmp_path / "p"
    seen = []

    def killed_here():  # what a SIGKILL now would leave in --out
        for _ in range(500):
            if (out / P.SPENT).exists():
                break
            time.sleep(0.01)
        seen.append(json.loads((out / P.SPENT).read_text())["supernet"])
        return {"best": 0.5}

    pipe = P.Pipeline({"seed": 0}, out)
    pipe._check_recipe()
    monkeypatch.setattr(pipe, "_run_supernet", killed_here)
    pipe._stage("supernet")
    assert seen and seen[0] > 0
    assert pipe.times["supernet"] >= seen[0]
    assert not (out / P.SPENT).exists()  # finished: done.json has its time, nothing stopped


def test_python_overrides_set_one_stage_and_keep_the_rest_of_its_section(tmp_path, monkeypatch):
    from spnas.errors import SpnasError
    from spnas.stages.pipeline import Pipeline, pipeline
    recipe = {"seed": 0, "supernet": {"layers": 8, "lr": 0.05}, "retrain": {"num_steps": 6}}
    monkeypatch.setattr(Pipeline, "run", lambda self: self.recipe)
    given = pipeline(recipe, tmp_path / "p", overrides={"supernet": {"lr": 0.1},
                                                        "retrain.epochs": 1, "seed": 2})
    assert given["supernet"] == {"layers": 8, "lr": 0.1}
    assert given["retrain"] == {"num_steps": 6, "epochs": 1} and given["seed"] == 2
    assert recipe["supernet"] == {"layers": 8, "lr": 0.05}  # the caller's dict is not changed
    with pytest.raises(SpnasError, match="overrides 'retrian.epochs': no stage 'retrian'"):
        pipeline(recipe, tmp_path / "p", overrides={"retrian.epochs": 1})
