"""Pictures read from results: accuracy curves of a run, confusion matrices.

Matplotlib's object API with the Agg canvas: no display, no global backend switch.
"""
from __future__ import annotations

from pathlib import Path

import torch


def figure(width: float, height: float, dpi: int = 100):
    """A figure on the Agg canvas, laid out automatically; save it with ``fig.savefig``."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def plot_training_curves(records: list[dict], steps_per_epoch: int, path: str | Path,
                title: str = "") -> Path:
    """Train and validation accuracy over epochs, and the test accuracy once at the end."""
    fig = figure(6.4, 3.6)
    ax = fig.subplots()
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val" and "val_acc" in r]
    test = [r for r in records if r.get("type") == "test"]
    if train:
        ax.plot([r["step"] / steps_per_epoch for r in train], [r["acc"] for r in train],
                lw=1, alpha=0.6, label="train (augmented batches)")
    if val:
        ax.plot([r["step"] / steps_per_epoch for r in val], [r["val_acc"] for r in val],
                "o-", lw=1.5, label="validation")
    for r in test:
        ax.plot([r["from_step"] / steps_per_epoch], [r["test_acc"]], "*", ms=11,
                label=f"test, {r['which']} weights ({r['test_acc']:.4f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    fig.savefig(path)
    return Path(path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class); counts written when few classes."""
    n = len(classes)
    rates = (confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)).numpy()
    side = min(3 + 0.4 * n, 14)
    fig = figure(side + 1.2, side)
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path)
    return Path(path)
