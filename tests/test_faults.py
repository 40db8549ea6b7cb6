"""Faults that once lost or corrupted data silently: one table, one row per fault.

A row is ``(flags or setup, exit status, message, folder check)``:

* flags (a dict) resume a copy of a small finished run with those flags and a data
  path that does not exist, so a refusal proves it came before any data was loaded;
* a setup function gets a ``Case`` (the copy in ``case.run``, ``case.argv(**flags)``,
  ``case.monkeypatch``), may break something, and returns the argv;
* the message is found, in order, in the output (`` ... `` between its pieces); a
  failing row says it on the last line of stderr;
* the folder check compares the case folder's file names, mtimes and bytes after the
  command with those before it (after the setup).

Every row fails without its fix. Every checkpoint left behind holds only finite numbers,
and the run folder's lock is free once the command returns.
"""
from __future__ import annotations

import errno
import fcntl
import io
import math
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from conftest import ROOT, write_official
from test_train import train_argv

import spnas.files
import spnas.stages.train
from spnas.cli import main
from spnas.data.loading import DeviceLoader
from spnas.engine.checkpoint import save_checkpoint

# the run each case starts from: 3 steps (1 epoch), validated, last.pt = best.pt at step 3;
# a case's argv has --epochs 2, so a resume that gets through trains steps 4..6
BASE = {"--epochs": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished run trained from its own folder with a relative --data_path."""
    root = tmp_path_factory.mktemp("faults")
    write_official(root / "data")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(train_argv("data", "runs", "base", **BASE)) == 0
    finally:
        os.chdir(cwd)
    return root


class Case:
    def __init__(self, base: Path, root: Path, monkeypatch, stack: ExitStack):
        self.root, self.data, self.monkeypatch, self.stack = root, base / "data", monkeypatch, stack
        self.run = root / "runs" / "run"
        shutil.copytree(base / "runs" / "base", self.run)

    def argv(self, **flags) -> list[str]:
        return train_argv(self.data, self.run.parent, self.run.name, **flags)

    def early(self, **flags) -> list[str]:
        """Resume with ``flags`` and no data: a refusal here came before any data was loaded."""
        return self.argv(**{"--resume": None, "--data_path": self.root / "no_data", **flags})


# ---- setups ---------------------------------------------------------------------------------
def flipped_tensor_bytes(case: Case) -> list[str]:
    """Flip 4 bytes in the middle of last.pt's largest tensor; torch.load takes it."""
    path = case.run / "last.pt"
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        at, four = f.tell(), f.read(4)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in four))
    torch.load(path, weights_only=True)
    return case.argv(**{"--resume": None})


def held_lock(case: Case) -> list[str]:
    """Another live run holds the folder's lock (a second open file: flock tells them apart)."""
    f = case.stack.enter_context(open(case.run / ".lock", "a"))
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return case.argv(**{"--resume": None})


def stale_temp_files(case: Case) -> list[str]:
    """Temporary files of writes killed midway (and a crashed run's .lock, from the copy)."""
    for name in (".last.pt.k2j4h5g6.tmp", ".config.json.a_b1c2d3.tmp", ".notes.tmp"):
        (case.run / name).write_bytes(b"partial")
    return case.argv(**{"--resume": None, "--epochs": 1})  # the run is done: nothing to train


def nan_val(case: Case) -> list[str]:
    """The last steps diverge: validation gives a NaN loss, and a fine accuracy."""
    case.monkeypatch.setattr(spnas.stages.train, "make_path_validator",
                             lambda *a, **k: lambda model, step: {"val_acc": 0.9,
                                                                  "val_loss": math.nan})
    return case.argv(**{"--resume": None})


def disk_full(case: Case) -> list[str]:
    """Every flush to disk of a checkpoint fails as on a full disk (ENOSPC)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device", str(case.run / "last.pt"))
    case.monkeypatch.setattr(os, "fsync", fsync)
    return case.argv(**{"--resume": None, "--epochs": 3})


def disk_fills_in_torch_save(case: Case) -> list[str]:
    """The disk has room for half of last.pt: a write inside torch.save fails (ENOSPC), and
    torch's zip writer, closing, raises RuntimeError("unexpected pos ...") over it."""
    free = [(case.run / "last.pt").stat().st_size // 2]

    class Disk(io.FileIO):
        def write(self, b):  # what fits, then ENOSPC, as write(2) does
            if not free[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = min(len(b), free[0])
            free[0] -= n
            return super().write(memoryview(b)[:n])

    def full_open(path, mode="r", *args, **kwargs):  # how spnas.files opens what it writes
        return io.BufferedWriter(Disk(path, "wb")) if mode == "wb" else open(path, mode, *args, **kwargs)
    case.monkeypatch.setattr(spnas.files, "open", full_open, raising=False)
    return case.argv(**{"--resume": None, "--epochs": 3})


def NO_TEMP_LEFT(before, after):
    return KEPT(before, after) and not [k for k in after if k.endswith(".tmp")]


def huge_batch(case: Case) -> list[str]:
    """Step 6's batch is huge: BN's running variances become inf, the loss stays finite."""
    real = DeviceLoader.batch

    def batch(self, epoch, i):
        x, y = real(self, epoch, i)
        return (x * 1e30 if (epoch, i) == (1, 2) else x), y
    case.monkeypatch.setattr(DeviceLoader, "batch", batch)
    return case.argv(**{"--resume": None})


def one_gpu(case: Case) -> list[str]:
    """A machine with one CUDA device (simulated), asked for its second."""
    case.monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    case.monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return case.early(**{"--device": "cuda:1"})


def search_from_elsewhere(case: Case) -> list[str]:
    """The base run was trained with --data_path data; search it from another directory."""
    case.monkeypatch.chdir(case.root)
    return ["search", "--checkpoint", str(case.run), "--out", str(case.root / "search"),
            "--method", "random", "--num", "1", "--recal_images", "16", "--recal_batch", "16",
            "--val_images", "20", "--eval_batch", "20", "--device", "cpu"]


# ---- folder checks (before, after: {path in the case folder: (mtime, bytes)}) --------------
def SAME(before, after):
    return before == after


def RUN_SAME(before, after):
    return {k: v for k, v in after.items() if k.startswith("runs")} == before


def KEPT(before, after):
    return all(before[k] == after.get(k) for k in ("runs/run/last.pt", "runs/run/best.pt"))


def TEMP_FILES_GONE(before, after):
    gone = {k for k in before if k.endswith(".tmp")} - set(after)
    return gone == {"runs/run/.last.pt.k2j4h5g6.tmp", "runs/run/.config.json.a_b1c2d3.tmp"} \
        and KEPT(before, after)


CASES = {
    # 1: bytes flipped inside a tensor: the zip member's CRC-32 is checked on load
    "corrupt-tensor": (flipped_tensor_bytes, 2, "last.pt is corrupt or truncated (CRC-32 mismatch", SAME),
    # 2, 3: nothing NaN or infinite is written, or validated as the best
    "inf-bn-stats": (huge_batch, 2, "state became NaN or infinite by step 6 ... kept (step 3)", KEPT),
    "nan-val-loss": (nan_val, 2, "(step 6) gave NaN or infinite numbers (val_loss nan) ... (step 3)", KEPT),
    # a full disk while writing a checkpoint: one line, the earlier checkpoints kept, no temp file
    "disk-full": (disk_full, 2, "the disk is full while writing ... last.pt (No space left on device); "
                  "free space", NO_TEMP_LEFT),
    "disk-full-in-torch-save": (disk_fills_in_torch_save, 2, "the disk is full while writing ... "
                                "last.pt (No space left on device); free space", NO_TEMP_LEFT),
    # 4: a live run's folder is refused; the copy's .lock (a finished run's) never blocks
    "locked": (held_lock, 2, "runs/run is in use by another run", SAME),
    # 5: the run folder is one plain folder name under --save_path
    "exp-up": ({"--exp_name": "../x"}, 2, "--exp_name '../x' must be a plain folder name", SAME),
    "exp-abs": ({"--exp_name": "/tmp/x"}, 2, "--exp_name '/tmp/x' must be a plain folder name", SAME),
    "exp-empty": ({"--exp_name": ""}, 2, "--exp_name '' must be a plain folder name", SAME),
    "exp-dot": ({"--exp_name": "."}, 2, "--exp_name '.' must be a plain folder name", SAME),
    "exp-nested": ({"--exp_name": "a/b"}, 2, "--exp_name 'a/b' must be a plain folder name", SAME),
    # 6: temporary files of killed writes are removed at start and resume
    "stale-temp": (stale_temp_files, 0, "removed 2 temporary file(s) of interrupted writes", TEMP_FILES_GONE),
    # 7: the run's config holds the absolute data path
    "data-path": (search_from_elsewhere, 0, "search of spos/cifar", RUN_SAME),
    # 8: flags, refused before any data is loaded
    "lr-nan": ({"--lr": "nan"}, 2, "--lr must be a finite number, got nan", SAME),
    "lr-inf": ({"--lr": "inf"}, 2, "--lr must be a finite number, got inf", SAME),
    "wd-nan": ({"--weight-decay": "nan"}, 2, "--weight_decay must be a finite number", SAME),
    "wd-neg": ({"--weight-decay": -1}, 2, "--weight_decay must be 0 or more, got -1.0", SAME),
    "mom-nan": ({"--momentum": "nan"}, 2, "--momentum must be a finite number", SAME),
    "mom-inf": ({"--momentum": "inf"}, 2, "--momentum must be a finite number", SAME),
    "mom-neg": ({"--momentum": -1}, 2, "--momentum must be in [0, 1), got -1.0", SAME),
    "smooth-1": ({"--label_smoothing": 1}, 2, "--label_smoothing must be in [0, 1), got 1.0", SAME),
    "smooth-neg": ({"--label_smoothing": -0.1}, 2, "--label_smoothing must be in [0, 1)", SAME),
    "ckpt-neg": ({"--ckpt_interval": -1}, 2, "--ckpt_interval must be 0 or more, got -1", SAME),
    "warmup-neg": ({"--warmup_epochs": -1}, 2, "--warmup_epochs must be 0 or more", SAME),
    "min-lr-neg": ({"--min_lr": -1e-4}, 2, "--min_lr must be 0 or more", SAME),
    "mps": ({"--device": "mps"}, 2, "--device mps: spnas runs on the CPU or CUDA GPUs ... use --dev", SAME),
    "meta": ({"--device": "meta"}, 2, "--device meta: spnas runs on the CPU or CUDA GPUs", SAME),
    "cpu-n": ({"--device": "cpu:1"}, 2, "--device cpu:1: the CPU has no numbered devices; use "
              "--device cpu", SAME),
    "cuda-1-of-1": (one_gpu, 2, "--device cuda:1: this machine has 1 CUDA device(s), cuda:0..cuda:0", SAME),
    "abbrev": ({"--epoch": 3}, 2, "unrecognized arguments: --epoch 3", SAME),
    "fresh-over-run": ({"--resume": False}, 2, "already holds a run ... pass --resume", SAME),
}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def said(text: str, message: str) -> bool:
    at = 0
    for piece in message.split(" ... "):
        at = text.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return True


def run_main(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        return e.code


def only_finite(path: Path) -> bool:
    tensors = []
    for v in torch.load(path, weights_only=True).values():
        if isinstance(v, dict):
            tensors += [t for t in v.values() if isinstance(t, torch.Tensor)]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("setup, status, message, folder_check", CASES.values(), ids=CASES.keys())
def test_fault(base, tmp_path, monkeypatch, capsys, setup, status, message, folder_check):
    with ExitStack() as stack:
        case = Case(base, tmp_path, monkeypatch, stack)
        if callable(setup):
            argv = setup(case)
        else:
            argv = case.early(**setup)
        before = snapshot(tmp_path)
        code = run_main(argv)
        out = capsys.readouterr()
        after = snapshot(tmp_path)
    err = out.err.strip().splitlines()
    assert code == status, out.err[-2000:]
    assert said(out.out + out.err, message), out.err[-2000:]
    assert status == 0 or said(err[-1], message), err[-1]
    assert folder_check(before, after), sorted(set(before) ^ set(after))
    assert all(only_finite(p) for p in tmp_path.rglob("*.pt"))
    with open(case.run / ".lock", "a") as f:  # the command let go of the run folder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_failed_checkpoint_save_the_disk_did_not_cause_stays_itself(tmp_path, monkeypatch):
    def save(obj, f):
        f.write(b"PK")
        try:
            raise ValueError("a tensor subclass")
        except ValueError:
            raise RuntimeError("not the disk") from None
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RuntimeError, match="not the disk"):
        save_checkpoint(tmp_path / "x.pt", {"kind": "supernet", "space": {}, "num_classes": 10,
                                            "model": {}})
    assert not list(tmp_path.iterdir())

def test_seed_scripts_refuse_abbreviated_flags(tmp_path):
    sys.path.insert(0, str(ROOT / "run_scripts"))
    try:
        from argument import parse_args
    finally:
        sys.path.remove(str(ROOT / "run_scripts"))
    with pytest.raises(SystemExit):
        parse_args(["--epoch", "3"])
    r = subprocess.run([sys.executable, str(ROOT / "run_scripts" / "loss.py"), str(tmp_path),
                        "--rt", "0.1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "unrecognized arguments: --rt 0.1" in r.stderr


def test_cuda_without_an_index_is_each_torchrun_process_its_own_gpu(monkeypatch):
    """``--device cuda`` under torchrun: process r on cuda:r, as ``auto`` does (simulated GPUs)."""
    from spnas.runtime import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device(name, rank) for name in ("cuda", "auto") for rank in (0, 1)] == \
        [torch.device("cuda", r) for r in (0, 1)] * 2
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)  # an explicit index stays


@pytest.mark.parametrize("flags, autotune", [({}, False), ({"cudnn_benchmark": True}, True),
                                             ({"cudnn_benchmark": True, "deterministic": True},
                                              False)])
def test_cudnn_autotuning_follows_its_flag(monkeypatch, flags, autotune):
    from spnas.config import RunConfig
    from spnas.runtime import setup_torch
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not autotune)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: None)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # (deterministic sets it if unset)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    setup_torch(RunConfig(**flags), torch.device("cuda"))  # sets flags only: no GPU needed
    assert torch.backends.cudnn.benchmark is autotune


def test_a_single_process_run_on_cuda_n_makes_it_the_current_device(monkeypatch):
    """CUDA graphs capture on the current device's streams: with --device cuda:1 and no
    torchrun, cuda:1 must be the current device too, not only the tensors' device."""
    import spnas.runtime as runtime
    chosen = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(runtime, "resolve_device", lambda name, rank=0: torch.device(name))
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    _, device = runtime.init_distributed("cuda:1")
    assert device == torch.device("cuda", 1) and chosen == [device]
    runtime.init_distributed("cpu")
    assert chosen == [device]  # the CPU has no current device to set


def test_a_lock_taken_on_a_lock_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """A refused run removes the .lock it made while holding it; a starter that had opened
    that file gets its flock on a file no longer in the folder, which keeps no one out: it
    must take the lock again, on the file that is there (else two runs share a folder)."""
    from spnas.engine import runlog
    run = tmp_path / "runs" / "a"
    refused = runlog.RunLock(run).acquire()
    real_flock, calls = fcntl.flock, []

    def flock_after_the_refused_run_gave_up(fd, op):
        if not calls:  # this starter opened .lock; the refused run lets go before it locks
            refused.release()
            assert not (tmp_path / "runs").exists()  # its .lock and folders are gone
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(runlog.fcntl, "flock", flock_after_the_refused_run_gave_up)
    starter = runlog.RunLock(run).acquire()
    monkeypatch.setattr(runlog.fcntl, "flock", real_flock)
    assert len(calls) == 2 and starter.held and (run / ".lock").is_file()
    with pytest.raises(runlog.SpnasError, match="is in use by another run"):
        runlog.RunLock(run).acquire()  # the lock it holds is the one in the folder
    starter.release()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("discard, left", [
    ((), [".lock", "last.pt", "train.log"]),  # a resume that logged: its log stays
    (("train.log",), ["last.pt"]),  # told the run was refused before it began
])
def test_a_lock_takes_away_a_log_only_when_told(tmp_path, discard, left):
    """A run in a folder of files copied without .lock and log, which adds only its log
    (it rewrote the files it found), did work: its log is kept unless the caller knows it
    was refused before it began. A folder the lock did not make stays either way."""
    from spnas.engine import runlog
    (tmp_path / "last.pt").write_bytes(b"weights")
    lock = runlog.RunLock(tmp_path).acquire()
    (tmp_path / "train.log").write_text("resumed at step 2\n")
    lock.release(discard=discard)
    assert sorted(p.name for p in tmp_path.iterdir()) == left
