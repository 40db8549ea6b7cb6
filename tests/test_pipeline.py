"""``spnas pipeline``: the whole chain on tiny data, resume, and recipe errors."""
import json
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
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # loss curve, search plot, retrain, confusion


def test_resume_keeps_finished_stages_and_runs_the_stopped_one(smoke):
    root, out = smoke
    kept = {s: (out / s / "done.json").stat().st_mtime_ns for s in ("supernet", "search")}
    (out / "evaluate" / "done.json").unlink()  # as if the run had stopped during evaluate
    assert run(ROOT / "recipes" / "smoke.yaml", out, root / "data", "--resume") == 0
    assert {s: (out / s / "done.json").stat().st_mtime_ns for s in kept} == kept
    assert (out / "evaluate" / "done.json").is_file()


@pytest.mark.parametrize("extra, message", [
    ((), "already holds this pipeline; pass --resume"),
    (("--resume", "--set", "supernet.lr=0.5"), "ran another recipe (supernet differ"),
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
