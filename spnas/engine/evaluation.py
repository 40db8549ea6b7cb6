"""Evaluation on device-resident uint8 tensors, and exact BatchNorm recalibration.

Shared by supernet validation, search, retraining and ``spnas evaluate``.
``forward(model, images)`` is a callable, so a supernet path
(``lambda m, x: m(x, arch)``) and a plain network are evaluated alike.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from spnas.data.augment import BatchTransform, host_to

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context on the CPU."""
    on = enabled and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def eval_batches(x: torch.Tensor, transform: BatchTransform, batch_size: int,
                 device: torch.device) -> Iterator[torch.Tensor]:
    """Normalised (not augmented) batches of ``x`` in order, moved to ``device``."""
    for i in range(0, len(x), batch_size):
        yield transform.plain(host_to(x[i:i + batch_size], device))


def recalibration_batches(x: torch.Tensor, n: int, batch_size: int, transform: BatchTransform,
                          seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The same ``n`` training images, augmented the same way, at every call.

    The images are the first ``n`` of a permutation seeded by ``seed``; each
    batch's augmentation draws are seeded too, so every candidate is
    recalibrated on identical inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:n]
    for i in range(0, len(idx), batch_size):
        batch = host_to(x[idx[i:i + batch_size]], device)
        yield transform.train(batch, torch.Generator().manual_seed(seed + 1 + i))


def evaluate(model: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor,
             transform: BatchTransform, num_classes: int, batch_size: int = 500,
             device: torch.device = torch.device("cpu"), amp: bool = True) -> dict:
    """Top-1, top-5, mean cross-entropy and the confusion matrix (rows: true class)."""
    labels = y.to(device)
    batches = ((images, labels[i * batch_size:(i + 1) * batch_size])
               for i, images in enumerate(eval_batches(x, transform, batch_size, device)))
    return evaluate_batches(model, forward, batches, num_classes, device, amp)


@torch.inference_mode()
def evaluate_batches(model: nn.Module, forward: Forward,
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                     device: torch.device = torch.device("cpu"), amp: bool = True) -> dict:
    """``evaluate`` on ready (normalised, on-device) ``(images, labels)`` batches.

    Used where the same images are evaluated many times (search), so they are
    prepared once instead of once per call.
    """
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    k = min(5, num_classes)
    for images, labels in batches:
        with autocast(device, amp):
            logits = forward(model, images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        top5 += (logits.topk(k, 1).indices == labels[:, None]).any(1).sum()
        cells = labels * num_classes + logits.argmax(1)  # scatter_add: no sync, unlike bincount
        confusion.view(-1).scatter_add_(0, cells, torch.ones_like(cells))
    model.train(was_training)
    confusion = confusion.cpu()
    n = int(confusion.sum())
    return {"acc": confusion.diag().sum().item() / max(n, 1), "top5": top5.item() / max(n, 1),
            "loss": loss_sum.item() / max(n, 1), "n": n, "confusion": confusion}


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    totals = confusion.sum(1).clamp(min=1)
    return (confusion.diag().double() / totals).tolist()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward: Forward, batches: Iterable[torch.Tensor],
                   device: torch.device = torch.device("cpu"), amp: bool = True) -> int:
    """Set every BatchNorm that the batches reach to the exact statistics of its inputs.

    The batches run in training mode (each BN normalises by its batch, as in
    training); each BN's inputs are pooled over all batches, and its running
    mean and (unbiased) variance become those of the pooled inputs, merged in
    float64. The per-batch statistics are the ones the BN computes itself:
    with momentum 1 its running buffers hold exactly the last batch's mean and
    unbiased variance, read after each call, so no extra pass over the
    activations is made. BNs the forward never reaches keep their statistics.
    Returns the number of BN layers recalibrated.
    """
    # per BN: (values per channel, running mean, running variance) after each batch
    seen: dict[nn.modules.batchnorm._BatchNorm, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}

    def hook(mod, inputs, output):
        x = inputs[0]
        seen.setdefault(mod, []).append(
            (x.numel() // x.shape[1], mod.running_mean.clone(), mod.running_var.clone()))

    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [bn.momentum for bn in bns]
    handles = [bn.register_forward_hook(hook) for bn in bns]
    was_training = model.training
    model.train()
    try:
        for bn in bns:
            bn.momentum = 1.0
        for images in batches:
            with autocast(device, amp):
                forward(model, images)
    finally:
        for h in handles:
            h.remove()
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    ratios: dict[tuple[int, ...], torch.Tensor] = {}  # the same for every BN: one copy each
    for bn, per_batch in seen.items():
        running_mean, running_var = bn.running_mean, bn.running_var
        if running_mean is None or running_var is None:  # the hooks sit on tracking BNs only
            raise RuntimeError(f"{type(bn).__name__} has no running statistics to recalibrate")
        counts = [n for n, _, _ in per_batch]
        g = math.gcd(*counts)
        key = tuple(n // g for n in counts)
        if key not in ratios:
            ratios[key] = torch.tensor(key, dtype=torch.float64)[:, None].to(running_mean.device)
        mean, var = _pooled(ratios[key], sum(counts), torch.stack([m for _, m, _ in per_batch]),
                            torch.stack([v for _, _, v in per_batch]))
        running_mean.copy_(mean)
        running_var.copy_(var)
    return len(seen)


def _pooled(ratios: torch.Tensor, total: int, means: torch.Tensor, variances: torch.Tensor):
    """Mean and unbiased variance of the union of groups (rows) with these means and unbiased
    variances, whose sizes are in the proportion ``ratios`` and add up to ``total``; float64."""
    n = ratios / ratios.sum() * total
    means, variances = means.double(), variances.double()
    mean = (n * means).sum(0) / total
    m2 = ((n - 1) * variances + n * (means - mean) ** 2).sum(0)
    return mean, m2 / max(total - 1, 1)


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm buffer, to put back with ``load_state_dict(strict=False)``."""
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
