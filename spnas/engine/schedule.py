"""The optimizer's side of a run: the learning rate as a pure function of the step, the lr
scaled to the global batch, and which parameters get weight decay."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Set

from torch import nn

from spnas.config import OptimConfig
from spnas.errors import SpnasError


def lr_at(step: int, total: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: a pure function of
    the step, so a resumed run continues its schedule exactly.

    A linear warm-up from 0 over ``warmup_epochs``, then ``schedule`` (cosine or linear
    from lr to min_lr, or constant), times the staircase ``decay_factor ** floor(step /
    (decay_epochs x steps_per_epoch))`` when ``decay_factor`` is set.
    """
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    frac = (step - warm) / max(total - warm, 1)
    if step < warm:
        lr = cfg.lr * (step + 1) / warm
    elif cfg.schedule == "cosine":
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    elif cfg.schedule == "linear":
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - frac)
    elif cfg.schedule == "constant":
        lr = cfg.lr
    else:
        raise SpnasError(f"unknown --schedule {cfg.schedule!r}; use cosine, linear or constant")
    if cfg.decay_factor is not None:
        lr *= cfg.decay_factor ** math.floor(step / (cfg.decay_epochs * steps_per_epoch))
    return lr


def effective_optim(o: OptimConfig, world: int = 1) -> tuple[OptimConfig, str]:
    """``o`` with lr and min_lr scaled linearly from ``lr_batch`` images to the global batch
    (``batch_size x world``), and the log line saying so ("" when ``lr_batch`` is None).

    The run's config keeps the settings as given; the Trainer schedules with these.
    """
    if o.lr_batch is None:
        return o, ""
    batch = o.batch_size * world
    f = batch / o.lr_batch
    scaled = dataclasses.replace(o, lr=o.lr * f, min_lr=o.min_lr * f, lr_batch=None)
    return scaled, (f"lr: {o.lr:g} per {o.lr_batch} images, scaled linearly to the batch of "
                    f"{batch}: {scaled.lr:g}")


def param_groups(model: nn.Module, weight_decay: float, exclude: Set[int] = frozenset()) -> list[dict]:
    """Weight decay on conv and linear weights only: never on BN parameters or biases."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if id(p) in exclude or not p.requires_grad:
            continue
        (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
