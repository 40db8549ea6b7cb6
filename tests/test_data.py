import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from conftest import write_image_folders, write_official

from spnas.data.archives import download, md5sum, safe_extract
from spnas.data.datasets import ARCHIVES, Dataset, load_dataset, make_splits, stratified_split
from spnas.errors import SpnasError


def _check(ds: Dataset, n_train: int, n_test: int):
    assert ds.train_x.shape == (n_train, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (n_test, 3, 32, 32)
    assert ds.train_y.dtype == torch.int64 and ds.num_classes == 10
    assert set(ds.train_y.tolist()) == set(range(10))


def test_official_folder_under_the_path_or_the_path_itself(tmp_path):
    folder = write_official(tmp_path)
    _check(load_dataset("cifar10", tmp_path, download_ok=False), 250, 100)
    _check(load_dataset("cifar10", folder, download_ok=False), 250, 100)
    assert load_dataset("cifar10", tmp_path, download_ok=False).classes[0] == "airplane"


def test_official_folder_one_level_down(tmp_path):
    write_official(tmp_path / "teco-data")
    _check(load_dataset("cifar10", tmp_path, download_ok=False), 250, 100)


def test_tarball_is_unpacked_and_read(tmp_path):
    src = write_official(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", data, download_ok=False)
    _check(ds, 250, 100)
    assert (data / "cifar-10-batches-py" / "data_batch_1").is_file()
    ref = load_dataset("cifar10", src, download_ok=False)
    assert torch.equal(ds.train_x, ref.train_x) and torch.equal(ds.test_y, ref.test_y)


def test_image_folders(tmp_path):
    write_image_folders(tmp_path, 60, 30)
    ds = load_dataset("cifar10", tmp_path, download_ok=False)
    _check(ds, 60, 30)
    assert ds.classes == sorted(ds.classes)


def test_images_in_subfolders_of_a_class_folder_are_its_own(tmp_path):
    write_image_folders(tmp_path, 20, 10)
    cat = tmp_path / "train" / sorted(p.name for p in (tmp_path / "train").iterdir())[0]
    before = load_dataset("folder", tmp_path, download_ok=False)
    inner = cat / "more" / "deeper"
    inner.mkdir(parents=True)
    for f in sorted(cat.glob("*.png"))[:2]:
        f.rename(inner / f.name)
    (cat / ".cache").mkdir()  # hidden: not read
    (cat / ".cache" / "x.png").write_bytes(b"not an image")
    (cat / "more" / "loop").symlink_to(cat, target_is_directory=True)  # read once
    ds = load_dataset("folder", tmp_path, download_ok=False)
    assert len(ds.train_y) == len(before.train_y)
    assert torch.equal(ds.train_y.bincount(), before.train_y.bincount())
    assert sorted(map(bytes, ds.train_x.numpy())) == sorted(map(bytes, before.train_x.numpy()))


def test_image_folders_of_other_sizes_are_resized(tmp_path):
    write_image_folders(tmp_path, 20, 10, size=48)
    ds = load_dataset("folder", tmp_path, download_ok=False, image_size=32)
    assert ds.train_x.shape == (20, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_cannot_run_code(tmp_path, monkeypatch):
    folder = write_official(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpnasError, match="refusing to load (posix|os).system"):
        load_dataset("cifar10", tmp_path, download_ok=False)
    assert not (tmp_path / "pwned").exists()


def test_truncated_batch_is_a_clear_error(tmp_path):
    folder = write_official(tmp_path)
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SpnasError, match="data_batch_2 is corrupt or truncated"):
        load_dataset("cifar10", tmp_path, download_ok=False)


def test_wrong_content_is_a_clear_error(tmp_path):
    folder = write_official(tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 5), np.float32), b"labels": [0, 1, 2]}, f)
    with pytest.raises(SpnasError, match="not an official CIFAR batch"):
        load_dataset("cifar10", tmp_path, download_ok=False)


def _tar_with(path, name, data=b"x", kind=tarfile.REGTYPE, link=""):
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
        t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name, kind, link, message", [
    ("../escaped.txt", tarfile.REGTYPE, "", "would land outside"),
    ("/tmp/spnas-abs.txt", tarfile.REGTYPE, "", "would land outside"),
    ("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
])
def test_tar_members_escaping_the_folder_are_refused(tmp_path, name, kind, link, message):
    dest = tmp_path / "data"
    dest.mkdir()
    _tar_with(dest / "cifar-10-python.tar.gz", name, kind=kind, link=link)
    with pytest.raises(SpnasError, match=message):
        load_dataset("cifar10", dest, download_ok=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not os.path.lexists(dest / "cifar-10-batches-py" / "link")


def test_truncated_tarball_is_a_clear_error(tmp_path):
    src = write_official(tmp_path / "src")
    tgz = tmp_path / "t.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    blob = tgz.read_bytes()
    tgz.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(SpnasError, match="corrupt or truncated"):
        safe_extract(tgz, tmp_path / "out")


def test_download_checks_md5_and_reads_the_result(tmp_path):
    src = write_official(tmp_path / "src")
    served = tmp_path / "served.tar.gz"
    with tarfile.open(served, "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    data = tmp_path / "data"
    with pytest.raises(SpnasError, match="has MD5 .* expected 0+"):
        download(served.as_uri(), data / "deeper" / "cifar-10-python.tar.gz", "0" * 32)
    assert not data.exists()  # the damaged download is not left behind, nor the folders it made
    download(served.as_uri(), data / "cifar-10-python.tar.gz", md5sum(served))
    assert md5sum(data / "cifar-10-python.tar.gz") == md5sum(served)


def test_download_of_missing_data_then_load(tmp_path, monkeypatch):
    src = write_official(tmp_path / "src")
    served = tmp_path / "served.tar.gz"
    with tarfile.open(served, "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    patched = ARCHIVES["cifar10"].__class__(**{**ARCHIVES["cifar10"].__dict__, "md5": md5sum(served)})
    monkeypatch.setitem(ARCHIVES, "cifar10", patched)
    ds = load_dataset("cifar10", tmp_path / "data", url=served.as_uri())
    _check(ds, 250, 100)


def test_offline_says_which_file_to_put_where(tmp_path):
    with pytest.raises(SpnasError) as e:
        load_dataset("cifar10", tmp_path / "data", url=(tmp_path / "nothing.tar.gz").as_uri())
    msg = str(e.value)
    assert "could not be downloaded" in msg and "cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "data") in msg and "\n" not in msg
    assert not (tmp_path / "data").exists()  # no empty folder left where none was


def test_no_data_and_no_download(tmp_path):
    with pytest.raises(SpnasError, match="no cifar100 data under"):
        load_dataset("cifar100", tmp_path, download_ok=False)


def test_split_is_disjoint_stratified_and_seeded():
    labels = torch.arange(1000) % 10
    labels[:100] = 3  # an unbalanced class: 190 of 1000 are class 3
    tr, va = stratified_split(labels, 200, seed=5)
    assert len(va) == 200 and len(tr) == 800
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    counts = torch.bincount(labels[va], minlength=10)
    assert counts[3] == 38 and (counts[[i for i in range(10) if i != 3]] == 18).all()
    assert torch.equal(stratified_split(labels, 200, seed=5)[1], va)
    assert not torch.equal(stratified_split(labels, 200, seed=6)[1], va)


def test_splits_hold_out_validation_or_use_test(fake_cifar):
    ds = load_dataset("cifar10", fake_cifar, download_ok=False)
    s = make_splits(ds, 50, seed=0)
    assert len(s.train[0]) == 200 and len(s.val[0]) == 50 and not s.val_is_test
    s0 = make_splits(ds, 0, seed=0)
    assert s0.val_is_test and len(s0.train[0]) == 250 and s0.val[0] is ds.test_x
    with pytest.raises(SpnasError, match="--val_size must be"):
        make_splits(ds, 250, seed=0)


def test_real_cifar10_copy(real_cifar):
    ds = load_dataset("cifar10", real_cifar, download_ok=False)
    _check(ds, 50000, 10000)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10


def test_a_16_bit_grayscale_image_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    from PIL import Image

    from spnas.data.datasets import _decode
    from spnas.errors import SpnasError
    gray8 = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "scan16.png")
    with Image.open(tmp_path / "scan16.png") as im:
        assert im.mode.startswith("I")  # what a 16-bit PNG opens as
    got = _decode(tmp_path / "scan16.png", 8)
    assert got.shape == (3, 8, 8) and (got == gray8).all()
    Image.fromarray(gray8.astype(np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(SpnasError, match="floating-point pixels"):
        _decode(tmp_path / "float.tiff", 8)
