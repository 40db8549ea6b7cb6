"""``spnas train``, ``spnas search`` and ``spnas latency-table``: the SPOS pipeline."""
from __future__ import annotations

import argparse

from spnas.cli.generate import add_config_args, config_from_args
from spnas.config import LatencyConfig, SearchRunConfig
from spnas.defaults import SupernetStage
from spnas.errors import SpnasError
from spnas.fields import count_arg

__all__ = ["add_latency_table_parser", "add_search_parser", "add_train_parser", "count_arg",
           "run_latency_table", "run_search", "run_train"]


def add_train_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas train`` (SPOS supernet), the seed command's flags included:
    generated from ``SupernetStage``."""
    return add_config_args(p, SupernetStage(), titles={"model": "supernet"})


def run_train(args: argparse.Namespace) -> dict:
    from spnas.stages.train import train_supernet
    return train_supernet(config_from_args(SupernetStage(), args))


BUDGET = ("budget (of the standalone network)",
          "The log states the space's range; a budget outside it is an error (below) or a "
          "warning (above: it filters nothing). The 20-layer SPOS space, 10 classes: "
          "152.6M-212.7M MACs, 2.03M-2.75M params at 32x32; 269.3M-397.6M MACs, "
          "2.14M-2.86M params at 224x224 (--resize).")


def add_search_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``spnas search``, generated from ``SearchRunConfig``; the data flags default to
    the checkpoint's (so the scoring split is the one held out of supernet training)."""
    return add_config_args(p, SearchRunConfig(), titles={
        "options": "run", "budget": BUDGET,
        "data": ("data", "Each defaults to the checkpoint's own, as does --split_seed.")})


def run_search(args: argparse.Namespace):
    from spnas.stages.search import search_supernet
    return search_supernet(config_from_args(SearchRunConfig(), args))


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
    """Flags of ``spnas latency-table``, generated from ``LatencyConfig`` (and --option)."""
    add_config_args(p, LatencyConfig(), titles={"options": "latency table"})
    p.add_argument("--option", dest="options", action="append", type=option_arg, default=[],
                   metavar="KEY=VALUE", help="space option, e.g. layers=8 (repeatable)")
    return p


def run_latency_table(args: argparse.Namespace):
    from spnas.stages.latency_table import measure_latency_table
    keys = [k for k, _ in args.options]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise SpnasError(f"--option {', '.join(twice)} given more than once; give each once")
    extra = {"options": dict(args.options)} if args.options else None
    return measure_latency_table(config_from_args(LatencyConfig(), args, extra=extra))
