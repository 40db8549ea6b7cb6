"""``spnas pipeline``: every stage from data to an exported network, from one recipe file."""
from __future__ import annotations

import argparse


def setting_arg(text: str) -> tuple[str, str]:
    """STAGE.NAME=VALUE or NAME=VALUE (a shared setting)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE or STAGE.NAME=VALUE "
                                         "(e.g. supernet.epochs=2)")
    return key, value


def add_pipeline_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, metavar="RECIPE",
                   help="the recipe: YAML or JSON (e.g. recipes/smoke.yaml); see docs/recipes.md")
    p.add_argument("--out", required=True, help="folder of the run; each stage in OUT/<stage>/")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped pipeline in --out (finished stages are kept)")
    g = p.add_argument_group("overrides of the recipe (every stage that has the setting)")
    g.add_argument("--data_path", default=None, help="folder holding the dataset")
    g.add_argument("--dataset", default=None, help="cifar10, cifar100 or folder")
    g.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="TensorBoard event files in every training stage's and the search's "
                        "folder (needs the tensorboard package)")
    g.add_argument("--set", dest="settings", action="append", type=setting_arg, default=[],
                   metavar="[STAGE.]NAME=VALUE",
                   help="any other setting, e.g. supernet.epochs=2 or val_size=1000 (repeatable)")
    return p


def run_pipeline(args: argparse.Namespace) -> dict:
    from spnas.cli.generate import read_recipe
    from spnas.stages.pipeline import apply_settings, pipeline
    recipe = apply_settings(read_recipe(args.config), args.settings)
    shared = {k: getattr(args, k) for k in ("data_path", "dataset", "device", "seed",
                                               "tensorboard")}
    r = pipeline(recipe, args.out, args.resume, shared)
    if r["report"]:  # (rank 0's; the other torchrun processes write none)
        print(f"pipeline done: report in {r['report'][0]} and {r['report'][1]}")
    return r
