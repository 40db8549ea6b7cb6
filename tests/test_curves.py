import json
import random
import statistics
import subprocess
import sys

import pytest
from conftest import ROOT

from spnas.cli import main
from spnas.engine.curves import Curve, compare, draw_curves, load_curve, window_means
from spnas.errors import SpnasError


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


# --- CSV curves, windows, --max_step, overlap ---------------------------------------------

REFERENCE = ROOT.parent / "shared" / "reference" / "spos_c10_supernet_b96_steps.csv"


def write_records(folder, steps, losses):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for s, loss in zip(steps, losses):
            f.write(json.dumps({"type": "train", "step": s, "loss": loss}) + "\n")
    return folder


def write_csv(path, losses, start=1):
    path.write_text("step,epoch,lr,loss,acc\n" + "".join(
        f"{s},0,0.025,{loss},0.1\n" for s, loss in enumerate(losses, start=start)))
    return path


def curves(*args):
    """``spnas curves ARGS``: (exit status, stdout lines, stderr lines)."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["curves", *map(str, args)])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue().strip().splitlines(), err.getvalue().strip().splitlines()


def test_csv_curve_reads_step_and_loss_columns_only(tmp_path):
    p = tmp_path / "ref.csv"
    p.write_text("acc, Loss ,lr,step\n0.1,2.5,0.1,1\n\n0.2,2.25,0.1,2\n0.3,2.0,0.1,3.0\n")
    c = load_curve(p)
    assert c.name == "ref" and c.steps == [1, 2, 3] and c.losses == [2.5, 2.25, 2.0]


@pytest.mark.skipif(not REFERENCE.is_file(), reason="no ../shared/reference here")
def test_the_shared_reference_csv_reads_with_its_published_window_means():
    c = load_curve(REFERENCE)
    assert c.steps == list(range(1, 4264))
    means = window_means(c, 250, 10)  # the reference README's table: steps 0-249, 500-749, ...
    assert [round(means[w], 3) for w in (0, 2, 4, 6, 8, 9)] == [2.307, 2.096, 1.953, 1.884, 1.831, 1.803]


def test_window_means_weight_records_by_the_steps_they_cover():
    rng = random.Random(0)
    steps = []  # records of random, unequal spans; each window's last step is logged
    for w in range(9):
        steps += sorted(rng.sample(range(w * 10 + 1, w * 10 + 10), rng.randint(0, 4))) + [w * 10 + 10]
    losses = [rng.uniform(1, 3) for _ in steps]
    per_step, prev = [], 0  # each record's mean loss, spread over the steps it covers
    for s, loss in zip(steps, losses):
        per_step += [loss] * (s - prev)
        prev = s
    direct = [statistics.fmean(per_step[w * 10:(w + 1) * 10]) for w in range(9)]
    got = window_means(Curve("r", steps[::-1], losses[::-1]), 10, 9)  # record order does not matter
    assert got == pytest.approx(direct, rel=1e-12)
    assert len(set(b - a for a, b in zip([0] + steps, steps))) > 3
    unequal = Curve("u", [4, 10, 12, 20], [2.0, 1.0, 3.0, 4.0])
    assert window_means(unequal, 10, 2) == pytest.approx([(4 * 2.0 + 6 * 1.0) / 10,
                                                          (2 * 3.0 + 8 * 4.0) / 10])
    straddling = Curve("s", [6, 12, 20], [1.0, 4.0, 2.0])  # step 12's record covers 7-12
    assert window_means(straddling, 10, 2) == pytest.approx([1.0, (6 * 4.0 + 8 * 2.0) / 14])
    assert window_means(Curve("g", [20, 40], [1.0, 1.0]), 10, 4) == [None, 1.0, None, 1.0]


def test_only_windows_both_runs_cover_completely_are_compared():
    base = Curve("base", list(range(1, 101)), [2.0] * 100)
    run = Curve("run", list(range(1, 26)), [2.0] * 20 + [9.0] * 5)  # steps 21-25: far off
    c = compare(run, base, window=10)
    assert (c.steps, c.first, c.last, c.covered, c.baseline_steps) == (2, 1, 20, 20, 100)
    assert c.passed and c.mean_abs_error == 0
    c = compare(base, run, window=10)  # the shorter curve may be the baseline as well
    assert c.steps == 2 and c.passed and c.overlap == pytest.approx(20 / 25)
    with pytest.raises(SpnasError, match="no window of 30 steps is covered by both"):
        compare(run, base, window=30)


def test_windows_without_a_record_of_one_run_are_left_out():
    base = Curve("base", list(range(1, 41)), [2.0] * 40)
    run = Curve("run", [20, 40], [2.0, 2.0])  # logged every 20 steps; windows of 10
    c = compare(run, base, window=10)
    assert (c.steps, c.skipped, c.covered) == (2, 2, 20)
    assert "2 windows left out, holding no record of one run" in c.describe("run", "base")[0]
    c = compare(Curve("run", [6, 12, 20], [2.0] * 3), base, window=10)
    assert c.straddling == 1
    assert "1 record straddling two windows, each counted in its step" in c.describe("run", "base")[0]
    assert compare(Curve("run", [5, 10, 20], [2.0] * 3), base, window=10).straddling == 0
    with pytest.raises(SpnasError, match="logs step 20 twice"):
        compare(Curve("dup", [10, 20, 20], [1.0, 1.0, 1.0]), base, window=10)


def test_max_step_limits_the_comparison_per_step_and_per_window():
    base = Curve("base", list(range(1, 4001)), [2.0] * 4000)
    run = Curve("run", list(range(1, 1001)), [2.0] * 500 + [3.0] * 500)
    assert not compare(run, base, window=250).passed
    c = compare(run, base, window=250, max_step=500)
    assert (c.steps, c.last, c.covered) == (2, 500, 500) and c.passed
    c = compare(run, base, max_step=500)
    assert (c.steps, c.first, c.last, c.only_in_one) == (500, 1, 500, 0) and c.passed
    assert not compare(run, base, max_step=600).passed


def test_short_comparison_warns_and_min_overlap_fails_with_status_1(tmp_path):
    ref = write_csv(tmp_path / "ref.csv", [2.0] * 4263)
    run = write_records(tmp_path / "run", range(50, 1001, 50), [2.0] * 20)
    code, out, _ = curves(run, "--baseline", ref, "--window", 250, "--max_step", 500, "--out", tmp_path)
    assert code == 0
    assert ("run vs ref: compared 2 windows of 250 steps (steps 1-500); the baseline has 4263 steps, "
            "3763 not compared") in out
    assert any(line.startswith("WARNING: the comparison covers 500 of the baseline's 4263 steps")
               for line in out)
    assert out[-1].startswith("pass ")
    code, out, _ = curves(run, "--baseline", ref, "--window", 250, "--max_step", 500,
                          "--min_overlap", 0.2, "--out", tmp_path)
    assert code == 1 and out[-1].startswith("fail overlap=0.1173 < min_overlap 0.2")
    assert out[-3].startswith("MeanRelativeError: ")
    code, out, _ = curves(run, "--baseline", ref, "--window", 250, "--min_overlap", 0.2,
                          "--out", tmp_path)  # 1000 steps: 23%, enough, still warned
    assert code == 0 and any(line.startswith("WARNING") for line in out)
    short_ref = write_csv(tmp_path / "short.csv", [2.0] * 1500)
    code, out, _ = curves(run, "--baseline", short_ref, "--window", 250, "--out", tmp_path)
    assert code == 0 and not any(line.startswith("WARNING") for line in out)


def test_csv_against_itself_shifted_passes_or_fails_on_the_window_means(tmp_path):
    rng = random.Random(1)
    losses = [2.3 - 0.0004 * s + rng.gauss(0, 0.15) for s in range(1000)]
    ref = write_csv(tmp_path / "ref.csv", losses)
    shifted = write_csv(tmp_path / "shifted.csv", [x + 0.03 for x in losses])
    code, out, _ = curves(shifted, "--baseline", ref, "--window", 250, "--out", tmp_path)
    assert code == 0 and float(out[-2].split(": ")[1]) == pytest.approx(0.03)
    assert "compared 4 windows of 250 steps (steps 1-1000)" in out[2]
    code, out, _ = curves(shifted, "--baseline", ref, "--window", 250, "--rtol", 0.01, "--out", tmp_path)
    assert code == 1 and out[-1].startswith("fail mean_abs_relative_error=")


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty; a CSV curve needs a header line"),
    ("step,acc\n1,0.5\n", "line 1: the header 'step,acc' has no column loss"),
    ("\nepoch,lr\n", "line 2: the header 'epoch,lr' has no column step or loss"),
    ("step,loss\n1,2.3\n2,abc\n", "line 3: loss 'abc' is not a number"),
    ("step,loss\n1,2.3\n2.5,2.1\n", "line 3: step '2.5' is not a whole number"),
    ("step,epoch,loss\n1,0,2.3\n2,0\n", "line 3: 2 fields, the header has 3"),
    ("step,loss\n", "holds no training-loss records"),
    ("step,loss\n2,2.33\n2,9.0\n", "line 3: step 2 is given twice (line 2 too)"),
    ("step,loss\n-1,2.3\n", "line 2: step -1 is negative"),
])
def test_bad_csv_files_are_one_line_errors(tmp_path, text, fragment):
    (tmp_path / "bad.csv").write_text(text)
    code, _, err = curves(tmp_path / "bad.csv", "--out", tmp_path)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"spnas: error: {tmp_path / 'bad.csv'}") and fragment in err[0]


@pytest.mark.parametrize("flag, value, fragment", [
    ("--rtol", "-0.1", "spnas: error: --rtol must be 0 or more, got -0.1"),
    ("--atol", "nan", "spnas: error: --atol must be a finite number, got nan"),
    ("--rtol", "inf", "spnas: error: --rtol must be a finite number, got inf"),
    ("--atol", "x", "argument --atol: invalid float value: 'x'"),
    ("--window", "0", "spnas: error: --window must be positive, got 0"),
    ("--window", "2.5", "argument --window: invalid int value: '2.5'"),
    ("--max_step", "-5", "spnas: error: --max_step must be positive, got -5"),
    ("--min_overlap", "1.5", "spnas: error: --min_overlap must be within 0..1, got 1.5"),
    ("--min_overlap", "nan", "spnas: error: --min_overlap must be a finite number, got nan"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flag, value, fragment):
    run = write_run(tmp_path / "run", BASE)
    code, out, err = curves(run, "--baseline", run, f"{flag}={value}", "--out", tmp_path)
    assert code == 2 and not out
    assert fragment in err[-1] and all(not line.startswith("Traceback") for line in err)
    assert not (tmp_path / "loss.png").exists()


def test_a_config_file_gives_the_runs_and_settings_and_flags_win(tmp_path):
    """``--config`` works for curves as for every command: runs, baseline and tolerances from
    the file; a flag or a RUN on the command line wins over it."""
    base = write_run(tmp_path / "base", BASE)
    near = write_run(tmp_path / "near", [v * 1.03 for v in BASE])  # 3% above the baseline
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(f"runs: [{near}]\nbaseline: {base}\nrtol: 0.01\natol: 0\nout: {tmp_path}\n")
    code, out, _ = curves("--config", cfg)
    assert code == 1 and out[-1].startswith("fail")  # 3% > the file's rtol of 1%
    code, out, _ = curves("--config", cfg, "--rtol", 0.05)
    assert code == 0 and out[-1].startswith("pass")
    code, out, _ = curves(base, "--config", cfg)  # the baseline against itself
    assert code == 0 and "MeanRelativeError: 0.0" in "\n".join(out)
    cfg.write_text("baseline: x\n")
    code, out, err = curves("--config", cfg)
    assert code == 2 and "spnas: error: give a run to plot" in err[-1]
    for text in ("runs: 3\n", "runs: [1, 2]\n"):
        cfg.write_text(text)
        code, out, err = curves("--config", cfg)
        assert code == 2 and "spnas: error: runs must be a run or a list of runs" in err[-1]
    cfg.write_text("runs:\n")  # an empty key: no run
    code, out, err = curves("--config", cfg)
    assert code == 2 and "spnas: error: give a run to plot" in err[-1]
    cfg.write_text(f"runs: {base}\nout: {tmp_path}\n")  # one run, as text
    assert curves("--config", cfg)[0] == 0


def test_plot_draws_window_means_over_thin_raw_curves():
    from spnas.engine.plots import figure
    c = Curve("run", list(range(1, 101)), [2.0 + 0.01 * (s % 7) for s in range(1, 101)])
    ax = figure(4, 3).subplots()
    draw_curves(ax, [c], window=25)
    lines = {line.get_label(): line for line in ax.lines}
    means = lines["run (mean per 25 steps)"]
    assert list(means.get_xdata()) == [12.5, 37.5, 62.5, 87.5]
    assert list(means.get_ydata()) == pytest.approx(window_means(c, 25, 4))
    raw = lines["run (train)"]
    assert raw.get_alpha() < 1 and raw.get_linewidth() < means.get_linewidth()
    ax = figure(4, 3).subplots()
    draw_curves(ax, [c])
    assert [line.get_label() for line in ax.lines] == ["run (train)"]


def test_a_curve_of_one_step_is_drawn_as_a_point():
    from spnas.engine.plots import figure
    ax = figure(4, 3).subplots()
    draw_curves(ax, [Curve("one", [1], [2.3]), Curve("two", [1, 2], [2.3, 2.2])])
    markers = {line.get_label(): line.get_marker() for line in ax.lines}
    assert markers["one (train)"] not in (None, "None", "", " ")  # a line of no length is unseen
    assert markers["two (train)"] in (None, "None", "")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_a_baseline_with_a_loss_no_error_can_divide_by_is_refused(tmp_path, capsys, bad):
    write_run(tmp_path / "base", [*BASE[:5], bad, *BASE[6:]])
    write_run(tmp_path / "run", BASE)
    argv = ["curves", str(tmp_path / "run"), "--baseline", str(tmp_path / "base"),
            "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the baseline base has loss {bad:g} at step 6; a baseline needs " \
        "finite, non-zero losses" in err[0]
    assert main([*argv, "--max_step", "5"]) == 0  # the steps before it compare


def test_one_step_is_said_in_the_singular(tmp_path, capsys):
    write_run(tmp_path / "base", BASE[:1])
    write_run(tmp_path / "run", BASE[:2])
    assert main(["curves", str(tmp_path / "run"), "--baseline", str(tmp_path / "base"),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compared 1 logged step (steps 1-1); the baseline has 1 logged step, 0 not compared" in out
    assert "compared the 1 logged step both runs have; 1 step is in only one of them" in out
