"""Retraining a found architecture from scratch: the standalone network, affine BN.

A retrain is a ``Task`` of kind "child" for the one ``Trainer``: a plain
forward, cross-entropy with optional label smoothing, and validation by
``evaluation.evaluate`` on the held-out split (the test set with
``--val_size 0``, as the old recipe did). With ``--ema`` an exponential
moving average of the weights (``engine.ema.Ema``, its decay warmed up unless
``--no-ema_warmup``; BN statistics averaged too) is what gets validated and what
checkpoints ship as ``model``; the trained weights ride along as ``train_model`` so a
run resumes exactly.

After the last step the test set is evaluated once, for the best checkpoint
(by validation) and for the final weights: ``type: "test"`` records in
metrics.jsonl, ``results.json`` and ``curve.png`` in the run folder.
``train_child`` is shared with ``spnas finetune``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spnas.arch import Arch, arch_from_text_or_file
from spnas.config import ArchConfig, DataConfig, RetrainConfig, RunConfig, TrainConfig
from spnas.data.datasets import Splits
from spnas.data.loading import build_transform, input_side, train_loader
from spnas.engine.checkpoint import load_checkpoint, model_from_checkpoint
from spnas.engine.counting import count_macs, count_params
from spnas.engine.ema import Ema
from spnas.engine.evaluation import evaluate, plain_forward
from spnas.engine.graphs import GraphedBlocks
from spnas.engine.plots import plot_training_curves
from spnas.engine.runlog import RunLog, read_metrics, require_resumed, run_dir_for
from spnas.engine.schedule import param_groups
from spnas.engine.trainer import Task, Trainer, cross_entropy_loss, start_run
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.files import atomic_write_text
from spnas.runtime import Dist, place
from spnas.spaces import build_child, make_space
from spnas.spaces.common import ChildNet
from spnas.spaces.spos import spos_options


# ---- the architecture ------------------------------------------------------------------
def is_arch_file(text: str) -> bool:
    return text.endswith(".json") or Path(text).is_file()


def load_arch(cfg: ArchConfig, data: DataConfig, resumed: bool = False) -> Arch:
    """``--arch``: an arch file, or a string/indices of the space the flags describe.

    ``resumed``: the space settings are a resumed run's config.json, where an older spnas
    recorded them as given even when an arch file said otherwise; they are not checked."""
    if not cfg.arch:
        raise SpnasError("--arch is required: an arch file (.json), tokens ('k3 k5 x ...') "
                         "or choice indices ('1,0,3,...')")
    if Path(cfg.arch).expanduser().is_dir():
        inside = sorted(p.name for p in Path(cfg.arch).expanduser().glob("*arch*.json"))
        raise SpnasError(f"--arch {cfg.arch} is a folder; give an arch file in it"
                         + (f" ({', '.join(inside)})" if inside else "")
                         + ", tokens ('k3 k5 x ...') or choice indices ('1,0,3,...')")
    if is_arch_file(cfg.arch):
        arch = arch_from_text_or_file(cfg.arch, None)
        check_layout(arch, data, f"arch file {cfg.arch}")
        if not resumed:
            check_file_space(cfg, arch)
        return arch
    return arch_from_text_or_file(cfg.arch, make_space(cfg.space or "spos", data_layout(data),
                                                       **space_options(cfg)))


def space_options(cfg: ArchConfig) -> dict:
    """The options of the space of an arch string that --layers and --num_choices give (none:
    the spec's default, 20 and 4): the spos space's size; the mbconv space has none (20
    layers of k3e3 k3e6 k5e3 k5e6 skip)."""
    sizes = {k: v for k, v in (("layers", cfg.layers), ("num_choices", cfg.num_choices))
             if v is not None}
    if (cfg.space or "spos") == "spos":
        return sizes
    if sizes:
        drop = " ".join(f"--{k} {v}" for k, v in sizes.items())
        raise SpnasError(f"--layers and --num_choices size the spos space; --space {cfg.space} "
                         f"has a fixed size, drop {drop}")
    return {}


def check_file_space(cfg: ArchConfig, arch: Arch) -> None:
    """An arch file names its space; --space, --layers or --num_choices given that describe
    another are refused, not silently ignored."""
    space = arch.space
    says: dict[str, str | int] = {"space": space.name}
    if space.name == "spos":
        says.update(spos_options(space))
    for name in ("space", "layers", "num_choices"):
        given = getattr(cfg, name)
        if given is None or (name in says and given == says[name]):
            continue
        has = (f"has {name} {says[name]}" if name in says
               else f"is of the {space.name} space, which --{name} does not size")
        raise SpnasError(f"arch file {cfg.arch} {has} ({space.describe()}); drop --{name} "
                         f"{given}: an arch file names its own space")


def data_layout(data: DataConfig) -> str:
    return "imagenet" if data.resize else "cifar"


def check_layout(arch: Arch, data: DataConfig, what: str) -> None:
    """The network's strides must suit the images: the imagenet layout goes with --resize."""
    if arch.space.layout != data_layout(data):
        raise SpnasError(f"{what} is for the {arch.space.layout} layout; "
                         + ("drop --resize" if data.resize else "add --resize"))


# ---- the task ----------------------------------------------------------------------------
def ema_hooks(model: nn.Module, decay: float, warmup: bool) -> dict:
    """Task fields that keep an EMA of ``model`` (weights and BN statistics) and ship it."""
    if not 0.0 < decay < 1.0:
        raise SpnasError(f"--ema_decay must be between 0 and 1, got {decay}")
    ema = Ema(model, decay, warmup)
    return {"deploy": ema.deploy, "on_step_end": lambda step, log: ema(step)}


def child_validator(net: nn.Module, splits: Splits, cfg: TrainConfig, device: torch.device,
                    eval_batch: int):
    """Top-1, top-5 and loss of ``net`` (the trained network or its EMA) on the val split."""
    transform = build_transform(cfg.data, cfg.run.channels_last_for(device))
    x, y = splits.val

    def validate(model, step):
        r = evaluate(net, plain_forward, x, y, transform, len(splits.classes), eval_batch,
                     device, cfg.run.amp)
        return {"val_acc": r["acc"], "val_top5": r["top5"], "val_loss": r["loss"]}
    return validate


def child_forward(model: ChildNet, run: RunConfig) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """``(net, x) -> logits`` of a training step: ``net(x)`` (the model or its DDP wrapper), or
    with ``--cuda_graphs`` each layer from its graph (one process: ``net`` is ``model``)."""
    if not run.cuda_graphs:
        return lambda net, x: net(x)
    graphs = GraphedBlocks(run.amp)
    return lambda net, x: graphs.forward(model.stem, list(model.layers), model.head, x)


def child_task(model: ChildNet, splits: Splits, cfg: TrainConfig, device: torch.device,
               model_args: dict, groups: list[dict] | None = None, forward=None) -> Task:
    """The Task that trains standalone network ``model``; ``cfg.model`` says ema/eval_batch.
    ``forward(net, x, step)``: by default ``child_forward``'s."""
    opts = cfg.model
    ema = ema_hooks(model, opts.ema_decay, opts.ema_warmup) if opts.ema else {}
    if forward is None:
        run = child_forward(model, cfg.run)
        forward = lambda net, x, step: run(net, x)  # noqa: E731
    return Task(kind="child", model=model, space=model.arch.space,
                num_classes=len(splits.classes),
                forward=forward,
                loss=cross_entropy_loss(cfg.optim.label_smoothing),
                validate=child_validator(ema.get("deploy", model), splits, cfg, device,
                                         opts.eval_batch),
                param_groups=groups or param_groups(model, cfg.optim.weight_decay),
                arch=model.arch, model_args=model_args, **ema)


# ---- training and the final test -----------------------------------------------------------
def train_child(model: ChildNet, splits: Splits, cfg: TrainConfig, device: torch.device,
                dist_info: Dist, model_args: dict, groups: list[dict] | None = None,
                forward=None, notes: tuple[str, ...] = ()) -> dict:
    """Train ``model`` as ``cfg`` says, then test it once; returns the results."""
    task = child_task(model, splits, cfg, device, model_args, groups, forward)
    loader = train_loader(splits, cfg, device, dist_info)
    run_dir = run_dir_for(cfg.run)
    trainer = Trainer(task, loader, cfg, run_dir, dist_info)
    for note in (*notes, *_ema_notes(cfg, trainer.total)):
        trainer.log.info(note)
    fit = trainer.fit()
    if not dist_info.main:
        return fit
    shipped = task.deploy if task.deploy is not None else task.model
    if not isinstance(shipped, ChildNet):  # the model, or its EMA: a copy of it
        raise TypeError(f"a child run ships a ChildNet, not {type(shipped).__name__}")
    results = final_test(shipped, trainer.step, splits, cfg, device, trainer.log)
    plot_training_curves(read_metrics(run_dir), loader.steps_per_epoch, run_dir / "curve.png",
                title=str(task.arch))
    return results


def _ema_notes(cfg: TrainConfig, steps: int) -> list[str]:
    """A note when a constant EMA decay leaves much of the average on the first weights."""
    opts = cfg.model
    kept = opts.ema_decay ** (steps - 1) if opts.ema and not opts.ema_warmup else 0.0
    if kept < 0.05:
        return []
    return [f"note: with --no-ema_warmup, the EMA (--ema_decay {opts.ema_decay:g}) still holds "
            f"{kept:.0%} of the first step's weights after the run's {steps} steps; drop "
            "--no-ema_warmup, or lower --ema_decay"]


def final_test(shipped: ChildNet, step: int, splits: Splits, cfg: TrainConfig,
               device: torch.device, log: RunLog) -> dict:
    """Test accuracy of best.pt and of the final weights, once; written to results.json."""
    path = log.dir / "results.json"
    if path.is_file():  # a finished run resumed again: its test is done
        done = json.loads(path.read_text())
        if done.get("step") == step:
            return done
    best: dict[str, Any] = load_checkpoint(log.dir / "best.pt", kinds=("child",)) \
        if (log.dir / "best.pt").is_file() else {"step": step, "metrics": {}}
    nets: dict[str, tuple[nn.Module, int]] = {"last": (shipped, step)}
    if best["step"] != step:
        nets["best"] = (place(model_from_checkpoint(best), device, cfg.run.channels_last_for(device)),
                        best["step"])
    tested = {which: _test(net, at, step, which, splits, cfg, device, log)
              for which, (net, at) in nets.items()}
    tested.setdefault("best", dict(tested["last"]))
    tested["best"]["val_acc"] = best["metrics"].get("best")
    res = input_side(cfg.data, splits.train[0])
    probe = torch.zeros(1, 3, res, res, device=device)
    results = {"step": step, "arch": str(shipped.arch), "space": shipped.arch.space.describe(),
               "num_classes": len(splits.classes), "dataset": cfg.data.dataset,
               "val_is_test": splits.val_is_test, "params": count_params(shipped),
               "macs": count_macs(shipped.eval(), probe), "resolution": res, **tested}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    return results


def _test(net: nn.Module, at: int, step: int, which: str, splits: Splits, cfg: TrainConfig,
          device: torch.device, log: RunLog) -> dict:
    transform = build_transform(cfg.data, cfg.run.channels_last_for(device))
    r = evaluate(net, plain_forward, *splits.test_set(), transform, len(splits.classes),
                 cfg.model.eval_batch, device, cfg.run.amp)
    out = {"step": at, "test_acc": r["acc"], "test_top5": r["top5"], "test_loss": r["loss"],
           "n": r["n"]}
    log.metric({"type": "test", "which": which, **out, "step": step, "from_step": at})
    log.info(f"test ({which} weights, step {at}): top-1 {r['acc']:.4f} top-5 {r['top5']:.4f} "
             f"loss {r['loss']:.4f} on {r['n']} images")
    return out


@takes_config(TrainConfig, model=RetrainConfig, name="RetrainStage")
def retrain(cfg: TrainConfig) -> dict:
    """Train the standalone network of ``cfg.model.arch`` from scratch; returns the results."""
    rc: RetrainConfig = cfg.model
    require_resumed(rc.arch, cfg.run, "retrain", "--arch", type(rc).__name__)
    arch = load_arch(rc, cfg.data, resumed=cfg.run.resume)
    dist_info, device, splits = start_run(cfg)
    model_args = {"dropout": rc.dropout}
    model = place(build_child(arch, len(splits.classes), **model_args), device,
                  cfg.run.channels_last_for(device))
    return train_child(model, splits, cfg, device, dist_info, model_args)
