"""The ``spnas`` command: each subcommand parses its flags and calls one module.

A user mistake (``SpnasError``) prints one line, ``spnas: error: ...``, and
exits with status 2; no stack trace. The subcommands' flags live in this
package by stage: ``spos`` (train, search, latency-table), ``networks``
(retrain, finetune, evaluate, profile, export), ``superkernel``, ``curves``,
``reference`` (import-reference), ``pipeline``. The flags of every command but
``pipeline`` (whose flags override its recipe) are generated from their
dataclasses (``config``, ``defaults``) by ``generate`` (but a few composite ones:
superkernel's ``--target_latency_ms``/``--target_mmacs``, latency-table's
``--option``), with ``--config FILE``
and, for training, ``--resume`` taking the run's config.json back; ``curves``
keeps the flags of the seed's ``loss.py``.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from spnas.cli.curves import add_curves_parser, run_curves
from spnas.cli.networks import (
    add_evaluate_parser,
    add_export_parser,
    add_finetune_parser,
    add_profile_parser,
    add_retrain_parser,
    run_evaluate,
    run_export,
    run_finetune,
    run_profile,
    run_retrain,
)
from spnas.cli.pipeline import add_pipeline_parser, run_pipeline
from spnas.cli.reference import add_import_reference_parser, run_import_reference
from spnas.cli.spos import (
    add_latency_table_parser,
    add_search_parser,
    add_train_parser,
    run_latency_table,
    run_search,
    run_train,
)
from spnas.cli.superkernel import add_superkernel_parser, run_superkernel
from spnas.engine.signals import Terminated
from spnas.errors import SpnasError
from spnas.fields import count_arg

COMMANDS = {
    "pipeline": (add_pipeline_parser, run_pipeline,
                 "supernet -> search -> retrain -> evaluate -> export -> report, from one recipe"),
    "train": (add_train_parser, run_train, "train a SPOS supernet (one random path per step)"),
    "search": (add_search_parser, run_search,
               "search a trained supernet's paths (evolution or random) under a budget"),
    "latency-table": (add_latency_table_parser, run_latency_table,
                      "time every (layer, choice) of a space on a device, for latency budgets"),
    "superkernel": (add_superkernel_parser, run_superkernel,
                    "Single-Path NAS: superkernel search under a latency model; writes an "
                    "arch file"),
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
    "curves": (add_curves_parser, run_curves,
               "plot loss curves; compare a run with a reference run (--baseline)"),
    "import-reference": (add_import_reference_parser, run_import_reference,
                         "import a state_dict saved by the original SPOS CIFAR code "
                         "(ShunLu91/Single-Path-One-Shot-NAS) as an spnas checkpoint"),
}


class Parser(argparse.ArgumentParser):
    """argparse with a bad flag or value as one line (argparse prints its whole usage first)
    and without abbreviations (a misspelt ``--epoch`` is an error, not ``--epochs``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # build_parser's subcommands

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # named by the subcommand they were given to, whose --help lists its flags
            (self.commands.get(str(getattr(ns, "command", ""))) or self).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return ns


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="spnas", description="Single-path neural architecture search.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _, help_) in COMMANDS.items():
        p.commands[name] = sub.add_parser(name, help=help_, description=help_)  # a Parser too
        add(p.commands[name])
    return p


def run_guarded(fn, args) -> int:
    """Run ``fn(args)``; a user mistake is one line on stderr and exit status 2.

    ``fn`` may return an exit status (e.g. 1 when a comparison fails).
    """
    from spnas.runtime import close_distributed, tune_allocator
    tune_allocator()
    finished = False
    try:
        code = fn(args)
        finished = True
    except SpnasError as e:
        _tell(f"spnas: error: {e}")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP in training: engine/signals.py
        finished = getattr(e, "together", False)  # every rank stops here: wait for rank 0
        if isinstance(e, Terminated):
            _tell(f"spnas: terminated ({e.name})")
            return 128 + e.signum  # as a shell reports a process ended by the signal
        _tell("spnas: interrupted")
        return 130
    except BrokenPipeError:  # the reader of stdout stopped (spnas ... | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second one at exit
        return 141  # as a shell reports a process ended by SIGPIPE
    except OSError as e:
        if e.errno in _STORAGE_ERRORS:
            fix = ("free space or write elsewhere" if e.errno in _FULL else "write elsewhere, "
                   "or let this user write there")
            _tell(f"spnas: error: {_STORAGE_ERRORS[e.errno]} while writing "
                  f"{e.filename or 'a file'} ({e.strerror}); {fix} (--save_path, --out); what "
                  "was written before, checkpoints among them, is kept")
        elif e.errno in _PATH_ERRORS:
            _tell(f"spnas: error: {e.filename or 'a path'}: {_PATH_ERRORS[e.errno]} "
                  f"({e.strerror}); check the path given for it (--save_path, --out, "
                  "--data_path, ...)")
        else:
            raise
        return 2
    except (MemoryError, RuntimeError) as e:
        text = out_of_memory_text(e)
        if text is None:
            raise
        _tell(f"spnas: error: {text}")
        return 2
    finally:
        close_distributed(finished)
    return code if isinstance(code, int) else 0


def _tell(line: str) -> None:
    """The command's last line on stderr; a closed stderr (`| tee` ended by the same Ctrl-C)
    must not turn it into a traceback and another exit status."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def out_of_memory_text(e: BaseException) -> str | None:
    """The one line for an allocation that failed (torch's CUDA or CPU allocator, or Python's),
    or None for any other error."""
    text = str(e)
    if not (isinstance(e, MemoryError) or "out of memory" in text
            or "can't allocate memory" in text):
        return None
    size = re.search(r"[Tt]ried to allocate ([\d.]+) (bytes|[KMGT]iB)", text)
    asked = ""
    if size:
        amount, unit = float(size.group(1)), size.group(2)
        asked = (f": {amount / 2**30:.1f} GiB asked for" if unit == "bytes" else
                 f": {amount:g} {unit} asked for")
    where = "GPU memory" if "CUDA" in text or "cuda" in text else "memory"
    return (f"out of {where}{asked}; make the work smaller (--batch_size, "
            "--eval_batch, --recal_batch, --resolution, the image side) or use another "
            "--device; what was written before, checkpoints among them, is kept")


_STORAGE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "the operation is not permitted"}
_FULL = (errno.ENOSPC, errno.EDQUOT)  # the others: free space would not help
# a path that is missing, or given where the other kind of thing is
_PATH_ERRORS = {errno.ENOENT: "no such file or folder",
                errno.ENAMETOOLONG: "a name in it is too long",
                errno.ENOTDIR: "a part of it is a file where a folder is needed",
                errno.EEXIST: "a file is there where a folder is needed",
                errno.EISDIR: "it is a folder where a file is needed"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(COMMANDS[args.command][1], args)


__all__ = ["COMMANDS", "Parser", "add_curves_parser", "add_train_parser", "build_parser", "count_arg",
           "main", "run_curves", "run_guarded", "run_superkernel", "run_train"]
