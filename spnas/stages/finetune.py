"""Fine-tuning a trained network, optionally on other data with another number of classes.

The source is a child checkpoint (``model_from_checkpoint``) or a supernet
checkpoint plus ``--arch`` (``supernet.extract(arch)``, then BN statistics
recalibrated on the new training data, since a supernet's statistics are
shared by every path). When the data has another number of classes the
classifier is replaced, and the run log says so.

``--freeze_epochs E``: for the first E epochs the backbone (everything but
the classifier) gets no gradients, hence no updates (no momentum, no weight
decay), and its BatchNorms stay in eval mode, so their statistics stay too.
After that the backbone trains at ``backbone_lr_scale`` times the learning
rate. The run is a ``Task`` of kind "child" for the one ``Trainer``
(``retrain.train_child``), so everything else is as in ``spnas retrain``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spnas.arch import Arch, arch_from_text_or_file
from spnas.config import FinetuneConfig, TrainConfig, derive_seed
from spnas.data.loading import recal_transform, steps_per_epoch
from spnas.engine.checkpoint import checkpoint_space, child_arch, load_checkpoint, model_from_checkpoint
from spnas.engine.evaluation import plain_forward, recalibrate_bn, recalibration_batches
from spnas.engine.runlog import require_resumed, run_dir_for
from spnas.engine.schedule import param_groups
from spnas.engine.trainer import start_run
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.runtime import place, world_size
from spnas.spaces import build_child
from spnas.spaces.common import ChildNet
from spnas.stages.retrain import check_layout, child_forward, is_arch_file, train_child


def _path_arch(ckpt: dict, text: str | None) -> Arch:
    if ckpt["kind"] == "child":
        arch = child_arch(ckpt)
        if text and arch_from_text_or_file(text, None if is_arch_file(text) else arch.space) != arch:
            raise SpnasError(f"{ckpt['path']} holds the network {arch}; --arch picks a path "
                             "out of a supernet checkpoint only: drop it")
        return arch
    if not text:
        raise SpnasError(f"{ckpt['path']} is a supernet checkpoint: pass --arch to say which "
                         "path to fine-tune")
    space = checkpoint_space(ckpt)
    arch = arch_from_text_or_file(text, None if is_arch_file(text) else space)
    if arch.space != space:
        raise SpnasError(f"--arch is for {arch.space.describe()}, the supernet "
                         f"{ckpt['path']} for {space.describe()}")
    return arch


@dataclass
class Pretrained:
    """The network a fine-tune starts from."""

    net: ChildNet
    model_args: dict            # its constructor kwargs (dropout), written into checkpoints
    description: str
    from_supernet: bool         # its BN statistics are the supernet's shared ones
    classes: tuple[str, ...] = ()  # the class names it was trained on (empty: not recorded)


def load_pretrained(fc: FinetuneConfig) -> Pretrained:
    ckpt = load_checkpoint(fc.checkpoint, kinds=("child", "supernet"))
    arch = _path_arch(ckpt, fc.arch)
    args = dict(ckpt.get("model_args") or {}) if ckpt["kind"] == "child" else {}
    if fc.dropout is not None:
        args["dropout"] = fc.dropout
    if ckpt["kind"] == "child":
        child = model_from_checkpoint({**ckpt, "model_args": args})
        if not isinstance(child, ChildNet):  # a child checkpoint rebuilds as one
            raise SpnasError(f"{ckpt['path']} does not hold a standalone network")
        return Pretrained(child, args, ckpt["path"], False, tuple(ckpt.get("classes") or ()))
    supernet = model_from_checkpoint(ckpt)
    if isinstance(supernet, ChildNet):  # a supernet checkpoint rebuilds as a supernet
        raise SpnasError(f"{ckpt['path']} does not hold a supernet")
    net = build_child(arch, ckpt["num_classes"], **args)
    net.load_state_dict(supernet.extract(arch).state_dict())
    return Pretrained(net, args, f"path {arch} of the supernet {ckpt['path']}", True,
                  tuple(ckpt.get("classes") or ()))


def resumed_network(last: Path) -> Pretrained:
    """A resumed fine-tune's network as its ``last.pt`` holds it: the weights that file
    restores replace the source's anyway (and the supernet's BN statistics), so the source
    ``--checkpoint`` need not be where it was when the run started."""
    ckpt = load_checkpoint(last, kinds=("child",))
    child = model_from_checkpoint(ckpt)
    if not isinstance(child, ChildNet):
        raise SpnasError(f"{last} does not hold a standalone network; delete it to start the "
                         "fine-tune afresh, or check --exp_name")
    return Pretrained(child, dict(ckpt.get("model_args") or {}),
                      f"{ckpt.get('arch')} (resumed from {last})", False,
                      tuple(ckpt.get("classes") or ()))


class BackboneFreeze:
    """A Task forward that freezes all but the classifier for the first ``steps`` steps."""

    def __init__(self, model: ChildNet, steps: int,
                 run: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda net, x: net(x)):
        self.run = run  # (net, x) -> logits: retrain.child_forward's
        head = {id(p) for p in model.classifier.parameters()}
        self.params = [p for p in model.parameters() if id(p) not in head]
        self.bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        self.steps = steps
        self._frozen: bool | None = None  # None: not applied yet

    def __call__(self, model: nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
        frozen = step < self.steps
        if frozen != self._frozen:
            for p in self.params:
                p.requires_grad_(not frozen)
            if not frozen:  # the frozen BNs train again from the first unfrozen step, not from
                for bn in self.bns:  # the next model.train() (validation's, or a resume's)
                    bn.train(model.training)
            self._frozen = frozen
        if frozen:  # validation puts the whole model back in training mode: redo each step
            for bn in self.bns:
                bn.eval()
        return self.run(model, x)


def _groups(model: ChildNet, weight_decay: float, backbone_lr_scale: float) -> list[dict]:
    head = {id(p) for p in model.classifier.parameters()}
    backbone = [dict(g, lr_scale=backbone_lr_scale)
                for g in param_groups(model, weight_decay, exclude=head)]
    return backbone + param_groups(model.classifier, weight_decay)


def _recalibrate(model: nn.Module, train_x: torch.Tensor, cfg: TrainConfig, n: int,
                 device: torch.device) -> str:
    batches = recalibration_batches(train_x, n, cfg.optim.batch_size * 4,
                                    recal_transform(cfg.data, cfg.run.channels_last_for(device)),
                                    derive_seed(cfg.run.seed, "recal"), device)
    count = recalibrate_bn(model, plain_forward, batches, device, cfg.run.amp)
    return f"recalibrated {count} BatchNorm layers on {min(n, len(train_x))} training images"


@takes_config(TrainConfig, model=FinetuneConfig, name="FinetuneStage")
def finetune(cfg: TrainConfig) -> dict:
    """Fine-tune ``cfg.model.checkpoint`` on ``cfg.data``; returns the results."""
    fc: FinetuneConfig = cfg.model
    require_resumed(fc.checkpoint, cfg.run, "fine-tuning", "--checkpoint", type(fc).__name__)
    if not fc.checkpoint:
        raise SpnasError("--checkpoint is required: a child checkpoint (or its run folder), or a "
                         "supernet checkpoint with --arch")
    if fc.freeze_epochs < 0 or fc.freeze_epochs > cfg.optim.epochs:
        raise SpnasError(f"--freeze_epochs must be 0..{cfg.optim.epochs} (--epochs), "
                         f"got {fc.freeze_epochs}")
    if fc.freeze_epochs and world_size() > 1:  # before any data is loaded
        raise SpnasError("--freeze_epochs runs in one process; drop it or run without torchrun")
    last = run_dir_for(cfg.run) / "last.pt"
    src = resumed_network(last) if cfg.run.resume and last.is_file() else load_pretrained(fc)
    check_layout(src.net.arch, cfg.data, "the network")
    dist_info, device, splits = start_run(cfg)
    model = place(src.net, device, cfg.run.channels_last_for(device))
    notes = [f"fine-tuning {src.description} on {cfg.data.dataset} "
             f"({len(splits.train[0])} training images)"]
    same_names = not src.classes or list(src.classes) == list(splits.classes)
    if not same_names and sorted(src.classes) == sorted(splits.classes):
        raise SpnasError(f"{src.description} was trained with its classes in another order than "
                         f"{cfg.data.dataset} under {cfg.data.data_path} has them; the classifier's "
                         "rows would name the wrong classes: rename the class folders to its order")
    if model.classifier.out_features != len(splits.classes) or not same_names:
        notes.append(f"replaced the classifier: {model.classifier.out_features} -> "
                     f"{len(splits.classes)} classes (new weights"
                     + ("" if same_names else "; the classes differ from the network's") + ")")
        torch.manual_seed(derive_seed(cfg.run.seed, "classifier"))
        model.replace_classifier(len(splits.classes))
    if src.from_supernet:
        notes.append(_recalibrate(model, splits.train[0], cfg, fc.recal_images, device))
    freeze = None
    if fc.freeze_epochs:
        steps = fc.freeze_epochs * steps_per_epoch(len(splits.train[0]), cfg.optim.batch_size,
                                                   dist_info.world, cfg.optim.num_steps)
        freeze = BackboneFreeze(model, steps, child_forward(model, cfg.run))
        notes.append(f"backbone frozen (weights and BN statistics) for {fc.freeze_epochs} "
                     f"epochs ({steps} steps)")
    groups = _groups(model, cfg.optim.weight_decay, fc.backbone_lr_scale)
    return train_child(model, splits, cfg, device, dist_info, src.model_args, groups, freeze,
                       tuple(notes))


