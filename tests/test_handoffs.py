"""Hand-offs between stages, driven through ``spnas`` as a user would: the file one stage
writes is the input of the next (search -> retrain, superkernel -> retrain, latency-table ->
search), a search resumed from a torn record, checkpoints of the wrong kind, resume with
changed flags, and the warning when a search scores on another split than the held-out one.

Every run is tiny: a 4-layer SPOS supernet (``tiny_supernet``) or the 20-layer MBConv space
at the CIFAR layout, a few steps on 250 fake images. The MBConv runs use --no-channels_last:
its depthwise convolutions are about 10x faster on the CPU that way.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import cli_argv, write_official
from test_train import train_argv

from spnas import Arch
from spnas.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_HELD_OUT = "WARNING: the data flags or split seed differ from the supernet's training"
ALLOWED_EPOCHS = "resume: --epochs 2 differs from the run's 1 (config.json); allowed"


# ---- the runs the tests hand on ---------------------------------------------------------
def tiny_supernet(root: Path) -> Path:
    """root/data (250 + 100 fake images) and root/sn: a 4-layer SPOS supernet trained for
    2 steps (val_size 50, seed 0, best.pt = last.pt)."""
    write_official(root / "data")
    assert main(train_argv(root / "data", root, "sn", **{"--epochs": 1, "--num_steps": 2})) == 0
    return root / "sn"


def run(argv) -> int:
    """``spnas ARGV``'s exit status (argparse's own errors included)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def search_argv(ckpt: Path, out: Path, **over) -> list[str]:
    flags = {"--checkpoint": ckpt, "--out": out, "--population": 4, "--top_k": 2,
             "--generations": 2, "--recal_images": 16, "--recal_batch": 8, "--val_images": 20,
             "--eval_batch": 10, "--seed": 3, "--device": "cpu"}
    return cli_argv("search", {**flags, **over})


def retrain_argv(arch, data: Path, save: Path, exp: str, **over) -> list[str]:
    flags = {"--arch": arch, "--batch_size": 8, "--epochs": 1, "--num_steps": 2, "--lr": 0.05,
             "--save_path": save, "--exp_name": exp, "--data_path": data, "--val_size": 50,
             "--dropout": 0.2, "--eval_batch": 50, "--seed": 1, "--device": "cpu",
             "--no-channels_last": None, "--no-download": None}
    return cli_argv("retrain", {**flags, **over})


def superkernel_argv(data: Path, save: Path, exp: str, **over) -> list[str]:
    flags = {"--exp_name": exp, "--save_path": save, "--data_path": data, "--val_size": 50,
             "--batch_size": 8, "--epochs": 1, "--num_steps": 3, "--layout": "cifar",
             "--warmup_frac": 0.4, "--lam": 5.0, "--threshold_lr_scale": 1000.0, "--seed": 0,
             "--device": "cpu", "--no-channels_last": None, "--no-download": None}
    return cli_argv("superkernel", {**flags, **over})


def finetune_argv(ckpt: Path, data: Path, save: Path, exp: str, **over) -> list[str]:
    flags = {"--checkpoint": ckpt, "--batch_size": 8, "--epochs": 1, "--num_steps": 2,
             "--lr": 0.05, "--save_path": save, "--exp_name": exp, "--data_path": data,
             "--val_size": 50, "--eval_batch": 50, "--device": "cpu", "--no-channels_last": None,
             "--no-download": None}
    return cli_argv("finetune", {**flags, **over})


def resume_argv(command: str, run_dir: Path, **flags) -> list[str]:
    """Resume ``run_dir``: every flag not given comes back from its config.json."""
    return cli_argv(command, {"--save_path": run_dir.parent, "--exp_name": run_dir.name,
                              "--resume": None, **flags})


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    return tiny_supernet(tmp_path_factory.mktemp("handoffs"))


@pytest.fixture(scope="module")
def data(supernet) -> Path:
    return supernet.parent / "data"


@pytest.fixture(scope="module")
def searched(supernet) -> Path:
    """An evolution search of the supernet: 2 generations of 4 candidates."""
    out = supernet.parent / "search"
    assert main(search_argv(supernet, out)) == 0
    return out


@pytest.fixture(scope="module")
def retrained(searched, data) -> Path:
    """``spnas retrain --arch best_arch.json`` (no --layers: the file names its space)."""
    assert main(retrain_argv(searched / "best_arch.json", data, data.parent, "retrain")) == 0
    return data.parent / "retrain"


@pytest.fixture(scope="module")
def superkernel(data) -> Path:
    """A 3-step Single-Path NAS search of the MBConv space (CIFAR layout, MACs latency)."""
    assert main(superkernel_argv(data, data.parent, "superkernel")) == 0
    return data.parent / "superkernel"


@pytest.fixture(scope="module")
def finetuned(retrained, data) -> Path:
    assert main(finetune_argv(retrained, data, data.parent, "finetune")) == 0
    return data.parent / "finetune"


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def plain(value):
    """``value`` as JSON gives it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spnas: error: "), err
    return err[0]


# ---- 1, 2: an arch file from a search retrained -------------------------------------------
def test_retrain_trains_the_arch_that_spnas_search_found(searched, retrained):
    best = json.loads((searched / "best_arch.json").read_text())
    top = max(r["val_acc"] for r in records(searched / "candidates.jsonl"))
    assert best["metrics"]["val_acc"] == top
    for name in ("best.pt", "last.pt"):
        ckpt = checkpoint(retrained / name)
        assert ckpt["kind"] == "child" and ckpt["arch"] == best["arch"], name
        assert plain(ckpt["space"]) == best["space"], name  # 4 layers: the file's, not --layers 20
    results = json.loads((retrained / "results.json").read_text())
    assert results["arch"] == str(Arch.load(searched / "best_arch.json"))
    # the network trained is the one the search costed
    assert results["params"] == best["metrics"]["params"]
    assert results["macs"] == best["metrics"]["flops"]


def test_retrain_trains_the_arch_that_spnas_superkernel_found(superkernel, data, tmp_path):
    info = json.loads((superkernel / "arch.json").read_text())
    assert info["space"]["name"] == "mbconv" and info["found_by"]["method"] == "superkernel"
    assert main(retrain_argv(superkernel / "arch.json", data, tmp_path, "r")) == 0
    ckpt = checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["kind"] == "child" and ckpt["arch"] == info["arch"]
    assert plain(ckpt["space"]) == info["space"]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["space"] == "mbconv/cifar, 20 layers" and results["arch"] == info["arch"]
    # the superkernel's latency was the MACs table's: the retrained network's MACs
    assert info["metrics"]["latency_unit"] == "MMAC"
    assert results["macs"] / 1e6 == pytest.approx(info["metrics"]["latency"], rel=1e-9)


def test_retrain_takes_an_mbconv_arch_string_with_space_mbconv(superkernel, data, tmp_path):
    info = json.loads((superkernel / "arch.json").read_text())
    choices = ",".join(map(str, info["choices"]))
    assert run(retrain_argv(choices, data, tmp_path, "r", **{"--space": "mbconv"})) == 0
    ckpt = checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["arch"] == info["arch"] and plain(ckpt["space"]) == info["space"]


# ---- 3: a latency table measured, then searched under ------------------------------------
def test_search_under_a_latency_budget_from_spnas_latency_table(supernet, tmp_path):
    table_path = tmp_path / "latency.json"
    assert main(cli_argv("latency-table", {
        "--checkpoint": supernet, "--out": table_path, "--device": "cpu", "--warmup": 0,
        "--repeats": 1, "--calibrate": 0, "--validate": 0, "--threads": 1})) == 0
    table = json.loads(table_path.read_text())
    assert plain(table["space"]) == plain(checkpoint(supernet / "last.pt")["space"])

    def predicted(arch: str) -> float:
        return table["scale"] * (table["constant"] + sum(
            table["layers"][i][token] for i, token in enumerate(arch.split())))
    least = table["scale"] * (table["constant"] + sum(min(d.values()) for d in table["layers"]))
    most = table["scale"] * (table["constant"] + sum(max(d.values()) for d in table["layers"]))
    assert least < most
    budget = least + 0.4 * (most - least)  # some archs of the space are over it
    out = tmp_path / "search"
    assert main(search_argv(supernet, out, **{"--latency_table": table_path,
                                              "--max_latency_ms": budget})) == 0
    recs = records(out / "candidates.jsonl")
    assert len(recs) == 8
    for r in recs:
        assert r["latency_ms"] == pytest.approx(predicted(r["arch"]), rel=1e-9), r["arch"]
        assert r["latency_ms"] <= budget, r
    best = json.loads((out / "best_arch.json").read_text())
    assert best["arch"] in {r["arch"] for r in recs}
    assert best["found_by"]["budget"] == {"max_latency_ms": budget}
    assert predicted(best["arch"]) <= budget
    assert (out / "accuracy_vs_latency.png").is_file()
    assert "filters nothing" not in (out / "search.log").read_text()


# ---- 4: a record torn by a kill, then --resume -------------------------------------------
@pytest.mark.parametrize("cut, kept", [
    pytest.param(lambda line: line[:len(line) // 2], 3, id="mid-line"),
    pytest.param(lambda line: line[:1], 3, id="first-byte"),
    pytest.param(lambda line: line.rstrip("\n"), 4, id="all-but-the-newline"),
])
def test_a_resumed_search_drops_the_torn_last_line_of_its_record(searched, tmp_path, cut, kept):
    full = (searched / "candidates.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    out = tmp_path / "killed"
    out.mkdir()
    shutil.copy(searched / "search.json", out / "search.json")
    (out / "candidates.jsonl").write_text("".join(lines[:3]) + cut(lines[3]))  # killed writing #4
    assert main(search_argv(searched.parent / "sn", out, **{"--resume": None})) == 0
    text = (out / "candidates.jsonl").read_text()
    recs = records(out / "candidates.jsonl")  # every line is JSON
    assert text.endswith("\n") and [r["index"] for r in recs] == list(range(len(lines)))
    assert len({r["arch"] for r in recs}) == len(recs)
    assert text == full  # as if it had never stopped
    assert (out / "best_arch.json").read_bytes() == (searched / "best_arch.json").read_bytes()
    assert f"resuming: {kept} candidates recorded" in (out / "search.log").read_text()


def test_a_resumed_run_drops_the_torn_last_line_of_its_metrics(supernet, tmp_path):
    run_dir = copy_run(supernet, tmp_path / "sn")
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"type": "train", "st')  # killed writing step 3's
    assert run(resume_argv("train", run_dir, **{"--epochs": 2})) == 0
    recs = records(metrics)  # every line is JSON
    assert [r["step"] for r in recs if r["type"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if r["type"] == "val"] == [2, 4]


# ---- 5: a checkpoint of the wrong kind --------------------------------------------------------
def needs(kind: str, *wanted: str) -> str:
    return f"holds a {kind} checkpoint; this command needs one of: {', '.join(wanted)}"


def started_by(command: str, model_type: str) -> str:
    return (f"{{run}} holds a run of spnas {command} ({model_type} in config.json), not of this "
            f"command; resume it with spnas {command} --resume")


WRONG_KIND = {  # id: (run the command is given, argv of (that run's folder, data, tmp), message)
    "evaluate-supernet": ("supernet", lambda r, d, t: [
        "evaluate", "--checkpoint", r / "last.pt", "--device", "cpu", "--out", t / "e"],
        needs("supernet", "child")),
    "evaluate-superkernel-folder": ("superkernel", lambda r, d, t: [
        "evaluate", "--checkpoint", r, "--device", "cpu", "--out", t / "e"],
        needs("superkernel", "child")),
    "export-supernet": ("supernet", lambda r, d, t: [
        "export", "--checkpoint", r / "best.pt", "--format", "torchscript", "--check_images", "0",
        "--out", t / "net.pt"], needs("supernet", "child")),
    "finetune-supernet-without-arch": ("supernet", lambda r, d, t: finetune_argv(r, d, t, "f"),
                                       "best.pt is a supernet checkpoint: pass --arch"),
    "finetune-superkernel": ("superkernel", lambda r, d, t: finetune_argv(r / "last.pt", d, t, "f"),
                             needs("superkernel", "child", "supernet")),
    "search-child": ("retrained", lambda r, d, t: search_argv(r, t / "s"), needs("child", "supernet")),
    "search-superkernel": ("superkernel", lambda r, d, t: search_argv(r, t / "s"),
                           needs("superkernel", "supernet")),
    "train-resume-a-retrain-run": ("retrained", lambda r, d, t: resume_argv("train", r),
                                   started_by("retrain", "RetrainConfig")),
    "train-resume-a-superkernel-run": ("superkernel", lambda r, d, t: resume_argv("train", r),
                                       started_by("superkernel", "SuperkernelConfig")),
    "superkernel-resume-a-supernet-run": ("supernet", lambda r, d, t: resume_argv("superkernel", r),
                                          started_by("train", "SupernetConfig")),
    "retrain-resume-a-supernet-run": ("supernet", lambda r, d, t: resume_argv("retrain", r),
                                      started_by("train", "SupernetConfig")),
    "finetune-resume-a-supernet-run": ("supernet", lambda r, d, t: resume_argv("finetune", r),
                                       started_by("train", "SupernetConfig")),
    "finetune-resume-a-retrain-run": ("retrained", lambda r, d, t: resume_argv("finetune", r),
                                      started_by("retrain", "RetrainConfig")),
    "retrain-arch-is-a-checkpoint": ("supernet", lambda r, d, t: retrain_argv(r / "last.pt", d, t, "x"),
                                     "{run}/last.pt is not an arch file (JSON text): a checkpoint?"),
}


@pytest.mark.parametrize("source, argv, message", WRONG_KIND.values(), ids=WRONG_KIND.keys())
def test_a_checkpoint_of_the_wrong_kind_is_a_one_line_error(request, data, tmp_path, capsys,
                                                            source, argv, message):
    """Exit status 2 and one line naming the problem; the run given is left as it was."""
    given = copy_run(request.getfixturevalue(source), tmp_path / "given" / source)
    before = snapshot(given)
    capsys.readouterr()
    assert run(argv(given, data, tmp_path / "new")) == 2
    assert message.format(run=given) in one_error_line(capsys)
    assert snapshot(given) == before
    assert not list((tmp_path / "new").rglob("*.pt"))  # and nothing new was trained


# ---- 6: resume with changed flags -------------------------------------------------------------
RESUMED = {  # command: (its run, a changed setting, the refusal's words)
    "retrain": ("retrained", {"--dropout": 0.5}, "--dropout 0.5 differs from the run's 0.2 (config.json)"),
    "superkernel": ("superkernel", {"--lam": 1.0}, "--lam 1.0 differs from the run's 5.0 (config.json)"),
    "finetune": ("finetuned", {"--freeze_epochs": 1},
                 "--freeze_epochs 1 differs from the run's 0 (config.json)"),
}


@pytest.mark.parametrize("command", RESUMED)
def test_resume_refuses_a_changed_setting_and_takes_more_epochs(request, tmp_path, capsys, command):
    source, changed, message = RESUMED[command]
    run_dir = copy_run(request.getfixturevalue(source), tmp_path / source)
    steps = checkpoint(run_dir / "last.pt")["step"]
    before = snapshot(run_dir)
    capsys.readouterr()
    assert run(resume_argv(command, run_dir, **changed)) == 2
    err = one_error_line(capsys)
    assert message in err and "a resumed run keeps the settings" in err
    assert snapshot(run_dir) == before
    assert main(resume_argv(command, run_dir, **{"--epochs": 2})) == 0
    assert ALLOWED_EPOCHS in (run_dir / "train.log").read_text()
    assert checkpoint(run_dir / "last.pt")["step"] == 2 * steps
    assert json.loads((run_dir / "config.json").read_text())["optim"]["epochs"] == 2


def test_a_resumed_search_refuses_changed_scoring_and_takes_another_eval_batch(searched, tmp_path,
                                                                               capsys):
    out = copy_run(searched, tmp_path / "search")
    before = snapshot(out)
    capsys.readouterr()
    assert main(search_argv(searched.parent / "sn", out, **{"--resume": None,
                                                             "--val_images": 10})) == 2
    assert "holds a search with other settings (scoring.val_images)" in one_error_line(capsys)
    assert snapshot(out) == before
    assert main(search_argv(searched.parent / "sn", out, **{"--resume": None,
                                                             "--eval_batch": 5})) == 0
    for name in ("candidates.jsonl", "best_arch.json"):
        assert (out / name).read_bytes() == (searched / name).read_bytes(), name
    assert "resume: eval_batch 5 differs from the search's 10 (search.json); allowed" in \
        (out / "search.log").read_text()


# ---- 7: the scoring split against the one held out of supernet training --------------------
@pytest.mark.parametrize("flags, warned", [
    pytest.param({}, False, id="the-checkpoints-own"),
    pytest.param({"--val_size": 50, "--split_seed": 0}, False, id="the-same-given"),
    pytest.param({"--val_images": 10}, False, id="fewer-of-the-held-out-images"),
    pytest.param({"--split_seed": 1}, True, id="another-split-seed"),
    pytest.param({"--val_size": 40}, True, id="another-val-size"),
])
def test_a_search_warns_when_its_split_is_not_the_held_out_one(supernet, tmp_path, capsys,
                                                               flags, warned):
    out = tmp_path / "s"
    argv = search_argv(supernet, out, **{"--method": "random", "--num": 1, **flags})
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (NOT_HELD_OUT in (out / "search.log").read_text()) is warned
    assert (NOT_HELD_OUT in err) is warned
