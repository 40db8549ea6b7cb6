"""An exponential moving average (EMA) of a network's weights, for evaluation and shipping.

``Ema.deploy`` is a copy of the model whose parameters and floating-point buffers (BN
statistics) follow the trained ones: after optimizer step ``step`` (0-based) each moves
towards the weights by ``1 - d``, ``d = decay_at(step)``. With ``warmup`` the decay is
TF's ``ExponentialMovingAverage(decay, num_updates=global_step)``: ``d = min(decay, (1 + n)
/ (10 + n))``, ``n = step + 1``, so the first steps' weights fade out however high the
decay. Without it the first step copies the weights and ``d = decay`` afterwards (torch's
``AveragedModel`` with ``get_ema_multi_avg_fn``), so after T steps the first step's weights
still weigh ``decay ** (T - 1)`` (0.9998 over 5,000 steps: 37%). Other buffers (BN's step
counter) are copied.

``d`` depends on the step alone, so a resumed run that loads ``deploy`` continues the
average exactly; no other state is kept.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


class Ema:
    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.model, self.decay, self.warmup = model, decay, warmup
        self.deploy = copy.deepcopy(model).requires_grad_(False)

    def decay_at(self, step: int) -> float:
        n = step + 1
        if self.warmup:
            return min(self.decay, (1 + n) / (10 + n))
        return self.decay if step > 0 else 0.0

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        d = self.decay_at(step)
        pairs = zip(itertools.chain(self.deploy.parameters(), self.deploy.buffers()),
                    itertools.chain(self.model.parameters(), self.model.buffers()), strict=True)
        for avg, now in pairs:
            if avg.is_floating_point():
                avg.lerp_(now, 1 - d)
            else:
                avg.copy_(now)
