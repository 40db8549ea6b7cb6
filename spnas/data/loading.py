"""Training data on the device: the split a run uses, its batch transform, and the loader
that serves batch (epoch, i) as a pure function of the seed."""
from __future__ import annotations

from dataclasses import replace

import torch

from spnas.config import RESIZED, DataConfig, TrainConfig, derive_seed
from spnas.data.augment import IMAGENET_MEAN_STD, MEAN_STD, AugmentConfig, BatchTransform
from spnas.data.datasets import Dataset, Splits, load_dataset, make_splits
from spnas.errors import SpnasError
from spnas.runtime import Dist


def input_side(data: DataConfig, images: torch.Tensor) -> int:
    """The side of the images a network sees: 224 with --resize, else the data's own (32 for
    CIFAR's batches; an image folder's is --image_size). ``images``: N x C x H x W."""
    return RESIZED if data.resize else images.shape[-1]


def settings_input_side(data: DataConfig) -> int | None:
    """The side ``input_side`` will give, where the settings alone tell it (before the data
    is read): 224 with --resize, an image folder's --image_size, 32 for CIFAR; None for
    CIFAR with another --image_size (its batches are 32x32, its image folders that side)."""
    if data.resize:
        return RESIZED
    if data.dataset == "folder":
        return data.image_size
    return 32 if data.image_size == 32 else None


def check_cutout(data: DataConfig, side: int | None) -> None:
    """Refuse a cutout square larger than the training images (``side``; None: not known
    before the data is read): it would blank most of every image, or all of it."""
    if data.cutout and side is not None and data.cutout_length > side:
        raise SpnasError(f"--cutout_length {data.cutout_length} is larger than the {side}x{side} "
                         f"training images (it would blank most of each one); give {side} or less "
                         "(16 at 32x32, as the original recipe)")


def build_transform(data: DataConfig, channels_last: bool) -> BatchTransform:
    aug = AugmentConfig(cutout=data.cutout_length if data.cutout else 0,
                        auto_aug=data.auto_aug, resize=RESIZED if data.resize else 0)
    mean_std = MEAN_STD.get(data.dataset, IMAGENET_MEAN_STD)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return BatchTransform(aug, mean_std, memory_format=fmt)


def read_dataset(data: DataConfig) -> Dataset:
    """The whole dataset ``data`` names (found, downloaded if allowed, and read)."""
    return load_dataset(data.dataset, data.data_path, download_ok=data.download,
                        image_size=data.image_size)


def load_splits(data: DataConfig, seed: int) -> Splits:
    """Train/val/test of ``data`` as a run with ``seed`` splits them; ``--classes`` checked."""
    ds = read_dataset(data)
    if data.classes is not None and data.classes != ds.num_classes:
        raise SpnasError(f"--classes {data.classes} but {data.dataset} under {data.data_path} "
                         f"has {ds.num_classes} classes; fix --classes or --dataset")
    return make_splits(ds, data.val_size, seed)


def steps_per_epoch(n: int, batch_size: int, world: int = 1, num_steps: int | None = None) -> int:
    """Optimizer steps per epoch of ``n`` images: full global batches, capped by ``num_steps``."""
    full = n // (batch_size * world)
    if full == 0:
        raise SpnasError(f"--batch_size {batch_size} x {world} process(es) is "
                         f"larger than the {n} training images")
    return min(full, num_steps) if num_steps else full


class DeviceLoader:
    """Training batches held on the device as uint8; batch (epoch, i) is a pure function.

    Epoch ``e`` visits the permutation seeded by (seed, "order", e); with several
    processes, rank r takes its slice of each global batch of ``batch_size * world``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 transform: BatchTransform, device: torch.device, seed: int,
                 num_steps: int | None = None, dist_info: Dist = Dist(),
                 classes: tuple[str, ...] = ()):
        self.x, self.y = x.to(device), y.to(device)
        self.classes = tuple(classes)  # the data's class names, recorded in checkpoints
        self.batch_size, self.transform, self.device, self.seed = batch_size, transform, device, seed
        self.dist = dist_info
        self.steps_per_epoch = steps_per_epoch(len(x), batch_size, dist_info.world, num_steps)
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None  # the order of epoch _perm_epoch

    def indices(self, epoch: int, i: int) -> torch.Tensor:
        if epoch != self._perm_epoch or self._perm is None:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
            self._perm = torch.randperm(len(self.x), generator=gen).to(self.device)
            self._perm_epoch = epoch
        start = (i * self.dist.world + self.dist.rank) * self.batch_size
        return self._perm[start:start + self.batch_size]

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(epoch, i)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "augment", epoch, i, self.dist.rank))
        return self.transform.train(self.x[idx], gen), self.y[idx]


def train_loader(splits: Splits, cfg: TrainConfig, device: torch.device,
                 dist_info: Dist = Dist()) -> DeviceLoader:
    """The run's training images on ``device``, augmented as ``cfg.data`` says."""
    check_cutout(cfg.data, input_side(cfg.data, splits.train[0]))
    return DeviceLoader(*splits.train, cfg.optim.batch_size,
                        build_transform(cfg.data, cfg.run.channels_last_for(device)), device, cfg.run.seed,
                        cfg.optim.num_steps, dist_info, tuple(splits.classes))


def recal_transform(data: DataConfig, channels_last: bool):
    """Training crop/flip (or resized crop) only: no cutout, no AutoAugment."""
    return build_transform(replace(data, cutout=False, auto_aug=False), channels_last)
