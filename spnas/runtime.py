"""The process a run lives in: torchrun ranks, the device, torch's settings, CPU threads and
allocator, and a description of the machine for logs and benchmarks."""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from spnas.config import RunConfig
from spnas.errors import SpnasError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep freed activation buffers in the process instead of returning them to the OS.

    glibc serves large blocks with mmap and unmaps them on free, so every
    training step faults hundreds of MB of fresh zeroed pages back in (on the
    2-core CI machine, evaluation at batch 500 ran at 103 img/s before and 237
    img/s after this). Raising the mmap and trim thresholds keeps them. A
    no-op off glibc; returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


# what env:// needs beside WORLD_SIZE (torchrun sets these and LOCAL_RANK; so may SLURM scripts)
LAUNCH_ENV = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: str) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)
    except ValueError:
        raise SpnasError(f"the environment variable {name}={text!r} is not a whole number; "
                         "unset it, or launch with torchrun, which sets it") from None


def world_size() -> int:
    """Processes of this run, as torchrun says (1 without torchrun)."""
    world = _env_int("WORLD_SIZE", "1")
    if world < 1:
        raise SpnasError(f"the environment variable WORLD_SIZE={world} must be 1 or more; unset "
                         "it, or launch with torchrun")
    return world


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Read torchrun's environment; one process per GPU (NCCL) or CPU process (gloo)."""
    world = world_size()
    missing = [name for name in LAUNCH_ENV if world > 1 and name not in os.environ]
    if missing:
        raise SpnasError(f"WORLD_SIZE={world} is set but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not, so the processes cannot "
                         "meet; unset WORLD_SIZE, or start with torchrun --nproc_per_node N "
                         "(or have your launcher set them)")
    local = "LOCAL_RANK" if "LOCAL_RANK" in os.environ else "SLURM_LOCALID"
    d = Dist(_env_int("RANK", "0"), world, _env_int(local, "0"))
    if not 0 <= d.rank < world:  # a process that is not rank 0 writes nothing, and says nothing
        raise SpnasError(f"RANK={d.rank} is set but WORLD_SIZE={world}, so this process would "
                         f"be one of no group (ranks are 0..{world - 1}); unset RANK, or start "
                         "with torchrun --nproc_per_node N")
    device = resolve_device(device_name, d.local_rank)
    if device.type == "cuda":  # the current device too: CUDA graphs capture on the current
        torch.cuda.set_device(device)  # device's streams, whatever the tensors' device says
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def close_distributed(finished: bool = False) -> None:
    """Tear down the process group a command made, before the interpreter exits: left to
    exit, a gloo group's threads can abort the process ("terminate called without an active
    exception", seen twice in a 2-process search test under load, once with this teardown)
    after its work is done. A command that ``finished`` on this rank (or stopped on a signal
    at the step all ranks agreed on) first waits for the others (rank 0 writes the reports
    and checkpoints last), so no rank tears down while a peer works; a failed one does not
    wait (torchrun stops the others)."""
    if dist.is_available() and dist.is_initialized():
        if finished and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``, ``cpu``, or a CUDA device present here; anything else is a one-line error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SpnasError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        if device.index not in (None, 0):  # torch takes cpu:N, and ignores N
            raise SpnasError(f"--device {name}: the CPU has no numbered devices; use --device cpu")
        return device
    if device.type != "cuda":
        raise SpnasError(f"--device {name}: spnas runs on the CPU or CUDA GPUs, not "
                         f"{device.type}; use --device auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SpnasError(f"--device {name}: no CUDA device is available; use --device cpu")
    if device.index is None:  # "cuda": each torchrun process its own GPU, as with auto
        device = torch.device("cuda", local_rank)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SpnasError(f"--device {name}: this machine has {count} CUDA device(s), "
                         f"cuda:0..cuda:{count - 1}; use one of them or --device auto")
    return device


_M = TypeVar("_M", bound=nn.Module)


def place(model: _M, device: torch.device, channels_last: bool) -> _M:
    """``model`` on ``device``, in the channels_last memory format when asked."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def rank0_first(fn: Callable[[], object], dist_info: Dist, device: torch.device):
    """``fn()`` on rank 0; when it raises, every rank stops (one broadcast), so none
    waits for a rank 0 that is gone. Returns rank 0's result (None elsewhere)."""
    result, error = None, None
    if dist_info.main:
        try:
            result = fn()
        except Exception as e:  # raised again below, after the broadcast
            error = e
    if dist_info.world > 1:
        failed = torch.tensor([error is not None], dtype=torch.int32, device=device)
        dist.broadcast(failed, 0)
        if failed.item() and error is None:
            raise SpnasError("rank 0 stopped the run; see its message")
    if error is not None:
        raise error
    return result


def setup_torch(run: RunConfig, device: torch.device) -> None:
    """cuDNN autotuning and determinism for a run. Precision stays PyTorch's default, as the
    original code gets it on a current PyTorch: TF32 for cuDNN's convolutions, full fp32 for
    matrix products (the classifier)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = run.cudnn_benchmark and not run.deterministic
    if run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ('AMD EPYC ...'), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def device_description(device: torch.device) -> str:
    """'NVIDIA H200' or 'AMD EPYC 7B13 (2 cores, 2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
