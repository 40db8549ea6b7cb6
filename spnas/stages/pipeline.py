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
stage's own (``supernet: {epochs: 600, lr: 0.025}``). Flags given to
``spnas pipeline`` override the recipe's top level. A finished stage leaves
``OUT/<stage>/done.json`` and is not run again; a stopped one resumes
(training from ``last.pt``, search from ``candidates.jsonl``).

Under torchrun every process runs the supernet, search and retrain stages together
(DDP, the search split across them); rank 0 alone writes the pipeline's own files
(``recipe.json``, ``done.json``, the report) and runs evaluate and export, and the
others wait for it after each stage (``runtime.rank0_first``), so no process starts a
stage before the one before it is recorded.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from spnas.config import SearchRunConfig
from spnas.defaults import RetrainStage, SupernetStage
from spnas.errors import SpnasError
from spnas.fields import coerce_settings, from_flat, settings_of
from spnas.files import atomic_write_text
from spnas.runtime import Dist, init_distributed, rank0_first

# may differ when a pipeline resumes (elsewhere, or with event files turned on)
MACHINE_KEYS = {"data_path", "device", "download", "tensorboard"}
STAGES = ("supernet", "search", "retrain", "evaluate", "export")
EVERY_RANK = ("supernet", "search", "retrain")  # run by every torchrun process; the rest by rank 0
EVALUATE_DEFAULTS = {"split": "test", "batch_size": 500, "device": "auto", "amp": False}
EXPORT_DEFAULTS = {"format": "torchscript", "check_images": 64, "tolerance": 1e-3}


def _settings_for(default, shared: dict, own: dict, stage: str):
    """``default`` with the shared settings it knows and all of the stage's own (checked)."""
    known = settings_of(default)
    unknown = sorted(set(own) - set(known))
    if unknown:
        raise SpnasError(f"recipe section '{stage}' has no setting {', '.join(unknown)}; "
                         f"see 'spnas {_COMMAND[stage]} --help' for its settings")
    values = {k: v for k, v in shared.items() if k in known}
    values.update(own)
    return from_flat(default, coerce_settings(default, values))


_COMMAND = {"supernet": "train", "search": "search", "retrain": "retrain"}


def _small(defaults: dict, shared: dict, own: dict, stage: str) -> dict:
    unknown = sorted(set(own) - set(defaults))
    if unknown:
        raise SpnasError(f"recipe section '{stage}' has no setting {', '.join(unknown)}; "
                         f"its settings: {', '.join(defaults)}")
    return {**defaults, **{k: v for k, v in shared.items() if k in defaults}, **own}


def split_recipe(recipe: dict) -> tuple[dict, dict[str, dict]]:
    """(shared settings, {stage: its own settings}); unknown sections are refused."""
    shared = {k: v for k, v in recipe.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in recipe.items() if isinstance(v, dict)}
    unknown = sorted(set(sections) - set(STAGES))
    if unknown:
        raise SpnasError(f"the recipe has sections {', '.join(unknown)}; known stages: "
                         f"{', '.join(STAGES)}")
    return shared, {s: dict(sections.get(s) or {}) for s in STAGES}


class Pipeline:
    """Runs the stages of one recipe in ``out``; see the module docstring."""

    def __init__(self, recipe: dict, out: str | Path, resume: bool = False):
        self.out, self.resume = Path(out), resume
        self.shared, self.own = split_recipe(recipe)
        self.recipe = recipe
        self.times: dict[str, float] = {}
        self.results: dict[str, Any] = {}
        self.dist, self.device = Dist(), torch.device("cpu")  # run() reads torchrun's

    def done_path(self, stage: str) -> Path:
        return self.out / stage / "done.json"

    def run(self) -> dict:
        self.dist, self.device = init_distributed(str(self.shared.get("device") or "auto"))
        self._rank0(self._check_recipe)
        for stage in STAGES:
            self._stage(stage)
        from spnas.stages.pipeline_report import write_report
        paths = self._rank0(lambda: write_report(self.out, self.results, self.times, self.recipe))
        return {"stages": self.results, "seconds": self.times,
                "report": [str(p) for p in paths] if paths else None}

    def _rank0(self, fn):
        """``fn()`` on rank 0 alone; the other processes wait for it (and stop if it fails)."""
        return rank0_first(fn, self.dist, self.device)

    def _check_recipe(self) -> None:
        started = self.out.exists() and any(self.out.iterdir())
        if started and not self.resume and not (self.out / "recipe.json").exists():
            raise SpnasError(f"{self.out} is not empty and holds no pipeline; choose another --out")
        path = self.out / "recipe.json"
        if path.exists():
            before = json.loads(path.read_text())
            changed = sorted(k for k in before.keys() | self.recipe.keys()
                             if k not in MACHINE_KEYS and before.get(k) != _jsonable(self.recipe.get(k)))
            if changed:
                raise SpnasError(f"{self.out} ran another recipe ({', '.join(changed)} differ; see "
                                 f"{path}); resume with the same recipe and settings, or choose "
                                 "another --out")
            if not self.resume:
                raise SpnasError(f"{self.out} already holds this pipeline; pass --resume to "
                                 "continue it, or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.recipe, indent=2, default=str) + "\n")

    def _stage(self, stage: str) -> None:
        done = self.done_path(stage)
        if done.exists():  # every process sees the same: rank 0 wrote it before they went on
            record = json.loads(done.read_text())
            self.results[stage], self.times[stage] = record["result"], record["seconds"]
            if self.dist.main:
                print(f"pipeline: {stage} finished before; kept ({done})")
            return
        if self.dist.main:
            print(f"pipeline: {stage} -> {self.out / stage}", flush=True)
        t0 = time.perf_counter()
        run = getattr(self, f"_run_{stage}")
        result = run() if stage in EVERY_RANK else self._rank0(run)
        seconds = time.perf_counter() - t0
        self.results[stage], self.times[stage] = result, seconds
        self._rank0(lambda: atomic_write_text(done, json.dumps(
            {"result": result, "seconds": seconds}, indent=1, default=str) + "\n"))

    # -- the stages
    def _train_cfg(self, default, stage: str):
        cfg = _settings_for(default, self.shared, self.own[stage], stage)
        run = dataclasses.replace(cfg.run, save_path=str(self.out), exp_name=stage,
                                  resume=(self.out / stage / "last.pt").exists())
        return dataclasses.replace(cfg, run=run)

    def _run_supernet(self) -> dict:
        from spnas.stages.train import train_supernet
        r = train_supernet(self._train_cfg(SupernetStage(), "supernet"))
        return _jsonable(r)

    def _run_search(self) -> dict:
        from spnas.stages.search import search_supernet
        cfg = _settings_for(SearchRunConfig(), self.shared, self.own["search"], "search")
        out = self.out / "search"
        cfg = dataclasses.replace(cfg, checkpoint=str(self.out / "supernet"), out=str(out),
                                  resume=(out / "candidates.jsonl").exists())
        top = search_supernet(cfg)
        return {"best_arch": str(top[0].arch), "val_acc": top[0].fitness, **top[0].cost,
                "arch_file": str(out / "best_arch.json")}

    def _run_retrain(self) -> dict:
        from spnas.stages.retrain import retrain
        cfg = self._train_cfg(RetrainStage(), "retrain")
        model = dataclasses.replace(cfg.model, arch=str(self.out / "search" / "best_arch.json"))
        return _jsonable(retrain(dataclasses.replace(cfg, model=model)))

    def _run_evaluate(self) -> dict:
        from spnas.stages.evaluate import evaluate_checkpoint
        s = _small(EVALUATE_DEFAULTS, self.shared, self.own["evaluate"], "evaluate")
        r = evaluate_checkpoint(self.out / "retrain", s["split"], self.shared.get("data_path"),
                                None, self.out / "evaluate", s["batch_size"], s["device"],
                                s["amp"])
        return {k: r[k] for k in ("top1", "top5", "loss", "n", "split", "checkpoint")}

    def _run_export(self) -> dict:
        from spnas.stages.export import export_checkpoint
        s = _small(EXPORT_DEFAULTS, self.shared, self.own["export"], "export")
        ext = "onnx" if s["format"] == "onnx" else "torchscript.pt"
        r = export_checkpoint(self.out / "retrain", s["format"], self.out / "export" / f"model.{ext}",
                              self.shared.get("data_path"), s["check_images"], s["tolerance"],
                              overwrite=True)
        return _jsonable(r)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def apply_settings(recipe: dict, settings: list[tuple[str, str]]) -> dict:
    """``recipe`` with ``[(STAGE.NAME or NAME, text)]`` set; the text is read as YAML would."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in recipe.items()}
    for key, text in settings:
        stage, _, name = key.rpartition(".")
        value = _scalar(text)
        if stage:
            if stage not in STAGES:
                raise SpnasError(f"--set {key}: no stage {stage!r}; stages: {', '.join(STAGES)}")
            out.setdefault(stage, {})[name] = value
        else:
            out[name] = value
    return out


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
    """Run (or resume) the whole pipeline of ``recipe`` (a dict or a YAML/JSON file) in ``out``."""
    if not isinstance(recipe, dict):
        from spnas.cli.generate import read_recipe
        recipe = read_recipe(recipe)
    recipe = {**recipe, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return Pipeline(recipe, out, resume).run()
