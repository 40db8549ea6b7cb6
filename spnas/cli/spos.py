"""``spnas train``, ``spnas search`` and ``spnas latency-table``: the SPOS pipeline."""
from __future__ import annotations

import argparse
import dataclasses

from ..config import (
    DataConfig,
    LatencyConfig,
    ScoringConfig,
    SearchConfig,
    SearchRunConfig,
    SupernetConfig,
    from_namespace,
)
from ..errors import SpnasError
from .flags import B, add_data_args, add_optim_args, add_run_args, check_positive, train_config


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
    from ..supernet import train_supernet
    check_positive(args, "val_paths", "recal_images")
    cfg = train_config(args, from_namespace(SupernetConfig, args))
    return train_supernet(cfg)



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
    g = p.add_argument_group(
        "budget (of the standalone network)",
        "The log states the space's range; a budget outside it is an error (below) or a "
        "warning (above: it filters nothing). The 20-layer SPOS space, 10 classes: "
        "152.6M-212.7M MACs, 2.03M-2.75M params at 32x32; 269.3M-397.6M MACs, "
        "2.14M-2.86M params at 224x224 (--resize).")
    g.add_argument("--max_flops", type=count_arg, default=None,
                   help="multiply-accumulates, as NAS papers count FLOPs (e.g. 175M at 32x32; "
                        "SPOS's 330M only means something at 224x224, with --resize)")
    g.add_argument("--max_params", type=count_arg, default=None,
                   help="parameters (e.g. 2.3M)")
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
    from ..search_run import search_supernet
    check_positive(args, "population", "top_k", "generations", "max_tries", "num",
                   "recal_images", "recal_batch", "val_images", "eval_batch", "max_latency_ms")
    if not 0 <= args.mutation_prob <= 1:
        raise SpnasError(f"--mutation_prob must be within 0..1, got {args.mutation_prob}")
    if args.cache_gb < 0:
        raise SpnasError(f"--cache_gb must be 0 or more, got {args.cache_gb}")
    data = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataConfig)}
    cfg = from_namespace(SearchRunConfig, args, search=from_namespace(SearchConfig, args),
                         scoring=from_namespace(ScoringConfig, args), data=data)
    return search_supernet(cfg)


def option_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as an int or float where it is one.

    Whether the value fits the option (``layers=abc``) is checked by ``make_space``
    against the space's spec function.
    """
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
    from ..spaces import SPACE_SPECS
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
    p.add_argument("--calibrate", type=int, default=10,
                   help="random whole networks that fit one factor, whole network / sum of "
                        "parts (0: none)")
    p.add_argument("--validate", type=int, default=20,
                   help="other random whole networks timed to report the table's error (0: none)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--channels_last", action=B, default=True)
    return p


def run_latency_table(args: argparse.Namespace):
    from ..cost import measure_latency_table
    check_positive(args, "num_classes", "batch", "resolution", "threads", "repeats")
    if args.validate < 0 or args.warmup < 0 or args.calibrate < 0:
        raise SpnasError("--calibrate, --validate and --warmup must be 0 or more")
    keys = [k for k, _ in args.options]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise SpnasError(f"--option {', '.join(twice)} given more than once; give each once")
    if args.options and args.checkpoint:
        raise SpnasError("--option and --checkpoint do not mix: the checkpoint fixes the "
                         "space; drop one of them")
    return measure_latency_table(from_namespace(LatencyConfig, args, options=dict(args.options)))
