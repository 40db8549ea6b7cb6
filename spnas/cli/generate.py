"""Command-line flags generated from the stage dataclasses, so the CLI and the API share one set of defaults.

Every leaf field of a stage's config (``defaults.SupernetStage`` and the
others) becomes ``--<name>``, in an argument group named after the
sub-config that holds it (data, optimisation, run, ...). The field's type
gives the flag's type (a bool becomes ``--x/--no-x``), its metadata (set by
``fields.opt``) the help text, unit, choices and extra spellings, and the
stage's default instance the default, which the help shows. Values are
checked by the dataclasses themselves (``fields.Checked``), so
``OptimConfig(batch_size=0)`` and ``--batch_size 0`` are the same one-line
error. The flags record which of them the command line gave (``given``).

``config_from_args`` builds the stage's config, each source over the one before:

    defaults < recipe preset (--recipe) < the run's config.json (--resume)
             < --config FILE < flags given on the command line

``--config FILE`` is YAML or JSON, flat ``name: value`` or nested like a run
folder's ``config.json``; an unknown name is a one-line error. With
``--resume`` the run folder's own ``config.json`` comes back, so a resumed run
needs no flag repeated; a given setting that differs from it is refused
(``train.check_resume``) unless it is in ``resume.RESUMABLE``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from spnas.config import RunConfig, plain_folder_name
from spnas.errors import SpnasError
from spnas.fields import SECTIONS, base_type, coerce_settings, from_flat, leaf_fields, settings_of
from spnas.resume import (
    RENAMED,
    checked_saved_settings,
    read_saved_config,
    with_added_settings,
    without_legacy_defaults,
)

GIVEN = "_given_settings"  # namespace attribute: the dests the command line gave
IGNORED_KEYS = {"model_type", "config"}  # written into config.json, not settings
TITLES = {"data": "data", "optim": "optimisation", "run": "run", "model": "model",
          "options": "options"}


def mark_given(namespace: argparse.Namespace, *dests: str) -> None:
    given = getattr(namespace, GIVEN, None)
    if given is None:
        given = set()
        setattr(namespace, GIVEN, given)
    given.update(dests)


def given(args: argparse.Namespace) -> set[str]:
    """The settings the command line gave explicitly (by dest)."""
    return set(getattr(args, GIVEN, None) or ())


class _Recorded(argparse.Action):
    """Mixin (before an action class): the action also records its dest as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        mark_given(namespace, self.dest)


class _Store(_Recorded, argparse._StoreAction):
    pass


class _Bool(_Recorded, argparse.BooleanOptionalAction):
    pass


class _Positional(argparse._StoreAction):
    """A positional argument, recorded as given only when the command line holds it (argparse
    calls it with nothing, too), so that a --config file may give it instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values in (None, []) or values is self.default:
            values = self.default
        else:
            mark_given(namespace, self.dest)
            values = tuple(values) if isinstance(values, list) else values
        setattr(namespace, self.dest, values)


def default_text(value, f: dataclasses.Field | None = None) -> str:
    if f is not None and f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None or value == "" else str(value)


def default_paren(value, f: dataclasses.Field | None = None, note: str | None = None) -> str:
    """The help's '(default: 0.1)', '(default: 0.1; --recipe paper: 0.02)' or '(required)'."""
    shown = default_text(value, f)
    if shown == "required":
        return "(required)"
    return f"(default: {shown}{'; ' + note if note else ''})"


def add_config_args(p: argparse.ArgumentParser, default, titles: dict | None = None,
                    skip: tuple[str, ...] = (), notes: dict[str, str] | None = None
                    ) -> argparse.ArgumentParser:
    """One flag per leaf field of ``default`` (a stage config instance), grouped by sub-config
    (or by the field's ``group``); ``titles`` maps a group to its title or (title,
    description); ``notes`` adds text after a flag's default (e.g. another recipe's value)."""
    titles = {**TITLES, **(titles or {})}
    groups: dict[str, Any] = {}
    for path, f, hint, value in leaf_fields(default):
        if f.name in skip or f.metadata.get("cli") is False or "help" not in f.metadata:
            continue
        section = f.metadata.get("group") or (path[0] if len(path) > 1 else "options")
        if section not in groups:
            title = titles.get(section, section)
            title, description = title if isinstance(title, tuple) else (title, None)
            groups[section] = p.add_argument_group(title, description)
        _add_flag(groups[section], f, hint, value, (notes or {}).get(f.name))
    run_folder = (", flat or nested like a run folder's config.json (a valid input)"
                  if isinstance(getattr(default, "run", None), RunConfig) else "")
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"YAML or JSON file of settings by these flags' names{run_folder}; "
                        "flags given here win")
    return p


def _add_flag(g, f: dataclasses.Field, hint, value, note: str | None) -> None:
    meta = f.metadata
    unit = f" [{meta['unit']}]" if meta.get("unit") else ""
    text = f"{meta.get('help', '')}{unit} {default_paren(value, f, note)}".strip()
    kind = base_type(hint)
    if meta.get("positional"):
        many = typing.get_origin(kind) is tuple
        g.add_argument(f.name, nargs="*" if many else "?", default=value, action=_Positional,
                       metavar=meta.get("metavar") or f.name.upper(),
                       help=text.replace("%", "%%"))
        return
    names = [f"--{f.name}", *meta.get("flags", ())]
    kw: dict[str, Any] = {"dest": f.name, "default": value}
    if kind is bool:
        kw["action"] = _Bool
    else:
        kw["action"] = _Store
        kw["type"] = meta.get("parse") or kind
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
    action = g.add_argument(*names, **kw)
    action.help = text.replace("%", "%%")  # after: BooleanOptionalAction appends its own default


# ---- settings files -------------------------------------------------------------------------
def read_recipe(path: str | Path) -> dict:
    """The mapping a YAML or JSON settings file holds, as written (sections kept).

    PyYAML is imported only for .yaml/.yml files; a leading ``~`` is the home folder."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpnasError(f"{path}: cannot read it ({e.strerror or e}); give a YAML or JSON "
                         "file") from None
    except UnicodeDecodeError:
        raise SpnasError(f"{path} is not a UTF-8 text file; give a YAML or JSON file") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SpnasError("reading YAML needs PyYAML (pip install pyyaml); or give JSON") from None
        try:
            data = yaml.load(text, Loader=_strict_yaml_loader(yaml, path))
        except yaml.YAMLError as e:
            raise SpnasError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique(path, pairs))
        except ValueError as e:
            raise SpnasError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SpnasError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    _check_keys(path, data)
    return data


def _twice(path, key, where: str = "") -> SpnasError:
    return SpnasError(f"{path}: {key!r} is given twice in one mapping{where}; the second would "
                      "silently replace the first: keep one")


def _unique(path, pairs: list) -> dict:
    """A JSON object as a dict, refusing a key given twice (json keeps the last)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _twice(path, key)
        out[key] = value
    return out


def _strict_yaml_loader(yaml, path):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it keeps the last).
    Keys a ``<<:`` merge brings may be overridden, as YAML intends."""
    class StrictLoader(yaml.SafeLoader):  # type: ignore[name-defined]
        def construct_mapping(self, node, deep=False):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    fresh = key not in seen
                except TypeError:  # unhashable: the base class says so
                    continue
                if not fresh:
                    raise _twice(path, key, f" (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)
    return StrictLoader


def _check_keys(path, data: dict) -> None:
    """Every key of a settings file (and of its sections) is a name: YAML reads ``1:``,
    ``null:`` or ``yes:`` as a number, none or true."""
    for key, value in data.items():
        if not isinstance(key, str):
            raise SpnasError(f"{path}: {key!r} is not a setting's name (YAML reads an unquoted "
                             f"{key!r} as {type(key).__name__}); write settings as name: value")
        if isinstance(value, dict):
            _check_keys(path, value)


def read_config_file(path: str | Path, default=None) -> dict:
    """A flat {name: value} dict from a YAML or JSON file (nested sections are flattened,
    old names renamed, ``--weight-decay`` spellings read as ``weight_decay``). A setting
    given twice (``lr`` and ``optim: {lr}``) is refused: which one wins would be a guess.
    With ``default`` (the stage's config), a setting a hand-written file puts in another
    section than the stage's (``data: {lr}``) is refused too; a run's ``config.json`` (it
    names its ``model_type``) is not checked so, as an older spnas may have kept a setting
    elsewhere."""
    data = read_recipe(path)
    flat: dict = {}
    where: dict[str, str] = {}

    def add(data: dict, section: str) -> None:
        for key, value in data.items():
            place = f"{section}.{key}" if section else str(key)
            if isinstance(value, dict) and key in SECTIONS:
                add(value, place)
                continue
            name = RENAMED.get(key, key).replace("-", "_") if isinstance(key, str) else key
            if name in where:
                raise SpnasError(f"--config {path} sets {name} twice ({where[name]} and "
                                 f"{place}); keep one of them")
            flat[name], where[name] = value, place

    add(data, "")
    if "model_type" in data:  # a run's config.json
        return with_added_settings(without_legacy_defaults(flat))
    if default is not None:
        _check_sections(path, default, where)
    return flat


def _check_sections(path, default, where: dict[str, str]) -> None:
    home = {p[-1]: ".".join(p[:-1]) for p, _, _, _ in leaf_fields(default)}
    for name, place in where.items():
        section = place.rpartition(".")[0]
        if section and name in home and home[name] != section:
            right = f"in its {home[name]} section" if home[name] else "at the top level"
            raise SpnasError(f"--config {path}: {place} is not a {section} setting; write "
                             f"{name} {right} or at the top level")


def file_settings(path: str | Path, default, command: str | None = None) -> dict:
    """The settings of ``--config path`` for the stage ``default``, typed; unknown names refused."""
    data = read_recipe(path)
    expected = type(getattr(default, "model", None)).__name__
    if data.get("model_type") not in (None, expected) and hasattr(default, "model"):
        raise SpnasError(f"--config {path} holds the settings of a {data['model_type']} run; this "
                         f"command's are {expected}")
    if "model_type" in data and not hasattr(default, "model"):
        from spnas.engine.runlog import COMMAND_OF
        started = COMMAND_OF.get(str(data["model_type"]), "training")
        run = Path(path).parent
        use = (f"give its folder as --checkpoint {run}" if "checkpoint" in settings_of(default)
               else f"give its folder ({run}) as the command's argument")
        raise SpnasError(f"--config {path} is the config.json of a spnas {started} run, the "
                         f"settings of a training command; to use that run here, {use}")
    values = {k: v for k, v in read_config_file(path, default).items() if k not in IGNORED_KEYS}
    unknown = sorted(set(values) - set(settings_of(default)))
    if unknown:
        where = f"'spnas {command}'" if command else "this command"
        raise SpnasError(f"--config {path}: no setting named {', '.join(unknown)} for {where}; "
                         "see --help for the settings")
    return coerce_settings(default, values)


def saved_run_settings(default, values: dict) -> dict:
    """The settings in the run folder's ``config.json`` that ``values`` (merged so far) point
    at, typed; {} when there is none to read (the trainer says why a resume can't go on)."""
    run = getattr(default, "run", None)
    if not isinstance(run, RunConfig):
        return {}
    exp_name = values.get("exp_name", run.exp_name)
    if not isinstance(exp_name, str) or plain_folder_name(exp_name):
        return {}  # the config's own check says what is wrong with it
    path = Path(values.get("save_path", run.save_path)).expanduser() / exp_name / "config.json"
    data = read_saved_config(path)
    model = getattr(default, "model", None)
    if data is None or data.get("model_type") not in (None, type(model).__name__):
        return {}  # not a run's settings, or another command's run: the trainer refuses it
    return checked_saved_settings(default, data, path, fix=(
        "the run's recorded settings can't be resumed with it: correct the value there, "
        "or start a new run with another --exp_name"))


# ---- the config of a command ---------------------------------------------------------------
def stage_config(default, args: argparse.Namespace, given_dests: set[str] | None = None,
                 saved: dict | None = None, file_values: dict | None = None,
                 preset: dict | None = None, extra: dict | None = None):
    """The stage config: defaults < preset < the run's saved config < --config file < explicit
    flags (``given_dests``, by default those the command line gave) and ``extra`` (values of
    hand-written flags)."""
    known = settings_of(default)
    chosen = given(args) if given_dests is None else given_dests
    values: dict[str, Any] = {}
    for source in (preset, saved, file_values):
        values.update(source or {})
    values.update({k: getattr(args, k) for k in chosen if k in known})
    values.update(extra or {})
    return from_flat(default, values)


def config_from_args(default, args: argparse.Namespace, presets: dict[str, dict] | None = None,
                     extra: dict | None = None):
    """The command's config from its parsed flags, ``--config`` file, recipe preset and, with
    ``--resume``, the run's config.json (see the module docstring for the order)."""
    known = settings_of(default)
    explicit = {k: getattr(args, k) for k in given(args) if k in known}
    explicit.update(extra or {})
    path = getattr(args, "config", None)
    file_values = file_settings(path, default, getattr(args, "command", None)) if path else {}
    wanted = {**file_values, **explicit}
    saved = saved_run_settings(default, wanted) if wanted.get("resume") else {}
    preset = None
    if presets:
        name = wanted.get("recipe") or saved.get("recipe") or default.model.recipe
        if name not in presets:
            raise SpnasError(f"--recipe must be one of {', '.join(presets)}, got {name!r}")
        preset = coerce_settings(default, {**presets[name], "recipe": name})
    return stage_config(default, args, set(), saved, file_values, preset, explicit)
