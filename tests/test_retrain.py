import json

import pytest
import torch
import torch.nn.functional as F
from conftest import cli_argv, write_official

from spnas.arch import Arch
from spnas.cli import main
from spnas.data.augment import MEAN_STD, AugmentConfig, BatchTransform
from spnas.data.datasets import load_dataset
from spnas.data.loading import DeviceLoader
from spnas.engine.checkpoint import load_checkpoint, model_from_checkpoint
from spnas.engine.counting import build_cost_table, count_params
from spnas.engine.evaluation import evaluate, plain_forward
from spnas.engine.runlog import read_metrics
from spnas.spaces import build_child
from spnas.spaces.mbconv import mbconv_space
from spnas.spaces.spos import spos_space
from spnas.stages.profile import profile_arch

ARCH = "k3 k5 k7 x"
OLD_BEST = "k5 k3 x k5 x k3 x k3 k3 x x k3 k5 k3 k5 k7 k7 k5 k5 x"
OLD_BEST_INDICES = "1,0,3,1,3,0,3,0,0,3,3,0,1,0,1,2,2,1,1,3"  # 0=k3 1=k5 2=k7 3=x


def retrain_argv(data, save, exp, **over):
    flags = {"--arch": ARCH, "--layers": 4, "--batch_size": 16, "--epochs": 3, "--num_steps": 2,
             "--lr": 0.05, "--print_freq": 1, "--val_interval": 1, "--save_path": save,
             "--exp_name": exp, "--seed": 3, "--data_path": data, "--val_size": 50,
             "--dropout": 0.2, "--ema": None, "--ema_decay": 0.7, "--eval_batch": 32,
             "--no-download": None}
    flags.update(over)
    return cli_argv("retrain", flags)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("retrain") / "data").parent


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    save = tmp_path_factory.mktemp("runs")
    assert main(retrain_argv(data, save, "r")) == 0
    return save / "r"


def test_retrain_leaves_checkpoints_test_results_and_curve(run):
    for name in ("best.pt", "last.pt", "metrics.jsonl", "train.log", "results.json", "curve.png"):
        assert (run / name).is_file(), name
    recs = read_metrics(run)
    assert [r["step"] for r in recs if r["type"] == "val"] == [2, 4, 6]
    tests = {r["which"]: r for r in recs if r["type"] == "test"}
    results = json.loads((run / "results.json").read_text())
    assert results["arch"] == ARCH and results["step"] == 6 and not results["val_is_test"]
    for which in ("best", "last"):
        assert 0 <= results[which]["test_acc"] <= results[which]["test_top5"] <= 1
        assert results[which]["test_acc"] == tests[which]["test_acc"]
    best_val = max(r["val_acc"] for r in recs if r["type"] == "val")
    assert results["best"]["val_acc"] == best_val
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["kind"] == "child" and ckpt["model_args"] == {"dropout": 0.2}
    assert ckpt["train_model"] is not None  # the EMA ships as "model", the trained weights beside it
    assert results["params"] == count_params(build_child(Arch.parse(ARCH, spos_space(4)), 10))


def test_checkpoint_rebuilds_the_tested_network(run, data):
    """last.pt alone rebuilds the network the run tested: same test numbers, same outputs."""
    ckpt = load_checkpoint(run / "last.pt")
    net = model_from_checkpoint(ckpt).eval().to(memory_format=torch.channels_last)
    assert net.head[2].p == 0.2  # dropout came back from model_args
    ds = load_dataset("cifar10", data, download_ok=False)
    t = BatchTransform(AugmentConfig(), memory_format=torch.channels_last)  # as the run did
    r = evaluate(net, plain_forward, ds.test_x, ds.test_y, t, 10, batch_size=32)
    last = json.loads((run / "results.json").read_text())["last"]
    assert r["acc"] == last["test_acc"] and r["top5"] == last["test_top5"]
    assert r["loss"] == pytest.approx(last["test_loss"], rel=1e-5)


def test_evaluate_val_split_is_the_one_the_run_validated_on(run, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--split", "val",
                 "--out", str(tmp_path), "--batch_size", "16"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "airplane" in out
    r = json.loads((tmp_path / "evaluation.json").read_text())
    val = [x for x in read_metrics(run) if x["type"] == "val"]
    best = max(val, key=lambda x: x["val_acc"])  # first best: best.pt was saved there
    assert r["n"] == 50 and r["top1"] == best["val_acc"]
    assert r["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_a_new_test_set_with_few_training_images_is_evaluated(run, tmp_path, capsys):
    """The run held out 50 training images; other data with 20 still has a test split."""
    from conftest import write_image_folders
    other = write_image_folders(tmp_path / "other", n_train=20, n_test=30)
    argv = ["evaluate", "--checkpoint", str(run), "--dataset", "folder", "--data_path",
            str(other), "--out", str(tmp_path / "e"), "--batch_size", "16"]
    assert main([*argv, "--split", "test"]) == 0
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["n"] == 30
    assert main([*argv, "--split", "val"]) == 2  # the val split needs the run's held-out images
    assert "held out 50 training images" in capsys.readouterr().err


def test_a_bad_evaluate_out_fails_before_the_evaluation_and_amp_on_cpu_is_noted(
        run, tmp_path, monkeypatch, capsys):
    from spnas.stages import evaluate as E

    def not_reached(*a, **k):
        raise AssertionError("evaluated before --out was checked")
    real = E.evaluate
    monkeypatch.setattr(E, "evaluate", not_reached)
    base = ["evaluate", "--checkpoint", str(run), "--split", "val", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "r.json")]) == 2
    assert "names a file; --out is the folder that gets evaluation.json" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    assert main([*base, "--out", str(run / "best.pt")]) == 2  # a file where a folder goes
    capsys.readouterr()
    monkeypatch.setattr(E, "evaluate", real)
    assert main([*base, "--out", str(tmp_path / "e"), "--amp"]) == 0
    assert "note: --amp: bf16 autocast runs on CUDA only" in capsys.readouterr().err


def test_evaluation_numbers_equal_a_direct_computation(run, data, tmp_path):
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test", "--out",
                 str(tmp_path), "--batch_size", "7"]) == 0
    r = json.loads((tmp_path / "evaluation.json").read_text())
    net = model_from_checkpoint(load_checkpoint(run / "best.pt")).eval()
    ds = load_dataset("cifar10", data, download_ok=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in MEAN_STD["cifar10"])
    with torch.no_grad():
        logits = net((ds.test_x.float() / 255 - mean) / std)
    y = ds.test_y
    assert r["top1"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert r["top5"] == pytest.approx((logits.topk(5, 1).indices == y[:, None]).any(1)
                                      .double().mean().item())
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    for c, name in enumerate(ds.classes):
        mine = y == c
        assert r["per_class"][name] == pytest.approx(
            (logits.argmax(1)[mine] == c).double().mean().item())
    assert sum(map(sum, r["confusion"])) == len(y)


def test_ema_ships_the_average_and_resumes_exactly(run, data, monkeypatch, capsys):
    real_batch = DeviceLoader.batch

    def crash_at_step_5(self, epoch, i):
        if epoch * 2 + i == 4:
            raise KeyboardInterrupt
        return real_batch(self, epoch, i)
    monkeypatch.setattr(DeviceLoader, "batch", crash_at_step_5)
    save = run.parent
    assert main(retrain_argv(data, save, "part")) == 130
    monkeypatch.setattr(DeviceLoader, "batch", real_batch)
    assert main(retrain_argv(data, save, "part", **{"--resume": None})) == 0
    full = torch.load(run / "last.pt", weights_only=True)
    part = torch.load(save / "part" / "last.pt", weights_only=True)
    assert full["extra"] == part["extra"]
    for key in ("model", "train_model"):
        assert all(torch.equal(full[key][k], part[key][k]) for k in full[key]), key
    w = "layers.0.main.0.0.weight"
    assert not torch.equal(full["model"][w], full["train_model"][w])  # the EMA is shipped
    no_ema = {"--resume": None, "--ema": False, "--no-ema": None}
    assert main(retrain_argv(data, save, "part", **no_ema)) == 2  # refused: same settings
    assert "--no-ema differs from the run's --ema (config.json)" in capsys.readouterr().err


def test_the_ema_warms_up_unless_told_not_to_and_a_weak_one_gets_a_note(data, tmp_path,
                                                                         monkeypatch, capsys):
    from spnas.stages import retrain as R
    made = []

    class Recorded(R.Ema):
        def __init__(self, model, decay, warmup):
            made.append((decay, warmup))
            super().__init__(model, decay, warmup)
    monkeypatch.setattr(R, "Ema", Recorded)
    flags = {"--epochs": 1, "--ema_decay": 0.9}
    assert main(retrain_argv(data, tmp_path, "warm", **flags)) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(retrain_argv(data, tmp_path, "flat", **flags, **{"--no-ema_warmup": None})) == 0
    assert made == [(0.9, True), (0.9, False)]
    assert ("note: with --no-ema_warmup, the EMA (--ema_decay 0.9) still holds 90% of the first "
            "step's weights after the run's 2 steps") in capsys.readouterr().err
    saved = json.loads((tmp_path / "flat" / "config.json").read_text())
    assert saved["model"]["ema_warmup"] is False


def test_profile_counts_match_the_per_layer_cost_table():
    space = spos_space(4)
    arch = Arch.parse(ARCH, space)
    table = build_cost_table(space, lambda a: build_child(a, 10), 10)
    r = profile_arch(arch, batch=4, warmup=1, repeats=2)
    assert r["macs"] == table.arch_macs(arch) and r["params"] == table.arch_params(arch)
    assert r["resolution"] == 32 and r["batch1_ms"] > 0 and r["images_per_s"] > 0
    big = profile_arch(arch, resolution=64, batch=1, warmup=0, repeats=1)
    classifier = 1024 * 10  # every conv costs 4x at twice the side; the classifier does not
    assert big["macs"] - classifier == 4 * (r["macs"] - classifier)


def test_profile_reports_the_old_recipes_best_arch(capsys):
    assert main(["profile", "--arch", OLD_BEST_INDICES, "--device", "cpu", "--batch_size", "2",
                 "--warmup", "0", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    arch = Arch.parse(OLD_BEST_INDICES, spos_space())
    assert str(arch) == OLD_BEST and lines[0].split(None, 1)[1] == OLD_BEST
    assert "20 layers, input 32x32, 10 classes" in lines[1]
    assert f"({count_params(build_child(arch, 10)):,})" in lines[2]
    assert lines[3].startswith("MACs") and "(multiply-accumulates, the 'FLOPs' of NAS" in lines[3]
    assert f"({conv_linear_macs(build_child(arch, 10)):,})" in lines[3]


def test_profile_takes_an_mbconv_arch_string_and_refuses_spos_sizes_for_it(capsys):
    tokens = " ".join(["k3e3"] * 4 + ["k5e6", "skip", "k3e6", "k5e3"] * 4)
    argv = ["profile", "--space", "mbconv", "--arch", tokens, "--device", "cpu",
            "--batch_size", "2", "--warmup", "0", "--repeats", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    arch = Arch.parse(tokens, mbconv_space())
    assert lines[1].startswith("space        mbconv/cifar, 20 layers")
    assert f"({count_params(build_child(arch, 10)):,})" in lines[2]
    assert f"({conv_linear_macs(build_child(arch, 10)):,})" in lines[3]
    assert main(argv + ["--layers", "8"]) == 2
    err = capsys.readouterr().err
    assert "size the spos space; --space mbconv has a fixed size, drop --layers 8" in err
    assert len(err.strip().splitlines()) == 1


def conv_linear_macs(net: torch.nn.Module) -> int:
    """MACs counted by hand: per output element, (in channels / groups) x kernel area."""
    total = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] ** 2)
        elif isinstance(m, torch.nn.Linear):
            total.append(out.numel() * m.in_features)
    for m in net.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 32, 32))
    return sum(total)


def test_checkpoints_record_the_class_names(tmp_path):
    from conftest import CLASSES, write_official
    from test_train import train_argv

    from spnas.cli import main
    write_official(tmp_path / "data")
    assert main(train_argv(tmp_path / "data", tmp_path, "sn", **{"--epochs": 1})) == 0
    assert torch.load(tmp_path / "sn" / "last.pt", weights_only=True)["classes"] == CLASSES


def test_a_run_started_on_a_relative_arch_file_resumes_from_another_folder(data, tmp_path,
                                                                           monkeypatch):
    """Its config.json records the arch file as an absolute path, as it does data_path; a
    resume that names the same file another way is no change."""
    start = tmp_path / "start"
    start.mkdir()
    Arch.parse(ARCH, spos_space(4)).save(start / "arch.json")
    monkeypatch.chdir(start)
    assert main(retrain_argv(data, tmp_path, "r", **{"--arch": "arch.json", "--epochs": 1})) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["arch"] == str(start / "arch.json")
    monkeypatch.chdir(tmp_path)  # elsewhere: the flag left out, then given another way
    flags = {"--arch": False, "--epochs": 2, "--resume": None}  # False: left out
    assert main(retrain_argv(data, tmp_path, "r", **flags)) == 0
    assert main(retrain_argv(data, tmp_path, "r", **{**flags, "--arch": "start/arch.json",
                                                      "--epochs": 3})) == 0


def test_space_flags_against_an_arch_file_are_refused_but_not_on_resume(data, tmp_path, capsys):
    """A fresh run refuses --layers 8 for a 4-layer arch file; a resume takes the space
    settings from config.json, where spnas before 0.2 recorded such a flag unchecked, and
    does not refuse them (the user gave nothing)."""
    Arch.parse(ARCH, spos_space(4)).save(tmp_path / "arch.json")
    arch_file = {"--arch": str(tmp_path / "arch.json"), "--epochs": 1}
    assert main(retrain_argv(data, tmp_path, "r", **arch_file, **{"--layers": 8})) == 2
    assert "arch.json has layers 4 (spos/cifar, 4 layers); drop --layers 8" in \
        capsys.readouterr().err
    assert main(retrain_argv(data, tmp_path, "r", **arch_file)) == 0
    config = tmp_path / "r" / "config.json"
    saved = json.loads(config.read_text())
    saved["model"]["layers"] = 8  # as an older spnas kept it
    config.write_text(json.dumps(saved))
    flags = {"--arch": False, "--layers": False, "--epochs": 2, "--resume": None}
    assert main(retrain_argv(data, tmp_path, "r", **flags)) == 0
    assert json.loads((tmp_path / "r" / "results.json").read_text())["step"] == 4


def test_an_older_config_json_with_the_old_defaults_resumes_and_starts_runs(data, tmp_path):
    """Before these settings defaulted to none, config.json recorded spos/20/4 for every
    arch file: a resume from Python (which gives none) and a new run from that file
    (--config) take them as not given, not as a contradiction of a 4-layer arch file."""
    import spnas
    from spnas.fields import flat_fields, from_flat
    Arch.parse(ARCH, spos_space(4)).save(tmp_path / "arch.json")
    flags = {"--arch": str(tmp_path / "arch.json"), "--layers": False, "--epochs": 1}
    assert main(retrain_argv(data, tmp_path, "r", **flags)) == 0
    config = tmp_path / "r" / "config.json"
    saved = json.loads(config.read_text())
    started = flat_fields(saved)  # the settings as the run was started
    saved["model"].update(space="spos", layers=20, num_choices=4)  # as the older spnas wrote them
    config.write_text(json.dumps(saved))
    again = {k: v for k, v in started.items() if k != "model_type"}
    spnas.retrain(from_flat(spnas.RetrainStage(), {**again, "epochs": 2, "resume": True}))
    assert json.loads((tmp_path / "r" / "results.json").read_text())["step"] == 4
    assert main(["retrain", "--config", str(config), "--exp_name", "n"]) == 0
    assert json.loads((tmp_path / "n" / "config.json").read_text())["model"]["layers"] is None


def test_a_network_of_64_pixel_image_folders_is_counted_at_their_side(tmp_path):
    """results.json gives the side the network took and its MACs there, not the cifar
    layout's 32 (4x fewer MACs)."""
    from conftest import write_image_folders
    data = write_image_folders(tmp_path / "data", n_train=40, n_test=20, size=64)
    flags = {"--dataset": "folder", "--image_size": 64, "--val_size": 10, "--epochs": 1,
             "--ema": False, "--batch_size": 8}
    assert main(retrain_argv(data, tmp_path, "r", **flags)) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    table = build_cost_table(spos_space(4), lambda a: build_child(a, 10), 10, 64)
    assert results["resolution"] == 64
    assert results["macs"] == table.arch_macs(Arch.parse(ARCH, spos_space(4)))
