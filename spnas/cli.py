"""The ``spnas`` command: each subcommand parses its flags and calls one module.

A user mistake (``SpnasError``) prints one line, ``spnas: error: ...``, and
exits with status 2; no stack trace.
"""
from __future__ import annotations

import argparse
import sys

from .config import DataConfig, OptimConfig, RunConfig, SupernetConfig, TrainConfig, from_namespace
from .data import DATASETS
from .errors import SpnasError

B = argparse.BooleanOptionalAction


# ---- flag groups shared by the stages --------------------------------------------------
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


def add_optim_args(p: argparse.ArgumentParser, epochs: int, lr: float, wd: float) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--num_steps", type=int, default=None, help="cap on steps per epoch")
    g.add_argument("--batch_size", type=int, default=64, help="images per step per process")
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
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action=B, default=True, help="bf16 autocast on CUDA")
    g.add_argument("--channels_last", action=B, default=True, help="NHWC memory format")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms on CUDA (slower)")
    g.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise SpnasError(f"--{n} must be positive, got {v}")


def train_config(args: argparse.Namespace, model) -> TrainConfig:
    check_positive(args, "epochs", "num_steps", "batch_size", "lr", "print_freq", "val_interval",
                   "cutout_length", "image_size")
    if args.val_size < 0:
        raise SpnasError(f"--val_size must be 0 or more, got {args.val_size}")
    return TrainConfig(from_namespace(DataConfig, args), from_namespace(OptimConfig, args),
                       from_namespace(RunConfig, args), model)


# ---- subcommands ----------------------------------------------------------------------
def add_train_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas train`` (SPOS supernet), the seed command's flags included."""
    add_data_args(p)
    add_optim_args(p, epochs=600, lr=0.025, wd=3e-4)
    add_run_args(p, exp_name="spos_supernet")
    g = p.add_argument_group("supernet")
    g.add_argument("--space", default="spos", choices=("spos",))
    g.add_argument("--layers", type=int, default=20, help="choice layers (first N of 20)")
    g.add_argument("--num_choices", type=int, default=4, help="blocks per layer (first K of k3 k5 k7 x)")
    g.add_argument("--val_paths", type=int, default=3,
                   help="fixed random paths averaged for supernet validation")
    g.add_argument("--recal_images", type=int, default=1024,
                   help="training images for BN recalibration of each validation path")
    return p


def run_train(args: argparse.Namespace) -> dict:
    from .supernet import train_supernet
    check_positive(args, "val_paths", "recal_images")
    cfg = train_config(args, from_namespace(SupernetConfig, args))
    return train_supernet(cfg)


def add_superkernel_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas superkernel`` (Single-Path NAS search)."""
    add_data_args(p)
    add_optim_args(p, epochs=8, lr=0.05, wd=4e-5)
    p.set_defaults(label_smoothing=0.1)
    add_run_args(p, exp_name="superkernel")
    g = p.add_argument_group("superkernel search")
    g.add_argument("--layout", choices=("cifar", "imagenet"), default=None,
                   help="strides of the MBConv space (default: imagenet with --resize, else cifar)")
    g.add_argument("--latency_table", default=None, metavar="FILE",
                   help="per-layer latency table from 'spnas latency-table --space mbconv' "
                        "(default: a table of MACs, no timing)")
    g.add_argument("--lam", type=float, default=0.1, help="weight of ln(predicted latency)")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target_latency_ms", type=float, default=None,
                   help="penalise only predicted latency above this (needs --latency_table)")
    t.add_argument("--target_mmacs", type=float, default=None,
                   help="the same in millions of MACs, with the MACs table")
    g.add_argument("--latency_formula", choices=("paper", "exact"), default="paper",
                   help="paper: the paper's per-layer formula (k3e3 approximated); exact: "
                        "interpolates all five table entries")
    g.add_argument("--warmup_frac", type=float, default=0.625,
                   help="fraction of the steps with lambda 0 and gate dropout")
    g.add_argument("--keep_prob", type=float, default=0.6, help="gate keep probability in warm-up")
    g.add_argument("--threshold_lr_scale", type=float, default=100.0,
                   help="thresholds' learning rate = this x --lr (never weight decay)")
    g.add_argument("--mask_at", choices=("activation", "kernel"), default="activation",
                   help="activation: gated channels are exact zeros; kernel: the paper's "
                        "kernel mask (BN's beta leaks through)")
    g.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    return p


def superkernel_config(args: argparse.Namespace):
    from .config import SuperkernelConfig
    check_positive(args, "target_latency_ms", "target_mmacs", "keep_prob", "threshold_lr_scale")
    if not 0 <= args.warmup_frac <= 1 or args.keep_prob > 1 or args.lam < 0:
        raise SpnasError("--warmup_frac must be in [0, 1], --keep_prob in (0, 1], --lam >= 0")
    target = args.target_latency_ms if args.target_mmacs is None else args.target_mmacs
    return SuperkernelConfig(
        layout=args.layout or ("imagenet" if args.resize else "cifar"), lam=args.lam,
        target_latency=target, target_unit="ms" if args.target_mmacs is None else "MMAC",
        latency_table=args.latency_table, formula=args.latency_formula,
        warmup_frac=args.warmup_frac, keep_prob=args.keep_prob,
        threshold_lr_scale=args.threshold_lr_scale, mask_at=args.mask_at, dropout=args.dropout)


def run_superkernel(args: argparse.Namespace) -> dict:
    from .superkernel import search
    return search(train_config(args, superkernel_config(args)))


COMMANDS = {
    "train": (add_train_parser, run_train, "train a SPOS supernet (one random path per step)"),
    "superkernel": (add_superkernel_parser, run_superkernel,
                    "Single-Path NAS: superkernel search under a latency model; writes an "
                    "arch file"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spnas", description="Single-path neural architecture search.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return p


def run_guarded(fn, args) -> int:
    """Run ``fn(args)``; a user mistake is one line on stderr and exit status 2."""
    from .runtime import tune_allocator
    tune_allocator()
    try:
        fn(args)
    except SpnasError as e:
        print(f"spnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spnas: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(COMMANDS[args.command][1], args)


if __name__ == "__main__":
    sys.exit(main())
