"""The ``spnas`` command: each subcommand parses its flags and calls one module.

A user mistake (``SpnasError``) prints one line, ``spnas: error: ...``, and
exits with status 2; no stack trace.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import (
    DataConfig,
    FinetuneConfig,
    LatencyConfig,
    OptimConfig,
    RetrainConfig,
    RunConfig,
    ScoringConfig,
    SearchConfig,
    SearchRunConfig,
    SupernetConfig,
    TrainConfig,
    from_namespace,
)
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


# ---- search (issue 3) ------------------------------------------------------------------
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def count_arg(text: str) -> float:
    """A count such as 330M, 1.5G, 2e8 or 330000000."""
    scale = _SUFFIX.get(text[-1:], 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 330M, 2.5e8)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def add_search_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (.pt) or its run folder")
    p.add_argument("--out", default=None, help="output folder (default: search_<method> "
                   "beside the checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    g = p.add_argument_group("search")
    g.add_argument("--method", choices=("evolution", "random"), default="evolution")
    g.add_argument("--population", type=int, default=50, help="candidates per generation")
    g.add_argument("--top_k", type=int, default=10, help="best candidates kept as parents")
    g.add_argument("--generations", type=int, default=20)
    g.add_argument("--mutation_prob", type=float, default=0.1,
                   help="chance that a mutation redraws each layer")
    g.add_argument("--max_tries", type=int, default=10,
                   help="mutation/crossover draws per wanted candidate before random ones")
    g.add_argument("--num", type=int, default=1000, help="--method random: candidates")
    g.add_argument("--seed", type=int, default=0, help="the search's draws and recalibration images")
    g = p.add_argument_group("budget (of the standalone network)")
    g.add_argument("--max_flops", type=count_arg, default=None,
                   help="multiply-accumulates, as NAS papers count FLOPs (e.g. 330M)")
    g.add_argument("--max_params", type=count_arg, default=None, help="parameters (e.g. 3.5M)")
    g.add_argument("--max_latency_ms", type=float, default=None,
                   help="milliseconds, predicted by --latency_table")
    g.add_argument("--latency_table", default=None, help="JSON file from 'spnas latency-table'")
    g = p.add_argument_group("scoring")
    g.add_argument("--recal_images", type=int, default=2560,
                   help="training images (crop/flip) for each candidate's BN recalibration")
    g.add_argument("--recal_batch", type=int, default=512)
    g.add_argument("--val_images", type=int, default=None, help="default: the whole split")
    g.add_argument("--eval_batch", type=int, default=1000)
    g.add_argument("--score_on", choices=("val", "test"), default="val",
                   help="test: score on the test set (not recommended; warned)")
    g.add_argument("--cache_gb", type=float, default=4.0,
                   help="GiB of prepared images kept on the device (beyond: rebuilt per candidate)")
    add_data_args(p)
    p.set_defaults(**{f.name: None for f in dataclasses.fields(DataConfig)})
    p.add_argument("--split_seed", type=int, default=None,
                   help="seed of the train/val split (default: the checkpoint's training seed; "
                        "data flags default to the checkpoint's too)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action=B, default=True, help="bf16 autocast on CUDA")
    g.add_argument("--channels_last", action=B, default=True, help="NHWC memory format")
    return p


def run_search(args: argparse.Namespace):
    from .search_run import search_supernet
    check_positive(args, "population", "top_k", "generations", "max_tries", "num",
                   "recal_images", "recal_batch", "val_images", "eval_batch", "max_latency_ms")
    if not 0 <= args.mutation_prob <= 1:
        raise SpnasError(f"--mutation_prob must be within 0..1, got {args.mutation_prob}")
    if args.cache_gb < 0:
        raise SpnasError(f"--cache_gb must be 0 or more, got {args.cache_gb}")
    data = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataConfig)}
    cfg = SearchRunConfig(args.checkpoint, args.out, from_namespace(SearchConfig, args),
                          from_namespace(ScoringConfig, args), data, args.split_seed,
                          args.device, args.amp, args.channels_last, args.resume)
    return search_supernet(cfg)


def option_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as an int or float where it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. layers=8)")
    for conv in (int, float):
        try:
            return key, conv(value)
        except ValueError:
            pass
    return key, value


def add_latency_table_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .spaces import SPACE_SPECS
    p.add_argument("--out", required=True, help="the table (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--space", default="spos", choices=tuple(SPACE_SPECS))
    p.add_argument("--layout", default="cifar", choices=("cifar", "imagenet"))
    p.add_argument("--option", dest="options", action="append", type=option_arg, default=[],
                   metavar="KEY=VALUE", help="space option, e.g. layers=8 (repeatable)")
    p.add_argument("--checkpoint", default=None,
                   help="take the space and classes from this checkpoint instead")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=1, help="images per timed forward")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size (default: 32 for cifar, 224 for imagenet)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--validate", type=int, default=20,
                   help="random whole networks timed to report the table's error (0: none)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--channels_last", action=B, default=True)
    return p


def run_latency_table(args: argparse.Namespace):
    from .cost import measure_latency_table
    check_positive(args, "num_classes", "batch", "resolution", "threads", "repeats")
    if args.validate < 0 or args.warmup < 0:
        raise SpnasError("--validate and --warmup must be 0 or more")
    return measure_latency_table(from_namespace(LatencyConfig, args, options=dict(args.options)))


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
    "search": (add_search_parser, run_search,
               "search a trained supernet's paths (evolution or random) under a budget"),
    "latency-table": (add_latency_table_parser, run_latency_table,
                      "time every (layer, choice) of a space on a device, for latency budgets"),
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
