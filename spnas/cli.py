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


def add_curves_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("runs", nargs="+", help="run folders, metrics.jsonl files or text logs")
    p.add_argument("--baseline", help="reference run to compare each run with")
    p.add_argument("--out", default=".", help="folder for loss.jpg and loss.png")
    p.add_argument("--rtol", type=float, default=0.05,
                   help="pass when the mean |relative difference| is at most this ...")
    p.add_argument("--atol", type=float, default=0.0002,
                   help="... or the mean |difference| is at most this")
    return p


def run_curves(args: argparse.Namespace) -> int:
    """Plot the runs (and the baseline); compare each run with the baseline: 0 pass, 1 fail."""
    from .curves import compare, load_curve, plot_curves
    curves = [load_curve(r) for r in args.runs]
    base = load_curve(args.baseline) if args.baseline else None
    for path in plot_curves(curves + ([base] if base else []), args.out):
        print(f"wrote {path}")
    failed = False
    for c in curves if base else []:
        result = compare(c, base, args.rtol, args.atol)
        if result.only_in_one:
            print(f"{c.name} vs {base.name}: compared the {result.steps} logged steps both runs "
                  f"have; {result.only_in_one} steps are in only one of them")
        print("\n".join(result.lines()))
        failed |= not result.passed
    return 1 if failed else 0


COMMANDS = {
    "train": (add_train_parser, run_train, "train a SPOS supernet (one random path per step)"),
    "curves": (add_curves_parser, run_curves,
               "plot loss curves; compare a run with a reference run (--baseline)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spnas", description="Single-path neural architecture search.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return p


def run_guarded(fn, args) -> int:
    """Run ``fn(args)``; a user mistake is one line on stderr and exit status 2.

    ``fn`` may return an exit status (e.g. 1 when a comparison fails).
    """
    from .runtime import tune_allocator
    tune_allocator()
    try:
        code = fn(args)
    except SpnasError as e:
        print(f"spnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spnas: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(COMMANDS[args.command][1], args)


if __name__ == "__main__":
    sys.exit(main())
