"""``--tensorboard``: the event files hold what metrics.jsonl holds; absent package, one line."""
import sys

import pytest
from test_search_run import records, search_argv
from test_train import train_argv

from spnas.cli import main
from spnas.engine.runlog import RunLog, read_metrics

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every event file under ``folder``, as TensorBoard reads them."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_supernet_run_writes_every_train_and_val_number(fake_cifar, tmp_path):
    assert main(train_argv(fake_cifar, tmp_path, "tb", **{"--tensorboard": None})) == 0
    run = tmp_path / "tb"
    got = scalars(run / "tensorboard")
    train = [r for r in read_metrics(run) if r["type"] == "train"]
    assert len(train) == 6  # 2 epochs x 3 steps, print_freq 1
    for key in ("loss", "acc", "lr", "img_per_s"):
        assert got[f"train/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train]
    val = [r for r in read_metrics(run) if r["type"] == "val"]
    assert got["val/val_acc"] == [(r["step"], pytest.approx(r["val_acc"], rel=1e-6)) for r in val]
    assert "train/epoch" not in got  # bookkeeping, not a curve


def test_resumed_log_hides_what_the_stopped_process_wrote_past_the_checkpoint(tmp_path):
    first = RunLog(tmp_path, console=False, tensorboard=True)
    for step in (1, 2, 3, 4):
        first.metric({"type": "train", "step": step, "loss": float(step)})
    first.close()
    again = RunLog(tmp_path, console=False, tensorboard=True)
    again.truncate_after(2)  # resumed from the checkpoint of step 2
    for step in (3, 4, 5):
        again.metric({"type": "train", "step": step, "loss": 10.0 * step})
    again.close()  # the trainer closes its log, then retrain logs its tests into it
    for which, acc in (("last", 0.5), ("best", 0.75)):
        again.metric({"type": "test", "which": which, "step": 5, "test_acc": acc})
    again.close()
    got = scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    assert got["test_last/test_acc"] == [(5, 0.5)] and got["test_best/test_acc"] == [(5, 0.75)]
    assert [r["loss"] for r in read_metrics(tmp_path) if r["type"] == "train"] == \
        [1.0, 2.0, 30.0, 40.0, 50.0]


def test_search_writes_each_candidate_by_its_number(fake_cifar, tmp_path):
    assert main(train_argv(fake_cifar, tmp_path, "sn", **{"--epochs": 1, "--num_steps": 2})) == 0
    out = tmp_path / "search"
    assert main(search_argv(tmp_path / "sn", out, **{"--tensorboard": None})) == 0
    got, cands = scalars(out / "tensorboard"), records(out)
    assert len(cands) == 12  # population 4 x 3 generations
    for key in ("val_acc", "flops", "params"):
        assert got[f"candidate/{key}"] == [(c["index"], pytest.approx(c[key], rel=1e-6))
                                           for c in cands]


def test_without_the_package_the_flag_is_a_one_line_hint(fake_cifar, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert main(train_argv(fake_cifar, tmp_path, "no_tb", **{"--tensorboard": None})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spnas: error: --tensorboard needs the tensorboard package: pip install "
                   "tensorboard (or pip install -e '.[tensorboard]' in the spnas checkout), or "
                   "drop --tensorboard"]
    assert not (tmp_path / "no_tb" / "last.pt").exists()


def test_pipeline_flag_reaches_the_training_stages_and_the_search(tmp_path):
    from spnas.cli import build_parser
    from spnas.stages.pipeline import Pipeline
    argv = ["pipeline", "--config", "r.yaml", "--out", str(tmp_path)]
    assert build_parser().parse_args(argv).tensorboard is None  # not given: the recipe's
    assert build_parser().parse_args(argv + ["--tensorboard"]).tensorboard is True
    p = Pipeline({"tensorboard": True}, tmp_path / "p")
    assert p._placed(p.settings["supernet"], "supernet").run.tensorboard
    assert p._placed(p.settings["retrain"], "retrain").run.tensorboard
    assert p.settings["search"].tensorboard
    q = Pipeline({}, tmp_path / "q")
    assert not q._placed(q.settings["supernet"], "supernet").run.tensorboard
