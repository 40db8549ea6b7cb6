"""Flag groups shared by the stages, and the checks that turn flags into configs."""
from __future__ import annotations

import argparse
import math

from ..config import DataConfig, OptimConfig, RunConfig, TrainConfig, from_namespace
from ..data import DATASETS
from ..errors import SpnasError

B = argparse.BooleanOptionalAction


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", choices=DATASETS)
    g.add_argument("--data_path", default="data",
                   help="folder with the dataset (official tarball, unpacked batches, or "
                        "train/<class>/ + test/<class>/ image folders); downloaded if absent")
    g.add_argument("--classes", type=int, default=None,
                   help="number of classes; checked against the data")
    g.add_argument("--val_size", type=int, default=5000,
                   help="training images held out for validation (stratified); 0 = validate "
                        "on the test set, as the old recipe did")
    g.add_argument("--cutout", action="store_true", help="cutout augmentation")
    g.add_argument("--cutout_length", type=int, default=16, help="cutout square side, pixels")
    g.add_argument("--auto_aug", action="store_true", help="AutoAugment (CIFAR-10 policy)")
    g.add_argument("--resize", action="store_true",
                   help="train at 224 (RandomResizedCrop) and evaluate Resize 256 + CenterCrop "
                        "224, with the ImageNet layout of the network")
    g.add_argument("--image_size", type=int, default=32, help="image folders are resized to this")
    g.add_argument("--download", action=B, default=True,
                   help="download the official tarball when no data is found")


def add_optim_args(p: argparse.ArgumentParser, epochs: int, lr: float, wd: float,
                   batch_size: int = 64) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--num_steps", type=int, default=None, help="cap on steps per epoch")
    g.add_argument("--batch_size", type=int, default=batch_size, help="images per step per process")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action=B, default=False)
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=wd,
                   help="on conv/linear weights only (never BN or biases)")
    g.add_argument("--label_smoothing", type=float, default=0.0)
    g.add_argument("--schedule", choices=("cosine", "linear"), default="cosine")
    g.add_argument("--warmup_epochs", type=float, default=0.0)
    g.add_argument("--min_lr", type=float, default=0.0)


def add_run_args(p: argparse.ArgumentParser, exp_name: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--exp_name", default=exp_name, help="run folder name under --save_path")
    g.add_argument("--save_path", default="checkpoints")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--print_freq", type=int, default=100, help="steps between metric lines")
    g.add_argument("--val_interval", type=int, default=5,
                   help="epochs between validations (and always after the last epoch)")
    g.add_argument("--ckpt_interval", type=int, default=0,
                   help="steps between extra last.pt checkpoints (0: at validations only)")
    g.add_argument("--stop_after", type=int, default=None,
                   help="stop after this many steps in all, writing last.pt; the learning-rate "
                        "schedule still spans --epochs (for trial runs; default: run to the end)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action=B, default=True, help="bf16 autocast on CUDA")
    g.add_argument("--channels_last", action=B, default=True, help="NHWC memory format")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms on CUDA (slower)")
    g.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")


def check_finite(args: argparse.Namespace, *names: str) -> None:
    """Refuse NaN and infinity (``float()`` reads 'nan' and 'inf' without complaint)."""
    for n in names:
        v = getattr(args, n, None)
        if isinstance(v, float) and not math.isfinite(v):
            raise SpnasError(f"--{n} must be a finite number, got {v}")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    check_finite(args, *names)
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise SpnasError(f"--{n} must be positive, got {v}")


def check_range(args: argparse.Namespace, name: str, low: float, high: float | None = None,
                high_open: bool = True) -> None:
    """``low <= value`` (``< high`` or ``<= high``), finite; None (not given) passes."""
    check_finite(args, name)
    v = getattr(args, name, None)
    if v is None:
        return
    above = high is not None and (v >= high if high_open else v > high)
    if v < low or above:
        want = (f"in [{low:g}, {high:g}{')' if high_open else ']'}" if high is not None
                else f"{low:g} or more")
        raise SpnasError(f"--{name} must be {want}, got {v}")


def train_config(args: argparse.Namespace, model) -> TrainConfig:
    """The checked flags of a training stage as a ``TrainConfig``; any bad value is a
    one-line error here, before any data is loaded."""
    from ..train import check_exp_name
    check_positive(args, "epochs", "num_steps", "batch_size", "lr", "print_freq", "val_interval",
                   "cutout_length", "image_size", "stop_after")
    for name in ("val_size", "ckpt_interval", "weight_decay", "warmup_epochs", "min_lr"):
        check_range(args, name, 0)
    check_range(args, "momentum", 0, 1)
    check_range(args, "label_smoothing", 0, 1)
    check_exp_name(args.exp_name)
    return TrainConfig(from_namespace(DataConfig, args), from_namespace(OptimConfig, args),
                       from_namespace(RunConfig, args), model)
