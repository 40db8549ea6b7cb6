"""Hyperparameters in one typed place, with units. Every run dumps its config as JSON.

Functions take the values they need from these dataclasses; nothing passes an
``argparse.Namespace`` down a call chain. ``from_namespace`` picks a
dataclass's fields out of parsed flags of the same names.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    dataset: str = "cifar10"        # cifar10 | cifar100 | folder
    data_path: str = "data"         # folder holding the data (any accepted layout)
    classes: int | None = None      # expected number of classes; checked against the data
    val_size: int = 5000            # images held out of training for validation; 0 = use test
    cutout: bool = False
    cutout_length: int = 16         # pixels, side of the cutout square
    auto_aug: bool = False          # torchvision AutoAugment, CIFAR-10 policy
    resize: bool = False            # train at 224 (RandomResizedCrop), eval Resize 256 + Crop 224
    image_size: int = 32            # pixels; image folders are resized to this
    download: bool = True           # fetch the official tarball when no data is found


@dataclass
class OptimConfig:
    epochs: int = 600
    num_steps: int | None = None    # cap on optimizer steps per epoch; None = the whole epoch
    batch_size: int = 64            # images per step per process
    lr: float = 0.025               # peak learning rate (per step of batch_size images)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4      # on conv/linear weights only, never on BN or biases
    label_smoothing: float = 0.0
    schedule: str = "cosine"        # cosine | linear, decaying over all steps after warm-up
    warmup_epochs: float = 0.0      # linear warm-up from 0, in epochs
    min_lr: float = 0.0             # learning rate reached at the last step


@dataclass
class RunConfig:
    exp_name: str = "run"
    save_path: str = "checkpoints"  # run folder = save_path/exp_name
    seed: int = 0
    print_freq: int = 100           # steps between metric lines
    val_interval: int = 5           # epochs between validations (and always after the last)
    ckpt_interval: int = 0          # steps between extra 'last' checkpoints; 0 = at validations only
    stop_after: int | None = None   # stop after this many steps in all (schedule still spans epochs)
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = True                # bf16 autocast on CUDA (never on CPU)
    channels_last: bool = True      # NHWC activations (faster on CPU and GPU, see README)
    deterministic: bool = False     # torch.use_deterministic_algorithms on CUDA
    resume: bool = False            # continue from save_path/exp_name/last.pt


@dataclass
class SupernetConfig:
    space: str = "spos"
    layers: int = 20                # searchable layers (the first N of the space)
    num_choices: int = 4            # blocks per layer (the first K of k3 k5 k7 x)
    val_paths: int = 3              # fixed seeded paths averaged for supernet validation
    recal_images: int = 1024        # training images for BN recalibration per validation path


@dataclass
class RetrainConfig:
    arch: str = ""                  # arch string, choice indices ("1,0,3,...") or arch file (JSON)
    space: str = "spos"             # space of an arch string (an arch file names its own)
    layers: int = 20                # searchable layers of that space
    num_choices: int = 4            # blocks per layer of that space
    dropout: float = 0.0            # probability, before the classifier
    ema: bool = False               # validate and ship an exponential moving average of the weights
    ema_decay: float = 0.9998       # per optimizer step (horizon about 1 / (1 - decay) steps)
    eval_batch: int = 500           # images per evaluation batch


@dataclass
class FinetuneConfig:
    checkpoint: str = ""            # a child checkpoint, or a supernet checkpoint with ``arch``
    arch: str | None = None         # the path to take out of a supernet checkpoint
    dropout: float | None = None    # probability before the classifier; None = the checkpoint's
    freeze_epochs: int = 0          # epochs with the backbone frozen (weights and BN statistics)
    backbone_lr_scale: float = 1.0  # backbone learning rate / classifier learning rate, after
    ema: bool = False
    ema_decay: float = 0.9998       # per optimizer step
    eval_batch: int = 500           # images per evaluation batch
    recal_images: int = 2048        # training images for BN statistics of a supernet path


@dataclass
class SuperkernelConfig:
    """The superkernel search; defaults are ``--recipe spnas`` (``cli.superkernel.RECIPES``)."""

    recipe: str = "spnas"           # spnas | paper: the preset the flags started from
    layout: str = "cifar"           # cifar | imagenet (strides of the MBConv space)
    lam: float = 0.1                # weight of ln(predicted latency) after the warm-up, x lam_scale
    lam_scale: float = 1.0          # penalty = lam x lam_scale x ln R; the paper's code: 1e3
    target_latency: float | None = None  # in the table's unit: penalise only above it
    target_unit: str = "ms"         # unit of target_latency: ms (measured table) | MMAC
    latency_table: str | None = None  # JSON from 'spnas latency-table'; None = MACs table
    formula: str = "paper"          # paper (R[k3e3] ~ R[k5e3] R[k3e6] / R[k5e6]) | exact
    warmup_frac: float = 0.625      # fraction of the steps with lambda 0 and gate dropout
    keep_prob: float = 0.6          # probability a gate is kept during the warm-up
    gate_dropout_rescale: bool = False  # kept warm-up gates x 1 / keep_prob (TF1 dropout, the paper)
    threshold_lr_scale: float = 100.0  # thresholds' lr = scale x the weights' lr
    threshold_weight_decay: float = 0.0  # L2 on the thresholds (the paper: 1e-5, as every weight)
    weight_decay_on: str = "weights"  # weights (conv/linear, dim > 1) | non_bn (every non-BN one)
    mask_at: str = "activation"     # activation (exact zeros) | kernel (the paper's, leaks)
    dropout: float = 0.2            # before the classifier
    init: str = "spnas"             # spnas (torch He fan-out) | paper (official/timm: dw fan-out k k)
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1        # torch's: weight of the new batch (= 1 - TF's decay)
    optimizer: str = "sgd"          # sgd (optim.momentum, nesterov) | rmsprop_tf (TF1's RMSProp)
    rmsprop_alpha: float = 0.9      # rmsprop_tf: decay of the mean square (TF "decay")
    rmsprop_eps: float = 1e-3       # rmsprop_tf: added inside the square root, as TF does
    lr_batch: int | None = None     # optim.lr/min_lr are per this many images; scaled to the batch
    lr_decay_factor: float | None = None  # staircase: lr x factor ** floor(epoch / lr_decay_epochs)
    lr_decay_epochs: float = 2.4    # epochs per staircase step
    ema_decay: float = 0.0          # evaluate an EMA of the weights (TF's, warmed up); 0 = none


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: Any = None               # the stage's own dataclass (e.g. SupernetConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = type(self.model).__name__ if self.model is not None else None
        return d


def from_namespace(cls, ns, **overrides):
    """Build dataclass ``cls`` from the attributes of ``ns`` that share its field names."""
    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    kw.update(overrides)
    return cls(**kw)


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run seed and a purpose, e.g. ``derive_seed(0, "path", step)``.

    Every random draw of a run comes from a generator seeded this way, so any
    step's data, augmentation and sampled path are a function of (seed, step):
    runs repeat exactly and resume at any step.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class SearchConfig:
    """How candidates are proposed, and the budget they must fit (``spnas search``)."""

    method: str = "evolution"       # evolution | random
    population: int = 50            # candidates per generation
    top_k: int = 10                 # best candidates kept across all generations (the parents)
    generations: int = 20
    mutation_prob: float = 0.1      # chance that a mutation redraws each layer's choice
    max_tries: int = 10             # mutation/crossover draws per wanted candidate, then random
    num: int = 1000                 # random search: candidates
    max_flops: float | None = None  # multiply-accumulates of the standalone network
    max_params: float | None = None  # parameters of the standalone network
    max_latency_ms: float | None = None  # milliseconds per batch, predicted by latency_table
    latency_table: str | None = None  # JSON file from 'spnas latency-table'
    seed: int = 0                   # every draw of the search, and the recalibration images


@dataclass
class ScoringConfig:
    """How one candidate is scored: BN recalibration, then accuracy on held-out images."""

    recal_images: int = 2560        # training images (crop/flip only) for BN recalibration
    recal_batch: int = 512          # images per recalibration batch (BN uses batch statistics)
    val_images: int | None = None   # images of the scoring split; None = all of it
    eval_batch: int = 1000          # images per evaluation batch
    score_on: str = "val"           # val (held out of training) | test (warned)
    cache_gb: float = 4.0           # GiB of prepared images kept on the device; more: rebuilt per candidate


@dataclass
class SearchRunConfig:
    """One ``spnas search`` run: which supernet, which data, where the results go."""

    checkpoint: str = ""            # supernet checkpoint (.pt) or its run folder
    out: str | None = None          # output folder; None = search_<method> beside the checkpoint
    search: SearchConfig = field(default_factory=SearchConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    data: dict = field(default_factory=dict)  # DataConfig fields overriding the checkpoint's
    split_seed: int | None = None   # seed of the train/val split; None = the checkpoint's run seed
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = True                # bf16 autocast on CUDA
    channels_last: bool = True
    resume: bool = False            # continue the search recorded in the output folder


@dataclass
class LatencyConfig:
    """``spnas latency-table``: time every (layer, choice) of a space on one device."""

    out: str = "latency.json"       # the table (JSON)
    space: str = "spos"             # a registered space (spaces.make_space)
    layout: str = "cifar"           # cifar | imagenet
    options: dict = field(default_factory=dict)  # space options, e.g. {"layers": 8}
    checkpoint: str | None = None   # take the space (and classes) from this checkpoint instead
    num_classes: int = 10
    device: str = "cpu"             # cpu | cuda | cuda:N
    batch: int = 1                  # images per timed forward
    resolution: int | None = None   # pixels; None = the layout's (32 cifar, 224 imagenet)
    threads: int | None = None      # CPU threads; None = torch's default
    calibrate: int = 10             # random whole networks that fit the table's scale; 0 = none
    validate: int = 20              # other random whole networks timed to check it; 0 = none
    warmup: int = 10                # untimed calls before each measurement
    repeats: int = 30               # timed calls; the median is kept
    channels_last: bool = True
    overwrite: bool = False         # replace an existing --out


# ---- one dataclass per stage: every default of a command, for the CLI and the API alike ----
@dataclass
class SupernetStage(TrainConfig):
    """``spnas train`` / ``spnas.train_supernet``: the SPOS supernet, the seed recipe's defaults."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=600, batch_size=64, lr=0.025, weight_decay=3e-4))
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


@dataclass
class SuperkernelStage(TrainConfig):
    """``spnas superkernel`` / ``spnas.superkernel``: the Single-Path NAS search (spnas recipe)."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epochs=8, batch_size=64, lr=0.05, weight_decay=4e-5, label_smoothing=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(exp_name="superkernel"))
    model: SuperkernelConfig = field(default_factory=SuperkernelConfig)
