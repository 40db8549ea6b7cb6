"""One training loop for supernet training, superkernel search and retraining.

The three differ only in their ``Task``: what picks the path each step (the
``forward`` callable), the loss, and how the model is validated. Everything
random at step ``s`` (the epoch's data order, every augmentation draw, the
sampled path, dropout) comes from generators seeded by ``(seed, purpose, s)``,
and the learning rate is a pure function of ``s``. So a run repeats exactly,
and ``--resume`` from the checkpoint at step ``s`` continues exactly as the
uninterrupted run would have.
"""
from __future__ import annotations

import json
import math
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from spnas.arch import Arch, SpaceSpec
from spnas.config import OptimConfig, RunConfig, TrainConfig, derive_seed, unused_settings
from spnas.data.datasets import Splits
from spnas.data.loading import DeviceLoader, load_splits
from spnas.engine.checkpoint import check_same_space, load_checkpoint, load_model_state, save_checkpoint
from spnas.engine.evaluation import autocast
from spnas.engine.graphs import check_graphs_allowed
from spnas.engine.runlog import (
    RunLog,
    check_resume,
    check_run_dir,
    open_run_dir,
    recorded_config,
    run_dir_for,
)
from spnas.engine.schedule import effective_optim, lr_at
from spnas.engine.signals import StopSignals, Terminated, shutdown_timeout, slow_stop_note, stop_exception
from spnas.errors import SpnasError
from spnas.files import atomic_write_text
from spnas.resume import CHANGEABLE
from spnas.runtime import Dist, init_distributed, rank0_first, setup_torch


def start_run(cfg: TrainConfig, graphs: bool = True) -> tuple[Dist, torch.device, Splits]:
    """Processes (torchrun-aware), device, the run folder, torch settings and the data split
    of a run; then the initial weights' seed, (seed, "init"). ``graphs``: whether the stage
    can run ``--cuda_graphs``; where it cannot, asking for them stops here, before anything
    is written.

    ``cfg.data.data_path`` becomes absolute here, so the run's config and checkpoints
    find the data from any directory. Before any data is loaded, rank 0 checks and
    locks the run folder (``runlog.lock_run_dir``); the lock lasts while the returned
    ``Splits`` does, i.e. until the stage that called this returns.
    """
    dist_info, device = init_distributed(cfg.run.device)
    check_graphs_allowed(cfg.run.cuda_graphs, device, dist_info.world, graphs)
    cfg.data.data_path = os.path.abspath(os.path.expanduser(cfg.data.data_path))
    if not cfg.run.resume:  # a resume keeps the paths as its config.json has them
        _absolute_inputs(cfg.model)
    run_dir = run_dir_for(cfg.run)
    lock = rank0_first(lambda: open_run_dir(run_dir, cfg), dist_info, device)
    try:
        setup_torch(cfg.run, device)
        splits = load_splits(cfg.data, cfg.run.seed)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if lock is not None:
        weakref.finalize(splits, lock.release)
    torch.manual_seed(derive_seed(cfg.run.seed, "init"))
    return dist_info, device, splits


INPUT_FILES = ("arch", "checkpoint", "latency_table")  # model settings that may name a file


def _absolute_inputs(model) -> None:
    """The files a run reads (an arch file, a fine-tune's checkpoint, a latency table) as
    absolute paths, as ``data_path``: a resume from another directory finds them."""
    for name in INPUT_FILES:
        value = getattr(model, name, None)
        if isinstance(value, str) and value and os.path.exists(os.path.expanduser(value)):
            setattr(model, name, os.path.abspath(os.path.expanduser(value)))


# ---- the task and the loop ---------------------------------------------------------------
def cross_entropy_loss(label_smoothing: float):
    def loss(logits: torch.Tensor, labels: torch.Tensor, step: int):
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing), {}
    return loss


@dataclass
class Task:
    """What one kind of training does; see the module docstring."""

    kind: str                                    # written into checkpoints
    model: nn.Module
    space: SpaceSpec
    num_classes: int
    forward: Callable[[nn.Module, torch.Tensor, int], torch.Tensor]  # (model, x, step) -> logits
    loss: Callable                               # (logits, labels, step) -> (loss, {name: tensor})
    validate: Callable[[nn.Module, int], dict]   # (model, step) -> {"val_acc": ...}
    param_groups: list[dict]
    arch: Arch | None = None
    model_args: dict = field(default_factory=dict)  # constructor kwargs, e.g. {"dropout": 0.2}
    select: str = "val_acc"                      # higher is better; picks best.pt
    find_unused_parameters: bool = False         # DDP: True when a step uses part of the model
    # zero the grads rather than drop them, from the first step: the optimizer then also
    # steps the parameters a step did not use (momentum, weight decay), as zero_grad() did
    # before PyTorch 2.0
    zero_grads: bool = False
    on_step_end: Callable[[int, RunLog], None] | None = None  # (step, the run's log)
    deploy: nn.Module | None = None              # a separate network shipped as "model" (an EMA)
    extra_state: Callable[[], dict] = field(default=lambda: {})
    load_extra_state: Callable[[dict], None] = field(default=lambda state: None)
    # (param_groups, optim) -> optimizer; None = SGD with optim's momentum and nesterov
    make_optimizer: Callable[[list[dict], OptimConfig], torch.optim.Optimizer] | None = None


_NONE = 2**62  # no bad step (in the all-reduce of the first bad step)


class NonFiniteLoss(SpnasError):
    pass


class Trainer:
    """Runs a ``Task`` for ``epochs x steps_per_epoch`` steps in ``run_dir``."""

    def __init__(self, task: Task, loader: DeviceLoader, cfg: TrainConfig, run_dir: Path,
                 dist_info: Dist = Dist()):
        self.task, self.loader, self.cfg, self.dir, self.dist = task, loader, cfg, run_dir, dist_info
        self.log = RunLog(run_dir, enabled=dist_info.main, tensorboard=cfg.run.tensorboard)
        o, self.lr_note = effective_optim(cfg.optim, dist_info.world)  # lr_batch scaled
        self.optim = o
        self.opt = task.make_optimizer(task.param_groups, o) if task.make_optimizer else \
            torch.optim.SGD(task.param_groups, lr=o.lr, momentum=o.momentum,
                            nesterov=o.nesterov and o.momentum > 0)
        self.total = o.epochs * loader.steps_per_epoch
        self.step, self.best = 0, -math.inf
        self.saved_step: int | None = None  # the step of the last last.pt written or resumed
        self.last_val: dict = {}
        self.train_loss: float | None = None  # the last logged window's cross-entropy
        self._eval_noted = False
        self._windows = 0  # log lines written by this process
        self._stop_noted = False
        self._val_seconds = 0.0  # the last validation's (rank 0)
        self._window = _Window(loader.device)  # the sums since the last log line, checkpointed
        self.device = loader.device

    # -- checkpoints
    def _payload(self) -> dict:
        t = self.task
        shipped = t.model if t.deploy is None else t.deploy
        return {"kind": t.kind, "space": t.space.to_dict(), "arch": str(t.arch) if t.arch else None,
                "num_classes": t.num_classes, "classes": list(self.loader.classes),
                "model_args": t.model_args,
                "model": shipped.state_dict(),
                "train_model": None if t.deploy is None else t.model.state_dict(),
                "optimizer": self.opt.state_dict(), "step": self.step,
                "epoch": self.step // self.loader.steps_per_epoch,
                "config": recorded_config(self.cfg),
                "metrics": {"best": self.best, "select": t.select, **self.last_val},
                "extra": t.extra_state(),
                "window": self._window.state()}

    def save(self, name: str) -> None:
        """Write checkpoint ``name`` (rank 0); call ``_check_state`` first, on every rank."""
        if self.dist.main:
            save_checkpoint(self.dir / name, self._payload())
        if name == "last.pt":  # on every rank: they decide alike whether to write it again
            self.saved_step = self.step

    def restore(self) -> None:
        ckpt = load_checkpoint(self.dir / "last.pt", kinds=(self.task.kind,))
        check_same_space(ckpt, self.task.space)
        if (ckpt.get("arch") or None) != (str(self.task.arch) if self.task.arch else None):
            raise SpnasError(f"{ckpt['path']} trains arch {ckpt.get('arch')}, not "
                             f"{self.task.arch}; resume with the same --arch")
        missing = [k for k in ("optimizer", "step") if ckpt.get(k) is None]
        if missing:
            raise SpnasError(f"{ckpt['path']} holds no {' or '.join(missing)} state (a network "
                             "imported or written outside a training run?), so the run cannot be "
                             "resumed from it; start a new run, or fine-tune it with spnas finetune "
                             "--checkpoint")
        self._load_weights(ckpt)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        if self.step > self.total:  # it would end at once, its config.json saying it is done
            need = -(-self.step // self.loader.steps_per_epoch)
            raise SpnasError(f"{ckpt['path']} is at step {self.step}, past this resume's "
                             f"{self.total} steps (--epochs {self.cfg.optim.epochs}); resume "
                             f"with --epochs {need} or more")
        metrics = ckpt.get("metrics") or {}
        self.best = float(metrics.get("best", -math.inf))
        self.last_val = {k: v for k, v in metrics.items() if k not in ("best", "select")}
        self.saved_step = self.step
        self.task.load_extra_state(ckpt.get("extra") or {})
        if ckpt.get("window"):  # none in older checkpoints; from a step between two log lines,
            self._window.load_state(ckpt["window"])  # the first averages the same steps
        self.log.truncate_after(self.step)
        self.log.info(f"resumed from {ckpt['path']} at step {self.step}")
        if self.step == self.total:
            self.log.info(f"the run had finished all its {self.total} steps (--epochs "
                          f"{self.cfg.optim.epochs}): nothing to train; resume with more "
                          "--epochs to train on")
        self._catch_up_best()

    def _catch_up_best(self) -> None:
        """An improving validation writes last.pt, then best.pt; a run stopped between the
        two has a best.pt older than last.pt's best (or none), and that best is last.pt's
        own state, restored just now: write it as best.pt."""
        path = self.dir / "best.pt"
        if not self.dist.main or not math.isfinite(self.best):
            return
        try:
            kept = float((load_checkpoint(path).get("metrics") or {}).get("best", -math.inf))
        except SpnasError:  # missing or unreadable: last.pt holds the best, write it again
            kept = -math.inf
        if kept >= self.best:
            return
        self.save("best.pt")
        self.log.info(f"wrote best.pt ({self.task.select} {self.best:.4f}, step {self.step}): "
                      "the run had stopped before writing it")

    def _load_weights(self, ckpt: dict) -> None:
        t, trained = self.task, ckpt.get("train_model")
        if (trained is None) != (t.deploy is None):
            kept = "kept" if trained is not None else "did not keep"
            raise SpnasError(f"{ckpt['path']} {kept} an EMA of the weights (--ema); resume "
                             "with the same flags")
        if t.deploy is None or trained is None:  # (checked above: both or neither)
            load_model_state(t.model, ckpt["model"], ckpt["path"])
        else:
            load_model_state(t.deploy, ckpt["model"], ckpt["path"])
            load_model_state(t.model, trained, ckpt["path"])

    def _prepare_run_dir(self) -> None:
        """Resume (same settings as the run's config.json, but for ``RESUMABLE`` ones,
        which are logged) or start fresh; then record the config."""
        if self.cfg.run.resume:
            changes = check_resume(self.cfg, self.dir)
            self.restore()
            for change in changes:
                self.log.info(f"resume: {change}; allowed ({', '.join(CHANGEABLE)})")
        else:
            check_run_dir(self.dir, resume=False)
            self.log.start_afresh()
        if self.dist.main:
            atomic_write_text(self.dir / "config.json",
                              json.dumps(recorded_config(self.cfg), indent=2) + "\n")

    # -- the loop
    def fit(self) -> dict:
        self._prepare_run_dir()
        model = self.task.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.task.find_unused_parameters)
        run, spe = self.cfg.run, self.loader.steps_per_epoch
        end = min(self.total, run.stop_after or self.total)
        self.log.info(f"{self.task.kind}: {self.total} steps ({self.cfg.optim.epochs} epochs x "
                      f"{spe}), batch {self.loader.batch_size}, device {self.device}, run {self.dir}")
        if self.lr_note:
            self.log.info(self.lr_note)
        for note in unused_settings(self.cfg):
            self.log.info(f"note: {note}")
        if run.amp and self.device.type != "cuda":
            self.log.info("--amp: bf16 autocast runs on CUDA only; this run trains in fp32")
        self.log.progress(self.total, self.step)
        window = self._window
        window.restart_clock()
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        if self.task.zero_grads:  # on resume too: grads are not checkpointed
            for group in self.opt.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
        model.train()
        stop = self._stop_signals()
        try:
            with stop.watching():
                self._loop(model, end, window, bad_step, stop)
                # one look more, at a signal since the loop's last; with several processes,
                # one that gets it after this goes on with the others (the run is written)
                signum = self._agreed_signal(stop)
            if self.dist.world == 1:
                signum = stop.signum  # one that came after that look, before the handlers went
            if signum:
                raise stop_exception(signum, together=self.dist.world > 1)
        except KeyboardInterrupt as e:
            self.log.info(self._interrupted_text(e))
            raise
        finally:
            self.log.close()
        return {"step": self.step, "best": self.best, **self.last_val}

    def _loop(self, model: nn.Module, end: int, window: "_Window", bad_step: torch.Tensor,
              stop: StopSignals) -> None:
        run, spe = self.cfg.run, self.loader.steps_per_epoch
        while self.step < end:
            step = self.step
            epoch, i = divmod(step, spe)
            images, labels = self.loader.batch(epoch, i)
            lr = lr_at(step, self.total, self.optim, spe)
            for g in self.opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            torch.manual_seed(derive_seed(run.seed, "step", step))
            with autocast(self.device, run.amp):
                logits = self.task.forward(model, images, step)
                loss, extra = self.task.loss(logits, labels, step)
            self.opt.zero_grad(set_to_none=not self.task.zero_grads)
            loss.backward()
            self.opt.step()
            if self.task.on_step_end:
                self.task.on_step_end(step, self.log)
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()),
                                   torch.full_like(bad_step, step), bad_step)
            window.add(loss, logits, labels, extra)
            self.step = step + 1
            self.log.advance(1)
            log_step = self.step % run.print_freq == 0 or self.step in (self.total, end)
            if log_step:
                self._check_finite(bad_step)
                self._log_train(window, lr, epoch)
            end_of_epoch = self.step % spe == 0
            last_epoch = epoch + 1 == self.cfg.optim.epochs
            look = log_step or self.dist.world == 1  # at the stop signal: see _agreed_signal
            if end_of_epoch and ((epoch + 1) % run.val_interval == 0 or last_epoch):
                self._check_finite(bad_step)
                self._validate(epoch)
                window.restart_clock()
                look = True
            elif run.ckpt_interval and self.step % run.ckpt_interval == 0:
                self._check_finite(bad_step)
                self._check_state()
                self.save("last.pt")
                look = True
            signum = self._agreed_signal(stop) if look else 0
            if signum:
                self._save_and_stop(bad_step, signum)
        if self.step < self.total and run.stop_after:
            self._check_finite(bad_step)
            self._check_state()
            self.save("last.pt")
            self.log.info(f"stopped after step {self.step} of {self.total} (--stop_after); "
                          "--resume with a larger --stop_after continues")

    # -- Ctrl-C, SIGTERM and SIGHUP: see engine/signals.py
    def _stop_signals(self) -> StopSignals:
        if self.dist.world == 1:
            return StopSignals()
        every = self.cfg.run.print_freq
        return StopSignals(f"every process finishes its steps up to the next log line (one "
                           f"every --print_freq {every} steps), validation or checkpoint, then "
                           "last.pt is written" if self.dist.main else None, again=False)

    def _agreed_signal(self, stop: StopSignals) -> int:
        """The stop signal received, on one process; with several, the one any of them received,
        so that they stop at one step (a collective: called at the same steps on all, those
        of a log line, a validation or a checkpoint; with the NaN check's, two tiny
        collectives per log line and none per step)."""
        if self.dist.world == 1:
            return stop.signum
        got = torch.tensor(stop.signum, device=self.device)
        dist.all_reduce(got, op=dist.ReduceOp.MAX)
        return int(got)

    def _save_and_stop(self, bad_step: torch.Tensor, signum: int) -> None:
        """After a first Ctrl-C, SIGTERM or SIGHUP: last.pt at this step (unless written at it
        already), then the stop of an interrupted run. A NaN loss stops as NaN: nothing NaN is
        written."""
        if self.saved_step != self.step:
            self._check_finite(bad_step)
            self._check_state()
            self.save("last.pt")
        raise stop_exception(signum, together=True)

    def _interrupted_text(self, e: KeyboardInterrupt) -> str:
        """What an interrupted run keeps, and what it loses."""
        how = f"terminated ({e.name})" if isinstance(e, Terminated) else "interrupted"
        done = f"{how} after step {self.step} of {self.total}"
        if self.saved_step is None:
            return (f"{done}: no checkpoint had been written yet, so those steps are lost (one "
                    "is written at each validation, every --val_interval epochs, and every "
                    "--ckpt_interval steps)")
        first, last = self.saved_step + 1, self.step
        again = ("" if last < first else f" (step {last} is trained again)" if last == first
                 else f" (steps {first}-{last} are trained again)")
        return (f"{done}; {self.dir / 'last.pt'} holds step {self.saved_step}: --resume continues "
                f"from there{again}")

    # -- stops: nothing NaN or infinite is ever written, or validated as the best
    def _stop(self, what: str) -> NonFiniteLoss:
        kept = ("no checkpoint had been written yet" if self.saved_step is None else
                f"the last good checkpoint {self.dir / 'last.pt'} is kept (step {self.saved_step})")
        self.log.info(f"stopped: {what}")
        return NonFiniteLoss(f"{what}; training stopped and {kept}; lower --lr or check the data")

    def _check_finite(self, bad_step: torch.Tensor) -> None:
        """Stop at the first step whose loss was NaN or infinite; with several processes, on
        every one at the first step any of them had one (a collective, as _agreed_signal)."""
        if self.dist.world > 1:
            first = torch.where(bad_step < 0, torch.full_like(bad_step, _NONE), bad_step)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            bad_step = torch.where(first == _NONE, torch.full_like(first, -1), first)
        s = int(bad_step)
        if s >= 0:
            epoch = s // self.loader.steps_per_epoch
            raise self._stop(f"the loss became NaN or infinite at step {s + 1} (epoch {epoch})")

    def _check_state(self) -> None:
        """Stop unless every float of the weights, BN buffers and optimizer state is finite.

        On every rank, before a checkpoint: one pass on the device and one sync (with
        several processes, one all-reduce: a rank with a bad buffer stops them all).
        """
        t = self.task
        nets = [t.model] + ([t.deploy] if t.deploy is not None else [])
        tensors = [v for net in nets for v in net.state_dict().values()]
        tensors += [v for state in self.opt.state.values() for v in state.values()
                    if isinstance(v, torch.Tensor)]
        flags = [torch.isfinite(v).all().to(self.device) for v in tensors if v.is_floating_point()]
        ok = torch.stack(flags).all().int() if flags else torch.ones((), dtype=torch.int,
                                                                        device=self.device)
        if self.dist.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not ok.item():
            epoch = (self.step - 1) // self.loader.steps_per_epoch
            raise self._stop(f"the weights, BN statistics or optimizer state became NaN or "
                             f"infinite by step {self.step} (epoch {epoch}); not written")

    def _log_train(self, window: "_Window", lr: float, epoch: int) -> None:
        rec = window.flush(self.loader.batch_size * self.dist.world)
        self._windows += 1
        if self.dist.world > 1 and self._windows >= 2 and not self._stop_noted:  # 1st: warm-up
            steps = most_steps_between_looks(self.cfg.run, self.loader.steps_per_epoch)
            note = slow_stop_note(window.seconds_per_step, steps, self._val_seconds,
                                  shutdown_timeout())
            if note:
                self.log.info(note)
                self._stop_noted = True
        rec = {"type": "train", "step": self.step, "epoch": epoch, "lr": lr, **rec}
        self.train_loss = rec.get("ce", rec["loss"])  # without a latency penalty
        self.log.metric(rec)
        msg = (f"step {self.step}/{self.total} epoch {epoch} lr {lr:.5f} loss {rec['loss']:.4f} "
               f"acc {rec['acc']:.4f} {rec['img_per_s']:.1f} img/s")
        if self.log.has_bar:
            self.log.advance(0, loss=f"{rec['loss']:.4f}", acc=f"{rec['acc']:.3f}")
            with open(self.log.log_path, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        else:
            self.log.info(msg)

    def _validate(self, epoch: int) -> None:
        """Validate (rank 0), then write last.pt and, when it improved, best.pt.

        A NaN or infinite number in the validation stops the run like a NaN loss:
        it is never the best, and nothing is written.
        """
        self._check_state()
        bad = torch.zeros((), dtype=torch.int, device=self.device)
        if self.dist.main:
            t0 = time.perf_counter()
            val = self.task.validate(self.task.model, self.step)
            self.last_val = {k: v for k, v in val.items() if isinstance(v, (int, float))}
            self._val_seconds = time.perf_counter() - t0
            self.log.metric({"type": "val", "step": self.step, "epoch": epoch, **self.last_val,
                             "seconds": self._val_seconds})
            nonfinite = {k: v for k, v in self.last_val.items() if not math.isfinite(v)}
            if nonfinite:
                bad.fill_(1)
            else:
                score = self.last_val.get(self.task.select, -math.inf)
                improved = score > self.best
                self.best = max(self.best, score)
                self.log.info(f"validation after epoch {epoch}: " + " ".join(
                    f"{k} {v:.4f}" for k, v in self.last_val.items()) + (" (best)" if improved else ""))
                note = None if self._eval_noted else eval_mode_note(
                    self.last_val.get("val_loss"), self.train_loss, self.task.num_classes,
                    self.task.model)
                if note:
                    self.log.info(note)
                    self._eval_noted = True
                self.save("last.pt")
                if improved:
                    self.save("best.pt")
        if self.dist.world > 1:
            dist.broadcast(bad, 0)  # in place of a barrier: every rank learns whether to stop
        if bad.item():
            shown = ", ".join(f"{k} {v}" for k, v in nonfinite.items()) if self.dist.main else "see rank 0"
            raise self._stop(f"the validation after epoch {epoch} (step {self.step}) gave NaN or "
                             f"infinite numbers ({shown}); not written")
        self.saved_step = self.step  # rank 0 wrote last.pt: known on every rank, as save() keeps it


def most_steps_between_looks(run: RunConfig, steps_per_epoch: int) -> int:
    """Under torchrun, the most steps from a signal to the processes' next agreement on it: at
    every log line, validation and checkpoint."""
    gaps = [run.print_freq, run.val_interval * steps_per_epoch]
    return min(gaps + ([run.ckpt_interval] if run.ckpt_interval else []))


def eval_mode_note(val_loss: float | None, train_loss: float | None, num_classes: int,
                   model: nn.Module) -> str | None:
    """A note when the validation loss is over 3x both the training loss and a uniform
    guess's, ln(classes): the network acts differently in eval mode. BN running statistics
    that lag weights moving fast do this (measured in short ``--recipe paper`` superkernel
    searches: validation losses of 17 and 1,375 against a cross-entropy of 2.4;
    docs/superkernel.md). An overfit network's loss stays below 3x the uniform one."""
    if val_loss is None or train_loss is None:
        return None
    uniform = math.log(max(num_classes, 2))
    if not val_loss > 3 * max(train_loss, uniform):
        return None
    momenta = [m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum]
    low = min(momenta) if momenta else None
    fix = (f" (BN momentum {low:g}: they average about the last {round(1 / low)} steps); for a "
           "short run, --bn_momentum 0.1" if low is not None and low < 0.1 else
           "; a lower --lr, or a longer run, lets them catch up")
    return (f"note: the validation loss {val_loss:.4g} is over 3x both the training loss "
            f"{train_loss:.4g} and a uniform guess's {uniform:.4g}: in eval mode BN uses its "
            f"running statistics, which may lag weights that move fast{fix}")


class _Window:
    """Loss and accuracy summed on the device between two log lines (one sync per line)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds_per_step = 0.0  # in the window flushed last
        self._reset()
        self.restart_clock()

    def _reset(self):
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.extra: dict[str, torch.Tensor] = {}
        self.steps = self.images = 0

    def state(self) -> dict:
        return {"loss": float(self.loss), "correct": int(self.correct), "steps": self.steps,
                "images": self.images, "extra": {k: float(v) for k, v in self.extra.items()}}

    def load_state(self, state: dict) -> None:
        self.loss = torch.tensor(state["loss"], dtype=torch.float64, device=self.device)
        self.correct = torch.tensor(state["correct"], dtype=torch.long, device=self.device)
        self.steps, self.images = int(state["steps"]), int(state["images"])
        self.extra = {k: torch.tensor(v, dtype=torch.float64, device=self.device)
                      for k, v in state["extra"].items()}

    def restart_clock(self):
        self.t0 = time.perf_counter()
        self.clock_steps = 0

    def add(self, loss, logits, labels, extra):
        self.loss += loss.detach().double()
        self.correct += (logits.detach().argmax(1) == labels).sum()
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0) + torch.as_tensor(v).detach().double()
        self.steps += 1
        self.clock_steps += 1
        self.images += len(labels)

    def flush(self, global_batch: int) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - self.t0
        self.seconds_per_step = dt / max(self.clock_steps, 1)
        n = max(self.steps, 1)
        rec = {"loss": self.loss.item() / n, "acc": self.correct.item() / max(self.images, 1),
               **{k: float(v) / n for k, v in self.extra.items()},
               "img_per_s": self.clock_steps * global_batch / max(dt, 1e-9)}
        self._reset()
        self.restart_clock()
        return rec


