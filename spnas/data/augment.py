"""Augmentation of whole uint8 batches on the device, each sample drawn independently.

Training pipeline (``BatchTransform.train``), for a uint8 batch [B, 3, H, W]:

1. without ``resize``: random crop H x W from the image zero-padded by
   ``crop_padding`` pixels, and a horizontal flip with probability 1/2 (one
   gather for the whole batch);
2. ``auto_aug``: torchvision's AutoAugment CIFAR-10 policy. Each sample draws
   its own sub-policy, application coin flips and signs exactly as
   ``torchvision.transforms.AutoAugment`` does; samples that drew the same
   operation are then transformed together by torchvision's own ``_apply_op``
   (Equalize by ``equalize`` below, equal to torchvision's but without its
   per-image loop), so a batch costs at most 25 x 2 x 2 calls whatever its
   size, and a GPU is never fed one image at a time;
3. scale to [0, 1]; with ``resize``: a RandomResizedCrop (scale 0.08-1, ratio
   3/4-4/3) to ``resize`` pixels plus the flip, as one ``affine_grid`` +
   ``grid_sample`` per batch (AutoAugment thus runs on the small image, 49x
   fewer pixels than after the resize);
4. normalise with the dataset's mean and std; ``cutout``: zero one square of
   side ``cutout`` per sample, centred anywhere in the image, clipped at the
   border (as in DeVries & Taylor's code).

Evaluation (``BatchTransform.plain``: no augmentation): normalise; with ``resize``, Resize(256)
+ CenterCrop(224) scaled to ``resize``.

Every random draw comes from the ``torch.Generator`` passed in (on the CPU, so
the same seed gives the same batch on any device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MEAN_STD = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def host_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``. ``t`` is made or held on the CPU (the augmentation's draws, made
    there so that a batch is the same on any device; the validation and test images, which
    stay in host memory), and reaches a GPU without stalling the host: a CUDA copy from
    pageable memory may first wait for the stream's queued work (CUDA's API synchronization
    rules), which would drain the queue every step; from pinned memory (PyTorch's caching
    host allocator) it is queued like a kernel. A tensor already on the device stays put."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _rand(gen: torch.Generator, *shape, device) -> torch.Tensor:
    return host_to(torch.rand(shape, generator=gen), device)


def _randint(gen: torch.Generator, high, *shape, device) -> torch.Tensor:
    return host_to(torch.randint(0, high, shape, generator=gen), device)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding) and horizontal flip, one gather per batch."""
    b, _, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (padding,) * 4) if padding else x
    dy = _randint(gen, 2 * padding + 1, b, device=dev)
    dx = _randint(gen, 2 * padding + 1, b, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        flipped = _rand(gen, b, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + cols
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one ``length`` x ``length`` square per sample (centre uniform, clipped)."""
    b, _, h, w = x.shape
    dev = x.device
    cy = _randint(gen, h, b, device=dev)[:, None]
    cx = _randint(gen, w, b, device=dev)[:, None]
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_y = (ys >= cy - length // 2) & (ys < cy + length // 2)  # [B, H]
    in_x = (xs >= cx - length // 2) & (xs < cx + length // 2)  # [B, W]
    hole = in_y[:, :, None] & in_x[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


def resized_crop_params(b: int, h: int, w: int, gen: torch.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10):
    """RandomResizedCrop boxes (top, left, height, width) as torchvision draws them.

    Each sample takes the first of ``tries`` draws that fits, else the central
    crop with the ratio clamped to ``ratio``, as torchvision's fallback does.
    """
    area = h * w
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, tries, generator=gen))
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        b, tries, generator=gen)
    ar = torch.exp(logr)
    cw = torch.sqrt(target * ar).round()
    ch = torch.sqrt(target / ar).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    u = torch.rand(b, 2, generator=gen)
    in_ratio = w / h  # torchvision's fallback: the whole image, ratio clamped
    fw, fh = w, h
    if in_ratio < ratio[0]:
        fh = round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fw = round(h * ratio[1])
    pick = first.clamp(min=0)[:, None]
    cw = torch.where(first >= 0, cw.gather(1, pick)[:, 0], torch.full((b,), float(fw)))
    ch = torch.where(first >= 0, ch.gather(1, pick)[:, 0], torch.full((b,), float(fh)))
    top = torch.where(first >= 0, torch.floor(u[:, 0] * (h - ch + 1)), (h - ch) // 2)
    left = torch.where(first >= 0, torch.floor(u[:, 1] * (w - cw + 1)), (w - cw) // 2)
    return top, left, ch, cw


def crop_resize(x: torch.Tensor, boxes, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Resample each sample's box (top, left, h, w) to size x size (bilinear), optionally flipped."""
    b, _, h, w = x.shape
    top, left, ch, cw = (host_to(t.float(), x.device) for t in boxes)
    sx, sy = cw / w, ch / h
    if flip is not None:
        sx = torch.where(host_to(flip, x.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class BatchAutoAugment:
    """torchvision's AutoAugment, with per-sample draws applied group by group."""

    def __init__(self, policy: str = "cifar10"):
        import torchvision.transforms as T
        from torchvision.transforms.autoaugment import _apply_op
        self._policy = T.AutoAugment(T.AutoAugmentPolicy(policy))
        self._apply_op = _apply_op
        self.policies = self._policy.policies

    def draws(self, b: int, gen: torch.Generator):
        """Per sample: sub-policy index, and per op: applied (bool) and negated (bool)."""
        pid = torch.randint(len(self.policies), (b,), generator=gen)
        probs = torch.rand(b, 2, generator=gen)
        signs = torch.randint(2, (b, 2), generator=gen)
        p = torch.tensor([[op[1] for op in pol] for pol in self.policies])[pid]
        return pid, probs <= p, signs == 0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        pid, applied, negated = self.draws(x.shape[0], gen)
        return self.apply(x, pid, applied, negated)

    def apply(self, x: torch.Tensor, pid, applied, negated) -> torch.Tensor:
        """Apply given draws (see ``draws``); a per-sample loop would give the same result.

        For each of the two op positions, the samples are sorted once by
        (sub-policy, sign), so every group is a contiguous slice of the sorted
        batch: one gather and one scatter per position, no per-group indexing
        and no host-device transfer per group.
        """
        space = self._policy._augmentation_space(10, (x.shape[-2], x.shape[-1]))
        interp = self._policy.interpolation
        x = x.clone()
        for i in range(2):
            group = torch.where(applied[:, i], pid * 2 + negated[:, i].long(), -1)
            order = torch.argsort(group, stable=True)
            keys, counts = torch.unique_consecutive(group[order], return_counts=True)
            if keys.numel() == 1 and keys[0] < 0:
                continue
            idx = host_to(order, x.device)
            xs = x[idx]
            start = 0
            for key, n in zip(keys.tolist(), counts.tolist()):
                if key >= 0:
                    name, _, mag_id = self.policies[key // 2][i]
                    mags, signed = space[name]
                    mag = float(mags[mag_id]) if mag_id is not None else 0.0
                    mag = -mag if signed and key % 2 else mag
                    xs[start:start + n] = self._op(xs[start:start + n], name, mag, interp)
                start += n
            x[idx] = xs
        return x

    def _op(self, x: torch.Tensor, name: str, mag: float, interp) -> torch.Tensor:
        if name == "Equalize":  # torchvision's loops over images and channels, syncing a GPU
            return equalize(x)
        return self._apply_op(x, name, mag, interpolation=interp, fill=None)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``F.equalize`` of a uint8 batch [N, C, H, W], all channels at once.

    Per channel, as torchvision computes it: the histogram, ``step`` = (pixels
    outside the highest occupied bin) // 255, and the lookup table
    ``(cumsum + step // 2) // step`` shifted by one bin; a channel with
    ``step == 0`` is left unchanged.
    """
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    step = (h * w - hist.gather(1, flat.amax(1, keepdim=True))) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = torch.where(step == 0, flat, lut.gather(1, flat))
    return out.to(torch.uint8).reshape(n, c, h, w)


@dataclass(frozen=True)
class AugmentConfig:
    """How training batches are augmented (see the module docstring)."""

    crop_padding: int = 4       # pixels of zero padding for the random crop
    flip: bool = True
    cutout: int = 0             # side of the cutout square in pixels; 0 = off
    auto_aug: bool = False
    resize: int = 0             # train/eval at this size (e.g. 224); 0 = native size


class BatchTransform:
    """uint8 batches in, normalised float batches out, on the batch's device."""

    def __init__(self, cfg: AugmentConfig, mean_std=MEAN_STD["cifar10"],
                 memory_format=torch.contiguous_format):
        self.cfg, self.memory_format = cfg, memory_format
        self.mean = torch.tensor(mean_std[0]).view(1, 3, 1, 1)
        self.std = torch.tensor(mean_std[1]).view(1, 3, 1, 1)
        self.auto_aug = BatchAutoAugment() if cfg.auto_aug else None
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, std there

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:  # copied once per device, not once per batch
            self._on[x.device] = self.mean.to(x.device), self.std.to(x.device)
        mean, std = self._on[x.device]
        return (x - mean) / std

    def train(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.resize:
            x = random_crop_flip(x, cfg.crop_padding, cfg.flip, gen)
        if self.auto_aug is not None:
            x = self.auto_aug(x, gen)
        x = x.float().div_(255)
        if cfg.resize:
            b, _, h, w = x.shape
            flip = (torch.rand(b, generator=gen) < 0.5) if cfg.flip else None
            x = crop_resize(x, resized_crop_params(b, h, w, gen), cfg.resize, flip)
        x = self._normalize(x)
        if cfg.cutout:
            x = cutout(x, cfg.cutout, gen)
        return x.contiguous(memory_format=self.memory_format)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation view of a uint8 batch: no augmentation, normalised (and centre-cropped
        at ``resize``)."""
        x = x.float().div_(255)
        if self.cfg.resize:
            size = self.cfg.resize
            big = round(size * 256 / 224)
            x = F.interpolate(x, size=(big, big), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > big)
            off = (big - size) // 2
            x = x[:, :, off:off + size, off:off + size]
        return self._normalize(x).contiguous(memory_format=self.memory_format)
