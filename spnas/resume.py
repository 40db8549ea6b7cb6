"""What a resumed run may change: its settings are compared with the run folder's
``config.json``; ``RESUMABLE`` ones may differ (and are logged), any other is refused by name."""
from __future__ import annotations

import json
import os
from pathlib import Path

from spnas.errors import SpnasError
from spnas.fields import coerce_settings, flag_of, flat_fields, from_flat, settings_of, to_flat

# Settings a resumed run may change (logged); every other one must equal the run's config.json.
RESUMABLE = ("epochs", "stop_after", "print_freq", "val_interval", "ckpt_interval", "device",
             "deterministic", "cudnn_benchmark", "cuda_graphs", "tensorboard", "data_path",
             "download", "resume")
CHANGEABLE = tuple(n for n in RESUMABLE if n != "resume")  # as messages list them
WHERE = ("save_path", "exp_name")  # where the run folder is: the folder being resumed, not compared
# what one command does, not a setting of the run: recorded as false/none (so a run folder's
# config.json starts a whole new run), taken from the command line alone, not compared
PER_COMMAND = ("resume", "stop_after")
# names in config.json files written by earlier versions -> today's
RENAMED = {"formula": "latency_formula", "lr_decay_factor": "decay_factor",
           "lr_decay_epochs": "decay_epochs"}


# what a config.json written before space/layers/num_choices defaulted to none (2026-12-02)
# recorded for a network given by an arch file, which names its own space: not settings given
LEGACY_ARCH_DEFAULTS = {"space": "spos", "layers": 20, "num_choices": 4}


# settings added since, {name: (a setting of the same runs, the behaviour before)}: a
# config.json that has the one but not the other ran with that value, and resumes with it
ADDED = {"ema_warmup": ("ema", False)}  # 2026-12-03: the retrain/finetune EMA warms up


def with_added_settings(flat: dict) -> dict:
    """``flat`` (a run's settings) with the value of each of ``ADDED`` it ran with."""
    return {**{k: old for k, (beside, old) in ADDED.items() if beside in flat}, **flat}


def without_legacy_defaults(flat: dict) -> dict:
    """``flat`` (a run's settings) without ``LEGACY_ARCH_DEFAULTS`` where its ``arch`` is an
    arch file: an older spnas recorded them for every such run, whatever the file's space."""
    arch = flat.get("arch")
    if not (isinstance(arch, str) and arch.endswith(".json")):
        return flat
    if any(flat.get(k) != v for k, v in LEGACY_ARCH_DEFAULTS.items()):
        return flat
    return {k: v for k, v in flat.items() if k not in LEGACY_ARCH_DEFAULTS}


def saved_settings(saved: dict) -> dict:
    """{leaf name: value} of a run's config.json (old names renamed, older defaults dropped
    (``without_legacy_defaults``), settings added since as the run had them
    (``with_added_settings``); no ``PER_COMMAND``)."""
    flat = with_added_settings(without_legacy_defaults(flat_fields(saved, RENAMED)))
    return {k: v for k, v in flat.items() if k != "model_type" and k not in PER_COMMAND}


def read_saved_config(path: Path) -> dict | None:
    """A run's ``config.json`` as a mapping; None when it is missing, unreadable or not a
    mapping (the trainer's resume check then says what is wrong with it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checked_saved_settings(default, saved: dict, path: Path, skip=(), fix: str = "") -> dict:
    """The settings of ``default`` in a run's saved ``config.json`` (``saved``, read from
    ``path``), but for ``skip``, typed and checked as a config of ``default`` would be.

    A value today's settings refuse is a one-line ``SpnasError`` naming the file (not a
    flag nobody gave), followed by ``fix``.
    """
    known = settings_of(default)
    values = {k: v for k, v in saved_settings(saved).items() if k in known and k not in skip}
    try:
        typed = coerce_settings(default, values)
        from_flat(default, typed)
    except SpnasError as e:
        raise SpnasError(f"{path}: {e}; {fix}") from None
    return typed


def flag_text(name: str, value) -> str:
    """A setting as a command line gives it: ``--lr 0.1``, ``--cutout``, ``--no-amp``."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"{flag_of(name)} {'none' if value is None else value}"


def resume_changes(cfg, saved: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): how ``cfg``'s settings differ from a run's saved ``config.json``.

    Settings the saved config lacks (added since), ``WHERE`` and ``PER_COMMAND`` are not
    compared.
    """
    before = saved_settings(saved)
    refused: list[str] = []
    allowed: list[str] = []
    for name, value in to_flat(cfg).items():
        if name not in before or name in WHERE + PER_COMMAND or before[name] == value:
            continue
        old = before[name]
        if _same_file(old, value):  # a path given another way (relative, from elsewhere)
            continue
        was = flag_text(name, old) if isinstance(old, bool) else ("none" if old is None else old)
        text = f"{flag_text(name, value)} differs from the run's {was} (config.json)"
        (allowed if name in RESUMABLE else refused).append(text)
    return refused, allowed


def _same_file(a, b) -> bool:
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:  # not both there
        return False


def refuse_changes(refused: list[str], run_dir) -> None:
    if refused:
        raise SpnasError(f"{'; '.join(refused)}: a resumed run keeps the settings it was started "
                         f"with ({run_dir}/config.json; flags not given are taken from it); drop "
                         f"the flag{'s' if len(refused) > 1 else ''}, or start a new run with "
                         f"another --exp_name. Only {', '.join(CHANGEABLE)} may change on resume")
