"""Bad inputs, one row each: a one-line error (exit 2) naming the problem and the fix, or the
right result, and nothing in the data or run folder changed.

A row: ``Case(id, setup, status, message, watch="data", after=None)``. ``setup(tmp_path,
monkeypatch)`` makes the bad input under ``tmp_path`` and returns what to run: ``spnas``
arguments (a list) or a Python call (run as the command line runs a command, so a
``SpnasError`` is exit status 2 and one line on stderr). ``status``: the exit status;
``message``: a fragment of the one stderr line (status != 0) or of stdout (status 0);
``watch``: a folder under ``tmp_path`` whose files must be byte-identical afterwards
(None: no check); ``after(tmp_path)``: further checks.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import shutil
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, write_image_folders, write_official

from spnas.arch import Arch
from spnas.cli import main, run_guarded
from spnas.config import DataConfig, TrainConfig
from spnas.data.datasets import load_dataset
from spnas.engine.checkpoint import save_checkpoint
from spnas.engine.latency import LatencyTable
from spnas.errors import SpnasError
from spnas.files import atomic_write_text
from spnas.spaces import build_child
from spnas.spaces.mbconv import mbconv_space
from spnas.spaces.spos import spos_space
from spnas.stages.pipeline import _read_done
from spnas.stages.search_record import prepare_out_dir, read_record


# ---- building bad inputs --------------------------------------------------------------
def call(fn, *args):
    """A Python call for a row (its arguments made now, by the setup)."""
    return lambda: fn(*args)


def load(path: Path, name: str = "cifar10"):
    """A call that loads the dataset and prints its size (the right result, when no error)."""
    return lambda: print(f"loaded {len(load_dataset(name, path, download_ok=False).train_x)} "
                         "training images")


def image_folders(tmp: Path, *extra_dirs: str, image_to: str | None = None) -> Path:
    data = write_image_folders(tmp / "data", 20, 10)
    for d in extra_dirs:
        (data / d).mkdir(parents=True)
    if image_to:
        shutil.copy(data / "train" / "bird" / sorted(os.listdir(data / "train" / "bird"))[0],
                    data / image_to)
    return data


def tarball(tmp: Path, data: Path) -> Path:
    src = write_official(tmp / "src")
    data.mkdir(parents=True, exist_ok=True)
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    shutil.rmtree(src)
    return data / "cifar-10-python.tar.gz"


def damage(tgz: Path) -> Path:
    """Garble 100 bytes mid-stream: they may decompress to wrong bytes with no error."""
    blob = bytearray(tgz.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 100] = bytes(b ^ 0x55 for b in blob[mid:mid + 100])
    tgz.write_bytes(bytes(blob))
    return tgz.parent


def half_unpacked(tmp: Path) -> Path:
    """The tarball, and beside it the folder an interrupted unpack left (no test_batch)."""
    tarball(tmp, tmp / "data")
    os.remove(write_official(tmp / "data") / "test_batch")
    return tmp / "data"


def stale_unpack(tmp: Path) -> Path:
    """data/cifar/ holds the tarball; data/.x...unpacking-1/ is a half unpack a kill left."""
    tarball(tmp, tmp / "data" / "cifar")
    stale = write_official(tmp / "data" / ".cifar-10-python.tar.gz.unpacking-1")
    os.remove(stale / "test_batch")
    return tmp / "data"


def killed_unpack(tmp: Path) -> Path:
    """data/ holds the tarball and the hidden folder of an unpack killed midway beside it."""
    tarball(tmp, tmp / "data")
    stale = write_official(tmp / "data" / ".cifar-10-python.tar.gz.unpacking-k1ll3d")
    os.remove(stale / "test_batch")
    return tmp / "data"


def disk_full_after(monkeypatch, files: int) -> None:
    """Writing the ``files``-th unpacked file writes 100 bytes, then the disk is full."""
    real, calls = shutil.copyfileobj, []

    def copy(src, dst, *args):
        calls.append(1)
        if len(calls) < files:
            return real(src, dst, *args)
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(shutil, "copyfileobj", copy)


def repickle(folder: Path, protocol: int, **kwargs) -> None:
    """Rewrite every batch with ``protocol`` (numpy arrays then pickle as _frombuffer)."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
        f.write_bytes(pickle.dumps(obj, protocol=protocol, **kwargs))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def pickles(tmp: Path, protocol: int, evil: bool = False, **kwargs) -> Path:
    folder = write_official(tmp / "data")
    repickle(folder, protocol, **kwargs)
    if evil:
        (folder / "data_batch_2").write_bytes(
            pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=protocol))
    return tmp / "data"


def bomb(monkeypatch, limit: int, as_error: bool = False) -> None:
    """PIL's decompression-bomb limit below a 32x32 image (error at 2x, warning at 1x)."""
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    if as_error:  # pytest restores the filters after the test
        warnings.simplefilter("error", Image.DecompressionBombWarning)


def arch_file(tmp: Path, edit: Callable[[dict], None], space=None, name="arch.json") -> Path:
    """An arch file that spnas wrote, then edited by hand with ``edit(d)``."""
    space = space or spos_space(4, 2)
    path = tmp / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    d = json.loads(json.dumps(Arch(space, tuple(a[0] for a in space.allowed)).to_json()))
    edit(d)
    path.write_text(json.dumps(d))
    return path


def drop_last_layer(d: dict) -> None:
    d["space"]["allowed"].pop()
    d["space"]["stages"][-1] -= 1
    d["arch"] = " ".join(d["arch"].split()[:-1])
    del d["choices"]


def table_file(tmp: Path, edit: Callable[[dict], None]) -> Path:
    """A 2-layer SPOS latency table (ms) that spnas wrote, then edited by hand."""
    table = LatencyTable(spos_space(2), "cpu", "test CPU", 1, 32, 1, 0.5,
                         [{c: 0.1 * (c + 1) for c in range(4)} for _ in range(2)])
    path = tmp / "data" / "latency.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    d = json.loads(json.dumps(table.to_json()))
    edit(d)
    path.write_text(json.dumps(d))  # NaN and Infinity as Python's json writes them
    return path


def set_entry(layer: int, token: str, value) -> Callable[[dict], None]:
    return lambda d: d["layers"][layer].__setitem__(token, value)


def child_checkpoint(tmp: Path, broken: bool = False, layout: str = "cifar") -> Path:
    """A 2-layer SPOS child in run/best.pt trained on tmp/data (250 + 100 fake images)."""
    write_official(tmp / "data")
    torch.manual_seed(0)
    net = build_child(Arch.parse("k3 x", spos_space(2, layout=layout)), 10)
    if broken:  # a diverged run: NaN logits
        net.classifier.weight.data.fill_(float("nan"))
    config = TrainConfig(dataclasses.replace(DataConfig(), data_path=str(tmp / "data"),
                                             val_size=0, download=False)).to_dict()
    path = tmp / "run" / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"kind": "child", "space": net.arch.space.to_dict(),
                           "arch": str(net.arch), "num_classes": 10, "model": net.state_dict(),
                           "config": config})
    return path


def strict_json(path: Path) -> dict:
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


FAST_TIMING = ["--warmup", "0", "--repeats", "1", "--calibrate", "0", "--validate", "0",
               "--threads", "1"]


def latency_argv(tmp: Path, *options: str, checkpoint: Path | None = None) -> list[str]:
    (tmp / "run").mkdir(exist_ok=True)
    argv = ["latency-table", "--out", str(tmp / "run" / "lat.json"), *FAST_TIMING]
    for o in options:
        argv += ["--option", o]
    return argv + (["--checkpoint", str(checkpoint)] if checkpoint else [])


def latency_out_argv(tmp: Path, m: pytest.MonkeyPatch, out: str, timing=None) -> list[str]:
    """``spnas latency-table --out tmp/out`` whose timing is ``timing`` (default: a timing that
    fails the test, for an --out that must be refused before any is done)."""
    def refuse(*args, **kwargs):
        raise AssertionError("timed before checking that --out can be written")
    m.setattr("spnas.stages.latency_table._measure_and_check", timing or refuse)
    (tmp / "run").mkdir(exist_ok=True)
    (tmp / "run" / "afile").write_text("mine")
    return ["latency-table", "--out", str(tmp / out), *FAST_TIMING]


def _timing_fails(*args, **kwargs):
    raise SpnasError("the timing failed")


def _no_folder_left(tmp: Path) -> None:
    assert not (tmp / "new").exists()


def export_argv(ckpt: Path, *flags: str) -> list[str]:
    return ["export", "--checkpoint", str(ckpt), "--format", "torchscript",
            "--check_images", "0", *flags]


def folder_with_a_file(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("mine")
    return path


def kept_classes(tmp: Path, *keep: str) -> Path:
    """Image folders (20 train, 10 test images) with only the classes ``keep``."""
    data = write_image_folders(tmp / "data", 20, 10)
    for split in ("train", "test"):
        for d in (data / split).iterdir():
            if d.name not in keep:
                shutil.rmtree(d)
    return data


def train_argv(tmp: Path, *flags: str) -> list[str]:
    """A tiny supernet run on the fake CIFAR-10 in tmp/data, its folder tmp/run/a."""
    return ["train", "--data_path", str(write_official(tmp / "data")), "--no-download",
            "--layers", "2", "--num_steps", "1", "--epochs", "1", "--batch_size", "8",
            "--val_size", "20", "--val_paths", "1", "--recal_images", "8",
            "--save_path", str(tmp / "run"), "--exp_name", "a", *flags]


def file_with(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def without_torchrun(monkeypatch, **env: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def no_run_folder(tmp: Path) -> None:
    assert not (tmp / "run").exists(), "a refused run left its folder"


def resume_from(config_json: str, tmp: Path):
    """``check_resume`` of a resumed run whose folder's config.json holds ``config_json``."""
    from spnas.config import RunConfig
    from spnas.engine.runlog import check_resume
    file_with(tmp / "run" / "config.json", config_json.encode())
    cfg = dataclasses.replace(TrainConfig(), run=RunConfig(resume=True))
    return call(check_resume, cfg, tmp / "run")


# ---- the table -------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    id: str
    setup: Callable[[Path, pytest.MonkeyPatch], list[str] | Callable[[], object]]
    status: int
    message: str
    watch: str | None = "data"
    after: Callable[[Path], None] | None = None


def _nothing_half_unpacked(tmp: Path) -> None:
    assert sorted(os.listdir(tmp / "data")) == ["cifar-10-python.tar.gz"]


def _ran_no_code(tmp: Path) -> None:
    assert not (tmp / "pwned").exists()


def _exported_inside(tmp: Path) -> None:
    assert (tmp / "out" / "keep.txt").read_text() == "mine"
    assert (tmp / "out" / "best.torchscript.pt").is_file()


def _valid_json_with_null_loss(tmp: Path) -> None:
    r = strict_json(tmp / "eval" / "evaluation.json")
    assert r["loss"] is None and r["nonfinite_images"] == 100 and r["n"] == 100


def edited_checkpoint(tmp: Path, **fields) -> Path:
    """``child_checkpoint`` with some of its fields replaced (None: removed), as if by hand."""
    path = child_checkpoint(tmp)
    ckpt = torch.load(path, weights_only=True)
    for k, v in fields.items():
        ckpt.pop(k) if v is None else ckpt.__setitem__(k, v)
    torch.save(ckpt, path)
    return path


def metrics_run(tmp: Path, *records: dict) -> Path:
    run = tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def evaluate_argv(path: Path) -> list[str]:
    return ["evaluate", "--device", "cpu", "--checkpoint", str(path), "--out", str(path.parent / "e")]


def arch_case(id: str, edit, message: str, space=None) -> Case:
    """A hand-edited arch file read by ``Arch.load``."""
    return Case(id, lambda t, m: call(Arch.load, arch_file(t, edit, space)), 2, message)


def table_case(id: str, edit, message: str) -> Case:
    """A hand-edited latency table read by ``LatencyTable.load`` (as search and superkernel do)."""
    return Case(id, lambda t, m: call(LatencyTable.load, table_file(t, edit)), 2, message)


def set_key(key: str, value) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def set_space(key: str, value) -> Callable[[dict], None]:
    return lambda d: d["space"].__setitem__(key, value)


def set_allowed(layer: int, value) -> Callable[[dict], None]:
    return lambda d: d["space"]["allowed"].__setitem__(layer, value)


ERROR = 2
CASES = [
    # data: image folders
    Case("empty-class-folder", lambda t, m: load(image_folders(t, "train/zebra", "test/zebra"), "folder"),
         ERROR, "class folder {tmp}/data/train/zebra holds no images"),
    Case("hidden-folder-is-no-class",
         lambda t, m: load(image_folders(t, "train/.ipynb_checkpoints"), "folder"),
         0, "loaded 20 training images"),
    Case("test-has-another-class",
         lambda t, m: load(image_folders(t, "test/zebra", image_to="test/zebra/a.png"), "folder"),
         ERROR, "train/ and test/ must hold the same class folders, but only test/ has zebra"),
    Case("dead-image-link", lambda t, m: (
        os.symlink(t / "moved" / "x.png", image_folders(t) / "train" / "bird" / "x.png"),
        load(t / "data", "folder"))[1], ERROR,
         "1 image link(s) in {tmp}/data/train/bird point nowhere (e.g. x.png -> {tmp}/moved/x.png); "
         "put the images back there, or remove the links"),
    Case("decompression-bomb", lambda t, m: (bomb(m, 400), load(image_folders(t), "folder"))[1],
         ERROR, "image {tmp}/data/train/airplane/"),
    Case("decompression-bomb-warning-as-error",
         lambda t, m: (bomb(m, 1000, as_error=True), load(image_folders(t), "folder"))[1],
         ERROR, "is too large to decode safely"),
    # data: the official tarball and pickles
    Case("disk-full-while-unpacking",
         lambda t, m: (tarball(t, t / "data"), disk_full_after(m, 3), load(t / "data"))[2],
         ERROR, "disk full while unpacking {tmp}/data/cifar-10-python.tar.gz",
         after=_nothing_half_unpacked),
    Case("garbled-tarball", lambda t, m: load(damage(tarball(t, t / "data"))),
         ERROR, "cifar-10-python.tar.gz is corrupt or truncated (CRC check failed",
         after=_nothing_half_unpacked),
    Case("half-unpacked-folder-beside-the-tarball", lambda t, m: load(half_unpacked(t)),
         ERROR, "cifar-10-batches-py is incomplete (no test_batch"),
    Case("stale-hidden-unpack-folder-is-ignored", lambda t, m: load(stale_unpack(t)),
         0, "loaded 250 training images", watch=None),
    Case("unpack-killed-midway-is-cleaned-up", lambda t, m: load(killed_unpack(t)),
         0, "loaded 250 training images", watch=None,
         after=lambda t: not list((t / "data").glob(".*unpacking*")) or
         pytest.fail("the killed unpack's folder is still there")),
    Case("pickle-protocol-5", lambda t, m: load(pickles(t, 5)), 0, "loaded 250 training images"),
    Case("pickle-protocol-5-out-of-band",
         lambda t, m: load(pickles(t, 5, buffer_callback=lambda b: False)),
         ERROR, "data_batch_1 was pickled with out-of-band buffers"),
    Case("pickle-protocol-5-calling-os-system",
         lambda t, m: (m.chdir(t), load(pickles(t, 5, evil=True)))[1],
         ERROR, "refusing to load posix.system", after=_ran_no_code),
    # arch files edited by hand
    arch_case("arch-wider-allowed", set_allowed(1, [0, 1, 2]), "arch.json: space field 'allowed' "
              "of layer 1 is [0, 1, 2]; the real spos/cifar space allows [0, 1]"),
    arch_case("arch-unknown-token", lambda d: d["space"]["tokens"].__setitem__(3, "k9"),
              "space field 'tokens' holds the unknown token 'k9'"),
    arch_case("arch-string-for-a-list", set_space("allowed", "0101"),
              "space field 'allowed' must be a list of lists of choice indices, got the string"),
    arch_case("arch-wrong-layer-count", drop_last_layer,
              "space field 'allowed' lists 19 layers; the real mbconv/cifar space has 20",
              mbconv_space()),
    arch_case("arch-wrong-stages", set_space("stages", [2, 2]),
              "space field 'stages' is [2, 2]; the real spos/cifar space with 4 layers has stages [4]"),
    arch_case("arch-choices-disagree", set_key("choices", [1, 1, 1, 1]),
              "'choices' [1, 1, 1, 1] disagree with 'arch'"),
    Case("arch-file-on-the-command-line", lambda t, m: ["profile", "--device", "cpu", "--arch",
                                                        str(arch_file(t, set_allowed(0, [0, 1, 2, 3])))],
         ERROR, "space field 'allowed' of layer 0 is [0, 1, 2, 3]"),
    Case("arch-file-of-another-space", lambda t, m: ["profile", "--device", "cpu", "--arch",
                                                     str(arch_file(t, lambda d: None)),
                                                     "--space", "mbconv"], ERROR,
         "arch.json has space spos (spos/cifar, 4 layers); drop --space mbconv: an arch file "
         "names its own space"),
    Case("arch-file-of-other-layers", lambda t, m: ["profile", "--device", "cpu", "--arch",
                                                    str(arch_file(t, lambda d: None)),
                                                    "--layers", "8"], ERROR,
         "arch.json has layers 4 (spos/cifar, 4 layers); drop --layers 8"),
    Case("arch-file-mbconv-with-num-choices", lambda t, m: [
        "profile", "--device", "cpu", "--arch", str(arch_file(t, lambda d: None, mbconv_space())),
        "--num_choices", "3"], ERROR, "arch.json is of the mbconv space, which --num_choices "
         "does not size (mbconv/cifar, 20 layers); drop --num_choices 3"),
    Case("arch-file-of-other-layers-given-as-the-default", lambda t, m: [
        "profile", "--device", "cpu", "--arch", str(arch_file(t, lambda d: None)),
        "--layers", "20"], ERROR, "arch.json has layers 4 (spos/cifar, 4 layers); drop --layers 20"),
    Case("arch-file-mbconv-with-space-spos-typed-out", lambda t, m: [
        "profile", "--device", "cpu", "--arch", str(arch_file(t, lambda d: None, mbconv_space())),
        "--space", "spos"], ERROR, "arch.json has space mbconv (mbconv/cifar, 20 layers); drop "
         "--space spos"),
    Case("arch-file-with-its-own-sizes", lambda t, m: [
        "profile", "--device", "cpu", "--arch", str(arch_file(t, lambda d: None)), "--layers", "4",
        "--num_choices", "2", "--repeats", "1", "--warmup", "0"], 0, "spos/cifar, 4 layers"),
    Case("checkpoint-as-arch-file", lambda t, m: ["profile", "--device", "cpu", "--arch",
                                                   str(child_checkpoint(t))],
         ERROR, "best.pt is not an arch file (JSON text): a checkpoint? Give the arch file"),
    # latency tables edited by hand
    table_case("table-unknown-unit", set_key("unit", "banana"),
               "latency.json has unit 'banana'; spnas writes ms or MMAC"),
    table_case("table-missing-entry", lambda d: d["layers"][1].pop("k7"),
               "latency.json: layer 1 has no entry for 'k7'"),
    table_case("table-too-few-layers", lambda d: d["layers"].pop(),
               "has 1 layer rows, but its space (spos/cifar, 2 layers) has 2 layers"),
    table_case("table-negative-entry", set_entry(0, "k5", -4.9),
               "layer 0 entry 'k5' is -4.9, it must be a finite number above 0"),
    table_case("table-zero-entry", set_entry(1, "x", 0), "layer 1 entry 'x' is 0,"),
    table_case("table-nan-entry", set_entry(0, "k3", float("nan")), "layer 0 entry 'k3' is nan"),
    table_case("table-infinite-entry", set_entry(1, "k3", float("inf")), "layer 1 entry 'k3' is inf"),
    table_case("table-string-entry", set_entry(1, "k3", "fast"), "layer 1 entry 'k3' is 'fast'"),
    table_case("table-negative-scale", set_key("scale", -1.0),
               "scale is -1.0, it must be a finite number above 0"),
    table_case("table-zero-scale", set_key("scale", 0), "scale is 0,"),
    table_case("table-nan-scale", set_key("scale", float("nan")), "scale is nan,"),
    table_case("table-of-a-widened-space", lambda d: d["space"]["allowed"][0].append(4),
               "latency.json: space field 'allowed' of layer 0 is [0, 1, 2, 3, 4]"),
    # space options
    Case("option-of-the-wrong-type", lambda t, m: latency_argv(t, "layers=abc"), ERROR,
         "space 'spos' option layers must be a whole number, default 20; got 'abc'", watch="run"),
    Case("option-given-twice", lambda t, m: latency_argv(t, "layers=1", "layers=2"), ERROR,
         "--option layers given more than once", watch="run"),
    Case("option-with-a-checkpoint",
         lambda t, m: latency_argv(t, "layers=1", checkpoint=child_checkpoint(t)), ERROR,
         "--option and --checkpoint do not mix", watch="run"),
    Case("latency-space-against-its-checkpoint", lambda t, m: latency_argv(
        t, checkpoint=child_checkpoint(t)) + ["--space", "mbconv"], ERROR,
         "best.pt has space spos, not --space mbconv; drop --space: the checkpoint fixes the space",
         watch="run"),
    Case("latency-layout-given-as-the-default-against-its-checkpoint", lambda t, m: latency_argv(
        t, checkpoint=child_checkpoint(t, layout="imagenet")) + ["--layout", "cifar"], ERROR,
         "best.pt has layout imagenet, not --layout cifar; drop --layout", watch="run"),
    Case("latency-classes-against-its-checkpoint", lambda t, m: latency_argv(
        t, checkpoint=child_checkpoint(t)) + ["--classes", "100"], ERROR,
         "best.pt has classes 10, not --classes 100; drop --classes", watch="run"),
    Case("latency-out-under-a-file", lambda t, m: latency_out_argv(t, m, "run/afile/lat.json"),
         ERROR, "--out {tmp}/run/afile/lat.json: cannot write into {tmp}/run/afile (a file is in "
         "the way of that folder); choose another --out", watch="run"),
    Case("latency-out-under-a-file-deeper", lambda t, m: latency_out_argv(
        t, m, "run/afile/sub/lat.json"), ERROR, "(a file is in the way of that folder)", watch="run"),
    Case("latency-out-in-new-folders", lambda t, m: ["latency-table", "--out", str(
        t / "new" / "sub" / "lat.json"), "--option", "layers=1", *FAST_TIMING], 0,
         "wrote {tmp}/new/sub/lat.json", watch=None,
         after=lambda t: LatencyTable.load(t / "new" / "sub" / "lat.json")),
    Case("latency-out-an-existing-folder", lambda t, m: latency_out_argv(t, m, "run")
         + ["--overwrite"], ERROR, "--out {tmp}/run is a folder; give the table's file name, "
         "e.g. {tmp}/run/latency.json", watch="run"),
    Case("latency-out-a-name-too-long", lambda t, m: latency_out_argv(
        t, m, "new/" + "x" * 300 + "/lat.json"), ERROR, "(File name too long); choose another "
         "--out", watch="run", after=_no_folder_left),
    Case("latency-timing-fails-leaves-no-new-folder", lambda t, m: latency_out_argv(
        t, m, "new/sub/lat.json", _timing_fails), ERROR, "the timing failed", watch="run",
         after=_no_folder_left),
    # export
    Case("export-into-an-existing-folder", lambda t, m: export_argv(
        child_checkpoint(t), "--out", str(folder_with_a_file(t / "out")), "--overwrite"),
         0, "wrote {tmp}/out/best.torchscript.pt", watch="run", after=_exported_inside),
    Case("export-over-its-checkpoint", lambda t, m: export_argv(
        child_checkpoint(t), "--out", str(t / "run" / "best.pt"), "--overwrite"),
         ERROR, "--out {tmp}/run/best.pt is the checkpoint itself", watch="run"),
    Case("export-torchscript-to-an-onnx-name", lambda t, m: export_argv(
        child_checkpoint(t), "--out", str(t / "net.onnx")), ERROR,
         "net.onnx ends in .onnx, the ending of onnx files, but --format is torchscript; pass "
         "--format onnx, or an --out ending in .pt", watch="run"),
    # checkpoints edited by hand or written elsewhere
    Case("checkpoint-without-num-classes",
         lambda t, m: evaluate_argv(edited_checkpoint(t, num_classes=None)), ERROR,
         "num_classes must be a positive whole number, got None", watch="run"),
    Case("checkpoint-negative-num-classes",
         lambda t, m: evaluate_argv(edited_checkpoint(t, num_classes=-3)), ERROR,
         "num_classes must be a positive whole number, got -3", watch="run"),
    Case("checkpoint-negative-step", lambda t, m: evaluate_argv(edited_checkpoint(t, step=-1)),
         ERROR, "step must be a whole number >= 0, got -1", watch="run"),
    Case("checkpoint-fractional-step", lambda t, m: evaluate_argv(edited_checkpoint(t, step=2.5)),
         ERROR, "step must be a whole number >= 0, got 2.5", watch="run"),
    Case("evaluate-classes-in-another-order",
         lambda t, m: evaluate_argv(edited_checkpoint(t, classes=CLASSES[::-1])), ERROR,
         "was trained with the classes in another order (truck, ship, horse, frog, ...)",
         watch="run"),
    Case("evaluate-other-classes",
         lambda t, m: evaluate_argv(edited_checkpoint(t, classes=[f"c{i}" for i in range(10)])),
         ERROR, "was trained on other classes than cifar10", watch="run"),
    # metrics files read by curves / loss.py
    Case("metrics-record-without-step", lambda t, m: ["curves", str(metrics_run(
        t, {"type": "train", "step": 1, "loss": 2.3}, {"type": "train", "loss": 2.2})),
        "--out", str(t / "plots")], ERROR, "metrics.jsonl record 2: a train record needs a whole "
         "step >= 1 and a number loss, got step None", watch="run"),
    Case("metrics-loss-not-a-number", lambda t, m: ["curves", str(metrics_run(
        t, {"type": "train", "step": 1, "loss": "low"})), "--out", str(t / "plots")], ERROR,
         "got step 1, loss 'low'", watch="run"),
    Case("metrics-line-not-an-object", lambda t, m: ["curves", str(file_with(
        t / "run" / "metrics.jsonl", b'{"type": "train", "step": 1, "loss": 2.3}\n[1, 2]\n')),
        "--out", str(t / "plots")], ERROR, "metrics.jsonl line 2 is JSON but not an object",
         watch="run"),
    Case("metrics-not-utf8", lambda t, m: ["curves", str(file_with(
        t / "run" / "metrics.jsonl", b'{"loss": "\xff"}\n')), "--out", str(t / "plots")], ERROR,
         "metrics.jsonl is not UTF-8 text", watch="run"),
    Case("log-loss-without-digits", lambda t, m: ["curves", str(file_with(
        t / "run" / "log.txt", b"step 2 loss .\nstep 3 loss -\n")), "--out", str(t / "plots")],
         ERROR, "log.txt holds no training-loss records", watch="run"),
    Case("curves-failed-comparison-keeps-the-plots", lambda t, m: (
        file_with(t / "run" / "plots" / "loss.png", b"mine"), ["curves", str(file_with(
            t / "a" / "log.txt", b"step 1 loss 2.0\nstep 2 loss 1.9\n")), "--baseline",
            str(file_with(t / "b" / "log.txt", b"step 5 loss 2.0\nstep 6 loss 1.9\n")),
            "--out", str(t / "run" / "plots")])[1], ERROR, "share no logged step", watch="run"),
    Case("curves-empty-baseline", lambda t, m: ["curves", str(metrics_run(
        t, {"type": "train", "step": 1, "loss": 2.3})), "--baseline", "", "--out",
        str(t / "plots")], ERROR, "--baseline is empty", watch="run"),
    Case("curves-one-run-twice", lambda t, m: ["curves", str(metrics_run(
        t, {"type": "train", "step": 1, "loss": 2.3})), str(t / "run" / ".." / "run"), "--out",
        str(t / "plots")], ERROR, "runs names one run twice ({tmp}/run and {tmp}/run/../run); "
        "give each run once", watch="run"),
    Case("write-over-a-folder", lambda t, m: call(
        atomic_write_text, folder_with_a_file(t / "run" / "report.md"), "text"), ERROR,
         "{tmp}/run/report.md: it is a folder where a file is needed", watch="run"),
    Case("curves-out-is-a-file", lambda t, m: (t.joinpath("f.txt").write_text("mine"), [
        "curves", str(metrics_run(t, {"type": "train", "step": 1, "loss": 2.3})),
        "--out", str(t / "f.txt")])[1], ERROR, "f.txt is a file; give a folder", watch="run"),
    # evaluate
    Case("evaluate-non-finite-outputs", lambda t, m: [
        "evaluate", "--device", "cpu", "--checkpoint", str(child_checkpoint(t, broken=True)),
        "--out", str(t / "eval")],
         1, "spnas: warning: the network's outputs are not finite (NaN or inf) on 100 of 100 images",
         watch="run", after=_valid_json_with_null_loss),
    # paths, settings files and the environment
    Case("one-class-folder", lambda t, m: load(kept_classes(t, "cat"), "folder"),
         ERROR, "holds one class folder (cat); a classifier needs two or more"),
    Case("save-path-is-a-file", lambda t, m: (file_with(t / "f.txt", b"mine"), train_argv(
        t, "--save_path", str(t / "f.txt")))[1], ERROR,
         "{tmp}/f.txt/a: a part of it is a file where a folder is needed"),
    Case("data-path-is-a-file", lambda t, m: ["train", "--data_path", str(file_with(
        t / "data", b"mine")), "--layers", "2", "--save_path", str(t / "run")], ERROR,
         "{tmp}/data: a file is there where a folder is needed"),
    Case("config-setting-null", lambda t, m: train_argv(t, "--config", str(file_with(
        t / "c.yaml", b"momentum: null\n"))), ERROR,
         "--momentum must be a number, got none (null)"),
    Case("config-not-utf8", lambda t, m: train_argv(t, "--config", str(file_with(
        t / "c.yaml", "lr: 0.1".encode("utf-16")))), ERROR, "c.yaml is not a UTF-8 text file"),
    Case("resume-config-json-not-a-mapping", lambda t, m: resume_from("[1, 2]", t), ERROR,
         "config.json is unreadable (it holds a list, not a mapping of settings)"),
    Case("resume-config-json-section-not-a-mapping",
         lambda t, m: resume_from('{"optim": [1, 2]}', t), ERROR,
         "config.json is unreadable (its optim section is not a mapping of settings)"),
    Case("resume-config-json-value-no-setting-takes", lambda t, m: (
        file_with(t / "run" / "a" / "config.json", b'{"optim": {"momentum": "abc"}}'),
        train_argv(t, "--resume"))[1], ERROR,
         "{tmp}/run/a/config.json: setting momentum must be a number, got 'abc'", watch="run"),
    Case("resume-metrics-line-not-json", lambda t, m: (
        main(train_argv(t)), file_with(t / "run" / "a" / "metrics.jsonl", b'{"type": "train"\n'),
        train_argv(t, "--resume", "--epochs", "2"))[2], ERROR,
         "{tmp}/run/a/metrics.jsonl line 1 is not JSON; it is not a metrics file spnas wrote; "
         "mend or delete that line", watch="run"),
    Case("save-path-name-too-long", lambda t, m: train_argv(t, "--save_path", str(t / ("x" * 300))),
         ERROR, "a name in it is too long"),
    Case("world-size-without-torchrun", lambda t, m: (without_torchrun(m, WORLD_SIZE="2"),
                                                      train_argv(t))[1], ERROR,
         "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not, so the processes"),
    Case("world-size-not-a-number", lambda t, m: (without_torchrun(m, WORLD_SIZE="two"),
                                                  train_argv(t))[1], ERROR,
         "WORLD_SIZE='two' is not a whole number"),
    Case("seed-beyond-64-bits", lambda t, m: train_argv(t, "--seed", str(2**64)), ERROR,
         f"--seed must be a whole number in {-2**63}..{2**63 - 1}, got {2**64}", watch=None,
         after=no_run_folder),
    Case("rank-without-world-size", lambda t, m: (without_torchrun(m, RANK="1"),
                                                  train_argv(t))[1], ERROR,
         "RANK=1 is set but WORLD_SIZE=1, so this process would be one of no group (ranks are "
         "0..0); unset RANK", watch=None, after=no_run_folder),
    Case("import-reference-not-a-torch-file", lambda t, m: [
        "import-reference", str(file_with(t / "hw.pth", b"hello\n")), "--out", str(t / "x.pt")],
         ERROR, "hw.pth is not a readable torch file (not a file torch.save wrote)"),
    Case("import-reference-key-not-a-name", lambda t, m: (torch.save(
        {1: torch.zeros(1)}, t / "s" / "k.pth") if (t / "s").mkdir() is None else None, [
        "import-reference", str(t / "s" / "k.pth"), "--out", str(t / "x.pt")])[1], ERROR,
         "k.pth is not a state_dict: its key 1 is not text (a parameter name)", watch="s"),
    Case("import-reference-src-is-a-folder", lambda t, m: [
        "import-reference", str(folder_with_a_file(t / "s" / "o")), "--out", str(t / "x.pt")],
         ERROR, "{tmp}/s/o is a folder; give the .pth file", watch="s"),
    Case("pipeline-done-json-damaged", lambda t, m: call(
        _read_done, file_with(t / "s" / "done.json", b'{"seconds": 1}')), ERROR,
         "done.json is damaged (KeyError); delete it and --resume", watch="s"),
    Case("pipeline-done-json-not-utf8", lambda t, m: call(
        _read_done, file_with(t / "s" / "done.json", b"\xff\xfe")), ERROR,
         "done.json is damaged (UnicodeDecodeError)", watch="s"),
    Case("search-json-not-a-mapping", lambda t, m: (
        file_with(t / "s" / "candidates.jsonl", b"{}\n"), file_with(t / "s" / "search.json", b"[1]"),
        call(prepare_out_dir, t / "s", {}, True))[2], ERROR,
         "search.json is unreadable (TypeError", watch="s"),
    Case("search-into-a-training-run", lambda t, m: (
        file_with(t / "s" / "config.json", b"{}"), file_with(t / "s" / "last.pt", b"x"),
        call(prepare_out_dir, t / "s", {}, False))[2], ERROR,
         "{tmp}/s holds a training run (last.pt, config.json); give the search a folder of its "
         "own with --out", watch="s"),
    Case("search-record-accuracy-not-a-number", lambda t, m: call(read_record, file_with(
        t / "s" / "candidates.jsonl", b'{"arch": "k3 x", "val_acc": "x"}\n')), ERROR,
         "candidates.jsonl record 1 lacks its arch text or a number (val_acc", watch="s"),
    Case("evaluate-bytes-that-are-no-checkpoint", lambda t, m: [
        "evaluate", "--checkpoint", str(file_with(t / "s" / "best.pt", b"hello\n"))], ERROR,
         "best.pt is corrupt or truncated (not a file torch.save wrote)", watch="s"),
    Case("evaluate-an-arch-file", lambda t, m: [
        "evaluate", "--checkpoint", str(file_with(t / "s" / "best_arch.json", b"{}"))], ERROR,
         "best_arch.json is a text file, not a checkpoint", watch="s"),
    Case("evaluate-an-exported-torchscript-file", lambda t, m: [
        "evaluate", "--checkpoint", str(torchscript_file(t / "s" / "net.torchscript.pt"))], ERROR,
         "net.torchscript.pt is an exported TorchScript network, not a checkpoint; it keeps no "
         "settings to rebuild or train it from: give the training run's best.pt", watch="s"),
    Case("finetune-from-an-onnx-file", lambda t, m: [
        "finetune", "--checkpoint", str(file_with(t / "s" / "net.onnx", b"\x08\x07")),
        "--data_path", str(t / "data")], ERROR,
         "net.onnx is an exported ONNX network, not a checkpoint", watch="s"),
    Case("retrain-arch-is-a-folder", lambda t, m: (file_with(t / "s" / "best_arch.json", b"{}"), [
        "retrain", "--arch", str(t / "s"), "--data_path", str(t / "data")])[1], ERROR,
         "--arch {tmp}/s is a folder; give an arch file in it (best_arch.json)", watch="s"),
    Case("evaluate-data-with-other-classes", lambda t, m: [
        "evaluate", "--checkpoint", str(child_checkpoint(t)), "--data_path",
        str(kept_classes(t / "other", "cat", "dog")), "--dataset", "folder",
        "--out", str(t / "eval")], ERROR, "classifies 10 classes, but folder under",
         watch="run"),
]


def torchscript_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated; spnas export still writes it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every file and folder under ``folder`` (hidden ones too), with a hash of its bytes."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(folder.rglob("*"))}


def run(what) -> int:
    if callable(what):
        return run_guarded(lambda _: what(), None)
    return main(what)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    what = case.setup(tmp_path, monkeypatch)
    watched = tmp_path / case.watch if case.watch else None
    before = snapshot(watched) if watched else None
    capsys.readouterr()
    status = run(what)
    out, err = capsys.readouterr()
    message = case.message.format(tmp=tmp_path)
    if case.status == 0:
        assert status == 0 and message in out, err
    else:
        lines = err.strip().splitlines()
        assert status == case.status and len(lines) == 1, err
        prefix = "spnas: error: " if case.status == 2 else "spnas: "
        assert lines[0].startswith(prefix) and message in lines[0], lines[0]
    if watched:
        assert snapshot(watched) == before, f"{watched} changed"
    if case.after:
        case.after(tmp_path)


def test_the_protocol_5_batches_read_as_the_protocol_2_ones(tmp_path):
    ref = load_dataset("cifar10", write_official(tmp_path / "ref"), download_ok=False)
    ds = load_dataset("cifar10", pickles(tmp_path, 5), download_ok=False)
    assert torch.equal(ds.train_x, ref.train_x) and torch.equal(ds.test_y, ref.test_y)
    assert ds.classes == ref.classes


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch_size", "abc"], "spnas train: error: argument --batch_size: invalid int "
                                       "value: 'abc'; see spnas train --help"),
    (["search", "--max_flops", "80X"], "spnas search: error: argument --max_flops:"),
    (["evaluate", "--split", "banana"], "spnas evaluate: error: argument --split: invalid choice"),
    (["train", "--epoch", "3"], "spnas train: error: unrecognized arguments: --epoch 3; see "
                                "spnas train --help"),
    (["trian"], "spnas: error: argument COMMAND: invalid choice: 'trian'"),
    ([], "spnas: error: the following arguments are required: COMMAND; see spnas --help"),
])
def test_a_bad_flag_is_one_line_naming_the_help_to_read(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_the_seed_scripts_bad_flags_are_one_line(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "run_scripts"))
    from argument import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--lr", "1e"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --lr: invalid float value: '1e'" in err[0], err


def test_a_closed_stdout_ends_the_command_quietly():
    """``spnas ... | head``: the reader went away; no traceback, and the shell's SIGPIPE status."""
    import subprocess
    import sys
    code = ("import sys\nfrom spnas.cli import run_guarded\n"
            "def fn(_):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "sys.exit(run_guarded(fn, None))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parents[1])
    assert (r.returncode, r.stderr) == (141, ""), r.stderr


def test_running_out_of_memory_is_one_line_saying_what_to_shrink(capsys):
    def too_big(_):
        torch.empty(10**13)  # the CPU allocator refuses 40 TB at once

    def cuda_full(_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 "
                                     "has a total capacity of 139.81 GiB ...")

    for fn, where in ((too_big, "memory: 37252.9 GiB asked for"),
                      (cuda_full, "GPU memory: 20 GiB asked for")):
        assert run_guarded(fn, None) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"spnas: error: out of {where}; "
                                                       "make the work smaller (--batch_size"), lines

    def bug(_):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # a bug keeps its traceback
        run_guarded(bug, None)


def test_an_image_size_for_official_cifar_batches_is_refused(fake_cifar, tmp_path, capsys):
    argv = ["train", "--data_path", str(fake_cifar), "--image_size", "64", "--layers", "4",
            "--epochs", "1", "--num_steps", "1", "--batch_size", "8", "--val_size", "10",
            "--save_path", str(tmp_path / "runs"), "--no-download"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image_size 64 resizes image folders, but cifar10 under" in err[0]
    assert "is the official 32x32 batches; drop --image_size" in err[0]
    assert main(argv[:3] + argv[5:]) == 0  # 32, the default: the batches as they are


@pytest.mark.parametrize("flags, side", [([], 32), (["--resize"], 224)])
def test_a_cutout_larger_than_the_training_images_is_refused(fake_cifar, tmp_path, capsys,
                                                            flags, side):
    argv = ["train", "--data_path", str(fake_cifar), "--layers", "4", "--epochs", "1",
            "--num_steps", "1", "--batch_size", "8", "--val_size", "10", "--no-download",
            "--save_path", str(tmp_path / "runs"), "--cutout", *flags]
    assert main([*argv, "--cutout_length", str(side + 1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--cutout_length {side + 1} is larger than the {side}x{side} " \
        f"training images (it would blank most of each one); give {side} or less" in err[0]
    if not flags:  # the whole side is fine (224 is too slow to train here)
        assert main([*argv, "--cutout_length", str(side)]) == 0


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "the disk is full while writing /r/last.pt (x); free space or write elsewhere"),
    (errno.EROFS, "the file system is read-only while writing /r/last.pt (x); write elsewhere, or "
                  "let this user write there"),
    (errno.EACCES, "permission denied while writing /r/last.pt (x); write elsewhere, or let"),
])
def test_a_write_that_fails_says_how_to_fix_that_failure(capsys, code, fix):
    def write(_):
        raise OSError(code, "x", "/r/last.pt")

    assert run_guarded(write, None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spnas: error: {fix}")
    assert err[0].endswith("(--save_path, --out); what was written before, checkpoints among "
                           "them, is kept")
