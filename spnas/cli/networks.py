"""``spnas retrain``, ``finetune``, ``evaluate``, ``profile`` and ``export``."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from spnas.cli.flags import check_positive
from spnas.cli.generate import add_config_args, config_from_args, default_paren
from spnas.config import CHANNELS_LAST_HELP, DataConfig, RetrainConfig
from spnas.data.datasets import DATASETS
from spnas.defaults import FinetuneStage, RetrainStage
from spnas.errors import SpnasError


def add_arch_args(g) -> None:
    """``spnas profile``'s network flags, with ``RetrainConfig``'s help and defaults."""
    fields = {f.name: f for f in dataclasses.fields(RetrainConfig)}
    d = RetrainConfig()

    def text(name):
        f = fields[name]
        return f"{f.metadata['help']} {default_paren(getattr(d, name), f)}"
    g.add_argument("--arch", required=True, help=text("arch"))
    g.add_argument("--space", default=d.space, choices=fields["space"].metadata["choices"],
                   help=text("space"))
    g.add_argument("--layers", type=int, default=d.layers, help=text("layers"))
    g.add_argument("--num_choices", type=int, default=d.num_choices, help=text("num_choices"))


def add_retrain_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas retrain``, generated from ``RetrainStage``."""
    return add_config_args(p, RetrainStage(), titles={"model": "network"})


def run_retrain(args: argparse.Namespace) -> dict:
    from spnas.stages.retrain import retrain
    return retrain(config_from_args(RetrainStage(), args))


def add_finetune_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas finetune``, generated from ``FinetuneStage``."""
    return add_config_args(p, FinetuneStage(), titles={"model": "fine-tuning"})


def run_finetune(args: argparse.Namespace) -> dict:
    from spnas.stages.finetune import finetune
    return finetune(config_from_args(FinetuneStage(), args))


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
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CUDA (default: fp32)")
    return p


def run_evaluate(args: argparse.Namespace) -> dict | int:
    """Exit status 1 (after the files are written) when the outputs were not finite."""
    from spnas.stages.evaluate import evaluate_checkpoint, format_evaluation, nonfinite_warning
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
    h.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help=CHANNELS_LAST_HELP)
    h.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CUDA")
    h.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    h.add_argument("--repeats", type=int, default=30, help="timed calls (the median is shown)")
    return p


def run_profile(args: argparse.Namespace) -> dict:
    from spnas.runtime import resolve_device
    from spnas.stages.profile import format_profile, profile_arch
    from spnas.stages.retrain import load_arch
    check_positive(args, "classes", "resolution", "batch_size", "repeats")
    if args.warmup < 0:
        raise SpnasError(f"--warmup must be 0 or more, got {args.warmup}")
    arch = load_arch(RetrainConfig(arch=args.arch, space=args.space, layers=args.layers,
                                   num_choices=args.num_choices), DataConfig(resize=args.resize))
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing file (never a folder)")
    return p


def run_export(args: argparse.Namespace) -> dict:
    from spnas.stages.export import export_checkpoint, format_export
    check_positive(args, "tolerance")
    if args.check_images < 0:
        raise SpnasError(f"--check_images must be 0 or more, got {args.check_images}")
    r = export_checkpoint(args.checkpoint, args.format, args.out, args.data_path,
                          args.check_images, args.tolerance, args.overwrite)
    print(format_export(r))
    return r
