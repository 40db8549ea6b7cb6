"""``spnas pipeline``: data to a deployable network in one command, each stage in its own folder.

    spnas pipeline --config recipes/smoke.yaml --out runs/smoke [--resume] [--data_path DIR]

Stages, each in ``OUT/<stage>/`` and fed by the one before it::

    supernet   spnas train (SPOS supernet)           -> OUT/supernet/best.pt
    search     spnas search on it                    -> OUT/search/best_arch.json
    retrain    spnas retrain of the best arch        -> OUT/retrain/best.pt, results.json
    evaluate   spnas evaluate on the test set        -> OUT/evaluate/evaluation.json
    export     spnas export (ONNX or TorchScript)    -> OUT/export/model.<format>
    report     OUT/report.md and OUT/report.html (self-contained: pictures inlined)

A recipe (YAML or JSON) holds settings by their flag names: top-level names
apply to every stage that has a setting of that name (``data_path``,
``dataset``, ``seed``, ``device`` ...), and a section per stage sets that
stage's own (``supernet: {epochs: 600, lr: 0.025}``); evaluate and export read
the retrained network's data (``NOT_SHARED``) unless their own section names
other data. Flags given to ``spnas pipeline`` (``--data_path``, ``--set NAME=V`` ...)
set the recipe's top level and replace the same setting in every stage's section
(``with_shared``; ``--set STAGE.NAME=V`` sets one section's). Every stage's settings are
built and checked before any stage runs or ``OUT/recipe.json`` is written, so a
mistake anywhere fails at once. A finished stage leaves
``OUT/<stage>/done.json`` and is not run again; a stopped one resumes
(training from ``last.pt``, search from ``candidates.jsonl``). ``--resume`` needs
a pipeline's folder, and a changed recipe is refused unless the changes touch
only stages not started yet (no ``OUT/<stage>/``) or ``MACHINE_KEYS``.

Under torchrun every process runs the supernet, search and retrain stages together
(DDP, the search split across them); rank 0 alone writes the pipeline's own files
(``recipe.json``, ``done.json``, the report) and runs evaluate and export, and the
others wait for it after each stage (``runtime.rank0_first``), so no process starts a
stage before the one before it is recorded.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spnas.config import EvaluateConfig, ExportConfig, SearchRunConfig
from spnas.data.loading import check_cutout, settings_input_side
from spnas.defaults import RetrainStage, SupernetStage
from spnas.engine.runlog import RunLock, RunLog
from spnas.errors import SpnasError
from spnas.fields import coerce_settings, from_flat, settings_of, to_flat
from spnas.files import atomic_write_text
from spnas.resume import WHERE, checked_saved_settings, read_saved_config
from spnas.runtime import Dist, init_distributed, rank0_first

# may differ when a pipeline resumes (elsewhere, or with event files turned on)
MACHINE_KEYS = {"data_path", "device", "download", "tensorboard"}
STAGES = ("supernet", "search", "retrain", "evaluate", "export")
SPENT = "stopped_seconds.json"  # in --out: {stage: its time in processes that stopped}
SPENT_EVERY = 30.0  # seconds between writes of SPENT while a stage runs: a killed process loses less
EVERY_RANK = ("supernet", "search", "retrain")  # run by every torchrun process; the rest by rank 0
# settings the pipeline gives its stages itself (folders, resume, what feeds each stage)
PIPELINE_SETS = ("save_path", "exp_name", "resume", "checkpoint", "out", "arch", "overwrite")
# top-level settings a stage does not take: evaluate and export read the retrained network's
# data (its checkpoint's dataset, the retrain stage's data_path) unless their own section says
NOT_SHARED = {"evaluate": {"data_path", "dataset"}, "export": {"data_path"}}


def _export_default() -> ExportConfig:
    """The export stage's settings: ``spnas export``'s, but TorchScript, which needs no extra
    package (``format: onnx`` in the recipe's export section for ONNX)."""
    return ExportConfig(format="torchscript")


STAGE_DEFAULTS: dict[str, Callable[[], Any]] = {
    "supernet": SupernetStage, "search": SearchRunConfig, "retrain": RetrainStage,
    "evaluate": EvaluateConfig, "export": _export_default}
_COMMAND = {"supernet": "train"}  # the command of each stage, where its name differs


def recipe_values(default, shared: dict, own: dict, stage: str) -> dict:
    """The settings the recipe gives the stage ``default`` is of: the shared ones it knows
    (less ``NOT_SHARED``) and all of its section's, which must be its settings."""
    known = settings_of(default)
    unknown = sorted(set(own) - set(known))
    if unknown:
        hint = _near(unknown, set(known) - set(PIPELINE_SETS))
        raise SpnasError(f"recipe section '{stage}' has no setting {', '.join(unknown)}{hint}; "
                         f"see 'spnas {_COMMAND.get(stage, stage)} --help' for its settings")
    values = {k: v for k, v in shared.items() if k in known and k not in NOT_SHARED.get(stage, ())}
    values.update(own)
    return values


def _settings_for(default, shared: dict, own: dict, stage: str):
    """``default`` with the settings the recipe gives it (checked)."""
    values = recipe_values(default, shared, own, stage)
    try:
        return from_flat(default, coerce_settings(default, values))
    except SpnasError as e:
        raise SpnasError(f"{stage} stage: {e}") from None


def _near(unknown: list[str], names) -> str:
    """' (did you mean lr?)' for the known names closest to the unknown ones, or ''."""
    near = sorted({m for k in unknown for m in difflib.get_close_matches(k, list(names), n=1)})
    return f" (did you mean {', '.join(near)}?)" if near else ""


def stage_names() -> dict[str, set[str]]:
    """{stage: the names of its settings}."""
    return {stage: set(settings_of(make())) for stage, make in STAGE_DEFAULTS.items()}


def stage_settings(shared: dict, own: dict[str, dict]) -> dict[str, Any]:
    """{stage: its settings, built and checked}: any mistake is a ``SpnasError`` here."""
    names = stage_names()
    every = set().union(*names.values())
    unknown = sorted(set(shared) - every)
    if unknown:
        raise SpnasError(f"the recipe's top-level {', '.join(unknown)} is no stage's setting"
                         f"{_near(unknown, every - set(PIPELINE_SETS))}; "
                         "top-level names are settings of a stage (see 'spnas train --help', "
                         "'spnas search --help', 'spnas retrain --help', docs/recipes.md)")
    for stage, values in (("top level", shared), *own.items()):
        ours = sorted(set(values) & set(PIPELINE_SETS))
        if ours:
            where = "the recipe's top level" if stage == "top level" else f"recipe section '{stage}'"
            raise SpnasError(f"{where} sets {', '.join(ours)}, which the pipeline sets itself "
                             "(each stage's folder and input); drop it")
    return {stage: _settings_for(make(), shared, own[stage], stage)
            for stage, make in STAGE_DEFAULTS.items()}


def check_retrain_space(settings: dict[str, Any], shared: dict, own: dict[str, dict]) -> None:
    """The retrain stage trains the search's best arch, which is of the supernet's space: a
    recipe that gives the retrain stage another space or size, or other images (``resize``:
    the layout), fails before any stage runs, not after the supernet and the search."""
    supernet, retrain = settings["supernet"], settings["retrain"]
    given = recipe_values(retrain, shared, own["retrain"], "retrain")
    theirs = {"space": supernet.model.space, "layers": supernet.model.layers,
              "num_choices": supernet.model.num_choices, "resize": supernet.data.resize}
    mine = to_flat(retrain)
    for name, value in theirs.items():
        if (name in given or name == "resize") and mine[name] != value:
            raise SpnasError(f"the recipe gives the retrain stage {name} {mine[name]} but the "
                             f"supernet {name} {value}; the retrain stage trains the search's "
                             f"best arch, of the supernet's space: give {name} once, at the top "
                             "level, or the same in both sections")


def check_budget_early(settings: dict[str, Any]) -> None:
    """Refuse a search budget below the cheapest arch of the supernet's space before the
    supernet trains (the search checks it again). Only where the classes and the input side
    are known before the data is read: CIFAR or --classes, and ``settings_input_side``."""
    search, supernet = settings["search"], settings["supernet"]
    if search.search.max_flops is None and search.search.max_params is None:
        return
    data = supernet.data
    classes = data.classes or {"cifar10": 10, "cifar100": 100}.get(data.dataset)
    resolution = settings_input_side(data)
    if classes is None or resolution is None:
        return
    from spnas.engine.evolution import Budget
    from spnas.stages.search import check_budget, cost_model
    from spnas.stages.train import supernet_space
    quiet = RunLog(".", enabled=False)
    costs = cost_model(supernet_space(supernet.model, supernet.data), classes, resolution, None,
                       quiet)
    try:
        check_budget(costs, Budget(search.search.max_flops, search.search.max_params), resolution,
                     quiet)
    except SpnasError as e:
        raise SpnasError(f"search stage: {e}") from None


def split_recipe(recipe: dict) -> tuple[dict, dict[str, dict]]:
    """(shared settings, {stage: its own settings}); unknown sections are refused."""
    for stage in STAGES:
        if recipe.get(stage) is not None and not isinstance(recipe[stage], dict):
            raise SpnasError(f"recipe section '{stage}' must be a mapping of settings, got "
                             f"{recipe[stage]!r}")
    shared = {k: v for k, v in recipe.items() if not isinstance(v, dict) and k not in STAGES}
    sections = {k: v for k, v in recipe.items() if isinstance(v, dict)}
    unknown = sorted(set(sections) - set(STAGES))
    if unknown:
        raise SpnasError(f"the recipe has sections {', '.join(unknown)}; known stages: "
                         f"{', '.join(STAGES)}")
    return shared, {s: dict(sections.get(s) or {}) for s in STAGES}


def recipe_changes(before: dict, now: dict) -> dict[str, tuple[Any, Any]]:
    """{NAME or STAGE.NAME: (before, now)} for each setting the two recipes give differently,
    but ``MACHINE_KEYS`` (at the top level or in a section); None: not given."""
    now = _jsonable(now)
    changes = {}
    for key in before.keys() | now.keys():
        was, is_ = before.get(key), now.get(key)
        if key in STAGES and (isinstance(was, dict) or isinstance(is_, dict)):
            was, is_ = (v if isinstance(v, dict) else {} for v in (was, is_))
            changes.update({f"{key}.{k}": (was.get(k), is_.get(k)) for k in was.keys() | is_.keys()
                            if k not in MACHINE_KEYS and was.get(k) != is_.get(k)})
        elif key not in MACHINE_KEYS and was != is_:
            changes[key] = (was, is_)
    return changes


def _change_text(name: str, was, now) -> str:
    """'supernet.lr 0.025, now 0.5' ('not set' for None)."""
    def text(v):
        return "not set" if v is None else json.dumps(v, default=str)
    return f"{name} {text(was)}, now {text(now)}"


def _every(seconds: float, stop: threading.Event, work: Callable[[], None]) -> None:
    """Call ``work`` every ``seconds`` until ``stop`` is set; a failed call (a full disk)
    waits for the next."""
    while not stop.wait(seconds):
        try:
            work()
        except OSError:
            pass


def _stop(thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    if thread.is_alive():
        thread.join()


def _read_done(done: Path) -> tuple[Any, float]:
    """A finished stage's result and seconds, from its ``done.json``."""
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
        result, seconds = record["result"], float(record["seconds"])
    except (ValueError, TypeError, KeyError) as e:  # UnicodeDecodeError is a ValueError
        raise SpnasError(f"{done} is damaged ({type(e).__name__}); delete it and --resume to "
                         "finish the stage again from its folder") from None
    return result, seconds


class Pipeline:
    """Runs the stages of one recipe in ``out``; see the module docstring."""

    def __init__(self, recipe: dict, out: str | Path, resume: bool = False):
        self.out, self.resume = Path(out).expanduser(), resume
        self.shared, self.own = split_recipe(recipe)
        self.settings = stage_settings(self.shared, self.own)  # checked before anything runs
        self.recipe = recipe
        self.times: dict[str, float] = {}
        self.results: dict[str, Any] = {}
        self.dist, self.device = Dist(), torch.device("cpu")  # run() reads torchrun's
        self.lock = RunLock(self.out, elsewhere="--out")  # rank 0's, while run() runs

    def done_path(self, stage: str) -> Path:
        return self.out / stage / "done.json"

    def _spent(self) -> dict:
        """{stage: seconds} that processes spent on stages before they stopped (``SPENT``)."""
        try:
            spent = json.loads((self.out / SPENT).read_text())
        except (OSError, ValueError):
            return {}
        return spent if isinstance(spent, dict) else {}

    def _earlier_seconds(self, stage: str) -> float:
        """The seconds earlier processes spent on ``stage`` before they stopped (0 if none
        did, or one was killed before it could say)."""
        seconds = self._spent().get(stage)
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
            return float(seconds)
        return 0.0

    def run(self) -> dict:
        self.dist, self.device = init_distributed(str(self.shared.get("device") or "auto"))
        try:
            self._rank0(self._start)
            for stage in STAGES:
                self._stage(stage)
            from spnas.stages.pipeline_report import write_report
            paths = self._rank0(lambda: write_report(self.out, self.results, self.times,
                                                     self.recipe))
        finally:
            self.lock.release()
        return {"stages": self.results, "seconds": self.times,
                "report": [str(p) for p in paths] if paths else None}

    def _rank0(self, fn):
        """``fn()`` on rank 0 alone; the other processes wait for it (and stop if it fails)."""
        return rank0_first(fn, self.dist, self.device)

    def _start(self) -> None:
        """Lock ``out`` (a second pipeline there would rewrite recipe.json under this one's
        stages), then check the recipe and record it."""
        self.lock.acquire()
        self._check_recipe()

    def _check_recipe(self) -> None:
        path = self.out / "recipe.json"
        if not self.done_path("search").exists():
            check_budget_early(self.settings)
        check_retrain_space(self.settings, self.shared, self.own)
        for stage in ("supernet", "retrain"):
            try:
                check_cutout(self.settings[stage].data, settings_input_side(self.settings[stage].data))
            except SpnasError as e:
                raise SpnasError(f"{stage} stage: {e}") from None
        if not path.is_file():
            if self.resume:
                raise SpnasError(f"{self.out} holds no pipeline (no recipe.json): nothing to "
                                 "--resume; start without --resume, or check --out")
            if self.out.exists() and any(p.name != RunLock.NAME for p in self.out.iterdir()):
                raise SpnasError(f"{self.out} is not empty and holds no pipeline; choose another --out")
        else:
            self._compare(path)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.recipe, indent=2, default=str) + "\n")

    def _compare(self, path: Path) -> None:
        """Refuse a recipe that changes a started stage's settings; log changes to later ones."""
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = None
        if not isinstance(before, dict):
            raise SpnasError(f"{path} is not a pipeline's recipe (a JSON mapping); choose "
                             "another --out")
        changes = recipe_changes(before, self.recipe)
        changed = sorted(changes)
        names = stage_names()
        touched = {k: {k.partition(".")[0]} if "." in k else {s for s in STAGES if k in names[s]}
                   for k in changed}
        ran = [i for i, s in enumerate(STAGES) if (self.out / s).exists()]
        started = set(STAGES[:max(ran) + 1]) if ran else set()  # and every stage before one
        refused = [k for k in changed if touched[k] & started]
        if refused:
            hit = sorted(set().union(*(touched[k] for k in refused)) & started, key=STAGES.index)
            what = "; ".join(_change_text(k, *changes[k]) for k in refused)
            raise SpnasError(f"{self.out} ran another recipe ({what}; see {path}) and "
                             f"{', '.join(hit)} started with it (it or a later stage has its "
                             "folder); resume with the same settings (only stages not started "
                             "yet may change), or choose another --out")
        if not self.resume and not ran:  # refused before its first stage began: nothing to keep
            print(f"pipeline: {self.out} holds a pipeline that started no stage; it starts "
                  "afresh", flush=True)
            (self.out / SPENT).unlink(missing_ok=True)
            return
        if not self.resume:
            raise SpnasError(f"{self.out} already holds this pipeline; pass --resume to "
                             "continue it, or choose another --out")
        if changed:
            later = sorted(set().union(*touched.values()), key=STAGES.index)
            print(f"pipeline: {', '.join(changed)} changed since {path}; taken: "
                  f"{', '.join(later) + ' not started yet' if later else 'no stage has it'}",
                  flush=True)

    def _stage(self, stage: str) -> None:
        done = self.done_path(stage)
        if done.exists():  # every process sees the same: rank 0 wrote it before they went on
            self.results[stage], self.times[stage] = _read_done(done)
            if self.dist.main:
                print(f"pipeline: {stage} finished before; kept ({done})")
            return
        if self.dist.main:
            print(f"pipeline: {stage} -> {self.out / stage}", flush=True)
        earlier = self._earlier_seconds(stage)
        t0 = time.perf_counter()
        run = getattr(self, f"_run_{stage}")
        note_spent = lambda: atomic_write_text(self.out / SPENT, json.dumps(  # noqa: E731
            {**self._spent(), stage: earlier + time.perf_counter() - t0}) + "\n")
        stop = threading.Event()  # a process killed outright (SIGKILL) leaves its time so far:
        ticker = threading.Thread(target=_every, args=(SPENT_EVERY, stop, note_spent), daemon=True)
        if self.dist.main:
            ticker.start()
        try:
            result = run() if stage in EVERY_RANK else self._rank0(run)
        except BaseException:  # stopped (Ctrl-C, an error): its time counts when it resumes
            if self.dist.main:
                _stop(ticker, stop)
                note_spent()
            raise
        finally:
            _stop(ticker, stop)
        seconds = earlier + time.perf_counter() - t0
        self.results[stage], self.times[stage] = result, seconds
        self._rank0(lambda: atomic_write_text(done, json.dumps(
            {"result": result, "seconds": seconds}, indent=1, default=str) + "\n"))
        if self.dist.main:  # done.json holds its time now
            self._forget_spent(stage)

    def _forget_spent(self, stage: str) -> None:
        spent = self._spent()
        if stage in spent:
            del spent[stage]
            if spent:
                atomic_write_text(self.out / SPENT, json.dumps(spent) + "\n")
            else:
                (self.out / SPENT).unlink(missing_ok=True)

    # -- the stages
    def _placed(self, cfg, stage: str):
        """A training stage's settings in ``OUT/<stage>/``; a stopped one resumes there, with
        what the recipe leaves out taken from its ``config.json``, as ``spnas train --resume``
        does (so a default changed since it started does not stop the resume)."""
        folder = self.out / stage
        resume = (folder / "last.pt").exists()
        if not resume and (folder / "best.pt").exists():  # the trainer's fix names its flags
            raise SpnasError(f"{folder} holds best.pt but no last.pt to resume from; put "
                             f"last.pt back, or delete {folder} to run the stage afresh")
        if resume:
            cfg = self._as_started(cfg, stage)
        run = dataclasses.replace(cfg.run, save_path=str(self.out), exp_name=stage, resume=resume)
        return dataclasses.replace(cfg, run=run)

    def _as_started(self, cfg, stage: str):
        """``cfg`` with the settings the recipe leaves out as the stage's ``config.json``
        has them, but for ``MACHINE_KEYS`` (this machine's data and device, not the one that
        started it) and what the pipeline sets itself. A file that cannot be read changes
        nothing (the trainer then says what is wrong); a value today's settings refuse is a
        one-line error naming the file."""
        path = self.out / stage / "config.json"
        saved = read_saved_config(path)
        if saved is None:
            return cfg
        given = recipe_values(cfg, self.shared, self.own[stage], stage)
        skip = set(given) | set(PIPELINE_SETS) | set(WHERE) | MACHINE_KEYS
        taken = checked_saved_settings(cfg, saved, path, skip, fix=(
            f"the stage cannot resume with it: correct the value there, or delete "
            f"{path.parent} to run the stage afresh"))
        started = from_flat(cfg, taken)
        now = to_flat(cfg)
        moved = sorted(k for k, v in taken.items() if now.get(k) != v)
        if moved and self.dist.main:
            print(f"pipeline: {stage} resumes with its {path.name}'s "
                  f"{', '.join(f'{k} {taken[k]}' for k in moved)} (the recipe does not set "
                  f"{'them' if len(moved) > 1 else 'it'}; today's default: "
                  f"{', '.join(str(now.get(k)) for k in moved)})", flush=True)
        return started

    def _run_supernet(self) -> dict:
        from spnas.stages.train import train_supernet
        r = train_supernet(self._placed(self.settings["supernet"], "supernet"))
        return _jsonable(r)

    def _run_search(self) -> dict:
        from spnas.stages.search import search_supernet
        out = self.out / "search"
        cfg = dataclasses.replace(self.settings["search"], checkpoint=str(self.out / "supernet"),
                                  out=str(out), resume=(out / "candidates.jsonl").exists())
        top = search_supernet(cfg)
        return {"best_arch": str(top[0].arch), "val_acc": top[0].fitness, **top[0].cost,
                "arch_file": str(out / "best_arch.json")}

    def _run_retrain(self) -> dict:
        from spnas.stages.retrain import retrain
        cfg = self._placed(self.settings["retrain"], "retrain")
        model = dataclasses.replace(cfg.model, arch=str(self.out / "search" / "best_arch.json"))
        return _jsonable(retrain(dataclasses.replace(cfg, model=model)))

    def _on_retrained(self, stage: str, **placed):
        """The settings of evaluate or export, on the retrained network. Their data is their
        section's, else the retrain stage's (this machine's: the checkpoint's own may be
        another machine's after a resume elsewhere)."""
        s = self.settings[stage]
        return dataclasses.replace(s, checkpoint=str(self.out / "retrain"), **placed,
                                   data_path=s.data_path or self.settings["retrain"].data.data_path)

    def _run_evaluate(self) -> dict:
        from spnas.stages.evaluate import evaluate_checkpoint
        r = evaluate_checkpoint(self._on_retrained("evaluate", out=str(self.out / "evaluate")))
        return {k: r[k] for k in ("top1", "top5", "loss", "n", "split", "checkpoint")}

    def _run_export(self) -> dict:
        from spnas.stages.export import export_checkpoint
        ext = "onnx" if self.settings["export"].format == "onnx" else "torchscript.pt"
        cfg = self._on_retrained("export", out=str(self.out / "export" / f"model.{ext}"),
                                 overwrite=True)
        return _jsonable(export_checkpoint(cfg))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def with_shared(recipe: dict, overrides: dict) -> dict:
    """``recipe`` with each of ``overrides`` (top-level names; None: not given) set for every
    stage: at the top level, and in place of a stage section's own value of the name, which
    would win over the top level (but for ``NOT_SHARED``: there the section's own stays)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in recipe.items()}
    for name, value in overrides.items():
        if value is None:
            continue
        out[name] = value
        for stage in STAGES:
            if isinstance(out.get(stage), dict) and name not in NOT_SHARED.get(stage, ()):
                out[stage].pop(name, None)
    return out


def apply_settings(recipe: dict, settings: list[tuple[str, str]]) -> dict:
    """``recipe`` with ``[(STAGE.NAME or NAME, text)]`` set, in order; the text is read as
    YAML would. A NAME without a stage is set for every stage (``with_shared``)."""
    for key, text in settings:
        recipe = with_overrides(recipe, {key: _scalar(text)}, what="--set")
    return recipe


def _scalar(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def pipeline(recipe: dict | str | Path, out: str | Path, resume: bool = False,
             overrides: dict | None = None) -> dict:
    """Run (or resume) the whole pipeline of ``recipe`` (a dict or a YAML/JSON file) in ``out``;
    ``overrides``: {setting: value}, as ``--set`` gives them (``with_overrides``): ``NAME``
    for every stage, ``"STAGE.NAME"`` or ``STAGE: {NAME: value}`` for one."""
    for name, value, kinds in (("recipe", recipe, (dict, str, os.PathLike)),
                               ("out", out, (str, os.PathLike)), ("resume", resume, (bool,)),
                               ("overrides", overrides, (dict, type(None)))):
        if not isinstance(value, kinds):
            want = " or ".join("a path" if k is os.PathLike else "None" if k is type(None) else
                               k.__name__ for k in kinds)
            raise TypeError(f"pipeline's {name} must be {want}, got {type(value).__name__} "
                            "(spnas.pipeline('recipes/smoke.yaml', 'runs/smoke'))")
    if not isinstance(recipe, dict):
        from spnas.cli.generate import read_recipe
        recipe = read_recipe(recipe)
    return Pipeline(with_overrides(recipe, overrides or {}), out, resume).run()


def with_overrides(recipe: dict, overrides: dict, what: str = "overrides") -> dict:
    """``recipe`` with the Python API's ``overrides``, as ``--set`` gives them: a
    ``"STAGE.NAME"`` key sets that stage's setting, a stage name with a dict sets those of its
    settings (the rest of the recipe's section stays), any other name every stage's
    (``with_shared``). ``what`` names the source in errors."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in recipe.items()}
    for key, value in overrides.items():
        stage, _, name = key.rpartition(".") if isinstance(key, str) else ("", "", key)
        if stage and stage not in STAGES:
            shown = key if what.startswith("--") else repr(key)  # --set a.b; overrides 'a.b'
            raise SpnasError(f"{what} {shown}: no stage {stage!r}; stages: {', '.join(STAGES)}")
        if key in STAGES and isinstance(value, dict):
            stage, settings = key, value
        elif stage:
            settings = {name: value}
        else:
            out = with_shared(out, {key: value})
            continue
        out[stage] = {**(out[stage] if isinstance(out.get(stage), dict) else {}), **settings}
    return out
