"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

A checkpoint is a dict of plain data and tensors::

    format      "spnas-1"
    kind        "supernet" | "child" | "superkernel"
    space       SpaceSpec as a dict;  arch: arch string or None
    num_classes int;  model_args: constructor kwargs (e.g. {"dropout": 0.2})
    model       state_dict of the network the run ships (its EMA when it kept one)
    train_model state_dict of the trained weights when ``model`` is their EMA, else None
    optimizer   state_dict or None
    step        the next optimizer step to run;  epoch: the epoch it belongs to
    config      the run's resolved config (JSON-able dict)
    rng         {"seed": run seed, "torch": CPU RNG state, "cuda": [states]}
    metrics     e.g. {"best_val_acc": ..., "val_acc": ...};  extra: stage-specific

It is written to a temporary file in the same folder (``.<name>.XXXXXXXX.tmp``),
flushed to disk and renamed over the target, so a kill at any moment leaves the
previous file whole; ``remove_stale_temp_files`` clears what such a kill leaves.
Loading checks every member's CRC-32 first: torch.load does not, and would take
flipped bytes inside a tensor without complaint.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import TypeGuard

import torch
from torch import nn

from spnas.arch import Arch, SpaceSpec
from spnas.errors import SpnasError
from spnas.files import atomic_write
from spnas.spaces import Supernet, build_child, build_supernet
from spnas.spaces.common import ChildNet

FORMAT = "spnas-1"
KINDS = ("supernet", "child", "superkernel")
# what to do with a checkpoint a command does not take
KIND_HINT = {"supernet": " (search it with spnas search, or give finetune --arch to take a "
                         "path of it)",
             "superkernel": " (retrain its arch.json with spnas retrain --arch)",
             "child": " (a trained network: evaluate, export or finetune it)"}


# What torch.load raises on a file it cannot read: a damaged or truncated zip, a stray
# pickle, or bytes that are no pickle at all (these fail inside the unpickler, e.g. KeyError).
_NOT_A_PICKLE = (KeyError, AttributeError, IndexError)
UNREADABLE = (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError,
              OSError, *_NOT_A_PICKLE)


def unreadable_reason(e: BaseException) -> str:
    """One line saying why torch.load (or the CRC check) could not read a file (``UNREADABLE``)."""
    if isinstance(e, _NOT_A_PICKLE):
        return "not a file torch.save wrote"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_checkpoint(path: str | Path, payload: dict) -> None:
    missing = {"kind", "space", "num_classes", "model"} - payload.keys()
    if missing:
        raise ValueError(f"checkpoint payload lacks {sorted(missing)}")
    atomic_write(path, lambda f: _torch_save({"format": FORMAT, **payload}, f))


def _torch_save(obj: dict, f) -> None:
    """``torch.save``, raising the ``OSError`` of a failed write (ENOSPC...) as itself.

    When a write fails, torch's zip writer still writes its end record on the way out and
    that raises ``RuntimeError("[enforce fail at inline_container.cc] unexpected pos")``,
    hiding the ``OSError`` as its ``__context__``. Other RuntimeErrors pass unchanged.
    """
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise


def load_checkpoint(path: str | Path, kinds: tuple[str, ...] = KINDS) -> dict:
    """Load and check a checkpoint; any problem is one clear ``SpnasError``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not path.is_file():
        raise SpnasError(f"checkpoint {path} not found; give a .pt file or a run folder "
                         "that holds best.pt or last.pt")
    if path.suffix in (".json", ".jsonl", ".yaml", ".yml"):
        raise SpnasError(f"{path} is a text file, not a checkpoint; give a .pt file or a run "
                         "folder (an arch file from a search trains with spnas retrain --arch)")
    if path.suffix == ".onnx":
        raise SpnasError(f"{path} is an exported ONNX network, not a checkpoint; {EXPORTED_HINT}")
    try:
        _check_crcs(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        first = unreadable_reason(e).split(". ")[0][:160]
        raise SpnasError(f"checkpoint {path} is corrupt or truncated ({first}); "
                         "use another one (a run folder keeps last.pt and best.pt; to resume "
                         "from best.pt, copy it over last.pt)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SpnasError(f"{path} is not an spnas checkpoint (format {FORMAT} expected)")
    if ckpt.get("kind") not in kinds:
        raise SpnasError(f"{path} holds a {ckpt.get('kind')} checkpoint; this command needs "
                         f"one of: {', '.join(kinds)}{KIND_HINT.get(str(ckpt.get('kind')), '')}")
    _check_fields(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


EXPORTED_HINT = ("it keeps no settings to rebuild or train it from: give the training run's "
                 "best.pt (or its run folder), which spnas export read")


def _check_crcs(path: Path) -> None:
    """Raise ``zipfile.BadZipFile`` naming the first member whose bytes fail their CRC-32
    (or ``SpnasError`` for a TorchScript archive, which ``torch.load`` calls unreadable).

    One sequential read of the file (about 0.1 s for 50 MB). A file that zipfile
    cannot open at all (truncated, or not a zip) is left to torch.load, whose
    message says what it found.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return
    with archive:
        if any(n.endswith("/constants.pkl") for n in archive.namelist()):
            raise SpnasError(f"{path} is an exported TorchScript network, not a checkpoint; "
                             f"{EXPORTED_HINT}")
        bad = archive.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"CRC-32 mismatch in {bad}")


def _whole(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(ckpt: dict, path: Path) -> None:
    """The fields a checkpoint is rebuilt from, as ``save_checkpoint`` writes them."""
    n = ckpt.get("num_classes")
    if not (_whole(n) and n > 0):
        raise SpnasError(f"{path}: num_classes must be a positive whole number, got {n!r}; the "
                         "file was edited or written by something else: use another checkpoint")
    step = ckpt.get("step", 0)
    if not (_whole(step) and step >= 0):
        raise SpnasError(f"{path}: step must be a whole number >= 0, got {step!r}; use another "
                         "checkpoint")
    if not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("space"), dict):
        raise SpnasError(f"{path} lacks its model weights or space; use another checkpoint")


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state_dict's names, dtypes, shapes and values: the same weights give
    the same text wherever their file lies (search resumes compare supernets by it)."""
    h = hashlib.blake2b(digest_size=12)
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_space(ckpt: dict) -> SpaceSpec:
    return SpaceSpec.from_dict(ckpt["space"])


def child_arch(ckpt: dict) -> Arch:
    """The architecture a child checkpoint holds (every one spnas writes names it)."""
    if not ckpt.get("arch"):
        raise SpnasError(f"child checkpoint {ckpt['path']} names no arch; use another checkpoint")
    return Arch.parse(ckpt["arch"], checkpoint_space(ckpt))


def check_same_space(ckpt: dict, spec: SpaceSpec, what: str = "this run") -> None:
    """Refuse a checkpoint built for another space, layout or layer count."""
    have = checkpoint_space(ckpt)
    if have != spec:
        raise SpnasError(f"checkpoint {ckpt['path']} is for {have.describe()} with "
                         f"{len(have.allowed[0])} choices, but {what} uses {spec.describe()} "
                         f"with {len(spec.allowed[0])} choices; use matching flags "
                         "(--layers, --num_choices, --resize) or another checkpoint")


def load_model_state(model: nn.Module, state: dict, path: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise SpnasError(f"checkpoint {path} does not fit this network "
                         f"({str(e).splitlines()[0][:200]})") from None


def model_from_checkpoint(ckpt: dict) -> ChildNet | Supernet:
    """Rebuild and load the network a checkpoint (``checkpoint.load_checkpoint``) describes:
    a ``ChildNet`` for a child checkpoint, else a supernet."""
    args = dict(ckpt.get("model_args") or {})
    model: ChildNet | Supernet
    if ckpt["kind"] == "child":
        model = build_child(child_arch(ckpt), ckpt["num_classes"], **args)
    else:
        model = build_supernet(checkpoint_space(ckpt), ckpt["num_classes"], **args)
    load_model_state(model, ckpt["model"], ckpt["path"])
    return model
