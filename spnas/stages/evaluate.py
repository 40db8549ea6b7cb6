"""``spnas evaluate``: a trained network's numbers on any split, with a confusion matrix.

The data is read as the run read it: the checkpoint's own data config
(dataset, normalisation, --resize), with ``--data_path`` / ``--dataset``
overriding where the files are. ``--split val`` rebuilds exactly the held-out
split the run validated on, from the checkpoint's seed and ``val_size``.

A network whose outputs are not finite (NaN or inf: broken weights) still gets
its files, with ``nonfinite_images`` counting the images concerned and null
for every non-finite number, so ``evaluation.json`` stays valid JSON; the
command warns and exits with status 1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

from spnas.config import CHECKPOINT_HELP, DataConfig, EvaluateConfig
from spnas.data.datasets import Dataset, Splits, make_splits
from spnas.data.loading import build_transform, read_dataset
from spnas.engine.checkpoint import load_checkpoint, model_from_checkpoint
from spnas.engine.evaluation import evaluate, per_class_accuracy
from spnas.engine.plots import plot_confusion
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.files import atomic_write_text
from spnas.runtime import resolve_device


def load_child(path: str | Path) -> tuple[dict, nn.Module]:
    """A child checkpoint and its network, rebuilt from the checkpoint alone (eval mode)."""
    if not str(path):
        raise SpnasError(f"--checkpoint is required: {CHECKPOINT_HELP}")
    ckpt = load_checkpoint(path, kinds=("child",))
    return ckpt, model_from_checkpoint(ckpt).eval()


def checkpoint_data(ckpt: dict, data_path: str | None = None,
                    dataset: str | None = None) -> DataConfig:
    """The data config the checkpoint's run used, with the data's location overridden."""
    saved = (ckpt.get("config") or {}).get("data") or {}
    known = {f.name for f in dataclasses.fields(DataConfig)}
    data = DataConfig(**{k: v for k, v in saved.items() if k in known})
    data.classes = None
    if data_path:
        data.data_path = data_path
    if dataset:
        data.dataset = dataset
    return data


def read_checkpoint_dataset(ckpt: dict, data: DataConfig, other_fix: str = "") -> Dataset:
    """``read_dataset``, whose error, for the folder the checkpoint records (no
    --data_path given), says so: an imported network records only the default."""
    try:
        return read_dataset(data)
    except SpnasError as e:
        if data.data_path != checkpoint_data(ckpt).data_path:
            raise
        whose = ("the default: a network imported from the original's code records no data "
                 "folder" if ckpt.get("imported_from") else f"the folder {ckpt['path']} records")
        raise SpnasError(f"{e} ({data.data_path} is {whose}; pass --data_path DIR"
                         f"{other_fix})") from None


def _other_data(ckpt: dict, data: DataConfig) -> str:
    """'' for the run's own data; else ``_<dataset>_<folder name>_<hash of its path>``."""
    def where(d: DataConfig) -> tuple[str, Path]:
        return d.dataset, Path(d.data_path).expanduser().resolve()
    dataset, path = where(data)
    if (dataset, path) == where(checkpoint_data(ckpt)):
        return ""
    return f"_{dataset}_{path.name or 'data'}_{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def checkpoint_splits(ckpt: dict, data: DataConfig, num_classes: int,
                      split: str = "val") -> Splits:
    """Train/val/test as the run split them (its seed and val_size). For ``split`` "test"
    the held-out split does not matter: other data with fewer training images than the run
    held out is split without one."""
    seed = int(((ckpt.get("config") or {}).get("run") or {}).get("seed", 0))
    ds = read_checkpoint_dataset(ckpt, data)
    if ds.num_classes != num_classes:  # before the split, whose sizes would not fit either
        raise SpnasError(f"{ckpt['path']} classifies {num_classes} classes, but {data.dataset} "
                         f"under {data.data_path} has {ds.num_classes}; pass the "
                         "--dataset/--data_path it was trained on")
    val_size = data.val_size
    if split == "test" and not val_size < len(ds.train_x):
        val_size = 0
    if not 0 <= val_size < len(ds.train_x):
        raise SpnasError(f"{ckpt['path']}'s run held out {data.val_size} training images, but "
                         f"{data.dataset} under {data.data_path} has {len(ds.train_x)}; pass the "
                         "--dataset/--data_path it was trained on")
    splits = make_splits(ds, val_size, seed)
    check_class_names(ckpt, splits.classes, data)
    return splits


def check_class_names(ckpt: dict, classes, data: DataConfig) -> None:
    """The data's classes must be the checkpoint's, in its order (else per-class numbers lie)."""
    trained, found = list(ckpt.get("classes") or []), list(classes)
    if not trained or trained == found:
        return  # checkpoints written before class names were recorded say nothing
    if sorted(trained) == sorted(found):
        raise SpnasError(f"{ckpt['path']} was trained with the classes in another order "
                         f"({', '.join(trained[:4])}, ...) than {data.dataset} under "
                         f"{data.data_path} has them ({', '.join(found[:4])}, ...); rename the "
                         "class folders to train's order")
    other = sorted(set(found) - set(trained))[:3]
    raise SpnasError(f"{ckpt['path']} was trained on other classes than {data.dataset} under "
                     f"{data.data_path} holds (e.g. {', '.join(other)} is new); evaluate on the "
                     "data it was trained on, or fine-tune it (spnas finetune)")


@takes_config(EvaluateConfig, "checkpoint")
def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """Top-1, top-5, loss, per-class accuracy and confusion matrix of a child checkpoint.

    Writes ``evaluation.json`` and ``confusion.png`` to ``cfg.out`` (default: a
    folder ``eval_<checkpoint>_<split>`` beside the checkpoint, with ``_<dataset>_<data
    folder>`` added for data other than the run's) and returns the numbers.
    """
    split = cfg.split
    ckpt, net = load_child(cfg.checkpoint)
    data = checkpoint_data(ckpt, cfg.data_path, cfg.dataset)
    splits = checkpoint_splits(ckpt, data, ckpt["num_classes"], split)
    ckpt_path = Path(ckpt["path"])
    out = (Path(cfg.out).expanduser() if cfg.out else
           ckpt_path.parent / f"eval_{ckpt_path.stem}_{split}{_other_data(ckpt, data)}")
    if out.suffix == ".json" and not out.is_dir():
        raise SpnasError(f"--out {out} names a file; --out is the folder that gets "
                         "evaluation.json and confusion.png: give a folder")
    out.mkdir(parents=True, exist_ok=True)  # before the work: a bad --out fails at once
    device = resolve_device(cfg.device)
    if cfg.amp and device.type != "cuda":
        print("spnas: note: --amp: bf16 autocast runs on CUDA only; this evaluation runs in "
              "fp32", file=sys.stderr)
    x, y = getattr(splits, split)
    nonfinite = torch.zeros((), dtype=torch.long, device=device)

    def forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        nonfinite.add_((~torch.isfinite(logits)).any(1).sum())  # no sync: added up on device
        return logits

    r = evaluate(net.to(device), forward, x, y, build_transform(data, False),
                 ckpt["num_classes"], cfg.batch_size, device, cfg.amp)
    result = {"checkpoint": str(ckpt_path), "arch": ckpt["arch"], "step": ckpt.get("step"),
              "dataset": data.dataset, "split": split, "n": r["n"],
              "split_is_test": split == "test" or (split == "val" and splits.val_is_test),
              "top1": r["acc"], "top5": r["top5"], "loss": r["loss"],
              "per_class": dict(zip(splits.classes, per_class_accuracy(r["confusion"]))),
              "confusion": r["confusion"].tolist(), "out": str(out),
              "nonfinite_images": int(nonfinite.item())}
    result = finite_or_null(result)
    atomic_write_text(out / "evaluation.json",
                      json.dumps(result, indent=1, allow_nan=False) + "\n")
    plot_confusion(r["confusion"], splits.classes, out / "confusion.png",
                   title=f"{data.dataset} {split}: top-1 {r['acc']:.4f} ({r['n']} images)")
    return result


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def nonfinite_warning(r: dict) -> str | None:
    """One line when the network's outputs were not finite, else None."""
    bad = r.get("nonfinite_images") or 0
    if not bad and r.get("loss") is not None:
        return None
    return (f"the network's outputs are not finite (NaN or inf) on {bad} of {r['n']} images, "
            "so these numbers mean nothing (evaluation.json has null where a number is not "
            "finite); the checkpoint's weights are broken: evaluate an earlier checkpoint")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def format_evaluation(r: dict, max_classes: int = 20) -> str:
    """A short table: the totals, then per-class accuracy (the worst ones when many)."""
    lines = [f"{r['checkpoint']} (step {r['step']}) on {r['dataset']} {r['split']}, "
             f"{r['n']} images" + (" (the run validated on this test set)"
                                   if r["split"] == "val" and r["split_is_test"] else ""),
             f"  top-1 {_num(r['top1'])}   top-5 {_num(r['top5'])}   loss {_num(r['loss'])}"]
    per = list(r["per_class"].items())
    if len(per) > max_classes:
        lines.append(f"  the {max_classes} worst of {len(per)} classes:")
        per = sorted(per, key=lambda kv: kv[1])[:max_classes]
    width = max(len(c) for c, _ in per)
    lines += [f"  {c:<{width}}  {_num(a)}" for c, a in per]
    lines.append(f"  wrote {r['out']}/evaluation.json and confusion.png")
    return "\n".join(lines)
