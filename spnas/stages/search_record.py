"""The record of a search and its resume: ``candidates.jsonl`` (one line per scored
candidate, the file a stopped search continues from) and ``search.json`` (its settings). A
resumed search proposes the same candidates in the same order, and ``Replay`` hands back the
recorded scores until it reaches the first unscored one."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from spnas.engine.evolution import BUDGET_KEYS, FITNESS, Candidate
from spnas.engine.runlog import RunLog, read_records
from spnas.errors import SpnasError
from spnas.files import atomic_write_text
from spnas.runtime import Dist

RECORD = "candidates.jsonl"


def prepare_out_dir(out: Path, settings: dict, resume: bool) -> list[dict]:
    """The candidates recorded by an earlier run of this search (none for a new one)."""
    record, meta = out / RECORD, out / "search.json"
    trained = [n for n in ("last.pt", "best.pt", "config.json") if (out / n).exists()]
    if trained:  # its files would mix with a training run's
        raise SpnasError(f"{out} holds a training run ({', '.join(trained)}); give the search "
                         "a folder of its own with --out")
    if not (record.exists() and record.stat().st_size):
        if resume and not meta.exists():
            raise SpnasError(f"--resume: {out} holds no search to continue; drop --resume to "
                             "start one there, or give the --out of the search to continue")
        return []  # nothing scored yet: nothing to lose
    if not resume:
        raise SpnasError(f"{out} already holds a search; pass --resume to continue it, or "
                         "choose another --out")
    try:
        before = json.loads(meta.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpnasError(f"{meta} is unreadable ({e!r}); choose another --out") from None
    if not isinstance(before, dict):
        raise SpnasError(f"{meta} is unreadable (its settings are not an object); choose "
                         "another --out")
    # the supernet is known by its weights, wherever its file lies now (a moved folder);
    # a record without them (spnas 0.2) knows it by its path
    moved = "checkpoint" if "supernet_weights" in before else "supernet_weights"
    changed = [k for k in _diff(before, json.loads(json.dumps(settings))) if k != moved]
    if changed:
        raise SpnasError(f"{out} holds a search with other settings ({', '.join(changed)}); "
                         "resume with the same flags, or choose another --out")
    return read_record(record)


def log_run_changes(meta: Path, run: dict, checkpoint: str, log: RunLog) -> None:
    """Log how a resumed search runs differently (device, batch sizes, processes, where the
    supernet's file lies: what does not change a score); ``prepare_out_dir`` has refused
    every change that would."""
    try:
        saved = json.loads(meta.read_text())
        before = {**saved["run"], "checkpoint": saved["settings"]["checkpoint"]}
    except (OSError, ValueError, KeyError, TypeError):
        return
    for key, value in {**run, "checkpoint": checkpoint}.items():
        if key in before and before[key] != value:
            log.info(f"resume: {key} {value} differs from the search's {before[key]} "
                     f"({meta.name}); allowed: it does not change a score")


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys())
                for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


def read_record(path: Path) -> list[dict]:
    """The complete lines of ``candidates.jsonl``; a line torn by a kill is dropped."""
    if not path.exists():
        return []
    fix = "the record is damaged; choose another --out"
    records, torn = read_records(path, fix)
    for n, rec in enumerate(records, start=1):  # what the search and its report read
        numbers = [rec.get(FITNESS), rec.get("val_loss", 0.0), rec.get("flops", 0),
                   rec.get("params", 0), rec.get("latency_ms") or 0.0]
        if not (isinstance(rec.get("arch"), str) and all(map(_number, numbers))):
            raise SpnasError(f"{path} record {n} lacks its arch text or a number ({FITNESS}, "
                             f"val_loss, flops, params, latency_ms); {fix}")
    if torn:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Replay:
    """The search's ``score``: recorded scores for recorded candidates, the scorer for new ones.

    ``many`` scores ``width`` candidates at once: with several processes (torchrun) rank
    r scores the r-th new one, and every rank gets all the scores (``all_gather_object``),
    so each runs the same search, and rank 0 writes it.
    """

    NOT_SCORES = {"index", "generation", "origin", "arch", "choices", *BUDGET_KEYS}

    def __init__(self, records: list[dict], scorer, log: RunLog, dist_info: Dist = Dist()):
        self.records, self.scorer, self.log, self.dist = records, scorer, log, dist_info
        self.width = dist_info.world
        self.asked = self.written = 0
        self.t0, self.new = time.perf_counter(), 0
        if records:
            log.info(f"resuming: {len(records)} candidates recorded; replaying them")

    def __call__(self, arch) -> dict:
        return self.many([arch])[0]

    def many(self, archs: list) -> list[dict]:
        start = self.asked
        self.asked += len(archs)
        known = max(0, min(len(archs), len(self.records) - start))  # the record is a prefix
        new = archs[known:]
        self.new += len(new)
        return [self._recorded(start + k, a) for k, a in enumerate(archs[:known])] + self._spread(new)

    def _recorded(self, i: int, arch) -> dict:
        rec = self.records[i]
        if rec["arch"] != str(arch):
            raise SpnasError(f"candidate {i} should be {arch}, but {RECORD} records "
                             f"{rec['arch']}; the folder is from another search")
        return {k: v for k, v in rec.items() if k not in self.NOT_SCORES}

    def _spread(self, archs: list) -> list[dict]:
        """The scorer's scores of ``archs``, each scored by one process."""
        world, rank = self.dist.world, self.dist.rank
        if world == 1:
            return [self.scorer(a) for a in archs]
        mine = {j: self.scorer(archs[j]) for j in range(rank, len(archs), world)}
        parts: list[dict] = [{} for _ in range(world)]
        torch.distributed.all_gather_object(parts, mine)
        merged = {j: s for part in parts for j, s in part.items()}
        return [merged[j] for j in range(len(archs))]

    def record(self, cand: Candidate) -> None:
        if self.written >= len(self.records):
            self.log.metric(cand.to_json(self.written))
            self.log.advance(1, acc=f"{cand.fitness:.4f}")
        self.written += 1

    def generation_done(self, gen: int, new: list[Candidate], top: list[Candidate]) -> None:
        accs = [c.fitness for c in new]
        self.log.info(f"generation {gen}: {len(new)} candidates, val_acc best {max(accs):.4f} "
                      f"mean {sum(accs) / len(accs):.4f}; best so far {top[0].fitness:.4f} "
                      f"{top[0].cost['flops'] / 1e6:.1f}M FLOPs")

    def finish(self) -> None:
        dt = time.perf_counter() - self.t0
        if self.new:
            self.log.info(f"scored {self.new} new candidates in {dt:.1f} s "
                          f"({dt / self.new:.2f} s per candidate)")
