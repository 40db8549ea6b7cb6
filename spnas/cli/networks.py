"""``spnas retrain``, ``finetune``, ``evaluate``, ``profile`` and ``export``."""
from __future__ import annotations

import argparse
import sys

from ..config import DataConfig, FinetuneConfig, RetrainConfig, from_namespace
from ..data import DATASETS
from ..errors import SpnasError
from .flags import B, add_data_args, add_optim_args, add_run_args, check_positive, train_config


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
    from ..retrain import retrain
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
    from ..finetune import finetune
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


def run_evaluate(args: argparse.Namespace) -> dict | int:
    """Exit status 1 (after the files are written) when the outputs were not finite."""
    from ..eval_checkpoint import evaluate_checkpoint, format_evaluation, nonfinite_warning
    check_positive(args, "batch_size")
    r = evaluate_checkpoint(args.checkpoint, args.split, args.data_path, args.dataset, args.out,
                            args.batch_size, args.device, args.amp)
    print(format_evaluation(r))
    warning = nonfinite_warning(r)
    if warning:
        print(f"spnas: warning: {warning}", file=sys.stderr)
        return 1
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
    from ..profiling import format_profile, profile_arch
    from ..retrain import load_arch
    from ..train import resolve_device
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
                   help="the file to write, or an existing folder (or one ending in /) to "
                        "write <name>.onnx / <name>.torchscript.pt into; a folder is never "
                        "replaced (default: beside the checkpoint)")
    p.add_argument("--data_path", default=None, help="where the data is (default: the run's)")
    p.add_argument("--check_images", type=int, default=64,
                   help="test images compared with PyTorch (0: random inputs only)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest absolute difference of the logits allowed")
    p.add_argument("--force", action="store_true", help="replace an existing file (never a folder)")
    return p


def run_export(args: argparse.Namespace) -> dict:
    from ..export import export_checkpoint, format_export
    check_positive(args, "tolerance")
    if args.check_images < 0:
        raise SpnasError(f"--check_images must be 0 or more, got {args.check_images}")
    r = export_checkpoint(args.checkpoint, args.format, args.out, args.data_path,
                          args.check_images, args.tolerance, args.force)
    print(format_export(r))
    return r
