"""``spnas superkernel``: the Single-Path NAS search, and its two recipes.

``RECIPES`` is the single source of both presets (``recipes/superkernel_<name>.yaml``
are written to match; a test checks): ``spnas`` (the default) holds this
project's choices, ``paper`` the official code's (github dstamoulis/single-path-nas,
``nas-search/``). ``--recipe`` fills every flag the command line does not give;
a flag given explicitly always wins. docs/superkernel.md says why each spnas
choice differs and what measurement supports it.
"""
from __future__ import annotations

import argparse

from ..errors import SpnasError
from .flags import B, add_data_args, add_optim_args, add_run_args, check_positive, train_config

# Flag values (argparse dests) of each recipe; every recipe names every key.
RECIPES: dict[str, dict] = {
    "spnas": {
        "epochs": 8, "lr": 0.05, "lr_batch": None, "momentum": 0.9, "nesterov": False,
        "schedule": "cosine", "min_lr": 0.0, "lr_decay_factor": None, "lr_decay_epochs": 2.4,
        "optimizer": "sgd", "rmsprop_alpha": 0.9, "rmsprop_eps": 1e-3,
        "weight_decay": 4e-5, "weight_decay_on": "weights",
        "threshold_lr_scale": 100.0, "threshold_weight_decay": 0.0,
        "lam": 0.1, "lam_scale": 1.0, "latency_formula": "paper",
        "warmup_frac": 0.625, "keep_prob": 0.6, "gate_dropout_rescale": False,
        "label_smoothing": 0.1, "dropout": 0.2, "mask_at": "activation", "init": "spnas",
        "bn_eps": 1e-5, "bn_momentum": 0.1, "ema_decay": 0.0,
    },
    # nas-search/search_main.py, nas_utils.py, superkernel.py, singlepath_supernet.py,
    # supernet_macro.py; lambda from nas-search/README.md.
    "paper": {
        "epochs": 8,                    # 10008 steps of 1024 ImageNet images
        "lr": 0.064, "lr_batch": 1024,  # base_learning_rate 0.016 x 1024 / 256
        "momentum": 0.9, "nesterov": False,
        "schedule": "linear", "min_lr": 0.064,  # constant (warmup_epochs=-1) ...
        "lr_decay_factor": 0.97, "lr_decay_epochs": 2.4,  # ... x 0.97 every 2.4 epochs (staircase)
        "optimizer": "rmsprop_tf", "rmsprop_alpha": 0.9, "rmsprop_eps": 1e-3,
        "weight_decay": 1e-5, "weight_decay_on": "non_bn",  # every variable but BN's ...
        "threshold_lr_scale": 1.0, "threshold_weight_decay": 1e-5,  # ... thresholds included
        "lam": 0.02, "lam_scale": 1000.0,  # runtime_lambda * 1e3 * ln(R), lambda 0.020
        "latency_formula": "paper",
        "warmup_frac": 0.625, "keep_prob": 0.6, "gate_dropout_rescale": True,  # 6255 of 10008
        "label_smoothing": 0.1, "dropout": 0.2, "mask_at": "kernel", "init": "paper",
        "bn_eps": 1e-3, "bn_momentum": 0.01,  # TF decay 0.99
        "ema_decay": 0.9999,
    },
}
CHOICES = {"optimizer": ("sgd", "rmsprop_tf"), "weight_decay_on": ("weights", "non_bn"),
           "mask_at": ("activation", "kernel"), "init": ("spnas", "paper"),
           "latency_formula": ("paper", "exact")}


def _both(key: str) -> str:
    s, p = RECIPES["spnas"][key], RECIPES["paper"][key]
    return f"(spnas: {s}; paper: {p})" if s != p else f"(default: {s})"


def _epilog() -> str:
    rows = [f"  --{k:<24}{str(RECIPES['spnas'][k]):<14}{RECIPES['paper'][k]}" for k in RECIPES["spnas"]]
    return ("recipes (--recipe; a flag given explicitly overrides the recipe's value):\n"
            f"  {'flag':<26}{'spnas':<14}paper\n" + "\n".join(rows) +
            "\n\nlambda: the penalty is lam x lam_scale x ln(R). The paper's code multiplies its "
            "lambda by 1e3,\nso its 0.020 is '--lam 0.02 --lam_scale 1000' (= '--lam 20' at "
            "scale 1); spnas's 0.1 is at scale 1.\nThe paper recipe's lr 0.064 is for 1024 "
            "images per step, scaled linearly to batch_size x processes.")


def add_superkernel_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas superkernel`` (Single-Path NAS search)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _epilog()
    add_data_args(p)
    add_optim_args(p, epochs=8, lr=0.05, wd=4e-5)
    add_run_args(p, exp_name="superkernel")
    g = p.add_argument_group("superkernel search")
    g.add_argument("--recipe", choices=tuple(RECIPES), default="spnas",
                   help="preset for every flag below and the optimisation flags not given "
                        "(table at the end; default: spnas)")
    g.add_argument("--layout", choices=("cifar", "imagenet"), default=None,
                   help="strides of the MBConv space (default: imagenet with --resize, else cifar)")
    g.add_argument("--latency_table", default=None, metavar="FILE",
                   help="per-layer latency table from 'spnas latency-table --space mbconv' "
                        "(default: a table of MACs, no timing)")
    g.add_argument("--lam", type=float, help="weight of ln(predicted latency), in the "
                   "convention of --lam_scale " + _both("lam"))
    g.add_argument("--lam_scale", type=float, help="the penalty is lam x lam_scale x ln R; 1000 "
                   "is the paper code's convention (its lambda x 1e3) " + _both("lam_scale"))
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target_latency_ms", type=float, default=None,
                   help="penalise only predicted latency above this (needs --latency_table)")
    t.add_argument("--target_mmacs", type=float, default=None,
                   help="the same in millions of MACs, with the MACs table")
    g.add_argument("--latency_formula", choices=CHOICES["latency_formula"],
                   help="paper: the paper's per-layer formula (k3e3 approximated); exact: "
                        "interpolates all five table entries " + _both("latency_formula"))
    g.add_argument("--warmup_frac", type=float,
                   help="fraction of the steps with lambda 0 and gate dropout " + _both("warmup_frac"))
    g.add_argument("--keep_prob", type=float,
                   help="gate keep probability in warm-up " + _both("keep_prob"))
    g.add_argument("--gate_dropout_rescale", action=B,
                   help="divide kept warm-up gates by keep_prob (TF1 dropout) " +
                        _both("gate_dropout_rescale"))
    g.add_argument("--threshold_lr_scale", type=float,
                   help="thresholds' learning rate = this x --lr " + _both("threshold_lr_scale"))
    g.add_argument("--threshold_weight_decay", type=float,
                   help="L2 weight decay on the thresholds " + _both("threshold_weight_decay"))
    g.add_argument("--weight_decay_on", choices=CHOICES["weight_decay_on"],
                   help="weights: --weight_decay on conv/linear weights; non_bn: on every "
                        "parameter outside BatchNorm " + _both("weight_decay_on"))
    g.add_argument("--mask_at", choices=CHOICES["mask_at"],
                   help="activation: gated channels are exact zeros; kernel: the paper's "
                        "kernel mask (BN's beta leaks through) " + _both("mask_at"))
    g.add_argument("--dropout", type=float, help="dropout before the classifier " + _both("dropout"))
    g.add_argument("--init", choices=CHOICES["init"],
                   help="weight init: spnas (torch He fan-out, depthwise fan-out C k k); paper "
                        "(official/timm: depthwise fan-out k k, uniform classifier) " + _both("init"))
    g.add_argument("--bn_eps", type=float, help="BatchNorm epsilon " + _both("bn_eps"))
    g.add_argument("--bn_momentum", type=float,
                   help="BatchNorm momentum, torch's (= 1 - TF decay) " + _both("bn_momentum"))
    g.add_argument("--optimizer", choices=CHOICES["optimizer"],
                   help="sgd (with --momentum, --nesterov) or rmsprop_tf (TF1's RMSProp: eps "
                        "inside the sqrt, mean square starting at 1) " + _both("optimizer"))
    g.add_argument("--rmsprop_alpha", type=float,
                   help="rmsprop_tf: decay of the mean square (TF 'decay') " + _both("rmsprop_alpha"))
    g.add_argument("--rmsprop_eps", type=float, help="rmsprop_tf: epsilon " + _both("rmsprop_eps"))
    g.add_argument("--lr_batch", type=int, help="--lr and --min_lr are for this many images per "
                   "step; scaled linearly to batch_size x processes (--batch_size: no "
                   "scaling) " + _both("lr_batch"))
    g.add_argument("--lr_decay_factor", type=float, help="staircase: multiply the lr by this "
                   "every --lr_decay_epochs epochs (1: none) " + _both("lr_decay_factor"))
    g.add_argument("--lr_decay_epochs", type=float, help="epochs per staircase step " +
                   _both("lr_decay_epochs"))
    g.add_argument("--ema_decay", type=float, help="validate an EMA of the weights (TF's, its "
                   "decay warmed up as min(d, (1+n)/(10+n))); 0 = none " + _both("ema_decay"))
    p.set_defaults(**{k: None for k in RECIPES["spnas"]})
    return p


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with every recipe flag not given explicitly (None) set from the recipe."""
    recipe = RECIPES[args.recipe]
    given = vars(args)
    return argparse.Namespace(**{**given, **{k: v for k, v in recipe.items() if given.get(k) is None}})


def superkernel_config(args: argparse.Namespace):
    from ..config import SuperkernelConfig, from_namespace
    args = apply_recipe(args)
    check_positive(args, "target_latency_ms", "target_mmacs", "keep_prob", "threshold_lr_scale",
                   "lr_batch", "lr_decay_factor", "lr_decay_epochs", "bn_eps", "rmsprop_eps")
    if not 0 <= args.warmup_frac <= 1 or args.keep_prob > 1 or args.lam < 0:
        raise SpnasError("--warmup_frac must be in [0, 1], --keep_prob in (0, 1], --lam >= 0")
    if not 0 <= args.ema_decay < 1 or not 0 <= args.bn_momentum <= 1:
        raise SpnasError("--ema_decay must be in [0, 1) and --bn_momentum in [0, 1]")
    target = args.target_latency_ms if args.target_mmacs is None else args.target_mmacs
    return from_namespace(
        SuperkernelConfig, args, layout=args.layout or ("imagenet" if args.resize else "cifar"),
        target_latency=target, target_unit="ms" if args.target_mmacs is None else "MMAC",
        formula=args.latency_formula)


def run_superkernel(args: argparse.Namespace) -> dict:
    from ..superkernel import search
    args = apply_recipe(args)
    return search(train_config(args, superkernel_config(args)))
