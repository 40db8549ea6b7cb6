"""A run folder's logs: ``metrics.jsonl`` (data), ``train.log`` (text), console output;
and its lock, ``.lock``, that keeps a second run out while one is alive.

Logs are data: one JSON object per line, ``{"type": "train" | "val" | ..., "step": ...}``.
Plots and comparisons read only these files. The console shows a progress bar
when it is a terminal and plain lines otherwise; ``train.log`` always gets
plain lines.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from spnas.config import RunConfig, TrainConfig, plain_folder_name
from spnas.errors import SpnasError
from spnas.files import atomic_write_text, make_folders, remove_empty_folders, remove_stale_temp_files
from spnas.resume import read_saved_config, refuse_changes, resume_changes

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    return v


TENSORBOARD_HINT = ("--tensorboard needs the tensorboard package: pip install tensorboard (or "
                    "pip install -e '.[tensorboard]' in the spnas checkout), or drop --tensorboard")


def require_tensorboard():
    """torch's ``SummaryWriter``, or the one-line hint when the tensorboard package is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise SpnasError(TENSORBOARD_HINT) from None
    return SummaryWriter


class TensorBoard:
    """Every number of every metrics record, also as a TensorBoard scalar.

    A record ``{"type": "train", "step": 200, "loss": 1.9, "lr": 0.02, ...}`` becomes the
    scalars ``train/loss``, ``train/lr`` ... at step 200 (a record's ``which`` joins its
    type: ``test_best/test_acc``); ``step_key`` names the record's
    x axis (a search's candidates are numbered by ``index``), ``untyped`` the type of
    records that name none (a search's: ``candidate``). Each record is flushed at
    once, so the event files are complete whenever the run stops. ``purge_step``: a resumed
    run's first step; TensorBoard hides what an earlier process logged from there on.
    """

    SKIP = ("type", "epoch", "index", "generation", "choices", "from_step")

    def __init__(self, folder: Path, step_key: str = "step", purge_step: int | None = None,
                 untyped: str = "record"):
        self.step_key, self.untyped = step_key, untyped
        self.writer = require_tensorboard()(str(folder), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step = record.get(self.step_key)
        if not isinstance(step, int):
            return
        kind = record.get("type", self.untyped)
        if isinstance(record.get("which"), str):  # retrain's two tests: last and best weights
            kind = f"{kind}_{record['which']}"
        for name, value in record.items():
            if name in self.SKIP or name == self.step_key or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.writer.add_scalar(f"{kind}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunLog:
    """Append-only metrics and log lines for one run folder (rank 0 writes, others stay quiet).

    ``tensorboard``: also write every metrics record into ``run_dir/tensorboard/`` (the
    package is checked here; the writer starts with the first record, after a resume's
    ``truncate_after``, so TensorBoard drops what the stopped process logged past it).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, console: bool = True,
                 metrics_name: str = "metrics.jsonl", log_name: str = "train.log",
                 tensorboard: bool = False, step_key: str = "step", purge_step: int | None = None,
                 untyped: str = "record"):
        self.dir = Path(run_dir)
        self.enabled, self.console = enabled, console
        self.metrics_path = self.dir / metrics_name
        self.log_path = self.dir / log_name
        self._bar: tqdm | None = None
        self.tensorboard: TensorBoard | None = None
        self._tb_wanted, self._purge_step = False, purge_step
        self._tb_keys = (step_key, untyped)
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                require_tensorboard()
                self._tb_wanted = True

    def metric(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
        if self._tb_wanted:
            if self.tensorboard is None:  # the purge applies once: to the resumed process's start
                self.tensorboard = TensorBoard(self.dir / "tensorboard", self._tb_keys[0],
                                               self._purge_step, self._tb_keys[1])
                self._purge_step = None
            self.tensorboard.write(record)

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a") as f:
            f.write(f"{stamp} {msg}\n")
        if self.console:
            try:
                if self._bar is not None:
                    self._bar.write(msg, file=sys.stderr)
                else:
                    print(msg, file=sys.stderr, flush=True)
            except OSError:  # stderr's reader is gone (`| tee` ended by the same Ctrl-C)
                self.console = False  # the run goes on, and so does its log file
                with open(self.log_path, "a") as f:
                    f.write(f"{stamp} (stderr closed: the rest is logged here only)\n")

    def progress(self, total: int, initial: int = 0, desc: str = "train") -> None:
        """Show a progress bar when stderr is a terminal."""
        if self.enabled and self.console and sys.stderr.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                             file=sys.stderr)

    def advance(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def start_afresh(self) -> None:
        """A new run in this folder: drop the records of one killed before its first
        checkpoint (it left no last.pt to resume from; its last line may be torn)."""
        if not self.enabled:
            return
        stale = [p for p in (self.metrics_path, self.dir / "tensorboard") if p.exists()]
        for p in stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if stale:
            self.info(f"a run stopped before its first checkpoint left {', '.join(p.name for p in stale)}; "
                      "removed, this run starts afresh")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from)."""
        self._purge_step = step + 1
        if not (self.enabled and self.metrics_path.is_file()):
            return
        records, _ = read_records(self.metrics_path, (
            "it is not a metrics file spnas wrote; mend or delete that line (or the file, "
            "losing the curve so far), then --resume again"))
        atomic_write_text(self.metrics_path, "".join(
            json.dumps(r) + "\n" for r in records if r.get("step", 0) <= step))


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run folder>/.lock`` for as long as a run is alive.

    The OS drops the lock when the process ends, however it ends, so a crashed run's
    ``.lock`` never blocks the next run. The file stays, empty and untouched (deleting
    a lock file races with the next taker); a second run is refused in one line.

    One exception: a run that wrote nothing (refused before it started: bad data, a bad
    setting) leaves no trace. When the lock is given up and the folder holds the same
    names as when it was taken (besides those ``release`` is told to discard: the log of a
    run its caller knows was refused before it began), the ``.lock`` this lock made is
    removed while the lock is still held, then the folders it made. A starter that opened
    the file meanwhile sees that its lock is on a file no longer in the folder, and takes
    the lock again.
    """

    NAME = ".lock"

    def __init__(self, run_dir: str | Path, elsewhere: str = "--exp_name or --save_path"):
        self.path = Path(run_dir) / self.NAME
        self.elsewhere = elsewhere  # the flags that choose another folder, for the refusal
        self._fd: int | None = None
        self._made_dirs: list[Path] = []  # the folders acquire() created, deepest first
        self._made_file = False  # whether acquire() created .lock
        self._found: set[str] = set()  # the other names in the folder when it did

    def _make_parents(self) -> None:
        """Make the folder; the folders made add to those an earlier try made (a retry
        finds them there), deepest first."""
        made = set(self._made_dirs) | set(make_folders(self.path.parent))
        self._made_dirs = sorted(made, key=lambda f: len(f.parts), reverse=True)
        self._made_file = not self.path.exists()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if fcntl is None or self.held:
            return self
        for _ in range(5):  # the file was removed under us (a refused run's, see release)
            self._make_parents()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # RDWR: NFS
            except FileNotFoundError:  # its folder too: make them again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._made_dirs, self._made_file = [], False  # the live run's, not ours
                raise SpnasError(f"{self.path.parent} is in use by another run (a live process "
                                 f"holds {self.path}); wait for it to end, or choose another "
                                 f"{self.elsewhere}") from None
            if self._names_the_file(fd):
                self._fd = fd
                self._found = self._others()
                return self
            os.close(fd)  # a lock on a file no longer in the folder keeps no one out
        raise SpnasError(f"{self.path} kept being removed while this run took it (another run "
                         "in the same folder giving up?); start it again")

    def _names_the_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self, discard: tuple[str, ...] = ()) -> None:
        """Give the lock up. ``discard``: names that, if this run added them and nothing
        else, are removed with the ``.lock`` (a refused run's log)."""
        if self._fd is None:
            return
        emptied = self._unlink_if_unused(frozenset(discard))
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None
        remove_empty_folders(emptied)  # after the close: NFS keeps an open, removed file as .nfsXXXX

    def _others(self) -> set[str]:
        return {p.name for p in self.path.parent.iterdir()} - {self.NAME}

    def _unlink_if_unused(self, discard: frozenset[str]) -> list[Path]:
        """Remove the ``.lock`` that ``acquire`` made if the run added nothing beside it but
        ``discard``, and those (the lock still held: a starter that opened it meanwhile
        finds it gone and takes a new one); return the folders ``acquire`` made, deepest
        first, to remove once empty."""
        made, self._made_dirs = self._made_dirs, []
        if not self._made_file:
            return []
        self._made_file = False
        try:
            added = self._others() - self._found
            if added - discard or not self._found <= self._others():
                return []
            for name in sorted(added):
                (self.path.parent / name).unlink()
            self.path.unlink()
        except OSError:  # it can't be removed: leave it
            return []
        return made


_HELD: dict[Path, RunLock] = {}  # run folders this process has locked, by resolved path


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run must not overwrite a run's checkpoints; ``--resume`` needs its last.pt.
    (Records without a checkpoint, of a run killed before its first one, are replaced.)"""
    last = run_dir / "last.pt"
    held = [name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
    if not resume and held:
        how = ("pass --resume to continue it" if last.exists() else
               "it has no last.pt to --resume from")
        raise SpnasError(f"{run_dir} already holds a run ({', '.join(held)}); {how}, or "
                         "choose another --exp_name or --save_path")
    if resume and not last.is_file():
        raise SpnasError(f"checkpoint {last} not found: nothing to --resume in {run_dir}; "
                         "start without --resume, or check --exp_name and --save_path")


def lock_run_dir(run_dir: Path, resume: bool) -> RunLock:
    """Check ``run_dir`` for a fresh or resumed run, lock it, and remove the temporary
    files of writes that were killed midway (no live writer can own them now).

    This process's own earlier run in the folder gives its lock up first: one
    process's runs follow each other.
    """
    check_run_dir(run_dir, resume)
    key = run_dir.resolve()
    if key in _HELD:
        _HELD.pop(key).release()
    lock = _HELD[key] = RunLock(run_dir).acquire()
    removed = remove_stale_temp_files(run_dir)
    if removed:
        RunLog(run_dir).info(f"removed {len(removed)} temporary file(s) of interrupted "
                             "writes: " + ", ".join(removed))
    return lock


def read_records(path: Path, fix: str) -> tuple[list[dict], bool]:
    """The records of a JSON-lines file, and whether its end must be rewritten.

    Records are appended a line at a time, so a kill can only tear the last line, and a
    torn line lacks its newline: such a line that is not JSON is dropped, one that is JSON
    is kept (the next append must not join it). Any other line that is not a JSON object,
    and a file that is not UTF-8 text, is a one-line ``SpnasError`` naming the file (and
    line), ending with ``fix``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpnasError(f"{path} is not UTF-8 text; {fix}") from None
    lines = text.splitlines()
    records: list[dict] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if n == len(lines) and not text.endswith("\n"):
                return records, True
            raise SpnasError(f"{path} line {n} is not JSON; {fix}") from None
        if not isinstance(record, dict):
            raise SpnasError(f"{path} line {n} is JSON but not an object ({{...}}); {fix}")
        records.append(record)
    return records, bool(text) and not text.endswith("\n")


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file (a run folder or the file itself); see ``read_records``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return read_records(path, "is this a metrics.jsonl file?")[0]


def require_resumed(value, run: RunConfig, what: str, flag: str, model_type: str) -> None:
    """With ``--resume``, flags not given come from the run folder's config.json; ``value``
    (that of ``flag``) still empty means the folder holds another command's run
    (``model_type``: this command's model config)."""
    if run.resume and not value:
        saved = read_saved_config(run_dir_for(run) / "config.json") or {}
        refuse_other_command(run_dir_for(run), saved.get("model_type"), model_type)
        raise SpnasError(f"--resume: {run_dir_for(run)} holds no {what} run to continue (its "
                         f"config.json names no {flag}); resume it with the command that started "
                         "it, or check --exp_name and --save_path")


def open_run_dir(run_dir: Path, cfg: TrainConfig):
    """Check and lock ``run_dir`` for ``cfg``'s run; a resume must keep the run's settings."""
    lock = lock_run_dir(run_dir, cfg.run.resume)
    try:
        check_resume(cfg, run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


# the command that trains with each model config (a run folder's config.json names it)
COMMAND_OF = {"SupernetConfig": "train", "RetrainConfig": "retrain",
              "FinetuneConfig": "finetune", "SuperkernelConfig": "superkernel"}


def refuse_other_command(run_dir: Path, started, mine: str) -> None:
    """A resume in the folder of a run that another command started (``started``: the
    ``model_type`` its config.json names) is refused, naming that command."""
    if started not in (None, mine):
        command = COMMAND_OF.get(started, "the command that started it")
        raise SpnasError(f"{run_dir} holds a run of spnas {command} ({started} in config.json), "
                         f"not of this command; resume it with spnas {command} --resume")


def check_resume(cfg: TrainConfig, run_dir: Path) -> list[str]:
    """Refuse a resume whose settings differ from the run's ``config.json`` outside
    ``resume.RESUMABLE`` (naming each); return the allowed changes, to be logged."""
    path = run_dir / "config.json"
    if not cfg.run.resume or not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a {type(saved).__name__}, not a mapping of settings")
        sections = [k for k, v in cfg.to_dict().items() if isinstance(v, dict)]
        broken = [k for k in sections if k in saved and not isinstance(saved[k], dict)]
        if broken:  # its settings would be skipped, and the run go on with today's defaults
            raise ValueError(f"its {', '.join(broken)} section is not a mapping of settings")
    except (OSError, ValueError) as e:
        raise SpnasError(f"{path} is unreadable ({e}); it records the run's settings, "
                         "so the run can't be resumed safely") from None
    refuse_other_command(run_dir, saved.get("model_type"), type(cfg.model).__name__)
    refused, allowed = resume_changes(cfg, saved)
    refuse_changes(refused, run_dir)
    return allowed


def recorded_config(cfg: TrainConfig) -> dict:
    """The config a run folder records: ``resume`` and ``stop_after`` are what one command
    did, not settings of the run (``resume.PER_COMMAND``), so they are stored as false and
    none: a run folder's config.json starts a whole new run, and a resume runs to the end
    unless it is given --stop_after again."""
    d = cfg.to_dict()
    d["run"].update(resume=False, stop_after=None)
    return d


def check_exp_name(name: str) -> None:
    """A run folder's name is one plain folder name: it can't leave, or be, --save_path."""
    problem = plain_folder_name(name)
    if problem:
        raise SpnasError(f"--exp_name {problem}")


def run_dir_for(run: RunConfig) -> Path:
    check_exp_name(run.exp_name)
    return Path(run.save_path).expanduser() / run.exp_name
