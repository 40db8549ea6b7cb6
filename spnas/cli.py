"""The ``spnas`` command: each subcommand parses its flags and calls one module.

A user mistake (``SpnasError``) prints one line, ``spnas: error: ...``, and
exits with status 2; no stack trace.
"""
from __future__ import annotations

import argparse
import sys

from .config import (DataConfig, FinetuneConfig, OptimConfig, RetrainConfig, RunConfig,
                     SupernetConfig, TrainConfig, from_namespace)
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


# ---- retrain, finetune, evaluate, profile, export ----------------------------------------
def add_arch_args(g) -> None:
    g.add_argument("--arch", required=True,
                   help="arch file (.json), tokens ('k5 k3 x ...') or choice indices ('1,0,3,...')")
    g.add_argument("--space", default="spos", choices=("spos",), help="space of an arch string")
    g.add_argument("--layers", type=int, default=20, help="layers of that space")
    g.add_argument("--num_choices", type=int, default=4, help="blocks per layer of that space")


def add_child_args(g, dropout: float | None) -> None:
    g.add_argument("--dropout", type=float, default=dropout,
                   help="dropout before the classifier" + ("" if dropout is not None
                                                           else " (default: the checkpoint's)"))
    g.add_argument("--ema", action="store_true",
                   help="validate and ship an exponential moving average of the weights")
    g.add_argument("--ema_decay", type=float, default=0.9998, help="EMA decay per step")
    g.add_argument("--eval_batch", type=int, default=500, help="images per evaluation batch")


def add_retrain_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_data_args(p)
    add_optim_args(p, epochs=200, lr=0.1, wd=5e-4, batch_size=128)
    add_run_args(p, exp_name="retrain")
    g = p.add_argument_group("network")
    add_arch_args(g)
    add_child_args(g, dropout=0.0)
    return p


def run_retrain(args: argparse.Namespace) -> dict:
    from .retrain import retrain
    check_positive(args, "eval_batch")
    return retrain(train_config(args, from_namespace(RetrainConfig, args)))


def add_finetune_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_data_args(p)
    add_optim_args(p, epochs=30, lr=0.01, wd=5e-4, batch_size=128)
    add_run_args(p, exp_name="finetune")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--checkpoint", required=True,
                   help="child checkpoint (or run folder), or a supernet checkpoint with --arch")
    g.add_argument("--arch", default=None, help="the path to take out of a supernet checkpoint")
    g.add_argument("--freeze_epochs", type=int, default=0,
                   help="first epochs with the backbone frozen (weights and BN statistics)")
    g.add_argument("--backbone_lr_scale", type=float, default=1.0,
                   help="backbone learning rate as a fraction of --lr once unfrozen")
    g.add_argument("--recal_images", type=int, default=2048,
                   help="training images for the BN statistics of a supernet path")
    add_child_args(g, dropout=None)
    return p


def run_finetune(args: argparse.Namespace) -> dict:
    from .finetune import finetune
    check_positive(args, "eval_batch", "recal_images")
    if args.backbone_lr_scale < 0:
        raise SpnasError(f"--backbone_lr_scale must be 0 or more, got {args.backbone_lr_scale}")
    return finetune(train_config(args, from_namespace(FinetuneConfig, args)))


def add_evaluate_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, help="child checkpoint, or a run folder (best.pt)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="val: the held-out split the run validated on")
    p.add_argument("--data_path", default=None, help="where the data is (default: the run's)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: the run's")
    p.add_argument("--out", default=None,
                   help="folder for evaluation.json and confusion.png "
                        "(default: eval_<checkpoint>_<split> beside the checkpoint)")
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action=B, default=True, help="bf16 autocast on CUDA")
    return p


def run_evaluate(args: argparse.Namespace) -> dict:
    from .eval_checkpoint import evaluate_checkpoint, format_evaluation
    check_positive(args, "batch_size")
    r = evaluate_checkpoint(args.checkpoint, args.split, args.data_path, args.dataset, args.out,
                            args.batch_size, args.device, args.amp)
    print(format_evaluation(r))
    return r


def add_profile_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("network")
    add_arch_args(g)
    g.add_argument("--resize", action="store_true", help="the imagenet layout (224x224 input)")
    g.add_argument("--classes", type=int, default=10)
    h = p.add_argument_group("measurement")
    h.add_argument("--resolution", type=int, default=None,
                   help="input side in pixels (default: 32, or 224 with --resize)")
    h.add_argument("--batch_size", type=int, default=128, help="the throughput batch")
    h.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    h.add_argument("--channels_last", action=B, default=True, help="NHWC memory format")
    h.add_argument("--amp", action=B, default=False, help="bf16 autocast on CUDA")
    h.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    h.add_argument("--repeats", type=int, default=30, help="timed calls (the median is shown)")
    return p


def run_profile(args: argparse.Namespace) -> dict:
    from .profiling import format_profile, profile_arch
    from .retrain import load_arch
    from .train import resolve_device
    check_positive(args, "classes", "resolution", "batch_size", "repeats")
    if args.warmup < 0:
        raise SpnasError(f"--warmup must be 0 or more, got {args.warmup}")
    arch = load_arch(from_namespace(RetrainConfig, args), DataConfig(resize=args.resize))
    r = profile_arch(arch, args.classes, args.resolution, resolve_device(args.device),
                     args.batch_size, args.channels_last, args.amp, args.warmup, args.repeats)
    print(format_profile(r))
    return r


def add_export_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, help="child checkpoint, or a run folder (best.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", default=None,
                   help="default: beside the checkpoint, <name>.onnx or <name>.torchscript.pt")
    p.add_argument("--data_path", default=None, help="where the data is (default: the run's)")
    p.add_argument("--check_images", type=int, default=64,
                   help="test images compared with PyTorch (0: random inputs only)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest absolute difference of the logits allowed")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    return p


def run_export(args: argparse.Namespace) -> dict:
    from .export import export_checkpoint, format_export
    check_positive(args, "tolerance")
    if args.check_images < 0:
        raise SpnasError(f"--check_images must be 0 or more, got {args.check_images}")
    r = export_checkpoint(args.checkpoint, args.format, args.out, args.data_path,
                          args.check_images, args.tolerance, args.force)
    print(format_export(r))
    return r


COMMANDS = {
    "train": (add_train_parser, run_train, "train a SPOS supernet (one random path per step)"),
    "curves": (add_curves_parser, run_curves,
               "plot loss curves; compare a run with a reference run (--baseline)"),
    "retrain": (add_retrain_parser, run_retrain,
                "train a found architecture from scratch; test it once at the end"),
    "finetune": (add_finetune_parser, run_finetune,
                 "fine-tune a trained network (or a supernet path), optionally on other data"),
    "evaluate": (add_evaluate_parser, run_evaluate,
                 "top-1/top-5/loss, per-class accuracy and a confusion matrix of a checkpoint"),
    "profile": (add_profile_parser, run_profile,
                "parameters, MACs and measured latency of an architecture"),
    "export": (add_export_parser, run_export,
               "export a checkpoint to ONNX or TorchScript, checked against PyTorch"),
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
