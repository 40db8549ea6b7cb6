"""CIFAR-10/100 and image folders, read into uint8 tensors; the train/val split.

Accepted layouts under ``--data_path DIR`` (or DIR itself, or one folder below it):

* the official tarball ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``,
  unpacked next to itself with every member checked to stay inside DIR. It is
  unpacked into a hidden temporary folder beside the target and renamed into
  place when complete, so a failed unpack (a full disk) leaves no half folder;
* the unpacked folder ``cifar-10-batches-py/`` / ``cifar-100-python/``, whose
  pickles are read by an unpickler that admits only numpy arrays (pickle
  protocols 2-5), so a crafted file cannot run code;
* an image-folder layout ``train/<class>/*`` and ``test/<class>/*``: both
  splits must hold the same class folders, each with at least one image
  (hidden folders, ``.name``, are not classes).

With none present, the official tarball is downloaded (progress bar, MD5
checked). Offline, the error says which file to put where.
"""
from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spnas.data.archives import download, safe_extract
from spnas.errors import SpnasError


@dataclass(frozen=True)
class Archive:
    """Where one dataset comes from and how its official batches are named."""

    tarball: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


ARCHIVES = {
    "cifar10": Archive("cifar-10-python.tar.gz", "cifar-10-batches-py",
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "batches.meta", "labels", "label_names"),
    "cifar100": Archive("cifar-100-python.tar.gz", "cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85",
                       ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}
DATASETS = (*ARCHIVES, "folder")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


@dataclass
class Dataset:
    """A whole dataset as uint8 images [N, 3, H, W] and int64 labels, on the CPU."""

    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---- reading the official pickles safely ------------------------------------------
def _numpy_core():
    return getattr(np, "_core", None) or np.core


def _numpy_reconstruct():
    return _numpy_core().multiarray._reconstruct


def _numpy_frombuffer():
    """What numpy's protocol-5 pickles call: ``frombuffer(buf, dtype).reshape(shape, order)``."""
    return _numpy_core().numeric._frombuffer


class _Refused(pickle.UnpicklingError):
    """A global the CIFAR batches never hold."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1":
        raise _Refused(f"refusing to decode with codec {encoding!r}")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR batches hold: dicts, lists, bytes, numpy arrays."""

    def find_class(self, module: str, name: str):
        allowed = {("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
                   # protocol 5 (numpy 1.x and 2.x spellings); the buffer is in-band
                   ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
                   ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
                   ("numpy", "ndarray"): lambda: np.ndarray,
                   ("numpy", "dtype"): lambda: np.dtype,
                   # protocol-2 pickles written by Python 3 spell bytes this way
                   ("_codecs", "encode"): lambda: _latin1_encode}
        if (module, name) not in allowed:
            raise _Refused(f"refusing to load {module}.{name}: a CIFAR batch "
                                         "holds only numpy arrays, lists and strings")
        return allowed[(module, name)]()


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # no out-of-band buffers: a file holds its arrays in-band or not at all
            obj = _BatchUnpickler(f, encoding="bytes", buffers=()).load()
    except FileNotFoundError:
        raise SpnasError(f"{path} is missing; the folder {path.parent} is incomplete: "
                         "unpack the official tarball again") from None
    except _Refused as e:
        raise SpnasError(f"{path}: {e}") from None
    except pickle.UnpicklingError as e:
        if "out-of-band" not in str(e):
            raise SpnasError(f"{path} is corrupt or truncated ({e}); delete it and unpack or "
                             "download the dataset again") from None
        raise SpnasError(f"{path} was pickled with out-of-band buffers (protocol 5 with a "
                         "buffer_callback), which the file does not hold; pickle it again "
                         "without buffer_callback") from None
    except Exception as e:  # truncated or garbled file: EOFError, ValueError, ...
        raise SpnasError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}); "
                         "delete it and unpack or download the dataset again") from None
    if not isinstance(obj, dict):
        raise SpnasError(f"{path} is not a CIFAR batch (it holds a {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str):
    xs, ys = [], []
    for name in files:
        d = _load_pickle(folder / name)
        data, labels = d.get("data"), d.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3072 or labels is None or len(labels) != len(data):
            raise SpnasError(f"{folder / name} does not hold uint8 [N, 3072] images with "
                             f"{label_key!r}; it is not an official CIFAR batch")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_official(name: str, folder: Path) -> Dataset:
    src = ARCHIVES[name]
    meta = _load_pickle(folder / src.meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(src.names_key, [])]
    train_x, train_y = _read_batches(folder, src.train_files, src.label_key)
    test_x, test_y = _read_batches(folder, src.test_files, src.label_key)
    for y in (train_y, test_y):
        if y.numel() and (y.min() < 0 or y.max() >= len(classes)):
            raise SpnasError(f"{folder}: labels outside 0..{len(classes) - 1}; the files are damaged")
    return Dataset(name, classes, train_x, train_y, test_x, test_y)


# ---- image folders -----------------------------------------------------------------
def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:  # may trip PIL's decompression-bomb guard
            im = _to_rgb(im, path)
            if im.size != (size, size):
                scale = size / min(im.size)
                w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
                im = im.resize((w, h), Image.Resampling.BILINEAR)
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # the warning arrives here as an exception only under -W error
        raise SpnasError(f"image {path} is too large to decode safely ({e}); "
                         "shrink it or remove it from the folder") from None
    except OSError as e:
        raise SpnasError(f"cannot read image {path}: {e}; replace it or remove it from the "
                         "folder") from None


def _to_rgb(im, path: Path):
    """``im`` as 8-bit RGB. 16-bit grayscale (PIL's modes I;16* and I, as PNG scans open)
    is scaled to 8 bits (PIL's own convert clips it at 255: white images); float images have
    no known range and are refused."""
    from PIL import Image
    if im.mode.startswith("I"):
        scaled = np.asarray(im, dtype=np.int64).clip(0, 65535) / 257
        im = Image.fromarray(np.rint(scaled).astype(np.uint8))
    elif im.mode == "F":
        raise SpnasError(f"image {path} holds floating-point pixels (PIL mode F), which have "
                         "no known range; save it as an 8- or 16-bit image")
    return im.convert("RGB")


def _names(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")


def _class_folders(root: Path) -> list[str]:
    """The class folders of one split, sorted; hidden folders (``.name``) are not classes."""
    if not root.is_dir():
        raise SpnasError(f"{root} is not a folder; image folders need train/<class>/ and "
                         "test/<class>/")
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """The image files of a class folder, its subfolders' too (as torchvision's ImageFolder
    reads them), hidden folders left out; sorted, so the order is the same on every machine."""
    found, seen = [], set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # reached again through a link (maybe up the tree): read once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / n for n in sorted(names)
                  if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def _read_split_folder(root: Path, classes: list[str] | None, size: int):
    found = _class_folders(root)
    if classes is not None and found != classes:
        only_here, only_train = set(found) - set(classes), set(classes) - set(found)
        what = "; ".join(([f"only {root.name}/ has {_names(only_here)}"] if only_here else [])
                         + ([f"only train/ has {_names(only_train)}"] if only_train else []))
        raise SpnasError(f"{root.parent}: train/ and {root.name}/ must hold the same class "
                         f"folders, but {what}; add or remove class folders so they match")
    if not found:
        raise SpnasError(f"{root} holds no class folders; put each class's images in "
                         f"{root}/<class>/")
    if len(found) == 1:
        raise SpnasError(f"{root} holds one class folder ({found[0]}); a classifier needs two "
                         f"or more: put each class's images in {root}/<class>/")
    files, labels = [], []
    for label, cls in enumerate(found):
        named = _images_under(root / cls)
        dead = [f for f in named if not f.is_file() and f.is_symlink() and not f.exists()]
        if dead:  # an image the user meant to train on is missing: not skipped in silence
            raise SpnasError(f"{len(dead)} image link(s) in {root / cls} point nowhere (e.g. "
                             f"{dead[0].name} -> {os.readlink(dead[0])}); put the images back "
                             "there, or remove the links")
        mine = [f for f in named if f.is_file()]
        if not mine and classes is None:  # a train class with no images: one class too many
            raise SpnasError(f"class folder {root / cls} holds no images "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add its images or "
                             "remove the folder")
        files += mine
        labels += [label] * len(mine)
    if not files:
        raise SpnasError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                         "in its class folders")
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda p: _decode(p, size), files, chunksize=256))
    return found, torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def _read_image_folders(name: str, root: Path, size: int) -> Dataset:
    classes, train_x, train_y = _read_split_folder(root / "train", None, size)
    _, test_x, test_y = _read_split_folder(root / "test", classes, size)
    return Dataset(name, classes, train_x, train_y, test_x, test_y)




# ---- finding a dataset -------------------------------------------------------------
def _candidates(root: Path) -> list[Path]:
    """``root`` and the folders one below it; hidden ones (an unpack under way) are skipped."""
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    return [root, *subs]


def _check_complete(name: str, folder: Path) -> None:
    """An official folder lacking batches, with the tarball beside it: say how to redo it."""
    src = ARCHIVES[name]
    missing = [f for f in (src.meta_file, *src.train_files, *src.test_files)
               if not (folder / f).is_file()]
    tarball = folder.parent / src.tarball
    if missing and tarball.is_file():
        raise SpnasError(f"{folder} is incomplete (no {', '.join(missing)}: an unpack that did "
                         f"not finish?); delete that folder and run again, and {tarball} "
                         "will be unpacked afresh")


def _find(name: str, root: Path) -> tuple[str, Path] | None:
    src = ARCHIVES.get(name)
    for d in _candidates(root):
        if src and (d / src.train_files[0]).is_file() and d.name == src.folder:
            return "official", d
        if src and (d / src.folder / src.train_files[0]).is_file():
            return "official", d / src.folder
        if (d / "train").is_dir() and (d / "test").is_dir():
            return "folder", d
        if src and (d / src.tarball).is_file():
            return "tarball", d / src.tarball
    if src and root.is_file() and root.name == src.tarball:
        return "tarball", root
    return None


def load_dataset(name: str, data_path: str | Path, *, download_ok: bool = True,
                 image_size: int = 32, url: str | None = None) -> Dataset:
    """Read ``name`` from ``data_path`` in any accepted layout, downloading if allowed."""
    if name not in DATASETS:
        raise SpnasError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(data_path).expanduser()
    found = _find(name, root)
    if found is None and name in ARCHIVES and download_ok:
        src = ARCHIVES[name]
        tarball = (root if root.suffix != ".gz" else root.parent) / src.tarball
        try:
            download(url or src.url, tarball, src.md5)
        except ConnectionError as e:
            raise SpnasError(f"{name} is not under {root} and could not be downloaded ({e}); "
                             f"put {src.tarball} (from {src.url}) or its unpacked {src.folder}/ "
                             f"folder in {root}") from None
        found = ("tarball", tarball)
    if found is None:
        what = (f"{ARCHIVES[name].tarball}, {ARCHIVES[name].folder}/ or " if name in ARCHIVES else "")
        raise SpnasError(f"no {name} data under {root}: expected {what}train/<class>/ and "
                         "test/<class>/ image folders")
    kind, path = found
    if kind == "tarball":
        src = ARCHIVES[name]
        safe_extract(path, path.parent, tuple(f"{src.folder}/{f}" for f in
                                              (src.meta_file, *src.train_files, *src.test_files)))
        kind, path = "official", path.parent / src.folder
    if kind == "official":
        if image_size != 32:  # the batches are 32x32 whatever the setting says
            raise SpnasError(f"--image_size {image_size} resizes image folders, but {name} "
                             f"under {root} is the official 32x32 batches; drop --image_size "
                             "(or --resize to train at 224)")
        _check_complete(name, path)
        return _read_official(name, path)
    return _read_image_folders(name, path, image_size)


# ---- the held-out validation split ----------------------------------------------------
@dataclass
class Splits:
    """Train, validation and test tensors. ``val_is_test``: no split was held out.
    ``test`` is None once a stage has dropped it (a search never reads it)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None
    classes: list[str]
    val_is_test: bool

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.test is None:
            raise RuntimeError("the test split was dropped (a search never reads it)")
        return self.test


def stratified_split(labels: torch.Tensor, val_size: int, seed: int):
    """Indices (train, val): ``val_size`` images, each class in proportion, seeded."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise SpnasError(f"--val_size must be 0..{n - 1} (the training set has {n} images)")
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * val_size / n
    take = quota.floor().long()
    rest = val_size - int(take.sum())
    if rest:  # largest remainders get the leftover images
        take[torch.argsort(quota - take, descending=True, stable=True)[:rest]] += 1
    val_idx = []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        val_idx.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    val = torch.sort(torch.cat(val_idx)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def make_splits(ds: Dataset, val_size: int, seed: int) -> Splits:
    """Hold ``val_size`` training images out for validation; 0 validates on the test set."""
    test = (ds.test_x, ds.test_y)
    if val_size == 0:
        return Splits((ds.train_x, ds.train_y), test, test, ds.classes, True)
    tr, va = stratified_split(ds.train_y, val_size, seed)
    return Splits((ds.train_x[tr], ds.train_y[tr]), (ds.train_x[va], ds.train_y[va]),
                  test, ds.classes, False)

