"""SPOS supernet training: one uniformly sampled path per step (Guo et al. 2019)."""
from __future__ import annotations

import random

import torch

from spnas.arch import Arch, SpaceSpec
from spnas.config import DataConfig, RunConfig, SupernetConfig, TrainConfig, derive_seed
from spnas.data.datasets import Splits
from spnas.data.loading import build_transform, recal_transform, train_loader
from spnas.engine.evaluation import bn_buffers, evaluate, recalibrate_bn, recalibration_batches
from spnas.engine.graphs import GraphedBlocks
from spnas.engine.runlog import run_dir_for
from spnas.engine.schedule import param_groups
from spnas.engine.trainer import Task, Trainer, cross_entropy_loss, start_run
from spnas.fields import takes_config
from spnas.runtime import place
from spnas.spaces.spos import SposSupernet, spos_space


def supernet_space(model: SupernetConfig, data: DataConfig) -> SpaceSpec:
    return spos_space(model.layers, model.num_choices, "imagenet" if data.resize else "cifar")


def sample_path(space: SpaceSpec, seed: int, step: int) -> Arch:
    """The path trained at ``step``: uniform over each layer's choices, seeded by (seed, step)."""
    return Arch.sample(space, random.Random(derive_seed(seed, "path", step)))


def validation_paths(space: SpaceSpec, seed: int, n: int) -> list[Arch]:
    rng = random.Random(derive_seed(seed, "validation paths"))
    return [Arch.sample(space, rng) for _ in range(n)]


def random_path_validator(splits: Splits, cfg: TrainConfig, device: torch.device,
                          space: SpaceSpec):
    """The original code's validation of a supernet: each batch of ``batch_size`` validation
    images through a path of its own (seeded by the step and the batch), with the BN
    statistics as training left them."""
    transform = build_transform(cfg.data, cfg.run.channels_last_for(device))
    val_x, val_y = splits.val

    def validate(model, step):
        rng = random.Random(derive_seed(cfg.run.seed, "validation batch paths", step))
        fwd = lambda m, x: m(x, Arch.sample(space, rng))  # noqa: E731  (one call per batch)
        r = evaluate(model, fwd, val_x, val_y, transform, len(splits.classes),
                     cfg.optim.batch_size, device, cfg.run.amp)
        return {"val_acc": r["acc"], "val_loss": r["loss"]}
    return validate


def make_path_validator(splits: Splits, cfg: TrainConfig, device: torch.device, paths: list[Arch],
                        recal_images: int):
    """Validation of a supernet: mean over fixed paths, each with its BN recalibrated."""
    eval_batch = 100 if cfg.data.resize else 500  # keeps 224x224 activations cache-sized
    transform = build_transform(cfg.data, cfg.run.channels_last_for(device))
    recal = recal_transform(cfg.data, cfg.run.channels_last_for(device))
    val_x, val_y = splits.val
    train_x = splits.train[0]
    seed, amp = cfg.run.seed, cfg.run.amp

    def validate(model, step):
        saved = bn_buffers(model)
        accs, losses = [], []
        for arch in paths:
            fwd = lambda m, x, a=arch: m(x, a)  # noqa: E731
            recalibrate_bn(model, fwd, recalibration_batches(
                train_x, recal_images, cfg.optim.batch_size * 4, recal,
                derive_seed(seed, "recal"), device), device, amp)
            r = evaluate(model, fwd, val_x, val_y, transform, len(splits.classes), eval_batch,
                         device, amp)
            accs.append(r["acc"])
            losses.append(r["loss"])
        model.load_state_dict(saved, strict=False)
        return {"val_acc": sum(accs) / len(accs), "val_loss": sum(losses) / len(losses),
                "val_acc_min": min(accs), "val_acc_max": max(accs)}
    return validate


def supernet_step_forward(model: SposSupernet, space: SpaceSpec, seed: int, run: RunConfig):
    """The trainer's ``forward(m, x, step)``: the path of ``step``, eagerly through ``m`` (the
    model, or its DDP wrapper), or with ``--cuda_graphs`` from each block's graph."""
    if not run.cuda_graphs:
        return lambda m, x, step: m(x, sample_path(space, seed, step))
    graphs = GraphedBlocks(run.amp)

    def forward(m, x, step):  # one process (start_run checked): m is the model itself
        blocks = model.path_blocks(sample_path(space, seed, step))
        return graphs.forward(model.stem, blocks, model.head, x)
    return forward


@takes_config(TrainConfig, model=SupernetConfig, name="SupernetStage")
def train_supernet(cfg: TrainConfig) -> dict:
    """Train the SPOS supernet as ``cfg`` says; returns the final metrics."""
    model_cfg: SupernetConfig = cfg.model
    dist_info, device, splits = start_run(cfg)
    space = supernet_space(model_cfg, cfg.data)
    model = place(SposSupernet(space, len(splits.classes)), device, cfg.run.channels_last_for(device))
    seed = cfg.run.seed
    task = Task(
        kind="supernet", model=model, space=space, num_classes=len(splits.classes),
        forward=supernet_step_forward(model, space, seed, cfg.run),
        loss=cross_entropy_loss(cfg.optim.label_smoothing),
        validate=make_path_validator(splits, cfg, device,
                                     validation_paths(space, seed, model_cfg.val_paths),
                                     model_cfg.recal_images) if model_cfg.val_recal else
        random_path_validator(splits, cfg, device, space),
        param_groups=param_groups(model, cfg.optim.weight_decay),
        find_unused_parameters=True, zero_grads=model_cfg.unsampled_momentum)
    loader = train_loader(splits, cfg, device, dist_info)
    return Trainer(task, loader, cfg, run_dir_for(cfg.run), dist_info).fit()
