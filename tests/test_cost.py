"""Exact costs: the per-(layer, choice) cache against counting whole networks; latency tables."""
import json
import random

import pytest
import torch

from spnas.arch import Arch
from spnas.cli import main
from spnas.engine import latency
from spnas.engine.counting import build_cost_table, count_macs, count_params
from spnas.engine.evolution import CostModel
from spnas.engine.latency import LatencyTable, macs_latency_table
from spnas.spaces import build_child
from spnas.spaces.spos import spos_space


@pytest.mark.parametrize("layout, layers, res", [("cifar", 20, 32), ("imagenet", 9, 64)])
def test_cached_costs_equal_counting_the_whole_standalone_network(layout, layers, res, one_thread):
    """The table counts on the meta device; here whole CPU networks are counted."""
    space = spos_space(layers=layers, layout=layout)
    table = build_cost_table(space, lambda a: build_child(a, 10), 10, resolution=res)
    rng = random.Random(0)
    seen = set()
    for _ in range(4):
        arch = Arch.sample(space, rng)
        net = build_child(arch, 10).eval()
        macs = count_macs(net, torch.zeros(1, 3, res, res))
        assert table.arch_macs(arch) == macs
        assert table.arch_params(arch) == count_params(net)
        seen.add(macs)
    assert len(seen) == 4  # the archs differ in cost, so the sum is not a constant


def test_cost_range_is_the_min_and_max_over_all_archs():
    space = spos_space(layers=3, layout="imagenet")  # layer 0 strides: k3 is not its cheapest
    child = lambda a: build_child(a, 10)  # noqa: E731
    latency = macs_latency_table(space, child, 10, resolution=64)
    latency.scale = 1.3
    model = CostModel(build_cost_table(space, child, 10, resolution=64), latency)
    every = [model(Arch(space, (a, b, c))) for a in range(4) for b in range(4) for c in range(4)]
    most = model.maximum()
    for key in ("flops", "params"):
        assert most[key] == max(c[key] for c in every)
    assert most["latency_ms"] == pytest.approx(max(c["latency_ms"] for c in every), rel=1e-12)


@pytest.mark.parametrize("layout, macs, params", [
    ("cifar", (152_645_632, 212_703_232), (2_034_432, 2_748_520)),
    ("imagenet", (269_345_600, 397_595_456), (2_141_120, 2_857_360)),
])
def test_the_spos_space_range_the_docs_quote(layout, macs, params):
    """README and docs/search.md quote these ranges (10 classes); a budget means something
    only between them (SPOS's 330M is inside the ImageNet layout's range only)."""
    space = spos_space(layout=layout)
    model = CostModel(build_cost_table(space, lambda a: build_child(a, 10), 10))
    least, most = model.minimum(), model.maximum()
    assert (least["flops"], most["flops"]) == macs
    assert (least["params"], most["params"]) == params
    assert (macs[0] < 330e6 < macs[1]) == (layout == "imagenet")


def test_flops_are_multiply_accumulates():
    """One 3x3 conv, 1 -> 1 channel, on 4x4 'same' output: 16 * 9 multiply-accumulates."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 1, 4, 4)) == 16 * 9


def test_latency_table_command_times_every_choice_and_reports_its_error(tmp_path, capsys):
    out = tmp_path / "lat.json"
    argv = ["latency-table", "--space", "spos", "--option", "layers=2", "--device", "cpu",
            "--threads", "1", "--warmup", "1", "--repeats", "2", "--calibrate", "2", "--validate", "3",
            "--out", str(out)]
    assert main(argv) == 0
    table = LatencyTable.load(out)
    assert table.space == spos_space(layers=2) and table.threads == 1 and table.batch == 1
    assert [sorted(d) for d in table.layers] == [[0, 1, 2, 3]] * 2
    assert all(v > 0 for d in table.layers for v in d.values()) and table.constant > 0
    assert table.scale > 0 and json.loads(out.read_text())["scale"] == table.scale
    report = json.loads(out.read_text())["validation"]
    assert report["num_archs"] == 3 and len(report["archs"]) == 3
    for row in report["archs"]:
        arch = Arch.parse(row["arch"], table.space)
        assert row["predicted_ms"] == pytest.approx(table.predict(arch))
    assert "mean |error|" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(argv) == 2  # an existing table is kept
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_the_progress_names_each_choice_timed(capsys, one_thread):
    """The mbconv space's layer 0 cannot skip: the skip pass still says skip."""
    from spnas.spaces.mbconv import mbconv_space
    space = mbconv_space("cifar")
    latency.build_latency_table(space, lambda a: build_child(a, 10), torch.device("cpu"),
                                warmup=0, repeats=1, channels_last=False, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"timed choice {t} on every layer that has it" for t in space.tokens]


def test_calibration_fits_the_whole_network_factor_and_reports_both_errors(monkeypatch):
    """Whole networks 1.3x the sum of their parts: one factor fitted on some archs removes
    the bias, measured on other archs; the uncalibrated error is reported beside it."""
    space = spos_space(layers=3)
    rng = random.Random(0)
    table = LatencyTable(space, "cpu", "test", 1, 32, 1, 0.5,
                         [{c: rng.uniform(0.2, 2.0) for c in range(4)} for _ in range(3)])
    raw = lambda arch: table.constant + sum(table.layers[i][c] for i, c in enumerate(arch))  # noqa: E731
    monkeypatch.setattr(latency, "measure_arch_ms", lambda arch, *a, **k: 1.3 * raw(arch))
    assert latency.calibrate_latency_table(table, None, torch.device("cpu"), 5) == pytest.approx(1.3)
    report = latency.validate_latency_table(table, None, torch.device("cpu"), 6, seed=7)
    assert report["mean_abs_rel_error"] == pytest.approx(0, abs=1e-12)
    assert report["uncalibrated_mean_abs_rel_error"] == pytest.approx(1 - 1 / 1.3)
    arch = Arch.sample(space, rng)
    assert table.predict(arch) == pytest.approx(1.3 * raw(arch))


def test_latency_table_of_an_unknown_space_is_a_one_line_error(tmp_path, capsys):
    argv = ["latency-table", "--space", "spos", "--option", "layers=30", "--out",
            str(tmp_path / "x.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spnas: error: --layers must be 1..20") and len(err.splitlines()) == 1


def test_a_latency_table_over_its_own_checkpoint_is_refused(tmp_path, capsys):
    from spnas.engine.checkpoint import save_checkpoint
    from spnas.spaces.spos import SposSupernet
    supernet = SposSupernet(spos_space(2), 10)
    path = tmp_path / "super.pt"
    save_checkpoint(path, {"kind": "supernet", "space": supernet.spec.to_dict(), "arch": None,
                           "num_classes": 10, "model": supernet.state_dict()})
    before = path.read_bytes()
    argv = ["latency-table", "--checkpoint", str(path), "--out", str(path), "--overwrite",
            "--device", "cpu", "--repeats", "1", "--warmup", "0", "--calibrate", "0",
            "--validate", "0"]
    assert main(argv) == 2
    assert f"--out {path} is the checkpoint itself" in capsys.readouterr().err
    assert path.read_bytes() == before
