import json
import subprocess
import sys

import pytest
from conftest import ROOT

from spnas.cli import main
from spnas.curves import Curve, compare, load_curve


def write_run(folder, losses, val=(), start=1):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses, start=start):
            f.write(json.dumps({"type": "train", "step": i, "loss": loss}) + "\n")
        for step, v in val:
            f.write(json.dumps({"type": "val", "step": step, "val_loss": v, "val_acc": 0.5}) + "\n")
    return folder


BASE = [2.3, 2.1, 1.9, 1.7, 1.6, 1.5, 1.45, 1.4]


def test_identical_runs_pass_with_zero_error():
    c = compare(Curve("a", list(range(8)), BASE), Curve("b", list(range(8)), BASE))
    assert c.passed and c.mean_abs_error == 0 and c.mean_relative_error == 0
    assert c.lines()[0] == "MeanRelativeError: 0.0" and c.lines()[2].startswith("pass")


@pytest.mark.parametrize("sign", [+1, -1])
def test_divergence_fails_upward_and_downward(sign):
    run = [b * (1 + sign * 0.2) for b in BASE]
    c = compare(Curve("run", list(range(8)), run), Curve("base", list(range(8)), BASE))
    assert not c.passed
    assert c.mean_relative_error == pytest.approx(sign * 0.2)
    assert c.mean_abs_relative_error == pytest.approx(0.2)
    assert c.lines()[2].startswith("fail")


def test_errors_of_opposite_sign_do_not_cancel():
    run = [b * (1.3 if i % 2 else 0.7) for i, b in enumerate(BASE)]
    c = compare(Curve("run", list(range(8)), run), Curve("base", list(range(8)), BASE))
    assert abs(c.mean_relative_error) < 0.01  # the seed's signed mean would pass this
    assert not c.passed


def test_small_absolute_difference_passes_on_atol():
    base = [1e-3] * 8  # tiny losses: large relative, tiny absolute differences
    run = [1.1e-3] * 8
    c = compare(Curve("r", list(range(8)), run), Curve("b", list(range(8)), base))
    assert c.mean_abs_relative_error > 0.05 and c.passed


def test_runs_of_different_length_compare_common_steps(tmp_path, capsys):
    write_run(tmp_path / "base", BASE)
    write_run(tmp_path / "short", BASE[:5])
    assert main(["curves", str(tmp_path / "short"), "--baseline", str(tmp_path / "base"),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compared the 5 logged steps both runs have; 3 steps are in only one" in out
    assert "MeanRelativeError: 0.0" in out and "MeanAbsoluteError: 0.0" in out


def test_seed_script_draws_and_fails_with_status_1(tmp_path):
    write_run(tmp_path / "base", BASE, val=[(4, 1.8), (8, 1.5)])
    write_run(tmp_path / "far", [b + 0.5 for b in BASE])
    r = subprocess.run([sys.executable, str(ROOT / "run_scripts" / "loss.py"), str(tmp_path / "far"),
                        "--baseline", str(tmp_path / "base"), "--out", str(tmp_path / "plots")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-3].startswith("MeanRelativeError: ") and lines[-2].startswith("MeanAbsoluteError: ")
    assert float(lines[-2].split(": ")[1]) == pytest.approx(0.5)
    assert lines[-1].startswith("fail mean_abs_relative_error=")
    for name in ("loss.jpg", "loss.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5000


def test_curves_read_text_logs_and_metrics(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("starting\nstep 1/4 epoch 0 lr 0.1 loss 2.5 acc 0.1\nvalidation ...\n"
                   "step 2/4 epoch 0 lr 0.1 loss 2.25 acc 0.1\n")
    c = load_curve(log)
    assert c.steps == [1, 2] and c.losses == [2.5, 2.25]
    run = write_run(tmp_path / "run", BASE, val=[(4, 1.8)])
    c = load_curve(run)
    assert c.name == "run" and c.losses == BASE and c.val_steps == [4]


def test_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty.log").write_text("nothing here\n")
    assert main(["curves", str(tmp_path / "empty.log")]) == 2
    assert main(["curves", str(tmp_path / "missing")]) == 2
    write_run(tmp_path / "a", BASE)
    write_run(tmp_path / "b", BASE, start=100)
    assert main(["curves", str(tmp_path / "a"), "--baseline", str(tmp_path / "b"),
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("spnas: error:") for e in err)
    assert "share no logged step" in err[2]
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 2.0}\n{"ty\n')
    assert main(["curves", str(tmp_path / "torn"), "--out", str(tmp_path)]) == 2
    assert "metrics.jsonl line 2 is not JSON" in capsys.readouterr().err
