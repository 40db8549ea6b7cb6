"""Hyperparameters in one typed place, with units and checks. Every run dumps its config as JSON.

Each setting is declared once (``fields.opt``): its default, help text, unit and
check. The command line is generated from these dataclasses (``cli.generate``),
so ``spnas retrain --help``, ``RetrainStage()`` and a recipe file agree on every
default; a bad value is the same one-line ``SpnasError`` from Python
(``OptimConfig(batch_size=0)``) as from ``--batch_size 0``.

One dataclass per command holds every default of that command: the training
commands' are in ``defaults`` (``SupernetStage`` ...), ``spnas search``'s is
``SearchRunConfig`` here. Functions take the values they need from these;
nothing passes an ``argparse.Namespace`` down a call chain.

Resuming a run takes its ``config.json`` back; only the settings in
``resume.RESUMABLE`` may differ from it (``resume.resume_changes``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from spnas.errors import SpnasError
from spnas.fields import Checked, flag_of, opt
from spnas.fields import count_arg as count_arg  # re-exported: budgets read like papers write them

DATASETS = ("cifar10", "cifar100", "folder")  # = data.DATASETS (a test checks)
SCHEDULES = ("cosine", "linear", "constant")


def plain_folder_name(name: str) -> str | None:
    """Why ``name`` can't be a run folder's name (it can't leave, or be, --save_path); None: it can."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if not name or name in (".", "..") or any(s in name for s in seps) or "\0" in name:
        return (f"{name!r} must be a plain folder name (not empty, no '/', not '.' or '..'); "
                "the run folder is --save_path/--exp_name")
    return None


RESIZED = 224  # the side --resize trains and evaluates at


@dataclass
class DataConfig(Checked):
    dataset: str = opt("cifar10", "cifar10 or cifar100 (official tarball or batches), or folder "
                       "(train/<class>/ + test/<class>/ image folders)", choices=DATASETS)
    data_path: str = opt("data", "folder with the dataset (official tarball, unpacked batches, or "
                         "train/<class>/ + test/<class>/ image folders); downloaded if absent", path=True)
    classes: int | None = opt(None, "number of classes, checked against the data; none = the "
                              "data's", check="positive")
    val_size: int = opt(5000, "training images held out for validation (stratified); 0 = validate "
                        "on the test set, as the old recipe did", unit="images", check="nonneg")
    cutout: bool = opt(False, "cutout augmentation")
    cutout_length: int = opt(16, "side of the cutout square", unit="pixels", check="positive")
    auto_aug: bool = opt(False, "torchvision AutoAugment, CIFAR-10 policy")
    resize: bool = opt(False, "train at 224 (RandomResizedCrop) and evaluate Resize 256 + "
                       "CenterCrop 224, with the ImageNet layout of the network")
    image_size: int = opt(32, "image folders are resized to this", unit="pixels", check="positive")
    download: bool = opt(True, "download the official tarball when no data is found")


@dataclass
class OptimConfig(Checked):
    epochs: int = opt(600, "epochs; the schedule spans all of them", check="positive")
    num_steps: int | None = opt(None, "cap on optimizer steps per epoch; none = the whole epoch",
                                unit="steps", check="positive")
    batch_size: int = opt(64, "images per step per process", check="positive")
    lr: float = opt(0.025, "peak learning rate", unit="per step of batch_size images, or of "
                    "lr_batch", check="positive")
    lr_batch: int | None = opt(None, "lr and min_lr are for this many images per step, scaled "
                               "linearly to batch_size x processes; none = no scaling",
                               unit="images", check="positive")
    momentum: float = opt(0.9, "momentum of SGD (or of rmsprop_tf)", check="fraction")
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = opt(3e-4, "L2 weight decay, on conv/linear weights only (never BN or "
                              "biases)", check="nonneg", flags=("--weight-decay",))
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy", check="fraction")
    schedule: str = opt("cosine", "cosine or linear: from lr to min_lr over the steps after the "
                        "warm-up; constant: lr throughout", choices=SCHEDULES)
    warmup_epochs: float = opt(0.0, "linear warm-up from 0", unit="epochs", check="nonneg")
    min_lr: float = opt(0.0, "learning rate reached at the last step (cosine, linear)",
                        check="nonneg")
    decay_factor: float | None = opt(None, "staircase on top of the schedule: lr x factor ** "
                                     "floor(step / (decay_epochs x steps per epoch)), TF's "
                                     "exponential_decay(staircase=True); none = no staircase",
                                     check="positive")
    decay_epochs: float = opt(2.4, "epochs per staircase step", unit="epochs", check="positive")


# The precision and memory format of training and search: the original code's fp32 NCHW on
# CUDA, where it measured faster (README), and channels_last on the CPU, where that measured
# faster; bf16 autocast and channels_last stay a flag away on CUDA.
AMP_HELP = ("bf16 autocast on CUDA (never on the CPU); off: fp32, as the original code, which "
            "measured faster at batch 96 on an H200 (README)")
CHANNELS_LAST_HELP = ("NHWC memory format; none = the device's default: on for the CPU (faster "
                      "there), off for CUDA (NCHW, as the original code)")


def channels_last_on(device, setting: bool | None) -> bool:
    """The memory format on ``device`` (a ``torch.device``): ``setting``, or when none the
    device's default, channels_last on the CPU only (see ``CHANNELS_LAST_HELP``)."""
    return device.type == "cpu" if setting is None else setting


class _MemoryFormat:
    """``channels_last_for(device)``, for the configs with a ``channels_last`` setting."""

    channels_last: bool | None

    def channels_last_for(self, device) -> bool:
        return channels_last_on(device, self.channels_last)


@dataclass
class RunConfig(_MemoryFormat, Checked):
    exp_name: str = opt("run", "run folder name under --save_path", check=plain_folder_name)
    save_path: str = opt("checkpoints", "folder of the run folders (the run is "
                         "save_path/exp_name)", path=True)
    seed: int = opt(0, "seed of every random draw: data order, augmentation, paths, init", check="seed")
    print_freq: int = opt(100, "steps between metric lines", unit="steps", check="positive")
    val_interval: int = opt(5, "epochs between validations (and always after the last epoch)",
                            unit="epochs", check="positive")
    ckpt_interval: int = opt(0, "steps between extra last.pt checkpoints; 0 = at validations "
                             "only", unit="steps", check="nonneg")
    stop_after: int | None = opt(None, "stop after this many steps in all, writing last.pt; the "
                                 "learning-rate schedule still spans --epochs (for trial runs); "
                                 "none = run to the end", unit="steps", check="positive")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = opt(False, AMP_HELP)
    channels_last: bool | None = opt(None, CHANNELS_LAST_HELP)
    deterministic: bool = opt(False, "deterministic algorithms on CUDA (slower)")
    cudnn_benchmark: bool = opt(False, "cuDNN autotuning on CUDA: each new convolution shape "
                                "is timed first, which may pick faster kernels (issue #11 saw "
                                "23-43 s of warm-up on an H200 with it on; how much of that "
                                "is autotuning is not measured); off, as the original code: "
                                "cuDNN's own choice, no timing")
    cuda_graphs: bool = opt(False, "capture each block of a path once as a CUDA graph (forward "
                            "and backward) and replay it: fewer kernel launches per step; "
                            "train, retrain and finetune, one process, CUDA only; not yet "
                            "measured on a GPU (see README)")
    tensorboard: bool = opt(False, "also write the metrics (loss, accuracy, lr, images/s, "
                            "validation) as TensorBoard event files in the run folder's "
                            "tensorboard/; needs the tensorboard package")
    resume: bool = opt(False, "continue from the run folder's last.pt with the run's config.json: "
                       "flags not given are the run's, and only epochs, stop_after, print_freq, "
                       "val_interval, ckpt_interval, device, deterministic, cudnn_benchmark, cuda_graphs, "
                       "tensorboard, data_path and download may change")


@dataclass
class SupernetConfig(Checked):
    space: str = opt("spos", "the search space", choices=("spos",))
    layers: int = opt(20, "choice layers (the first N of the space's 20)", check="positive")
    num_choices: int = opt(4, "blocks per layer (the first K of k3 k5 k7 x)", check="positive")
    val_paths: int = opt(3, "fixed seeded paths averaged for supernet validation", check="positive")
    val_recal: bool = opt(True, "validate --val_paths fixed paths, each with its BN recalibrated; "
                          "off: one random path per validation batch of --batch_size images, "
                          "with the BN statistics training left, as the original code validated")
    recal_images: int = opt(1024, "training images for BN recalibration of each validation path",
                            unit="images", check="positive")
    unsampled_momentum: bool = opt(False, "keep the gradients of blocks a step did not sample as "
                                   "zeros, not none, so SGD's momentum (and weight decay) keep "
                                   "moving them, as the original code's PyTorch 1.7.1 zero_grad() "
                                   "did; off: they stay put until sampled again, as on PyTorch "
                                   ">= 2.0 (the original code's measured reference curve)")


@dataclass
class ArchConfig(Checked):
    """Which network: an arch file or string, and the space a string is read in."""

    arch: str = opt("", "the network: an arch file (.json), tokens ('k5 k3 x ...') or "
                    "choice indices ('1,0,3,...')", default_text="required", path=True)
    space: str | None = opt(None, "space of an arch string; none = an arch file's own, or spos "
                            "for a string", choices=("spos", "mbconv"))
    layers: int | None = opt(None, "searchable layers of the spos space; none = an arch file's, "
                             "or 20 for a string", check="positive")
    num_choices: int | None = opt(None, "blocks per layer of the spos space; none = an arch "
                                  "file's, or 4 for a string", check="positive")


@dataclass
class RetrainConfig(ArchConfig):
    dropout: float = opt(0.0, "dropout before the classifier", unit="probability",
                         check="fraction")
    ema: bool = opt(False, "validate and ship an exponential moving average of the weights")
    ema_decay: float = opt(0.9998, "EMA decay (horizon about 1 / (1 - decay) steps)",
                           unit="per optimizer step", check="fraction")
    ema_warmup: bool = opt(True, "warm the EMA decay up as TF does: min(decay, (1 + n) / (10 + n)) "
                           "after step n, so the first steps' weights fade out; --no-ema_warmup: "
                           "the decay from the second step on")
    eval_batch: int = opt(500, "images per evaluation batch", check="positive")


@dataclass
class FinetuneConfig(Checked):
    checkpoint: str = opt("", "the network: a child checkpoint (or its run folder), or a "
                          "supernet checkpoint with --arch", default_text="required", path=True)
    arch: str | None = opt(None, "the path to take out of a supernet checkpoint", path=True)
    dropout: float | None = opt(None, "dropout before the classifier; none = the checkpoint's",
                                unit="probability", check="fraction")
    freeze_epochs: int = opt(0, "first epochs with the backbone frozen (weights and BN "
                             "statistics)", unit="epochs", check="nonneg")
    backbone_lr_scale: float = opt(1.0, "backbone learning rate / classifier learning rate, once "
                                   "unfrozen", check="nonneg")
    ema: bool = opt(False, "validate and ship an exponential moving average of the weights")
    ema_decay: float = opt(0.9998, "EMA decay", unit="per optimizer step", check="fraction")
    ema_warmup: bool = opt(True, "warm the EMA decay up as TF does (see retrain --help)")
    eval_batch: int = opt(500, "images per evaluation batch", check="positive")
    recal_images: int = opt(2048, "training images for the BN statistics of a supernet path",
                            unit="images", check="positive")


@dataclass
class SuperkernelConfig(Checked):
    """The superkernel search; the defaults are ``--recipe spnas`` (``RECIPES``)."""

    recipe: str = opt("spnas", "preset of every setting not given (table below): spnas (this "
                      "project's) or paper (the official code's)", choices=("spnas", "paper"))
    layout: str | None = opt(None, "strides of the MBConv space; none = imagenet with --resize, "
                             "else cifar", choices=("cifar", "imagenet"))
    latency_table: str | None = opt(None, "per-layer latency table from 'spnas latency-table "
                                    "--space mbconv'; none = a table of MACs, no timing",
                                    metavar="FILE", path=True)
    lam: float = opt(0.1, "weight of ln(predicted latency) after the warm-up, in the convention "
                     "of --lam_scale", check="nonneg")
    lam_scale: float = opt(1.0, "the penalty is lam x lam_scale x ln R; 1000 is the paper code's "
                           "convention (its lambda x 1e3)", check="positive")
    target_latency: float | None = opt(None, "penalise only predicted latency above this, in the "
                                       "table's unit", check="positive", cli=False,
                                       label="target_latency_ms (or --target_mmacs)")
    target_unit: str = opt("ms", "unit of target_latency: ms (a measured table) or MMAC (the MACs "
                           "table)", choices=("ms", "MMAC"), cli=False)
    latency_formula: str = opt("paper", "paper: the paper's per-layer formula (k3e3 "
                               "approximated, R[k3e3] ~ R[k5e3] R[k3e6] / R[k5e6]); exact: "
                               "interpolates all five table entries", choices=("paper", "exact"))
    warmup_frac: float = opt(0.625, "fraction of the steps with lambda 0 and gate dropout",
                             check="prob")
    keep_prob: float = opt(0.6, "probability a gate is kept during the warm-up", check="open_prob")
    gate_dropout_rescale: bool = opt(False, "divide kept warm-up gates by keep_prob (TF1 "
                                     "dropout, the paper)")
    threshold_lr_scale: float = opt(100.0, "thresholds' learning rate = this x --lr",
                                    check="positive")
    threshold_weight_decay: float = opt(0.0, "L2 on the thresholds (the paper: 1e-5, as every "
                                        "weight)", check="nonneg")
    weight_decay_on: str = opt("weights", "weights: --weight_decay on conv/linear weights "
                               "(dim > 1); non_bn: on every parameter outside BatchNorm",
                               choices=("weights", "non_bn"))
    mask_at: str = opt("activation", "activation: gated channels are exact zeros; kernel: the "
                       "paper's kernel mask (BN's beta leaks through)",
                       choices=("activation", "kernel"))
    dropout: float = opt(0.2, "dropout before the classifier", unit="probability",
                         check="fraction")
    init: str = opt("spnas", "weight init: spnas (torch He fan-out, depthwise fan-out C k k); "
                    "paper (official/timm: depthwise fan-out k k, uniform classifier)",
                    choices=("spnas", "paper"))
    bn_eps: float = opt(1e-5, "BatchNorm epsilon", check="positive")
    bn_momentum: float = opt(0.1, "BatchNorm momentum, torch's: weight of the new batch (= 1 - "
                             "TF's decay)", check="prob")
    optimizer: str = opt("sgd", "sgd (with --momentum, --nesterov) or rmsprop_tf (TF1's RMSProp: "
                         "eps inside the sqrt, mean square starting at 1)",
                         choices=("sgd", "rmsprop_tf"))
    rmsprop_alpha: float = opt(0.9, "rmsprop_tf: decay of the mean square (TF 'decay')",
                               check="fraction")
    rmsprop_eps: float = opt(1e-3, "rmsprop_tf: epsilon, added inside the square root as TF does",
                             check="positive")
    ema_decay: float = opt(0.0, "validate an EMA of the weights (TF's, its decay warmed up as "
                           "min(d, (1+n)/(10+n))); 0 = none", unit="per optimizer step",
                           check="fraction")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_latency is not None and self.target_unit == "ms" and not self.latency_table:
            raise SpnasError("--target_latency_ms needs a table in ms, but the latency table is "
                             "in MMAC; give --latency_table FILE (a measured table)")


@dataclass
class TrainConfig(Checked):
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: Any = None               # the stage's own dataclass (e.g. SupernetConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = type(self.model).__name__ if self.model is not None else None
        return d


def _without_ema(c: TrainConfig) -> bool:
    return isinstance(c.model, (RetrainConfig, FinetuneConfig)) and not c.model.ema


# Settings a run takes but does not use: (section, setting, when it is unused, why). A
# run logs a note for each one the user set to other than its default ("said, not silent").
UNUSED_WHEN: tuple[tuple[str, str, Any, str], ...] = (
    ("data", "cutout_length", lambda c: not c.data.cutout, "without --cutout"),
    ("optim", "min_lr", lambda c: c.optim.schedule == "constant", "with --schedule constant"),
    ("optim", "decay_epochs", lambda c: c.optim.decay_factor is None, "without --decay_factor"),
    ("optim", "nesterov", lambda c: c.optim.momentum == 0, "with --momentum 0"),
    ("model", "recal_images", lambda c: isinstance(c.model, SupernetConfig)
     and not c.model.val_recal, "with --no-val_recal"),
    ("model", "recal_images", lambda c: isinstance(c.model, FinetuneConfig)
     and not c.model.arch, "without --arch (a child checkpoint keeps its BN statistics)"),
    ("model", "ema_decay", _without_ema, "without --ema"),
    ("model", "ema_warmup", _without_ema, "without --ema"),
    ("model", "backbone_lr_scale", lambda c: isinstance(c.model, FinetuneConfig)
     and c.model.freeze_epochs >= c.optim.epochs, "when --freeze_epochs covers every epoch"),
    ("model", "rmsprop_alpha", lambda c: isinstance(c.model, SuperkernelConfig)
     and c.model.optimizer == "sgd", "with --optimizer sgd"),
    ("model", "rmsprop_eps", lambda c: isinstance(c.model, SuperkernelConfig)
     and c.model.optimizer == "sgd", "with --optimizer sgd"),
    ("optim", "nesterov", lambda c: isinstance(c.model, SuperkernelConfig)
     and c.model.optimizer == "rmsprop_tf", "with --optimizer rmsprop_tf"),
    ("model", "keep_prob", lambda c: isinstance(c.model, SuperkernelConfig)
     and c.model.warmup_frac == 0, "with --warmup_frac 0 (no warm-up, no gate dropout)"),
    ("model", "gate_dropout_rescale", lambda c: isinstance(c.model, SuperkernelConfig)
     and c.model.warmup_frac == 0, "with --warmup_frac 0 (no warm-up, no gate dropout)"),
)


def unused_settings(cfg: TrainConfig) -> list[str]:
    """A note for each setting of ``cfg`` given other than its default that the run will
    not use (``UNUSED_WHEN``), and for a warm-up longer than the run."""
    notes, said = [], set()
    for section, name, unused, why in UNUSED_WHEN:
        obj = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(obj)} if obj is not None else {}
        f = fields.get(name)
        if f is None or name in said or getattr(obj, name) == f.default or not unused(cfg):
            continue
        said.add(name)
        value = getattr(obj, name)
        given = (flag_of(name, f) if value is not False else f"--no-{name}") \
            + ("" if isinstance(value, bool) else f" {value:g}")
        notes.append(f"{given} is not used {why}")
    o = cfg.optim
    if o.warmup_epochs > o.epochs:
        notes.append(f"--warmup_epochs {o.warmup_epochs:g} is longer than the run (--epochs "
                     f"{o.epochs}): the learning rate rises all run long and peaks at "
                     f"{o.epochs / o.warmup_epochs:.2g} x --lr")
    return notes


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run seed and a purpose, e.g. ``derive_seed(0, "path", step)``.

    Every random draw of a run comes from a generator seeded this way, so any
    step's data, augmentation and sampled path are a function of (seed, step):
    runs repeat exactly and resume at any step.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class SearchConfig(Checked):
    """How candidates are proposed, and the budget they must fit (``spnas search``)."""

    method: str = opt("evolution", "evolution or random", choices=("evolution", "random"))
    population: int = opt(50, "candidates per generation", check="positive")
    top_k: int = opt(10, "best candidates kept across all generations (the parents)",
                     check="positive")
    generations: int = opt(20, "generations of the evolution", check="positive")
    mutation_prob: float = opt(0.1, "chance that a mutation redraws each layer's choice",
                               check="prob")
    max_tries: int = opt(10, "mutation/crossover draws per wanted candidate, then random ones",
                         check="positive")
    num: int = opt(1000, "--method random: candidates", check="positive")
    max_flops: float | None = opt(None, "multiply-accumulates of the standalone network, as NAS "
                                  "papers count FLOPs (e.g. 175M at 32x32; SPOS's 330M only "
                                  "means something at 224x224, with --resize)", check="positive",
                                  parse=count_arg, group="budget", metavar="COUNT")
    max_params: float | None = opt(None, "parameters of the standalone network (e.g. 2.3M)",
                                   check="positive", parse=count_arg, group="budget",
                                   metavar="COUNT")
    max_latency_ms: float | None = opt(None, "latency predicted by --latency_table",
                                       unit="milliseconds per batch", check="positive",
                                       group="budget")
    latency_table: str | None = opt(None, "JSON file from 'spnas latency-table'", group="budget",
                                    metavar="FILE", path=True)
    seed: int = opt(0, "seed of every draw of the search, and of the recalibration images", check="seed")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_latency_ms is not None and not self.latency_table:
            raise SpnasError("--max_latency_ms needs --latency_table FILE "
                             "(make one with 'spnas latency-table')")


@dataclass
class ScoringConfig(Checked):
    """How one candidate is scored: BN recalibration, then accuracy on held-out images."""

    recal_images: int = opt(2560, "training images (crop/flip only) for each candidate's BN "
                            "recalibration", unit="images", check="positive")
    recal_batch: int = opt(512, "images per recalibration batch (BN uses batch statistics)",
                           check="positive")
    val_images: int | None = opt(None, "images of the scoring split; none = all of it",
                                 check="positive")
    eval_batch: int = opt(1000, "images per evaluation batch", check="positive")
    score_on: str = opt("val", "val (held out of training) or test (not recommended; warned)",
                        choices=("val", "test"))
    cache_gb: float = opt(4.0, "prepared images kept on the device; beyond it they are rebuilt "
                          "per candidate", unit="GiB", check="nonneg")


def _overrides(cls, name: str, default_text: str, leave_out: tuple[str, ...] = ()):
    """A dataclass with ``cls``'s settings but ``leave_out``, each optional (default None = not
    overridden)."""
    from spnas.fields import type_hints
    hints = type_hints(cls)
    specs = [(f.name, hints[f.name] | None,
              field(default=None, metadata={**f.metadata, "default_text": default_text}))
             for f in dataclasses.fields(cls) if f.name not in leave_out]
    doc = f"``{cls.__name__}`` settings overriding a checkpoint's (None = the checkpoint's)."
    return dataclasses.make_dataclass(name, specs, bases=(Checked,),
                                      namespace={"__module__": __name__, "__doc__": doc})


# the training augmentation: a search recalibrates BN on crop/flip alone and scores plain
# images (loading.recal_transform), so it has no use for these
TRAINING_ONLY = ("cutout", "cutout_length", "auto_aug")
DataOverrides = _overrides(DataConfig, "DataOverrides", "the checkpoint's", TRAINING_ONLY)


@dataclass
class SearchRunConfig(_MemoryFormat, Checked):
    """One ``spnas search`` run: which supernet, which data, where the results go."""

    checkpoint: str = opt("", "the supernet: a checkpoint (.pt) or its run folder",
                          default_text="required", path=True)
    out: str | None = opt(None, "output folder; none = search_<method> beside the checkpoint",
                          path=True)
    search: SearchConfig = field(default_factory=SearchConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    data: DataOverrides = field(default_factory=DataOverrides)  # type: ignore[valid-type]
    split_seed: int | None = opt(None, "seed of the train/val split; none = the checkpoint's "
                                 "training seed", check="seed")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = opt(False, AMP_HELP)
    channels_last: bool | None = opt(None, CHANNELS_LAST_HELP)
    tensorboard: bool = opt(False, "also write each candidate's accuracy, MACs, params (and "
                            "latency) as TensorBoard scalars in --out's tensorboard/, by "
                            "candidate number; needs the tensorboard package")
    resume: bool = opt(False, "continue the search recorded in --out (with the same settings)")

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):  # {DataConfig field: value}, as earlier versions took
            names = {f.name for f in dataclasses.fields(DataOverrides)}
            unknown: list[str] = sorted(set(self.data) - names)
            if unknown:
                why = (" (training augmentation: a search recalibrates BN on crop/flip and "
                       "scores plain images)" if set(unknown) <= set(TRAINING_ONLY) else "")
                raise SpnasError(f"the search's data has no setting {', '.join(unknown)}{why}; "
                                 f"its settings: {', '.join(sorted(names))}")
            self.data = DataOverrides(**self.data)
        super().__post_init__()


@dataclass
class LatencyConfig(_MemoryFormat, Checked):
    """``spnas latency-table``: time every (layer, choice) of a space on one device."""

    out: str = opt("latency.json", "the table (JSON)", metavar="FILE", path=True)
    space: str | None = opt(None, "a registered space (spaces.SPACE_SPECS); none = the "
                            "--checkpoint's, or spos", choices=("spos", "mbconv"))
    layout: str | None = opt(None, "strides of the space; none = the --checkpoint's, or cifar",
                             choices=("cifar", "imagenet"))
    options: dict = opt(help="space options, e.g. {'layers': 8}", factory=dict, cli=False)
    checkpoint: str | None = opt(None, "take the space and classes from this checkpoint instead", path=True)
    classes: int | None = opt(None, "classes of the classifier; none = the --checkpoint's, or 10",
                              check="positive")
    device: str = opt("cpu", "cpu, cuda or cuda:N")
    batch_size: int = opt(1, "images per timed forward", check="positive")
    resolution: int | None = opt(None, "input side; none = the layout's (32 cifar, 224 imagenet)",
                                 unit="pixels", check="positive")
    threads: int | None = opt(None, "CPU threads; none = torch's default", check="positive")
    calibrate: int = opt(10, "random whole networks that fit one factor, whole network / sum of "
                         "parts; 0 = none", check="nonneg")
    validate: int = opt(20, "other random whole networks timed to report the table's error; "
                        "0 = none", check="nonneg")
    warmup: int = opt(10, "untimed calls before each measurement", check="nonneg")
    repeats: int = opt(30, "timed calls; the median is kept", check="positive")
    channels_last: bool | None = opt(None, CHANNELS_LAST_HELP)
    overwrite: bool = opt(False, "replace an existing --out")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.options and self.checkpoint:
            raise SpnasError("--option and --checkpoint do not mix: the checkpoint fixes the "
                             "space; drop one of them")


CHECKPOINT_HELP = "a child checkpoint (.pt), or its run folder (best.pt)"


@dataclass
class EvaluateConfig(Checked):
    """``spnas evaluate`` / ``spnas.evaluate``: a trained network on a split of its data (or
    of other data with the same classes)."""

    checkpoint: str = opt("", CHECKPOINT_HELP, default_text="required", path=True)
    split: str = opt("test", "the split evaluated; val: the held-out split the run validated on",
                     choices=("test", "val", "train"))
    data_path: str | None = opt(None, "where the data is; none = the run's", path=True)
    dataset: str | None = opt(None, "the dataset; none = the run's", choices=DATASETS)
    out: str | None = opt(None, "folder for evaluation.json and confusion.png; none = "
                          "eval_<checkpoint>_<split> beside the checkpoint (with the dataset and "
                          "data folder added for data other than the run's)", path=True)
    batch_size: int = opt(500, "images per forward", check="positive")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = opt(False, "bf16 autocast on CUDA; off: fp32")


@dataclass
class ExportConfig(Checked):
    """``spnas export`` / ``spnas.export``: ONNX or TorchScript, loaded back and checked."""

    checkpoint: str = opt("", CHECKPOINT_HELP, default_text="required", path=True)
    format: str = opt("onnx", "the file format (onnx needs the onnx extra: onnx, onnxscript "
                      "and onnxruntime)",
                      choices=("onnx", "torchscript"))
    out: str | None = opt(None, "the file to write, or an existing folder (or one ending in /) "
                          "to write <name>.onnx / <name>.torchscript.pt into; a folder is never "
                          "replaced; none = beside the checkpoint", path=True)
    data_path: str | None = opt(None, "where the data is; none = the run's", path=True)
    check_images: int = opt(64, "test images compared with PyTorch; 0 = random inputs only",
                            unit="images", check="nonneg")
    tolerance: float = opt(1e-3, "largest absolute difference of the logits allowed",
                           check="positive")
    overwrite: bool = opt(False, "replace an existing file (never a folder)")


@dataclass
class ProfileConfig(ArchConfig):
    """``spnas profile``: parameters, MACs and measured latency of an architecture."""

    resize: bool = opt(False, "the imagenet layout (224x224 input)")
    classes: int = opt(10, "classes of the classifier", check="positive")
    resolution: int | None = opt(None, "input side; none = 32, or 224 with --resize",
                                 unit="pixels", check="positive", group="measurement")
    batch_size: int = opt(128, "the throughput batch", check="positive", group="measurement")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", group="measurement")
    channels_last: bool | None = opt(None, CHANNELS_LAST_HELP, group="measurement")
    amp: bool = opt(False, "bf16 autocast on CUDA", group="measurement")
    warmup: int = opt(10, "untimed calls first", check="nonneg", group="measurement")
    repeats: int = opt(30, "timed calls (the median is shown)", check="positive",
                       group="measurement")


def _runs(runs) -> str | None:
    if not (isinstance(runs, (list, tuple)) and all(isinstance(r, (str, os.PathLike))
                                                    for r in runs)):
        return f"must be a run or a list of runs (folders or files), got {runs!r}"
    seen: dict[str, str] = {}
    for r in runs:  # two curves of one run would be drawn over each other, under one name
        key = os.path.realpath(os.path.expanduser(r))
        if key in seen:
            return f"names one run twice ({seen[key]} and {r}); give each run once"
        seen[key] = str(r)
    return None


def _given(path) -> str | None:
    return None if str(path).strip() else "is empty: give a run, or leave it out to plot only"


@dataclass
class CurvesConfig(Checked):
    """``spnas curves`` (and ``run_scripts/loss.py``): loss plots, and each run compared with a
    reference run; ``runs`` are the command's positional arguments."""

    runs: tuple[str, ...] = opt((), "run folders, metrics.jsonl files, CSV files (columns step, "
                                "loss) or text logs", check=_runs, positional=True,
                                metavar="RUN", default_text="required", path=True)
    baseline: str | None = opt(None, "reference run to compare each run with (same kinds of "
                               "input); none = plot only", check=_given, path=True)
    out: str = opt(".", "folder for loss.jpg and loss.png", path=True)
    rtol: float = opt(0.05, "pass when the mean |relative difference| is at most this ...",
                      check="nonneg")
    atol: float = opt(0.0002, "... or the mean |difference| is at most this", check="nonneg")
    window: int | None = opt(None, "compare (and plot) mean losses over windows of N steps, steps "
                             "(w*N, (w+1)*N], instead of the losses per logged step",
                             check="positive", metavar="N", default_text="per logged step")
    max_step: int | None = opt(None, "compare and plot only steps <= M", check="positive",
                               metavar="M", default_text="all")
    min_overlap: float = opt(0.0, "fail when less than this fraction of the baseline's steps is "
                             "compared (under 0.25 prints a WARNING)", check="prob", metavar="F")

    def __post_init__(self) -> None:
        runs: Any = self.runs  # from a file: none (an empty key) is no run, one text one run
        runs = () if runs is None else (runs,) if isinstance(runs, (str, os.PathLike)) else runs
        object.__setattr__(self, "runs", runs)
        super().__post_init__()
        object.__setattr__(self, "runs", tuple(os.fspath(r) for r in self.runs))


def _num_choices(n: int) -> str | None:
    return None if 1 <= n <= 4 else f"must be 1..4 (the original's blocks per layer), got {n}"


@dataclass
class ImportReferenceConfig(Checked):
    """``spnas import-reference`` / ``spnas.import_reference``: a state_dict saved by the
    original SPOS CIFAR code, as an spnas checkpoint; ``src`` is the command's positional
    argument."""

    src: str = opt("", "torch.save(model.state_dict()) of the original's train_supernet.py (a "
                   "supernet) or retrain_best_choice.py (one network)", positional=True,
                   metavar="SRC.pth", default_text="required", path=True)
    out: str = opt("", "the spnas checkpoint to write", metavar="DST.pt", default_text="required",
                   path=True)
    resize: bool | None = opt(None, "check that the file is in the --resize (imagenet) layout; "
                              "--no-resize: the CIFAR layout", default_text="the file's")
    classes: int | None = opt(None, "check the number of classes", check="positive",
                              default_text="the file's")
    num_choices: int = opt(4, "a supernet keeps its first K blocks only: the original's "
                           "--num_choices (it saves all 4 whatever it trained)", check=_num_choices)
    overwrite: bool = opt(False, "replace an existing --out")
