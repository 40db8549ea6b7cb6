"""``spnas search``: search the paths of a trained supernet, into a folder that records them.

The output folder::

    search.json        the settings (``--resume`` checks them; the supernet by a digest of its
                       weights, wherever its file lies) and how it ran
    candidates.jsonl   one line per scored candidate: index, generation, origin (random,
                       mutation, crossover), arch, choices, flops (multiply-accumulates),
                       params, latency_ms (predicted; null without a table), val_acc, val_loss
    search.log         the log
    best_arch.json     the best arch as an arch file; top/rank_01.json ... the top-k
    accuracy_vs_flops.png (or _latency) with the Pareto front; generations.png (evolution)

Data: by default the checkpoint's own data flags and training seed, so the
scoring split is the very one held out of supernet training. The test set is
dropped as soon as it is read, unless ``score_on="test"`` asks for it (warned).

Resume: ``candidates.jsonl`` is the record. The search runs again from its
start, and each candidate already recorded takes its scores from the file (it
must be the arch recorded at that position); the search is a pure function of
its seed and the scores, so it continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spnas.arch import SpaceSpec
from spnas.config import DataConfig, RunConfig, SearchConfig, SearchRunConfig, derive_seed
from spnas.data.datasets import Splits
from spnas.data.loading import build_transform, input_side, load_splits, recal_transform
from spnas.engine.checkpoint import checkpoint_space, load_checkpoint, model_from_checkpoint, weights_digest
from spnas.engine.counting import CostTable, build_cost_table
from spnas.engine.evolution import (
    BUDGET_KEYS,
    Budget,
    Candidate,
    CostModel,
    evolution_search,
    random_search,
    rank,
)
from spnas.engine.latency import LatencyTable
from spnas.engine.runlog import RunLock, RunLog
from spnas.engine.scoring import SupernetScorer, input_dtype, recal_set, val_set
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.files import atomic_write_text
from spnas.runtime import Dist, init_distributed, place, rank0_first, setup_torch
from spnas.spaces import build_child
from spnas.stages.search_record import RECORD, Replay, log_run_changes, prepare_out_dir
from spnas.stages.search_report import FLOPS_UNIT, plot_search, write_arch_files


@takes_config(SearchRunConfig, "checkpoint")
def search_supernet(cfg: SearchRunConfig) -> list[Candidate]:
    """Run (or resume) the search ``cfg`` describes; returns the top-k, best first.

    Under torchrun each process scores its share of every generation (``Replay``); all
    of them return the same top-k, and rank 0 alone writes the folder.
    """
    if not cfg.checkpoint:
        raise SpnasError("--checkpoint is required: a supernet checkpoint (.pt) or its run folder")
    ckpt = load_checkpoint(cfg.checkpoint, kinds=("supernet",))
    data, split_seed, held_out = resolve_data(ckpt, cfg.data, cfg.split_seed)
    out = Path(cfg.out) if cfg.out else Path(ckpt["path"]).parent / f"search_{cfg.search.method}"
    checkpoint = str(Path(ckpt["path"]).resolve())
    settings = {"checkpoint": checkpoint,
                "supernet_weights": weights_digest(ckpt["model"]), "step": ckpt.get("step"),
                "search": dataclasses.asdict(cfg.search), "split_seed": split_seed,
                "scoring": {k: v for k, v in dataclasses.asdict(cfg.scoring).items()
                            if k not in ("eval_batch", "cache_gb")},
                "data": {k: v for k, v in dataclasses.asdict(data).items()
                         if k not in ("data_path", "download")}}
    dist_info, device = init_distributed(cfg.device)
    # rank 0's, while it runs: a second search in the folder would mix its candidates in
    lock = RunLock(out, elsewhere="--out")
    try:
        return _search_in(out, lock, cfg, ckpt, data, split_seed, held_out, settings,
                          checkpoint, dist_info, device)
    except SpnasError:  # refused; before it began (no search.json): no folder or log left
        lock.release(discard=() if (out / "search.json").exists() else ("search.log",))
        raise
    finally:
        lock.release()


def _search_in(out: Path, lock: RunLock, cfg: SearchRunConfig, ckpt: dict, data: DataConfig,
               split_seed: int, held_out: bool, settings: dict, checkpoint: str, dist_info: Dist,
               device: torch.device) -> list[Candidate]:
    def check_out():  # rank 0 first (it drops a torn last line); then the others read it
        lock.acquire()
        return prepare_out_dir(out, settings, cfg.resume)

    records = rank0_first(check_out, dist_info, device)
    if not dist_info.main:
        records = prepare_out_dir(out, settings, cfg.resume)
    log = RunLog(out, enabled=dist_info.main, metrics_name=RECORD, log_name="search.log",
                 tensorboard=cfg.tensorboard, step_key="index", purge_step=len(records),
                 untyped="candidate")
    try:
        if not held_out and cfg.scoring.score_on == "val":
            log.info("WARNING: the data flags or split seed differ from the supernet's training, "
                     "so the scoring split is not the one held out of it (it may hold images "
                     "the supernet trained on)")
        job = _prepare(cfg, ckpt, data, split_seed, out, device, log, dist_info.world)
        run = {"device": cfg.device, "amp": cfg.amp, "data_path": data.data_path,
               "processes": dist_info.world, **dataclasses.asdict(cfg.scoring)}
        if dist_info.main:
            if records:
                log_run_changes(out / "search.json", run, checkpoint, log)
            atomic_write_text(out / "search.json", json.dumps(
                {"settings": settings, "run": run}, indent=2) + "\n")
        found = _run(cfg.search, job, Replay(records, job.scorer, log, dist_info), log)
        if not dist_info.main:
            return rank(found, cfg.search.top_k)
        return _report(out, cfg.search, job, found, log)
    finally:
        log.close()


@dataclass
class _Job:
    space: SpaceSpec
    costs: CostModel
    budget: Budget
    scorer: SupernetScorer
    found_by: dict  # what the arch files say about how they were found


def _prepare(cfg: SearchRunConfig, ckpt: dict, data: DataConfig, split_seed: int, out: Path,
             device: torch.device, log: RunLog, world: int = 1) -> _Job:
    """Everything the search needs, checked before any candidate is scored."""
    space = checkpoint_space(ckpt)
    setup_torch(RunConfig(device=cfg.device, amp=cfg.amp), device)
    log.info(f"search of {space.describe()} in {ckpt['path']} (step {ckpt.get('step')}), "
             f"method {cfg.search.method}, seed {cfg.search.seed}, device {device}, out {out}"
             + (f", {world} processes" if world > 1 else ""))
    splits = load_splits(data, split_seed)
    if len(splits.classes) != ckpt["num_classes"]:
        raise SpnasError(f"the data has {len(splits.classes)} classes, the supernet "
                         f"{ckpt['num_classes']}; pass the --dataset/--data_path it was trained on")
    x, y = scoring_split(splits, cfg.scoring.score_on, log)
    resolution = input_side(data, splits.train[0])
    costs = cost_model(space, ckpt["num_classes"], resolution, cfg.search.latency_table, log)
    budget = Budget.of(cfg.search)
    check_budget(costs, budget, resolution, log)
    scorer = make_scorer(ckpt, splits.train[0], x, y, data, cfg, device, log)
    s = cfg.search
    found_by = {"method": s.method, "checkpoint": ckpt["path"], "step": ckpt.get("step"),
                "seed": s.seed, "score_on": cfg.scoring.score_on,
                "recal_images": min(cfg.scoring.recal_images, len(splits.train[0])),
                "scored_images": scored_count(len(y), cfg.scoring.val_images),
                "budget": {k: v for k, v in dataclasses.asdict(budget).items() if v is not None}}
    return _Job(space, costs, budget, scorer, found_by)


def _run(s: SearchConfig, job: _Job, replay: "Replay", log: RunLog) -> list[Candidate]:
    total = s.num if s.method == "random" else s.population * s.generations
    log.progress(total, len(replay.records), desc="search")
    if s.method == "random":
        found = random_search(job.space, replay, job.costs, job.budget, s.num, s.seed,
                              replay.record)
    else:
        found = evolution_search(job.space, replay, job.costs, job.budget, s, s.seed,
                                 replay.record, replay.generation_done)
    if len(found) < total:
        log.info(f"WARNING: the space holds too few distinct architectures within the budget: "
                 f"{len(found)} scored of the {total} asked for (the space, or what the budget "
                 "leaves of it, is exhausted); all of them were searched")
    log.close()
    replay.finish()
    return found


def _report(out: Path, s: SearchConfig, job: _Job, found: list[Candidate],
            log: RunLog) -> list[Candidate]:
    top = write_arch_files(out, found, s.top_k, {**job.found_by, "candidates": len(found)})
    plot_search(out, "latency_ms" if job.costs.latency else "flops")
    for i, c in enumerate(top[:5], start=1):
        lat = c.cost["latency_ms"]
        log.info(f"#{i} val_acc {c.fitness:.4f} {c.cost['flops'] / 1e6:.1f}M FLOPs "
                 f"({FLOPS_UNIT}) {c.cost['params'] / 1e6:.2f}M params"
                 + (f" {lat:.3f} ms" if lat is not None else "") + f"  {c.arch}")
    log.info(f"best arch: {out / 'best_arch.json'}")
    return top


# ---- data ----------------------------------------------------------------------------------
def resolve_data(ckpt: dict, overrides,
                 split_seed: int | None) -> tuple[DataConfig, int, bool]:
    """The checkpoint's data flags and seed, with the given overrides (None = not given),
    and whether the validation split is still the one held out of supernet training."""
    config = ckpt.get("config") or {}
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    trained = {k: v for k, v in (config.get("data") or {}).items() if k in fields}
    if dataclasses.is_dataclass(overrides) and not isinstance(overrides, type):
        overrides = dataclasses.asdict(overrides)
    given = {k: v for k, v in overrides.items() if v is not None}
    data = DataConfig(**{**trained, **given})
    seed = split_seed if split_seed is not None else int((config.get("run") or {}).get("seed", 0))
    layout = checkpoint_space(ckpt).layout
    if data.resize != (layout == "imagenet"):
        raise SpnasError(f"the supernet was built for the {layout} layout, which needs "
                         f"{'--resize' if layout == 'imagenet' else 'no --resize'}; "
                         "drop the flag to use the checkpoint's")
    was = (trained.get("dataset"), trained.get("val_size"), (config.get("run") or {}).get("seed"))
    return data, seed, was == (data.dataset, data.val_size, seed)


def scoring_split(splits: Splits, score_on: str, log: RunLog) -> tuple[torch.Tensor, torch.Tensor]:
    """The images candidates are scored on; the test set is dropped unless asked for."""
    if score_on == "test":
        log.info("WARNING: scoring candidates on the TEST set, as asked: the test accuracy of "
                 "the arch found is no longer an unbiased estimate")
        return splits.test_set()
    splits.test = None  # never read again
    if splits.val_is_test:
        raise SpnasError("no validation split is held out (--val_size 0); pass --val_size N "
                         "(e.g. 5000) to score on N held-out training images")
    return splits.val


def scored_count(split_size: int, val_images: int | None) -> int:
    return split_size if val_images is None else min(val_images, split_size)


def make_scorer(ckpt: dict, train_x: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                data: DataConfig, cfg: SearchRunConfig, device: torch.device,
                log: RunLog) -> SupernetScorer:
    """The supernet on the device, and its recalibration and scoring images prepared there."""
    sc, seed = cfg.scoring, cfg.search.seed
    model = place(model_from_checkpoint(ckpt), device, cfg.channels_last_for(device))
    dtype, max_bytes = input_dtype(device, cfg.amp), sc.cache_gb * 2 ** 30
    t0 = time.perf_counter()
    recal = recal_set(train_x, sc.recal_images, sc.recal_batch,
                      recal_transform(data, cfg.channels_last_for(device)), derive_seed(seed, "recal"),
                      device, dtype, max_bytes)
    val = val_set(x, y, sc.val_images, sc.eval_batch, build_transform(data, cfg.channels_last_for(device)),
                  derive_seed(seed, "val subset"), device, dtype, max_bytes)
    n_val = scored_count(len(y), sc.val_images)
    log.info(f"scoring: BN recalibration on {min(sc.recal_images, len(train_x))} training images "
             f"(batch {sc.recal_batch}), accuracy on {n_val} {sc.score_on} images; prepared on "
             f"{device} in {time.perf_counter() - t0:.1f} s"
             + ("" if recal.prepared and val.prepared else " (too big to keep: rebuilt per candidate)"))
    return SupernetScorer(model, recal, val, ckpt["num_classes"], device, cfg.amp, seed)


# ---- costs -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _cost_table(space: SpaceSpec, num_classes: int, resolution: int) -> CostTable:
    """Counted once per process: a pipeline checks its budget before the supernet trains
    and searches after it (about 1 s on a CPU each time). Shared by every caller: read it,
    never change it."""
    return build_cost_table(space, lambda a: build_child(a, num_classes), num_classes, resolution)


def cost_model(space, num_classes: int, resolution: int, latency_table: str | None,
               log: RunLog) -> CostModel:
    table = _cost_table(space, num_classes, resolution)
    latency = LatencyTable.load(latency_table) if latency_table else None
    if latency is not None:
        log.info(f"latency: {latency_table} ({latency.device_name}, batch {latency.batch}, "
                 f"{latency.resolution}x{latency.resolution})")
        warning = latency.resolution_warning(resolution)
        if warning:
            log.info(warning)
    return CostModel(table, latency)


def cost_text(key: str, value: float, costs: CostModel, unit: bool = True,
              given: bool = False) -> str:
    """A cost as the log writes it: ``152.6M multiply-accumulates``, ``2.03M params``,
    ``4.125 ms``; ``unit=False``: ``152.6M``; ``given``: a budget as typed (``10M``)."""
    lat_unit = costs.latency.unit if costs.latency is not None else "ms"
    scale, digits, short, name = {"flops": (1e-6, ".1f", "M", f" {FLOPS_UNIT}"),
                                  "params": (1e-6, ".3g", "M", " params"),
                                  "latency_ms": (1.0, ".3f", f" {lat_unit}", " (latency table)")}[key]
    return format(value * scale, "g" if given else digits) + short + (name if unit else "")


def space_range(costs: CostModel, resolution: int) -> str:
    """'this space: 152.6M-212.7M multiply-accumulates, 2.03M-2.75M params at 32x32'."""
    least, most = costs.minimum(), costs.maximum()
    parts = [f"{cost_text(k, least[k], costs, unit=False)}-{cost_text(k, most[k], costs)}"
             for k in BUDGET_KEYS if least[k] is not None]
    return f"this space: {', '.join(parts)} at {resolution}x{resolution}"


def check_budget(costs: CostModel, budget: Budget, resolution: int, log: RunLog) -> None:
    """Log the space's cost range; refuse a budget below the cheapest arch; warn about a
    budget at or above the dearest arch (it filters nothing)."""
    if budget.max_latency_ms is not None and costs.latency is None:
        raise SpnasError("--max_latency_ms needs --latency_table FILE "
                         "(make one with 'spnas latency-table')")
    log.info(space_range(costs, resolution))
    least, most = costs.minimum(), costs.maximum()
    at = f" at {resolution}x{resolution}"
    for key in budget.excess(least):
        flag = BUDGET_KEYS[key]
        raw = getattr(budget, flag)
        given = cost_text(key, raw, costs, unit=False, given=True)
        hint = (f" (a count: {raw:g}M for {raw:g} million)"  # when that would fit
                if key in ("flops", "params") and raw * 1e6 >= least[key] else "")
        raise SpnasError(f"--{flag} {given} is below the cheapest arch of this space "
                         f"({cost_text(key, least[key], costs)}{at}); raise it{hint}")
    for key, flag in BUDGET_KEYS.items():
        limit = getattr(budget, flag)
        if limit is None or most[key] is None or limit < most[key]:
            continue
        hint = (" (SPOS's 330M is the ImageNet layout's figure, at 224x224 with --resize)"
                if key == "flops" and costs.table.space.layout == "cifar" else "")
        log.info(f"WARNING: --{flag} {cost_text(key, limit, costs, unit=False, given=True)} "
                 f"filters nothing: every arch of this space costs at most "
                 f"{cost_text(key, most[key], costs)}{at}{hint}; lower it to search under a "
                 "real budget")


