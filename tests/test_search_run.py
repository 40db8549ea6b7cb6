"""``spnas search`` on a tiny supernet trained with ``spnas train``: folder, scoring, resume."""
import argparse
import json
import random
import shutil

import pytest
import torch
from conftest import write_official
from test_train import train_argv

import spnas.stages.search as search_run
from spnas.arch import Arch
from spnas.cli import count_arg, main
from spnas.data.augment import AugmentConfig, BatchTransform
from spnas.engine.evaluation import recalibration_batches
from spnas.engine.scoring import SupernetScorer, recal_set, val_set
from spnas.spaces.spos import SposSupernet, spos_space

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    write_official(root / "data")
    assert main(train_argv(root / "data", root, "sn", **{"--epochs": 1, "--num_steps": 2})) == 0
    return root / "sn"


def search_argv(ckpt, out, **over):
    flags = {"--checkpoint": ckpt, "--out": out, "--population": 4, "--top_k": 2,
             "--generations": 3, "--recal_images": 16, "--recal_batch": 8, "--val_images": 20,
             "--eval_batch": 10, "--max_flops": "82.5M", "--seed": 3}
    flags.update(over)
    argv = ["search"]
    for k, v in flags.items():
        argv += [k] if v is None else [k, str(v)]
    return argv


def records(out):
    return [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]


class Untouchable(torch.Tensor):
    """A tensor that fails any use: stands in for the test set."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError("the test set was read")


@pytest.fixture
def poisoned_test_set(monkeypatch):
    real = search_run.load_splits

    def load(data, seed):
        splits = real(data, seed)
        splits.test = tuple(t.as_subclass(Untouchable) for t in splits.test)
        return splits
    monkeypatch.setattr(search_run, "load_splits", load)


def test_search_writes_its_folder_within_budget_without_the_test_set(supernet, tmp_path,
                                                                     poisoned_test_set):
    out = tmp_path / "evo"
    assert main(search_argv(supernet, out)) == 0
    for name in ("search.json", "search.log", "best_arch.json", "top/rank_01.json",
                 "top/rank_02.json", "accuracy_vs_flops.png", "generations.png"):
        assert (out / name).is_file(), name
    recs = records(out)
    assert [r["index"] for r in recs] == list(range(12))
    assert [r["generation"] for r in recs] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({r["arch"] for r in recs}) == 12
    assert all(r["flops"] <= 82.5e6 and r["params"] > 0 and r["latency_ms"] is None for r in recs)
    assert all(0 <= r["val_acc"] <= 1 and r["val_loss"] > 0 for r in recs)
    best = json.loads((out / "best_arch.json").read_text())
    assert best["metrics"]["val_acc"] == max(r["val_acc"] for r in recs)
    assert best["found_by"]["scored_images"] == 20 and best["found_by"]["score_on"] == "val"
    arch = Arch.load(out / "best_arch.json")
    assert str(arch) in {r["arch"] for r in recs} and arch.space == spos_space(layers=4)
    log = (out / "search.log").read_text()
    assert "this space: 77.1M-83.5M multiply-accumulates, 0.0884M-0.0954M params at 32x32" in log
    assert "WARNING" not in log  # 82.5M is inside the range: it filters
    # the test set is used only when asked for, with a warning (a crash keeps the log)
    with pytest.raises(AssertionError, match="test set was read"):
        main(search_argv(supernet, tmp_path / "t", **{"--score_on": "test"}))
    assert "WARNING: scoring candidates on the TEST set" in (tmp_path / "t" / "search.log").read_text()


def test_random_search(supernet, tmp_path):
    out = tmp_path / "rnd"
    assert main(search_argv(supernet, out, **{"--method": "random", "--num": 5})) == 0
    recs = records(out)
    assert len(recs) == 5 and {r["generation"] for r in recs} == {0}
    assert {r["origin"] for r in recs} == {"random"}
    assert (out / "accuracy_vs_flops.png").is_file() and not (out / "generations.png").exists()


def _stopped_search(supernet, out, monkeypatch) -> None:
    """A search into ``out`` stopped (Ctrl-C) at its sixth candidate."""
    real = SupernetScorer.__call__
    calls = []

    def stop_at_the_sixth(self, arch):
        calls.append(arch)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(self, arch)
    with monkeypatch.context() as m:
        m.setattr(SupernetScorer, "__call__", stop_at_the_sixth)
        assert main(search_argv(supernet, out)) == 130


def test_a_resumed_search_equals_an_uninterrupted_one(supernet, tmp_path, monkeypatch, capsys):
    assert main(search_argv(supernet, tmp_path / "full")) == 0
    part = tmp_path / "part"
    _stopped_search(supernet, part, monkeypatch)
    assert len(records(part)) == 5
    assert main(search_argv(supernet, part)) == 2  # a folder with a search needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main(search_argv(supernet, part, **{"--resume": None})) == 0
    for name in ("candidates.jsonl", "best_arch.json", "top/rank_02.json"):
        assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    capsys.readouterr()
    assert main(search_argv(supernet, part, **{"--resume": None, "--generations": 4})) == 2
    assert "other settings (search.generations)" in capsys.readouterr().err


def test_a_search_resumes_on_its_supernet_moved_elsewhere_but_not_on_other_weights(
        supernet, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    assert main(search_argv(supernet, full)) == 0
    _stopped_search(supernet, tmp_path / "part", monkeypatch)
    moved = tmp_path / "moved"
    shutil.copytree(supernet, moved / "sn")  # a pipeline folder copied to another --out
    shutil.move(tmp_path / "part", moved / "part")
    capsys.readouterr()
    assert main(search_argv(moved / "sn", moved / "part", **{"--resume": None})) == 0
    assert (moved / "part" / "candidates.jsonl").read_bytes() == (full / "candidates.jsonl").read_bytes()
    assert f"checkpoint {(moved / 'sn').resolve()}" in (moved / "part" / "search.log").read_text()
    # other weights in the same file: refused by name
    _stopped_search(moved / "sn", tmp_path / "other", monkeypatch)
    ckpt = torch.load(moved / "sn" / "best.pt", weights_only=True)
    next(iter(ckpt["model"].values())).add_(1)
    torch.save(ckpt, moved / "sn" / "best.pt")
    capsys.readouterr()
    assert main(search_argv(moved / "sn", tmp_path / "other", **{"--resume": None})) == 2
    assert "other settings (supernet_weights)" in capsys.readouterr().err


def test_a_search_record_of_spnas_0_2_knows_its_supernet_by_its_path(supernet, tmp_path,
                                                                     monkeypatch, capsys):
    part = tmp_path / "part"
    _stopped_search(supernet, part, monkeypatch)
    meta = json.loads((part / "search.json").read_text())
    del meta["settings"]["supernet_weights"]  # as spnas 0.2 wrote it
    (part / "search.json").write_text(json.dumps(meta))
    shutil.copytree(supernet, tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(search_argv(tmp_path / "elsewhere", part, **{"--resume": None})) == 2
    assert "other settings (checkpoint)" in capsys.readouterr().err
    assert main(search_argv(supernet, part, **{"--resume": None})) == 0


def test_a_budget_that_filters_nothing_is_warned(supernet, tmp_path, capsys):
    out = tmp_path / "loose"
    flags = {"--method": "random", "--num": 2, "--max_flops": "330M", "--max_params": "1M"}
    assert main(search_argv(supernet, out, **flags)) == 0
    log = (out / "search.log").read_text()
    assert "this space: 77.1M-83.5M multiply-accumulates, 0.0884M-0.0954M params at 32x32" in log
    assert ("WARNING: --max_flops 330M filters nothing: every arch of this space costs at most "
            "83.5M multiply-accumulates at 32x32 (SPOS's 330M is the ImageNet layout's figure, "
            "at 224x224 with --resize)") in log
    assert ("WARNING: --max_params 1M filters nothing: every arch of this space costs at most "
            "0.0954M params at 32x32; lower it") in log
    assert capsys.readouterr().err.count("filters nothing") == 2  # the console says it too
    assert len(records(out)) == 2  # a warning, not an error: the search runs


@pytest.mark.parametrize("flags, message", [
    ({"--max_flops": "10M"}, "--max_flops 10M is below the cheapest arch of this space"),
    ({"--max_flops": "80"}, "is below the cheapest arch of this space (77.1M multiply-accumulates "
                            "at 32x32); raise it (a count: 80M for 80 million)"),
    ({"--max_params": "2.5"}, "raise it (a count: 2.5M for 2.5 million)"),
    ({"--max_latency_ms": 3}, "--max_latency_ms needs --latency_table"),
    ({"--population": 0}, "--population must be positive"),
])
def test_bad_search_flags_are_one_line_errors(supernet, tmp_path, capsys, flags, message):
    assert main(search_argv(supernet, tmp_path / "x", **flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("spnas: error:") and message in err
    assert not (tmp_path / "x").exists()  # no folder, log or .lock left behind


def test_no_count_hint_where_millions_would_not_fit_either(supernet, tmp_path, capsys):
    assert main(search_argv(supernet, tmp_path / "x", **{"--max_flops": "0.01"})) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("is below the cheapest arch of this space (77.1M multiply-accumulates "
                        "at 32x32); raise it")


def test_a_refused_search_leaves_a_folder_as_it_found_it(supernet, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert main(search_argv(supernet, tmp_path / "x", **{"--max_flops": "10M"})) == 2
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]


def test_a_second_search_in_a_live_ones_out_is_refused(supernet, tmp_path, capsys):
    from spnas.engine.runlog import RunLock
    live = RunLock(tmp_path / "x").acquire()  # as a running search holds it
    try:
        assert main(search_argv(supernet, tmp_path / "x")) == 2
    finally:
        live.release()
    err = capsys.readouterr().err.strip()
    assert "is in use by another run" in err and err.endswith("choose another --out")
    assert not (tmp_path / "x").exists()


def test_budget_counts_read_like_papers_write_them():
    assert count_arg("330M") == 330e6 and count_arg("1.5G") == 1.5e9
    assert count_arg("2.5e8") == 2.5e8 and count_arg("3500000") == 3.5e6
    for bad in ("lots", "-5M", "M"):
        with pytest.raises(argparse.ArgumentTypeError):
            count_arg(bad)


def test_a_candidate_is_recalibrated_to_exactly_the_recalibration_set_statistics():
    torch.manual_seed(0)
    space = spos_space(layers=2)
    model = SposSupernet(space, 10)
    x = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (60,))
    aug = BatchTransform(AugmentConfig())
    cpu = torch.device("cpu")
    arch = Arch.sample(space, random.Random(1))
    other = model.layers[0][(arch[0] + 1) % 4].main[0][1]  # a BN the path does not reach
    before = other.running_mean.clone()
    scorer = SupernetScorer(model, recal_set(x, 40, 16, aug, 5, cpu, torch.float32, 1e9),
                            val_set(x, y, None, 25, aug, 0, cpu, torch.float32, 1e9), 10, cpu)
    result = scorer(arch)
    head_bn = model.head[0][1]
    after = {bn: (bn.running_mean.clone(), bn.running_var.clone()) for bn in (model.stem[1], head_bn)}
    # the recalibration set, made again independently, and each BN's inputs over all of it
    batches = list(recalibration_batches(x, 40, 16, aug, 5, cpu))
    assert [len(b) for b in batches] == [16, 16, 8]
    seen = []
    hook = head_bn.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    model.train()
    with torch.no_grad():
        stem_in = torch.cat([model.stem[0](b) for b in batches])
        for b in batches:
            model(b, arch)
    hook.remove()
    for bn, inputs in ((model.stem[1], stem_in), (head_bn, torch.cat(seen))):
        mean, var = after[bn]
        torch.testing.assert_close(mean, inputs.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, inputs.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert torch.equal(other.running_mean, before)
    # images rebuilt per candidate (too big to keep) give the same score
    rebuilt = SupernetScorer(model, recal_set(x, 40, 16, aug, 5, cpu, torch.float32, 0),
                             val_set(x, y, None, 25, aug, 0, cpu, torch.float32, 0), 10, cpu)
    assert not rebuilt.recal.prepared and rebuilt(arch) == result


def test_an_exhausted_space_is_reported(supernet, tmp_path, capsys):
    """5 of the 256 paths fit 77.7M MACs: asked for 20, the search scores those 5 and says so."""
    out = tmp_path / "few"
    assert main(search_argv(supernet, out, **{"--method": "random", "--num": 20,
                                              "--max_flops": "77.7M"})) == 0
    assert len(records(out)) == 5
    assert "5 scored of the 20 asked for" in (out / "search.log").read_text()


def test_resume_of_no_search_is_refused(supernet, tmp_path, capsys):
    assert main(search_argv(supernet, tmp_path / "none", **{"--resume": None})) == 2
    assert "holds no search to continue" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_the_search_takes_no_training_augmentation_it_would_not_use(capsys):
    from spnas.cli import main
    from spnas.config import SearchRunConfig
    from spnas.errors import SpnasError
    for flag in ("--cutout", "--auto_aug", "--cutout_length=8"):
        with pytest.raises(SystemExit):
            main(["search", "--checkpoint", "x", flag])
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err
    with pytest.raises(SpnasError, match=r"no setting auto_aug \(training augmentation: a search "
                                         r"recalibrates BN on crop/flip"):
        SearchRunConfig(checkpoint="x", data={"auto_aug": True})
    assert SearchRunConfig(checkpoint="x", data={"val_size": 100}).data.val_size == 100
