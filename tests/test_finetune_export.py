import dataclasses
import json
import warnings

import pytest
import torch
from conftest import cli_argv

from spnas.arch import Arch
from spnas.cli import main
from spnas.config import DataConfig, EvaluateConfig, TrainConfig
from spnas.engine.checkpoint import load_checkpoint, save_checkpoint
from spnas.spaces import SposSupernet, build_child
from spnas.spaces.spos import spos_space
from spnas.stages import export as export_mod

ARCH = "k3 k5 k7 x"


def busy_child(num_classes: int, seed: int = 0, dropout: float = 0.1):
    """A 4-layer network with non-trivial weights and BN statistics (logits of order 1-10)."""
    torch.manual_seed(seed)
    net = build_child(Arch.parse(ARCH, spos_space(4)), num_classes, dropout=dropout)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    torch.nn.init.normal_(net.classifier.weight, 0, 0.3)
    return net.eval()


def save_child(path, net, data_path, seed=0, val_size=5000, **data):
    config = TrainConfig(dataclasses.replace(DataConfig(), data_path=str(data_path),
                                             download=False, val_size=val_size, **data)).to_dict()
    config["run"]["seed"] = seed
    save_checkpoint(path, {"kind": "child", "space": net.arch.space.to_dict(),
                           "arch": str(net.arch), "num_classes": net.classifier.out_features,
                           "model_args": {"dropout": net.head[2].p}, "model": net.state_dict(),
                           "config": config})
    return path


def finetune_argv(data, ckpt, save, exp, **over):
    flags = {"--checkpoint": ckpt, "--batch_size": 16, "--epochs": 1, "--num_steps": 3,
             "--lr": 0.05, "--val_interval": 1, "--save_path": save, "--exp_name": exp,
             "--data_path": data, "--val_size": 50, "--eval_batch": 50, "--no-download": None}
    flags.update(over)
    return cli_argv("finetune", flags)


def split_state(state: dict):
    backbone = {k: v for k, v in state.items() if not k.startswith("head.3.")}
    return backbone, {k: v for k, v in state.items() if k.startswith("head.3.")}


@pytest.mark.parametrize("epochs", [1, 2])
def test_finetune_to_other_classes_freezes_the_backbone(fake_cifar, tmp_path, epochs):
    source = busy_child(num_classes=5)
    ckpt = save_child(tmp_path / "src.pt", source, fake_cifar)
    argv = finetune_argv(fake_cifar, ckpt, tmp_path, "ft", **{"--epochs": epochs,
                                                              "--freeze_epochs": 1})
    assert main(argv) == 0
    log = (tmp_path / "ft" / "train.log").read_text()
    assert "replaced the classifier: 5 -> 10 classes" in log
    out = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert out["num_classes"] == 10 and out["model"]["head.3.weight"].shape == (10, 1024)
    before, _ = split_state(source.state_dict())
    after, _ = split_state(out["model"])
    same = [torch.equal(before[k], after[k]) for k in before]
    if epochs == 1:  # frozen throughout: weights and BN statistics exactly as loaded
        assert all(same)
    else:  # the second epoch trained the backbone
        assert not all(same)


def test_finetune_a_supernet_path(fake_cifar, tmp_path):
    torch.manual_seed(0)
    supernet = SposSupernet(spos_space(4), 10)
    save_checkpoint(tmp_path / "super.pt", {"kind": "supernet", "space": supernet.spec.to_dict(),
                                            "arch": None, "num_classes": 10,
                                            "model": supernet.state_dict()})
    argv = finetune_argv(fake_cifar, tmp_path / "super.pt", tmp_path, "ft",
                         **{"--freeze_epochs": 1, "--recal_images": 64})
    assert main(argv) == 2  # a supernet needs --arch
    assert main(argv + ["--arch", ARCH]) == 0
    assert "recalibrated" in (tmp_path / "ft" / "train.log").read_text()
    out = load_checkpoint(tmp_path / "ft" / "last.pt")
    path = supernet.extract(Arch.parse(ARCH, supernet.spec)).state_dict()
    convs = [k for k in path if k.endswith(".weight") and path[k].dim() == 4]
    assert convs and all(torch.equal(out["model"][k], path[k]) for k in convs)
    assert not torch.equal(out["model"]["stem.1.running_mean"], path["stem.1.running_mean"])


def test_bad_finetune_flags_are_one_line_errors(fake_cifar, tmp_path, capsys):
    ckpt = save_child(tmp_path / "src.pt", busy_child(10), fake_cifar)
    assert main(finetune_argv(fake_cifar, ckpt, tmp_path, "x", **{"--freeze_epochs": 2})) == 2
    assert main(finetune_argv(fake_cifar, ckpt, tmp_path, "x", **{"--arch": "x x x x"})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--freeze_epochs must be 0..1" in err[0]
    assert "supernet checkpoint only" in err[1]


def test_inference_path_equals_the_autograd_path():
    """Under no_grad the units run plain ops (exportable); the outputs are bit-identical."""
    net = busy_child(10)
    for fmt in (torch.contiguous_format, torch.channels_last):
        net = net.to(memory_format=fmt)
        x = torch.randn(3, 3, 32, 32).contiguous(memory_format=fmt)
        with_graph = net(x)
        assert with_graph.grad_fn is not None
        with torch.no_grad():
            assert torch.equal(net(x), with_graph.detach())


def load_back(fmt: str, path):
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
        return torch.jit.load(str(path))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(fake_cifar, tmp_path, capsys, fmt):
    if fmt == "onnx":  # the optional extra spnas[onnx]
        for module in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(module)
    net = busy_child(10)
    ckpt = save_child(tmp_path / "best.pt", net, fake_cifar)
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt,
                 "--check_images", "16"]) == 0
    out = capsys.readouterr().out
    assert "real images [16, 3, 32, 32]" in out and "random" in out
    target = tmp_path / ("best.onnx" if fmt == "onnx" else "best.torchscript.pt")
    exported = load_back(fmt, target)
    x = torch.randn(5, 3, 32, 32) * 2  # another batch size than the one exported with
    with torch.no_grad():
        want = net(x)
        assert want.abs().max() > 1  # logits of a useful size, so the check means something
        torch.testing.assert_close(exported(x), want, rtol=0, atol=1e-4)
    before = target.read_bytes()
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt]) == 2  # no overwrite
    assert target.read_bytes() == before


@pytest.mark.parametrize("check_images", [4, 0])
def test_export_of_a_network_of_64_pixel_image_folders_takes_their_side(tmp_path, capsys,
                                                                        check_images):
    """The ONNX graph is traced at one input side: the run's (an image folder's
    --image_size), not the cifar layout's 32, with or without the check on real images."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from conftest import write_image_folders
    data = write_image_folders(tmp_path / "data", n_train=10, n_test=10, size=64)
    net = busy_child(10)
    ckpt = save_child(tmp_path / "best.pt", net, data, val_size=0, dataset="folder",
                      image_size=64)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx",
                 "--check_images", str(check_images)]) == 0
    assert "random [3, 3, 64, 64]" in capsys.readouterr().out
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_back("onnx", tmp_path / "best.onnx")(x), net(x),
                                   rtol=0, atol=1e-4)


def test_export_refuses_a_mismatch_and_writes_nothing(fake_cifar, tmp_path, monkeypatch, capsys):
    ckpt = save_child(tmp_path / "best.pt", busy_child(10), fake_cifar)
    exporter, loader = export_mod.EXPORTERS["torchscript"]
    broken = lambda path: (lambda m: (lambda x: m(x) + 0.01))(loader(path))  # noqa: E731
    monkeypatch.setitem(export_mod.EXPORTERS, "torchscript", (exporter, broken))
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript"]) == 2
    assert "differs from PyTorch by up to 0.01" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "data"]


def test_export_and_evaluate_read_config_files_as_every_command(fake_cifar, tmp_path, capsys):
    ckpt = save_child(tmp_path / "best.pt", busy_child(10), fake_cifar, val_size=50)
    settings = tmp_path / "export.json"
    settings.write_text(json.dumps({"format": "torchscript", "check_images": 0}))
    assert main(["export", "--checkpoint", str(ckpt), "--config", str(settings)]) == 0
    assert "real images" not in capsys.readouterr().out  # check_images 0 came from the file
    assert (tmp_path / "best.torchscript.pt").is_file()  # and the format
    settings.write_text(json.dumps({"split": "val", "batch_size": 7, "device": "cpu"}))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--config", str(settings),
                 "--split", "test"]) == 0  # the flag wins over the file
    assert json.loads((tmp_path / "eval_best_test" / "evaluation.json").read_text())["split"] == "test"
    settings.write_text(json.dumps({"batchsize": 7}))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--config", str(settings)]) == 2
    assert "no setting named batchsize for 'spnas evaluate'" in capsys.readouterr().err


def test_a_home_folder_in_checkpoint_and_out_paths_is_expanded(fake_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "data")  # a literal ~ folder would land here
    save_child(tmp_path / "run" / "best.pt", busy_child(10), fake_cifar, val_size=50)
    assert main(["export", "--checkpoint", "~/run", "--format", "torchscript", "--out", "~/m.pt",
                 "--check_images", "0"]) == 0
    assert (tmp_path / "m.pt").is_file() and not (tmp_path / "data" / "~").exists()


def test_export_on_real_cifar_images(real_cifar, tmp_path, capsys):
    ckpt = save_child(tmp_path / "best.pt", busy_child(10), real_cifar)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript",
                 "--check_images", "64", "--tolerance", "1e-4"]) == 0
    assert "real images [64, 3, 32, 32]" in capsys.readouterr().out


def test_resuming_a_run_with_another_command_is_refused(fake_cifar, tmp_path, capsys):
    ckpt = save_child(tmp_path / "src.pt", busy_child(10), fake_cifar)
    assert main(finetune_argv(fake_cifar, ckpt, tmp_path, "ft")) == 0
    before = (tmp_path / "ft" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(cli_argv("retrain", {"--arch": ARCH, "--layers": 4, "--data_path": fake_cifar,
                                     "--val_size": 50,
                                     "--save_path": tmp_path, "--exp_name": "ft",
                                     "--resume": None, "--no-download": None})) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"spnas: error: {tmp_path / 'ft'} holds a run of spnas finetune (FinetuneConfig in "
        "config.json), not of this command; resume it with spnas finetune --resume"]
    assert (tmp_path / "ft" / "last.pt").read_bytes() == before


def test_evaluating_other_data_writes_beside_the_runs_own_evaluation(fake_cifar, tmp_path):
    import shutil
    from pathlib import Path

    from spnas.stages.evaluate import evaluate_checkpoint
    net = busy_child(10)
    config = TrainConfig(dataclasses.replace(DataConfig(), data_path=str(fake_cifar), val_size=0,
                                             download=False)).to_dict()
    ckpt = tmp_path / "run" / "best.pt"
    save_checkpoint(ckpt, {"kind": "child", "space": net.arch.space.to_dict(), "arch": str(net.arch),
                           "num_classes": 10, "model_args": {"dropout": 0.1},
                           "model": net.state_dict(), "config": config})
    own = evaluate_checkpoint(EvaluateConfig(checkpoint=str(ckpt), device="cpu"))
    copy = shutil.copytree(fake_cifar, tmp_path / "copy")
    other = evaluate_checkpoint(EvaluateConfig(checkpoint=str(ckpt), data_path=str(copy), device="cpu"))
    assert Path(own["out"]) == tmp_path / "run" / "eval_best_test"
    assert Path(other["out"]).parent == tmp_path / "run"
    assert Path(other["out"]).name.startswith("eval_best_test_cifar10_copy_")
    same = evaluate_checkpoint(EvaluateConfig(checkpoint=str(ckpt), data_path=str(fake_cifar) + "/.",
                                              device="cpu"))
    assert Path(same["out"]) == Path(own["out"])  # the run's own data, however it is written
    assert (Path(own["out"]) / "evaluation.json").is_file()


def test_the_backbone_bns_train_again_from_the_first_unfrozen_step():
    """Frozen, the BNs are in eval mode (no statistic moves); from the first unfrozen step they
    train with the rest, not only after the next validation's model.train() (which an EMA
    run's validation, on the EMA copy, never calls on the model)."""
    from spnas.stages.finetune import BackboneFreeze
    net = busy_child(num_classes=5).train()
    freeze = BackboneFreeze(net, steps=2)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = torch.randn(4, 3, 32, 32)
    for step in (0, 1):
        before = [bn.running_mean.clone() for bn in bns]
        freeze(net, x, step)
        assert not any(bn.training for bn in bns)
        assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    before = [bn.running_mean.clone() for bn in bns]
    freeze(net, x, 2)
    assert all(bn.training for bn in bns)
    assert not any(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    assert all(p.requires_grad for p in net.parameters())


def test_a_finetune_resumes_after_its_source_checkpoint_moved(fake_cifar, tmp_path, capsys):
    ckpt = save_child(tmp_path / "src.pt", busy_child(5), fake_cifar)
    argv = finetune_argv(fake_cifar, ckpt, tmp_path, "ft", **{"--epochs": 2})
    assert main(argv + ["--stop_after", "3"]) == 0
    stopped = load_checkpoint(tmp_path / "ft" / "last.pt")
    ckpt.rename(tmp_path / "moved.pt")
    assert main(["finetune", "--resume", "--save_path", str(tmp_path), "--exp_name", "ft"]) == 0
    done = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert stopped["step"] == 3 and done["step"] == 6
    assert done["num_classes"] == 10 and "resumed from" in (tmp_path / "ft" / "train.log").read_text()


def test_a_missing_data_folder_the_checkpoint_records_is_named_as_its(tmp_path, capsys):
    ckpt = save_child(tmp_path / "best.pt", busy_child(10), tmp_path / "moved", val_size=50)
    for command in ("evaluate", "export"):
        assert main([command, "--checkpoint", str(ckpt)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the folder {ckpt} records; pass --data_path DIR" in err
        assert ("--check_images 0" in err) == (command == "export")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data_path", str(tmp_path / "gone")]) == 2
    assert "records" not in capsys.readouterr().err  # a folder the user gave is the user's
