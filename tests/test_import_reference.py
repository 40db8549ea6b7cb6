"""``spnas import-reference``: state_dicts of the original SPOS CIFAR code, imported exactly.

The original's key names and shapes are written out here from its model
definition (the table below, nothing imported from spnas), filled with random
weights and BN statistics, imported, and the spnas network is compared with a
functional forward of the original's structure written here with
``torch.nn.functional``.
"""
import json
import random
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import cli_argv

from spnas.cli import main
from spnas.config import ImportReferenceConfig
from spnas.engine.checkpoint import load_checkpoint, model_from_checkpoint
from spnas.errors import SpnasError
from spnas.stages.import_reference import import_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def run_import(src, out, **kw) -> dict:
    return import_reference(ImportReferenceConfig(src=src, out=out, **kw))

# ---- the original's network, as its model definition builds it --------------------------------
CHANNEL = [16] + [64] * 4 + [160] * 4 + [320] * 8 + [640] * 4  # channel[i] -> channel[i + 1]
LAST = 1024
LAYOUTS = {"cifar": (1, {4, 8}), "imagenet": (2, {0, 4, 8, 16})}  # stem stride, stride-2 layers
KERNEL = [3, 5, 7, 3]  # choice 0..3: k3 k5 k7 x
# Sequential contents, one entry per index: "pw A B" conv1x1 A->B, "dw C K S" depthwise KxK
# on C channels with stride S, "bn" BatchNorm of the previous conv's outputs, "relu".
CB_MAIN = {
    "k": ["pw inp mid", "bn", "relu", "dw mid k s", "bn", "pw mid out", "bn", "relu"],
    "x": ["dw inp 3 s", "bn", "pw inp mid", "bn", "relu", "dw mid 3 1", "bn", "pw mid mid", "bn",
          "relu", "dw mid 3 1", "bn", "pw mid out", "bn", "relu"],
}
CB_PROJ = ["dw inp k 2", "bn", "pw inp inp", "bn", "relu"]


def unit_sizes(i: int, choice: int, layout: str) -> dict:
    stride = 2 if i in LAYOUTS[layout][1] else 1
    cin, cout = CHANNEL[i], CHANNEL[i + 1]
    inp = cin // 2 if stride == 1 else cin
    return {"inp": inp, "mid": cout // 2, "out": cout - inp, "k": KERNEL[choice], "s": stride}


def ops(seq: list[str], sizes: dict):
    """(index, kind, ints) of each Sequential entry, the names resolved to sizes."""
    for m, op in enumerate(seq):
        kind, *args = op.split()
        yield m, kind, [sizes[a] if a in sizes else int(a) for a in args]


def unit_seqs(i: int, choice: int, layout: str):
    sizes = unit_sizes(i, choice, layout)
    seqs = [("cb_main", CB_MAIN["x" if choice == 3 else "k"])]
    if sizes["s"] == 2:
        seqs.append(("cb_proj", CB_PROJ))
    return sizes, seqs


def add_conv(sd, name, shape, g):
    fan_in = shape[1] * shape[2] * shape[3]
    sd[f"{name}.weight"] = torch.randn(shape, generator=g) / fan_in ** 0.5


def add_bn(sd, name, c, affine, g):
    sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
    sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(int(torch.randint(1, 10 ** 6, (1,),
                                                                       generator=g)))
    if affine:
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1


def add_unit(sd, prefix, i, choice, layout, affine, g):
    sizes, seqs = unit_seqs(i, choice, layout)
    for part, seq in seqs:
        width = None
        for m, kind, a in ops(seq, sizes):
            name = f"{prefix}.{part}.{m}"
            if kind == "pw":
                add_conv(sd, name, (a[1], a[0], 1, 1), g)
                width = a[1]
            elif kind == "dw":
                add_conv(sd, name, (a[0], 1, a[1], a[1]), g)
                width = a[0]
            elif kind == "bn":
                add_bn(sd, name, width, affine, g)


def reference_state(path=None, layout="cifar", classes=10, seed=0) -> dict:
    """A supernet's state_dict (``path`` None: every choice of every layer) or a network's."""
    g = torch.Generator().manual_seed(seed)
    affine = path is not None
    sd = {}
    add_conv(sd, "stem.0", (16, 3, 3, 3), g)
    add_bn(sd, "stem.1", 16, affine, g)
    for i in range(20):
        if path is None:
            for j in range(4):
                add_unit(sd, f"choice_block.{i}.{j}", i, j, layout, affine, g)
        else:
            add_unit(sd, f"choice_block.{i}", i, path[i], layout, affine, g)
    add_conv(sd, "last_conv.0", (LAST, CHANNEL[-1], 1, 1), g)
    add_bn(sd, "last_conv.1", LAST, affine, g)
    sd["classifier.weight"] = torch.randn((classes, LAST), generator=g) * 0.05
    return sd


def f_bn(x, sd, name):
    """Eval-mode BatchNorm (eps 1e-5) with the running statistics; affine when saved so."""
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                        sd.get(f"{name}.weight"), sd.get(f"{name}.bias"), False, 0.0, 1e-5)


def f_seq(x, sd, prefix, seq, sizes):
    for m, kind, a in ops(seq, sizes):
        p = f"{prefix}.{m}"
        if kind == "pw":
            x = F.conv2d(x, sd[f"{p}.weight"])
        elif kind == "dw":
            x = F.conv2d(x, sd[f"{p}.weight"], stride=a[2], padding=a[1] // 2, groups=a[0])
        elif kind == "bn":
            x = f_bn(x, sd, p)
        else:
            x = F.relu(x)
    return x


def reference_forward(sd, x, path, layout, supernet, swap=False):
    """The original's forward; ``swap``: branch on the odd channels (must not match)."""
    cast = {k: v.to(x.dtype) if v.is_floating_point() else v for k, v in sd.items()}
    x = F.conv2d(x, cast["stem.0.weight"], stride=LAYOUTS[layout][0], padding=1)
    x = F.relu6(f_bn(x, cast, "stem.1"))
    for i, c in enumerate(path):
        prefix = f"choice_block.{i}.{c}" if supernet else f"choice_block.{i}"
        sizes, seqs = unit_seqs(i, c, layout)
        if sizes["s"] == 1:
            even, odd = x[:, 0::2], x[:, 1::2]
            if swap:
                even, odd = odd, even
            x = torch.cat([f_seq(even, cast, f"{prefix}.cb_main", seqs[0][1], sizes), odd], 1)
        else:
            x = torch.cat([f_seq(x, cast, f"{prefix}.{part}", seq, sizes) for part, seq in seqs], 1)
    x = F.conv2d(x, cast["last_conv.0.weight"])
    x = F.relu6(f_bn(x, cast, "last_conv.1"))
    return F.linear(x.mean((2, 3)), cast["classifier.weight"])


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def random_path(seed):
    rng = random.Random(seed)
    return [rng.randrange(4) for _ in range(20)]


def save(sd, path):
    torch.save(sd, path)
    return path


def images(layout, n=2, seed=1):
    side = 32 if layout == "cifar" else 64
    return torch.randn((n, 3, side, side), generator=torch.Generator().manual_seed(seed))


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    sd = reference_state()
    return sd, save(sd, root / "supernet.pth")


@pytest.fixture(scope="module")
def imported_supernet(supernet_file, tmp_path_factory):
    sd, src = supernet_file
    out = tmp_path_factory.mktemp("imp") / "supernet.pt"
    run_import(src, out)
    return sd, out


# ---- exactness -------------------------------------------------------------------------------
PATHS = [[0] * 20, [1] * 20, [2] * 20, [3] * 20, random_path(0), random_path(1)]


@torch.no_grad()
def test_supernet_paths_compute_as_the_original(imported_supernet):
    sd, out = imported_supernet
    ckpt = load_checkpoint(out)
    net = model_from_checkpoint(ckpt).eval()
    x = images("cifar")
    for path in PATHS:
        want = reference_forward(sd, x, path, "cifar", supernet=True)
        assert want.abs().max() > 1e-3  # the signal survived 20 layers
        assert rel_diff(net(x, path), want) <= 1e-5, path
        # the check can fail: the original's branch takes the even channels
        swapped = reference_forward(sd, x, path, "cifar", supernet=True, swap=True)
        assert rel_diff(swapped, want) > 1e-2


@torch.no_grad()
def test_supernet_in_the_imagenet_layout(tmp_path):
    sd = reference_state(layout="imagenet", classes=7, seed=5)
    out = tmp_path / "sn.pt"
    r = run_import(save(sd, tmp_path / "sn.pth"), out, resize=True, classes=7)
    assert (r["kind"], r["layout"], r["num_classes"]) == ("supernet", "imagenet", 7)
    net = model_from_checkpoint(load_checkpoint(out)).eval()
    x = images("imagenet")
    for path in (PATHS[3], PATHS[4]):
        assert rel_diff(net(x, path), reference_forward(sd, x, path, "imagenet", True)) <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("layout", ["cifar", "imagenet"])
def test_standalone_network_computes_as_the_original(tmp_path, layout):
    path = random_path(7)
    sd = reference_state(path, layout, classes=10, seed=3)
    out = tmp_path / "net.pt"
    r = run_import(save(sd, tmp_path / "net.pth"), out)
    assert r["layout"] == layout
    ckpt = load_checkpoint(out, kinds=("child",))
    net = model_from_checkpoint(ckpt).eval()
    x = images(layout)
    want = reference_forward(sd, x, path, layout, supernet=False)
    assert want.abs().max() > 1e-3
    assert rel_diff(net(x), want) <= 1e-5
    assert rel_diff(reference_forward(sd, x, path, layout, False, swap=True), want) > 1e-2


def test_the_checkpoint_describes_itself(imported_supernet, supernet_file):
    sd, out = imported_supernet
    ckpt = load_checkpoint(out)
    assert ckpt["kind"] == "supernet" and ckpt["arch"] is None and ckpt["num_classes"] == 10
    assert ckpt["space"]["layout"] == "cifar" and len(ckpt["space"]["allowed"]) == 20
    assert all(len(a) == 4 for a in ckpt["space"]["allowed"])
    assert (ckpt["optimizer"], ckpt["step"], ckpt["epoch"], ckpt["model_args"]) == (None, 0, 0, {})
    assert ckpt["config"]["data"]["dataset"] == "cifar10"
    assert ckpt["config"]["data"]["val_size"] == 0 and ckpt["config"]["data"]["resize"] is False
    assert ckpt["imported_from"] == {"path": str(supernet_file[1].resolve()),
                                     "code": "ShunLu91/Single-Path-One-Shot-NAS",
                                     "kind": "supernet"}
    # BN statistics (num_batches_tracked too) come from the file
    assert torch.equal(ckpt["model"]["layers.5.2.main.1.1.running_var"],
                       sd["choice_block.5.2.cb_main.4.running_var"])
    assert torch.equal(ckpt["model"]["head.0.1.num_batches_tracked"],
                       sd["last_conv.1.num_batches_tracked"])
    assert json.dumps(ckpt["config"])  # plain data


def test_the_path_of_a_network_is_read_from_its_shapes(tmp_path):
    path = [0, 1, 2, 3] * 5
    out = tmp_path / "net.pt"
    r = run_import(save(reference_state(path, seed=2), tmp_path / "net.pth"), out)
    want = " ".join(["k3", "k5", "k7", "x"][c] for c in path)
    assert r["arch"] == want and load_checkpoint(out)["arch"] == want
    wrapped = {f"module.{k}": v for k, v in reference_state(path, seed=2).items()}  # DataParallel
    r = run_import(save(wrapped, tmp_path / "dp.pth"), tmp_path / "dp.pt")
    assert r["arch"] == want


def test_num_choices_keeps_the_trained_blocks(supernet_file, tmp_path):
    sd, src = supernet_file
    out = tmp_path / "two.pt"
    run_import(src, out, num_choices=2)
    ckpt = load_checkpoint(out)
    assert all(list(a) == [0, 1] for a in ckpt["space"]["allowed"])
    assert not any(k.startswith("layers.0.2.") for k in ckpt["model"])
    net = model_from_checkpoint(ckpt).eval()
    x = images("cifar")
    with torch.no_grad():
        assert rel_diff(net(x, PATHS[1]), reference_forward(sd, x, PATHS[1], "cifar", True)) <= 1e-5


# ---- the rest of spnas accepts it ----------------------------------------------------------
def test_evaluate_an_imported_network(fake_cifar, tmp_path, capsys):
    src = save(reference_state(random_path(3), seed=4), tmp_path / "best.pth")
    out = tmp_path / "net.pt"
    assert main(["import-reference", str(src), "--out", str(out), "--no-resize",
                 "--classes", "10"]) == 0
    assert "spnas evaluate --checkpoint" in capsys.readouterr().out
    assert main(cli_argv("evaluate", {"--checkpoint": out, "--data_path": fake_cifar,
                                      "--device": "cpu", "--out": tmp_path / "ev"})) == 0
    r = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert r["n"] == 100 and r["split"] == "test"


def test_export_of_an_imported_network_says_it_records_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    src = save(reference_state(random_path(3), seed=4), tmp_path / "best.pth")
    assert main(["import-reference", str(src), "--out", "net.pt", "--no-resize"]) == 0
    assert main(["export", "--checkpoint", "net.pt"]) == 2
    err = capsys.readouterr().err
    assert "imported from the original's code records no data folder; pass --data_path" in err
    assert main(["export", "--checkpoint", "net.pt", "--check_images", "0"]) == 0
    assert (tmp_path / "net.onnx").is_file()


def test_search_an_imported_supernet_needs_a_val_size(imported_supernet, fake_cifar, tmp_path,
                                                      capsys):
    _, out = imported_supernet
    flags = {"--checkpoint": out, "--out": tmp_path / "s", "--method": "random", "--num": 2,
             "--top_k": 1, "--recal_images": 16, "--recal_batch": 8, "--val_images": 10,
             "--eval_batch": 10, "--data_path": fake_cifar, "--device": "cpu"}
    assert main(cli_argv("search", flags)) == 2
    assert "--val_size N" in capsys.readouterr().err
    assert main(cli_argv("search", {**flags, "--val_size": 50})) == 0
    assert "WARNING" in (tmp_path / "s" / "search.log").read_text()
    assert (tmp_path / "s" / "best_arch.json").is_file()


# ---- what does not fit ---------------------------------------------------------------------
def expect_error(tmp_path, sd, match, **kw):
    src = save(sd, tmp_path / "in.pth")
    with pytest.raises(SpnasError, match=match):
        run_import(src, tmp_path / "out.pt", **kw)
    assert not (tmp_path / "out.pt").exists()


@pytest.fixture(scope="module")
def network_state():
    return reference_state(random_path(9), seed=6)


def test_flags_that_disagree_with_the_file(network_state, tmp_path):
    expect_error(tmp_path, network_state, r"--classes 100 .* classifies 10 classes", classes=100)
    expect_error(tmp_path, network_state, r"--resize was given, .* CIFAR layout", resize=True)
    sd = reference_state(random_path(9), "imagenet", seed=6)
    expect_error(tmp_path, sd, r"--no-resize was given, .*imagenet", resize=False)
    expect_error(tmp_path, network_state, r"--num_choices is for a supernet", num_choices=2)


def test_files_that_are_not_the_original_state_dict(network_state, tmp_path):
    expect_error(tmp_path, {"fc.weight": torch.zeros(3, 4)}, r"not a state_dict of the original")
    expect_error(tmp_path, [torch.zeros(2)], r"holds a list, not a state_dict")
    expect_error(tmp_path, {"a": 1}, r"entry 'a' is a int, not a tensor")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(SpnasError, match="is not a readable torch file"):
        run_import(bad, tmp_path / "o.pt")
    with pytest.raises(SpnasError, match="not found"):
        run_import(tmp_path / "nope.pth", tmp_path / "o.pt")


def test_a_wrapped_state_dict_imports_and_a_diverged_one_is_refused(network_state, tmp_path):
    plain = run_import(save(network_state, tmp_path / "a.pth"), tmp_path / "a.pt")
    wrapped = {"state_dict": network_state, "epoch": 599, "best_top1": 0.93}
    inside = run_import(save(wrapped, tmp_path / "b.pth"), tmp_path / "b.pt")
    assert (inside["kind"], inside["arch"]) == (plain["kind"], plain["arch"])
    a, b = (load_checkpoint(tmp_path / n)["model"] for n in ("a.pt", "b.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sd = dict(network_state)
    sd["classifier.weight"] = sd["classifier.weight"].clone()
    sd["classifier.weight"][0, 0] = float("nan")
    expect_error(tmp_path, sd, r"classifier.weight holds NaN or infinite values")


def test_a_missing_extra_or_misshapen_key(network_state, tmp_path):
    sd = dict(network_state)
    del sd["choice_block.6.cb_main.1.running_var"]
    expect_error(tmp_path, sd, r"key choice_block\.6\.cb_main\.1\.running_var .* is missing; "
                               r"expected shape \[\d+\]")
    sd = {**network_state, "choice_block.2.cb_main.99.weight": torch.zeros(1)}
    expect_error(tmp_path, sd, r"unexpected key choice_block\.2\.cb_main\.99\.weight")
    sd = {**network_state, "choice_block.0.cb_main.0.weight": torch.tensor(1.0)}
    expect_error(tmp_path, sd, r"choice_block\.0\.cb_main\.0\.weight has shape \[\]; expected a "
                               r"convolution weight")
    sd = {**network_state, "classifier.weight": torch.zeros(10, 1000)}
    expect_error(tmp_path, sd, r"classifier\.weight has shape \[10, 1000\], .* needs \[10, 1024\]")


def test_supernet_with_affine_last_bn_is_refused(tmp_path):
    sd = reference_state(seed=8)
    sd["last_conv.1.weight"] = torch.ones(LAST)
    expect_error(tmp_path, sd, r"unexpected key last_conv\.1\.weight")


def test_other_layer_counts_are_refused(network_state, tmp_path):
    sd = {k: v for k, v in network_state.items() if not k.startswith(("choice_block.19.",
                                                                      "choice_block.18."))}
    expect_error(tmp_path, sd, r"holds 18 choice blocks .* only 20-layer files import")


def test_refuses_to_overwrite_unless_forced(network_state, tmp_path, capsys):
    src, out = save(network_state, tmp_path / "net.pth"), tmp_path / "net.pt"
    out.write_text("keep me")
    argv = ["import-reference", str(src), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me"
    assert main(argv + ["--overwrite"]) == 0
    assert load_checkpoint(out)["kind"] == "child"
    with pytest.raises(SpnasError, match="is the file being imported"):
        run_import(src, src, overwrite=True)


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "x.pth")
    assert main(["import-reference", str(src), "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spnas: error:")


def test_an_imported_supernet_cannot_be_resumed_as_a_training_run(imported_supernet, fake_cifar,
                                                                   tmp_path, capsys):
    _, out = imported_supernet
    (tmp_path / "run").mkdir()
    shutil.copy(out, tmp_path / "run" / "last.pt")
    argv = cli_argv("train", {"--exp_name": "run", "--save_path": tmp_path, "--resume": None,
                              "--data_path": fake_cifar, "--no-download": None, "--val_size": 50,
                              "--device": "cpu"})
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt holds no optimizer state" in err[0]
    assert "fine-tune it with spnas finetune" in err[0]
    assert (tmp_path / "run" / "last.pt").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("argv, message", [
    ([], "SRC.pth is required: spnas import-reference SRC.pth --out DST.pt"),
    (["in.pth"], "--out DST.pt is required"),
    (["in.pth", "--out", "o.pt", "--num_choices", "5"], "--num_choices must be 1..4"),
    (["in.pth", "--out", "o.pt", "--classes", "0"], "--classes must be positive, got 0"),
])
def test_missing_and_bad_settings_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["import-reference", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spnas: error: ") and message in err[0]
    assert not (tmp_path / "o.pt").exists()


def test_a_config_file_gives_the_settings_and_the_command_line_wins(network_state, tmp_path):
    src = save(network_state, tmp_path / "net.pth")
    cfg = tmp_path / "import.json"
    cfg.write_text(json.dumps({"src": str(src), "out": str(tmp_path / "a.pt"), "classes": 100}))
    assert main(["import-reference", "--config", str(cfg)]) == 2  # the file says 10 classes
    assert main(["import-reference", "--config", str(cfg), "--classes", "10"]) == 0
    assert load_checkpoint(tmp_path / "a.pt")["kind"] == "child"
    assert main(["import-reference", str(src), "--config", str(cfg), "--out", str(tmp_path / "b.pt"),
                 "--classes", "10"]) == 0
    assert (tmp_path / "b.pt").is_file()
    with pytest.raises(TypeError, match=r"import_reference takes an ImportReferenceConfig"):
        import_reference(str(src), str(tmp_path / "c.pt"))  # spnas 0.2's (src, out, ...)


def test_a_folder_as_out_is_refused_naming_a_file_in_it(network_state, tmp_path, capsys):
    src = save(network_state, tmp_path / "net.pth")
    (tmp_path / "imp").mkdir()
    for extra in ([], ["--overwrite"]):
        assert main(["import-reference", str(src), "--out", str(tmp_path / "imp"), *extra]) == 2
        err = capsys.readouterr().err
        assert f"--out {tmp_path / 'imp'} is a folder" in err and "imp/net.pt" in err
    assert list((tmp_path / "imp").iterdir()) == []
