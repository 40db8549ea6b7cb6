"""Scoring one path of a supernet: exact BN recalibration, then accuracy on held-out images.

For every candidate, every BatchNorm on its path is reset to the exact
statistics of a fixed, seeded set of training images (crop/flip only),
forwarded in training mode (``evaluation.recalibrate_bn``); then the path is
evaluated on the scoring split in inference mode (bf16 autocast on CUDA).

What is the same for every candidate is done once: the recalibration batches
(already augmented and normalised) and the normalised scoring batches are
prepared on the device, with their labels, as tensors (in bf16 when autocast
is on: the first convolution would cast them anyway). When they would exceed
``max_bytes`` (224x224 on a small device) the uint8 images stay on the device
and each batch is rebuilt per candidate, identically.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from spnas.arch import Arch
from spnas.config import derive_seed
from spnas.data.augment import BatchTransform
from spnas.engine.evaluation import eval_batches, evaluate_batches, recalibrate_bn, recalibration_batches

PathForward = Callable[[nn.Module, torch.Tensor, Arch], torch.Tensor]


def supernet_forward(model: nn.Module, x: torch.Tensor, arch: Arch) -> torch.Tensor:
    return model(x, arch)


class FixedBatches:
    """Batches that are the same at every iteration: kept if they fit ``max_bytes``, else rebuilt."""

    def __init__(self, make: Callable[[], Iterator], nbytes: int, max_bytes: float):
        self.kept = list(make()) if nbytes <= max_bytes else None
        self.make = None if self.kept is not None else make  # kept: the source can be freed

    def __iter__(self):
        if self.kept is not None:
            return iter(self.kept)
        if self.make is None:
            raise RuntimeError("FixedBatches has neither its batches nor their source")
        return self.make()

    @property
    def prepared(self) -> bool:
        return self.kept is not None


def input_dtype(device: torch.device, amp: bool) -> torch.dtype:
    """The dtype prepared images are kept in: what autocast would cast them to."""
    return torch.bfloat16 if amp and device.type == "cuda" else torch.float32


def _image_bytes(x: torch.Tensor, transform: BatchTransform, dtype: torch.dtype) -> int:
    side = transform.cfg.resize or x.shape[-1]
    return x.shape[1] * side * side * torch.finfo(dtype).bits // 8


def recal_set(train_x: torch.Tensor, n: int, batch_size: int, transform: BatchTransform,
              seed: int, device: torch.device, dtype: torch.dtype,
              max_bytes: float) -> FixedBatches:
    """The ``n`` seeded training images of ``evaluation.recalibration_batches``, prepared."""
    n = min(n, len(train_x))

    def make():  # moves only the n chosen images to the device, a batch at a time
        for b in recalibration_batches(train_x, n, batch_size, transform, seed, device):
            yield b.to(dtype)
    return FixedBatches(make, n * _image_bytes(train_x, transform, dtype), max_bytes)


def val_set(x: torch.Tensor, y: torch.Tensor, n: int | None, batch_size: int,
            transform: BatchTransform, seed: int, device: torch.device, dtype: torch.dtype,
            max_bytes: float) -> FixedBatches:
    """``(images, labels)`` batches of ``n`` seeded images of the split (all when None), in order."""
    if n is not None and n < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, y = x[idx], y[idx]
    x, y = x.to(device), y.to(device)

    def make():
        for i, images in enumerate(eval_batches(x, transform, batch_size, device)):
            yield images.to(dtype), y[i * batch_size:(i + 1) * batch_size]
    return FixedBatches(make, len(x) * _image_bytes(x, transform, dtype), max_bytes)


class SupernetScorer:
    """``scorer(arch) -> {"val_acc", "val_loss"}`` for any model run as ``forward(model, x, arch)``."""

    def __init__(self, model: nn.Module, recal: Sequence[torch.Tensor] | FixedBatches,
                 val: Sequence[tuple[torch.Tensor, torch.Tensor]] | FixedBatches,
                 num_classes: int, device: torch.device, amp: bool = True, seed: int = 0,
                 forward: PathForward = supernet_forward):
        self.model, self.recal, self.val = model, recal, val
        self.num_classes, self.device, self.amp, self.seed = num_classes, device, amp, seed
        self.forward = forward

    def __call__(self, arch: Arch) -> dict:
        fwd = lambda m, x: self.forward(m, x, arch)  # noqa: E731
        # anything random in a training-mode forward (dropout) is seeded by the arch
        torch.manual_seed(derive_seed(self.seed, "candidate", arch.choices))
        recalibrate_bn(self.model, fwd, self.recal, self.device, self.amp)
        r = evaluate_batches(self.model, fwd, self.val, self.num_classes, self.device, self.amp)
        return {"val_acc": r["acc"], "val_loss": r["loss"]}

