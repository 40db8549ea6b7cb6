"""Shared fixtures: small datasets made at test time, and the real CIFAR-10 copy when present."""
from __future__ import annotations

import os

# Before torch loads: the tests (and their subprocesses) run on the CPU, where the bit-exact ones hold.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spnas.runtime import torch_threads

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def fake_images(n: int, seed: int, num_classes: int = 10):
    """Random uint8 images whose mean colour depends on the label (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    base = (y[:, None, None, None] * 23 % 256).astype(np.int16)
    x = np.clip(base + rng.integers(-40, 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
    return x, y


def write_official(root: Path, n_train: int = 250, n_test: int = 100, seed: int = 0) -> Path:
    """An official-layout cifar-10-batches-py folder (5 train batches + test) of random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = fake_images(n_train, seed)
    per = n_train // 5
    for i in range(5):
        sl = slice(i * per, (i + 1) * per)
        d = {b"batch_label": b"training batch", b"labels": y[sl].tolist(),
             b"data": x[sl].reshape(per, 3072), b"filenames": [b"x"] * per}
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(d, f, protocol=2)
    xt, yt = fake_images(n_test, seed + 1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": yt.tolist(), b"data": xt.reshape(n_test, 3072)}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f, protocol=2)
    return folder


def write_image_folders(root: Path, n_train: int = 60, n_test: int = 30, size: int = 32) -> Path:
    from PIL import Image
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = fake_images(n, seed)
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(img.transpose(1, 2, 0))
            if size != 32:
                im = im.resize((size, size))
            im.save(d / f"{i:04d}.png")
    return root


def cli_argv(command: str, flags: dict) -> list[str]:
    """``spnas`` arguments from {flag: value}: None = a bare switch, False = left out."""
    argv = [command]
    for k, v in flags.items():
        if v is not False:
            argv += [k] if v is None else [k, str(v)]
    return argv


@pytest.fixture
def fake_cifar(tmp_path) -> Path:
    """A data folder holding a small official-layout CIFAR-10 (250 train, 100 test images)."""
    write_official(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory) -> Path:
    """The shared JPEG copy of CIFAR-10 in the official layout (made once per session)."""
    env = os.environ.get("SPNAS_CIFAR10")
    if env and (Path(env) / "cifar-10-batches-py").is_dir():
        return Path(env)
    if not (SHARED / "make_cifar10.py").is_file():
        pytest.skip("the shared CIFAR-10 copy is not available")
    out = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(SHARED / "make_cifar10.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module of small-tensor tests: as fast, and immune to the
    OpenMP stalls of a busy shared machine (a 2-thread BatchNorm on a small batch took
    10-14 ms there, 0.4 ms on one thread). Use with ``pytest.mark.usefixtures``."""
    with torch_threads(1):
        yield
