"""One dataclass per command, holding every default of that command, for the command line
and the Python API alike: ``SupernetStage`` (``spnas train``), ``RetrainStage``,
``FinetuneStage`` and ``SuperkernelStage`` (``--recipe spnas``; ``superkernel_recipe("paper")``
for the official code's preset, ``RECIPES``). ``spnas search``'s is ``config.SearchRunConfig``.
The building blocks (data, optimizer, run, each model's settings) are in ``config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from spnas.config import (
    FinetuneConfig,
    OptimConfig,
    RetrainConfig,
    RunConfig,
    SuperkernelConfig,
    SupernetConfig,
    TrainConfig,
)
from spnas.errors import SpnasError
from spnas.fields import from_flat


@dataclass
class SupernetStage(TrainConfig):
    """``spnas train`` / ``spnas.train_supernet``: the SPOS supernet, with the defaults of the
    original code's ``train_supernet.py`` (600 epochs, batch 96, lr 0.025, momentum 0.9, weight
    decay 3e-4, which spnas applies and the original did not: README "spnas and the original")."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=600, batch_size=96, lr=0.025, weight_decay=3e-4))
    run: RunConfig = field(default_factory=lambda: RunConfig(exp_name="spos_supernet"))
    model: SupernetConfig = field(default_factory=SupernetConfig)


@dataclass
class RetrainStage(TrainConfig):
    """``spnas retrain`` / ``spnas.retrain``: a found network from scratch."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4))
    run: RunConfig = field(default_factory=lambda: RunConfig(exp_name="retrain"))
    model: RetrainConfig = field(default_factory=RetrainConfig)


@dataclass
class FinetuneStage(TrainConfig):
    """``spnas finetune`` / ``spnas.finetune``: a trained network (or a supernet path) on new data."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=30, batch_size=128, lr=0.01, weight_decay=5e-4))
    run: RunConfig = field(default_factory=lambda: RunConfig(exp_name="finetune"))
    model: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model.freeze_epochs > self.optim.epochs:
            raise SpnasError(f"--freeze_epochs must be 0..{self.optim.epochs} (--epochs), got "
                             f"{self.model.freeze_epochs}")


@dataclass
class SuperkernelStage(TrainConfig):
    """``spnas superkernel`` / ``spnas.superkernel``: the Single-Path NAS search (spnas recipe)."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=8, batch_size=64, lr=0.05, weight_decay=4e-5, label_smoothing=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(exp_name="superkernel"))
    model: SuperkernelConfig = field(default_factory=SuperkernelConfig)


# The two presets of ``spnas superkernel --recipe``, by setting name; every recipe names
# every key, and ``SuperkernelStage()`` is "spnas" (a test checks). docs/superkernel.md
# says why each spnas choice differs and what measurement supports it.
RECIPES: dict[str, dict] = {
    "spnas": {
        "epochs": 8, "lr": 0.05, "lr_batch": None, "momentum": 0.9, "nesterov": False,
        "schedule": "cosine", "min_lr": 0.0, "decay_factor": None, "decay_epochs": 2.4,
        "optimizer": "sgd", "rmsprop_alpha": 0.9, "rmsprop_eps": 1e-3,
        "weight_decay": 4e-5, "weight_decay_on": "weights",
        "threshold_lr_scale": 100.0, "threshold_weight_decay": 0.0,
        "lam": 0.1, "lam_scale": 1.0, "latency_formula": "paper",
        "warmup_frac": 0.625, "keep_prob": 0.6, "gate_dropout_rescale": False,
        "label_smoothing": 0.1, "dropout": 0.2, "mask_at": "activation", "init": "spnas",
        "bn_eps": 1e-5, "bn_momentum": 0.1, "ema_decay": 0.0,
    },
    # github dstamoulis/single-path-nas, nas-search/search_main.py, nas_utils.py,
    # superkernel.py, singlepath_supernet.py, supernet_macro.py; lambda from its README.
    "paper": {
        "epochs": 8,                    # 10008 steps of 1024 ImageNet images
        "lr": 0.064, "lr_batch": 1024,  # base_learning_rate 0.016 x 1024 / 256
        "momentum": 0.9, "nesterov": False,
        "schedule": "constant", "min_lr": 0.0,  # warm-up cancelled (warmup_epochs=-1) ...
        "decay_factor": 0.97, "decay_epochs": 2.4,  # ... x 0.97 every 2.4 epochs (staircase)
        "optimizer": "rmsprop_tf", "rmsprop_alpha": 0.9, "rmsprop_eps": 1e-3,
        "weight_decay": 1e-5, "weight_decay_on": "non_bn",  # every variable but BN's ...
        "threshold_lr_scale": 1.0, "threshold_weight_decay": 1e-5,  # ... thresholds included
        "lam": 0.02, "lam_scale": 1000.0,  # runtime_lambda * 1e3 * ln(R), lambda 0.020
        "latency_formula": "paper",
        "warmup_frac": 0.625, "keep_prob": 0.6, "gate_dropout_rescale": True,  # 6255 of 10008
        "label_smoothing": 0.1, "dropout": 0.2, "mask_at": "kernel", "init": "paper",
        "bn_eps": 1e-3, "bn_momentum": 0.01,  # TF decay 0.99
        "ema_decay": 0.9999,
    },
}


def superkernel_recipe(name: str = "spnas", **settings) -> SuperkernelStage:
    """``SuperkernelStage`` of preset ``name`` (``RECIPES``), with ``settings`` (by leaf name) on top."""
    if name not in RECIPES:
        raise SpnasError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return from_flat(SuperkernelStage(), {**RECIPES[name], "recipe": name, **settings})
