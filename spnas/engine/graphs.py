"""CUDA graphs for training steps (``--cuda_graphs``): each block of a path, captured once,
then replayed.

A 32x32 supernet step is launch-bound: its time goes to launching a 20-layer path of small
kernels forward and backward, not to the kernels (README, issue 11). ``GraphedBlocks``
captures the forward and the backward of every block the first time a training step runs
it (``torch.cuda.make_graphed_callables``), so any sampled path is a chain of replayed
graphs; the stem, the head, the loss and the optimizer stay eager. BatchNorm's running
statistics are updated inside the graphs, as eagerly.

A block runs eagerly, not from its graph, whenever the graph would not compute what the
block does: another input shape, dtype or memory layout (a last, smaller batch), gradients
off (validation, BN recalibration), the block or one of its modules in another mode than at
capture (eval; a fine-tune's frozen BatchNorms), parameters frozen or unfrozen since, a
block with no trainable parameter (a skip), or a block met a second time in one path (its
graph's output buffers still hold the first call's). Capture uses a copy of the
real input, runs ``make_graphed_callables``' warm-up passes and puts the block's BatchNorm
buffers back afterwards, so capturing changes no statistic. Each block has its own memory
pool: a path can take its blocks in any order, which one shared pool does not allow.

Single process only: under DDP the graphed blocks would bypass its gradient hooks.
``capture_eagerly`` stands in for ``make_graphed_callables`` on a CPU: it runs the same
warm-up and returns the eager block, so everything around the capture is tested without a
GPU; ``benchmarks/check_graphs.py`` compares real graphs with eager steps on a GPU.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from spnas.engine.evaluation import bn_buffers
from spnas.errors import SpnasError

Capture = Callable[..., Any]  # (module, sample_args, num_warmup_iters=...) -> graphed module
WARMUP_ITERS = 3  # make_graphed_callables' default: cuDNN picks its kernels in these passes


class _Call(nn.Module):
    """A block behind a module of its own, so that capture replaces this wrapper's forward and
    not the block's: the block's eager forward stays what validation and recalibration run."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _signature(parts: tuple[tuple[nn.Module, ...], tuple[nn.Parameter, ...]],
               x: torch.Tensor) -> tuple:
    """What a graph of a block (its ``parts``: modules, parameters) fixed at capture: the
    input's layout and the modes."""
    modules, params = parts
    return (x.shape, x.stride(), x.dtype, x.device, x.requires_grad,
            tuple(m.training for m in modules), tuple(p.requires_grad for p in params))


def _hooked(block: nn.Module) -> str | None:
    """The first module of ``block`` with a hook, which a graph's replays would not run."""
    for name, m in block.named_modules():
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks):
            return name or type(block).__name__
    return None


def capture_eagerly(module: nn.Module, sample_args: tuple[torch.Tensor, ...],
                    num_warmup_iters: int = WARMUP_ITERS) -> nn.Module:
    """The CPU stand-in for ``torch.cuda.make_graphed_callables``: the same checks and warm-up
    passes (forward and backward on the sample, which move BatchNorm statistics), then the
    module itself."""
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        raise RuntimeError("Modules must not have hooks registered at the time they are passed")
    params = tuple(p for p in module.parameters() if p.requires_grad)
    for _ in range(num_warmup_iters + 1):  # the warm-up, then the capture pass
        out = module(*sample_args)
        inputs = tuple(a for a in sample_args if a.requires_grad) + params
        torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=False)  # as torch
    return module


class GraphedBlocks:
    """Runs blocks from CUDA graphs captured at first use; see the module docstring.

    ``forward(stem, blocks, head, x)`` is ``head(blocks[-1](... blocks[0](stem(x))))`` with
    each block replayed from its graph where the graph computes what the block does.
    """

    def __init__(self, amp: bool, capture: Capture | None = None):
        self.amp = amp
        self.capture: Capture = capture or torch.cuda.make_graphed_callables
        self.graphs: dict[nn.Module, tuple[tuple, nn.Module]] = {}  # block -> (signature, graphed)
        self.parts: dict[nn.Module, tuple[tuple, tuple]] = {}  # block -> (modules, parameters)
        self.replays = 0  # block calls served by a graph (for tests and benchmarks)

    def _capture(self, block: nn.Module, x: torch.Tensor) -> nn.Module:
        hooked = _hooked(block)
        if hooked is not None:
            raise SpnasError(f"--cuda_graphs: {hooked} in a {type(block).__name__} has a hook, "
                             "which a graph's replays would not run; remove the hook, or drop "
                             "--cuda_graphs to train eagerly")
        sample = x.detach().clone().requires_grad_(x.requires_grad)
        saved = bn_buffers(block)
        # make_graphed_callables refuses autocast's weight cache; the casts are captured instead
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and x.is_cuda,
                                cache_enabled=False):
                graphed = self.capture(_Call(block), (sample,), num_warmup_iters=WARMUP_ITERS)
        except BaseException as e:
            with contextlib.suppress(Exception):  # a broken CUDA context must not hide why
                block.load_state_dict(saved, strict=False)
            if not isinstance(e, (RuntimeError, AssertionError)):
                raise
            # torch's own refusals (e.g. no graph support for an op) and CUDA errors: a
            # training run stops with what to do
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SpnasError(f"--cuda_graphs: capturing a {type(block).__name__} with input "
                             f"{tuple(x.shape)} failed ({first}); drop --cuda_graphs to train "
                             "eagerly") from e
        block.load_state_dict(saved, strict=False)  # into the tensors the graphs read and write
        return graphed

    def block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)``, from its graph when it may be."""
        parts = self.parts.get(block)
        if parts is None:  # walked once: a step's host time is what graphs are there to cut
            parts = self.parts[block] = tuple(block.modules()), tuple(block.parameters())
        if not (block.training and torch.is_grad_enabled() and x.requires_grad
                and any(p.requires_grad for p in parts[1])):
            return block(x)
        sig = _signature(parts, x)
        if block not in self.graphs:
            self.graphs[block] = sig, self._capture(block, x)
        captured, graphed = self.graphs[block]
        if captured != sig:
            return block(x)
        self.replays += 1
        return graphed(x)

    def forward(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module,
                x: torch.Tensor) -> torch.Tensor:
        x = stem(x)
        seen: set[nn.Module] = set()
        for b in blocks:
            x = b(x) if b in seen else self.block(b, x)  # a second call would overwrite the
            seen.add(b)                                    # first's outputs in the graph
        return head(x)


def check_graphs_allowed(enabled: bool, device: torch.device, world: int, stage_can: bool) -> None:
    """One-line errors for ``--cuda_graphs`` where it cannot run."""
    if not enabled:
        return
    if not stage_can:
        raise SpnasError("--cuda_graphs is for supernet training, retraining and fine-tuning, "
                         "not this command; drop --cuda_graphs")
    if device.type != "cuda":
        raise SpnasError(f"--cuda_graphs needs a CUDA device, this run's is {device}; drop "
                         "--cuda_graphs")
    if world > 1:
        raise SpnasError(f"--cuda_graphs runs in one process, this run has {world} (torchrun); "
                         "drop --cuda_graphs, or run one process")
