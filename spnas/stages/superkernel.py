"""Single-Path NAS search (Stamoulis et al. 2019): one superkernel network whose thresholds
pick each layer's kernel and expansion, trained with the weights by the one ``Trainer``.

The loss is cross-entropy (label smoothing) plus ``lam * ln(R)``, R the latency
the ``LatencyModel`` predicts from the gates (``spaces.mbconv``), in the unit
of its table (ms measured on the user's device, or millions of MACs). The
first ``warmup_frac`` of the steps train the weights alone: lambda is 0 and
each gate is dropped (set to 0) with probability ``1 - keep_prob``, so the
warm-up trains sub-networks of the space. Afterwards lambda applies and the
gates are exact. With a target, the penalty is ``lam * max(0, ln(R / target))``:
it pushes only while the prediction is above the target.

The run folder gets the Trainer's checkpoints and ``metrics.jsonl`` (train
records carry ``ce`` and ``latency``; ``decisions`` records the arch every
``print_freq`` steps), then ``arch.json`` (the decoded arch, its table
latency, and its measured latency when the table was measured on this kind
of device) and two plots.

Two recipes (``defaults.RECIPES``) set the rest: ``spnas`` (SGD with
cosine decay, thresholds at 100x the lr without decay, gates on activations)
and ``paper``, the official code's: TF1's RMSProp (``RMSpropTF``) at a
constant lr decayed 0.97 every 2.4 epochs (the staircase of ``train.lr_at``:
``schedule="constant"``, ``decay_factor=0.97``), the latency term
lambda x 1e3 x ln R (``lam_scale``), L2 on every non-BN variable, rescaled gate
dropout, the official init and BN, and an EMA of the weights for evaluation
(``engine.ema.Ema`` with TF's warm-up of the decay).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spnas.arch import Arch, SpaceSpec
from spnas.config import OptimConfig, SuperkernelConfig, TrainConfig
from spnas.data.loading import build_transform, input_side, train_loader
from spnas.engine.ema import Ema
from spnas.engine.evaluation import evaluate, plain_forward
from spnas.engine.latency import LatencyTable, macs_latency_table, measure_arch_ms
from spnas.engine.runlog import RunLog, run_dir_for
from spnas.engine.schedule import param_groups
from spnas.engine.trainer import Task, Trainer, start_run
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.runtime import place, torch_threads
from spnas.spaces import build_child
from spnas.spaces.mbconv import SuperkernelNet, arch_gates, mbconv_space

FORMULAS = ("paper", "exact")


class LatencyModel:
    """Predicted latency as a differentiable function of the gates [layers, (d_k5, d_e3, d_e6)].

    ``paper`` is the paper's formula, per layer with r = R[k3e6] / R[k5e6]::

        Rch = d_e3 (R[k5e3] + d_e6 (R[k5e6] - R[k5e3]));   R_l = Rch r + Rch (1 - r) d_k5

    At hard gates it gives the table's value for k3e6, k5e3, k5e6, 0 for skip,
    and R[k5e3] R[k3e6] / R[k5e6] for k3e3 (the kernel ratio of expansion 6
    assumed for expansion 3). ``exact`` interpolates all five entries::

        R_l = d_e3 ((1 - d_k5) R3(d_e6) + d_k5 R5(d_e6)) + (1 - d_e3) R[skip],
        Rk(d) = R[kKe3] + d (R[kKe6] - R[kKe3])

    which equals the table lookup of every decoded arch.
    """

    def __init__(self, table: LatencyTable, formula: str = "paper"):
        if formula not in FORMULAS:
            raise SpnasError(f"--latency_formula must be one of {', '.join(FORMULAS)}, "
                             f"got {formula!r}")
        tokens = table.space.tokens
        cols = [tokens.index(t) for t in ("k3e3", "k3e6", "k5e3", "k5e6", "skip")]
        self.table, self.formula = table, formula
        self.costs = torch.tensor([[row.get(c, 0.0) for c in cols] for row in table.layers],
                                  dtype=torch.float64)
        self.constant = table.constant
        self._costs_on: dict[tuple, torch.Tensor] = {}  # costs per (device, dtype), copied once

    def __call__(self, gates: torch.Tensor) -> torch.Tensor:
        key = (gates.device, gates.dtype)
        if key not in self._costs_on:
            self._costs_on[key] = self.costs.to(gates.device, gates.dtype)
        r33, r36, r53, r56, rskip = self._costs_on[key].unbind(1)
        k5, e3, e6 = gates.unbind(1)
        if self.formula == "paper":
            ratio = r36 / r56
            rch = e3 * (r53 + e6 * (r56 - r53))
            per_layer = rch * ratio + rch * (1 - ratio) * k5
        else:
            k3_cost, k5_cost = r33 + e6 * (r36 - r33), r53 + e6 * (r56 - r53)
            per_layer = e3 * (k3_cost + k5 * (k5_cost - k3_cost)) + (1 - e3) * rskip
        return self.table.scale * (self.constant + per_layer.sum())

    def of_arch(self, arch: Arch) -> float:
        """The formula at the hard gates of ``arch``."""
        return float(self(arch_gates(arch).double()))


def latency_penalty(latency: torch.Tensor, lam: float, target: float | None) -> torch.Tensor:
    """``lam * ln(R)``, or ``lam * max(0, ln(R / target))`` with a target."""
    if target is None:
        return lam * torch.log(latency)
    return lam * F.relu(torch.log(latency / target))


def search_param_groups(model: SuperkernelNet, weight_decay: float, threshold_lr_scale: float,
                        threshold_weight_decay: float = 0.0, decay_on: str = "weights") -> list[dict]:
    """The weights' groups and the thresholds' (``lr_scale``, ``threshold_weight_decay``).

    ``decay_on="weights"``: decay on conv/linear weights only; ``"non_bn"``: on every
    parameter outside BatchNorm (the classifier's bias too), as the paper's code."""
    thresholds = model.thresholds()
    skip = {id(t) for t in thresholds}
    if decay_on == "weights":
        groups = param_groups(model, weight_decay, exclude=skip)
    elif decay_on == "non_bn":
        bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
        rest = [p for p in model.parameters() if id(p) not in skip]
        groups = [{"params": [p for p in rest if id(p) not in bn], "weight_decay": weight_decay},
                  {"params": [p for p in rest if id(p) in bn], "weight_decay": 0.0}]
    else:
        raise SpnasError(f"--weight_decay_on must be weights or non_bn, got {decay_on!r}")
    groups.append({"params": thresholds, "weight_decay": threshold_weight_decay,
                   "lr_scale": threshold_lr_scale})
    return groups


# ---- the paper's optimizer, schedule and evaluation weights ------------------------------
class RMSpropTF(torch.optim.Optimizer):
    """TF1's ``tf.train.RMSPropOptimizer``, the paper's optimizer (as timm's ``RMSpropTF``)::

        ms  <- alpha ms + (1 - alpha) g^2             ms starts at 1 (torch's RMSprop: 0)
        mom <- momentum mom + lr g / sqrt(ms + eps)   eps inside the root (torch: sqrt(ms) + eps)
        w   <- w - mom

    with g the gradient plus ``weight_decay`` x w (TF's L2 term in the loss). TF's placement
    of eps matters at the paper's eps of 1e-3: it floors the denominator at sqrt(1e-3) = 0.032
    where torch's floors it at 1e-3, a 32x larger step for parameters with small gradients.
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, mom = state["square_avg"], state["momentum_buffer"]
                ms.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
                mom.mul_(group["momentum"]).addcdiv_(g, ms.add(group["eps"]).sqrt_(), value=group["lr"])
                p.sub_(mom)
        return loss


def optimizer_factory(sk: SuperkernelConfig, steps_per_epoch: int | None = None):
    """The Task's ``make_optimizer``: SGD or ``RMSpropTF``. (The lr of every step, the
    paper recipe's staircase included, is ``train.lr_at``'s: a pure function of the step.)"""
    def make(groups: list[dict], o: OptimConfig) -> torch.optim.Optimizer:
        opt: torch.optim.Optimizer
        if sk.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                                  nesterov=o.nesterov and o.momentum > 0)
        elif sk.optimizer == "rmsprop_tf":
            opt = RMSpropTF(groups, lr=o.lr, alpha=sk.rmsprop_alpha, eps=sk.rmsprop_eps,
                            momentum=o.momentum)
        else:
            raise SpnasError(f"--optimizer must be sgd or rmsprop_tf, got {sk.optimizer!r}")
        return opt
    return make


def make_ema(model: nn.Module, sk: SuperkernelConfig) -> Ema | None:
    """The evaluation weights as the paper's code keeps them (none for ``ema_decay`` 0): TF's
    ExponentialMovingAverage(decay, num_updates=global_step), the decay warmed up. A
    constant 0.9999 would leave half the average on the initial weights after 7,000 steps
    (an 8-epoch CIFAR search at batch 64 is 5,600)."""
    return Ema(model, sk.ema_decay, warmup=True) if sk.ema_decay > 0 else None


def load_table(cfg: SuperkernelConfig, space: SpaceSpec, num_classes: int,
               resolution: int) -> LatencyTable:
    """The measured table of ``cfg.latency_table``, or the MACs table (at ``resolution``)."""
    if cfg.latency_table is None:
        table = macs_latency_table(space, lambda a: build_child(a, num_classes), num_classes,
                                   resolution)
    else:
        table = LatencyTable.load(cfg.latency_table)
        if table.space != space:
            raise SpnasError(f"latency table {cfg.latency_table} is for {table.space.describe()}, "
                             f"the search uses {space.describe()}; make one with 'spnas "
                             f"latency-table --space mbconv --layout {space.layout}'")
    if cfg.target_latency is not None and cfg.target_unit != table.unit:
        flag, fix = (("--target_latency_ms", "give --latency_table FILE (a measured table)")
                     if cfg.target_unit == "ms" else ("--target_mmacs", "use --target_latency_ms"))
        raise SpnasError(f"{flag} needs a table in {cfg.target_unit}, but the latency table is "
                         f"in {table.unit}; {fix}")
    return table


def _target_warning(sk: SuperkernelConfig, table: LatencyTable) -> str | None:
    """A warning when the target lies outside what the space's networks can reach."""
    t = sk.target_latency
    if t is None:
        return None
    low, high = table.minimum(), table.maximum()
    if low <= t <= high:
        return None
    what = (f"below the cheapest network's {low:.4g} {table.unit}: every network is over it, "
            "so the latency loss pushes to the cheapest one" if t < low else
            f"above the dearest network's {high:.4g} {table.unit}: no network is over it, so "
            "the latency loss never applies")
    return (f"WARNING: the target latency {t:g} {table.unit} is {what}; a target in "
            f"{low:.4g}..{high:.4g} {table.unit} trades latency for accuracy")


def _describe(table: LatencyTable, path: str | None) -> str:
    if path is None:
        return ("latency: no --latency_table given, so the table is MACs (millions) per layer, "
                "not a timing; make a measured one with 'spnas latency-table'")
    return f"latency: table {path} ({table.device_name}, batch {table.batch}, in {table.unit})"


class _Decisions:
    """Appends the arch the thresholds select to metrics.jsonl every ``every`` steps.

    Its first call also logs ``notes`` (which latency table is used):
    only then is the run folder known to be this run's (the Trainer refuses a used one).
    It writes into the Trainer's log, which it is handed each step.
    """

    def __init__(self, model: SuperkernelNet, table: LatencyTable, every: int, total: int,
                 notes: list[str]):
        self.model, self.table, self.every, self.total = model, table, every, total
        self.notes = notes

    def __call__(self, step: int, log: RunLog) -> None:
        for note in self.notes:
            log.info(note)
        self.notes = []
        done = step + 1
        if done == 1 or done % self.every == 0 or done == self.total:
            arch = self.model.decode()
            log.metric({"type": "decisions", "step": done, "arch": str(arch),
                             "choices": list(arch.choices), "latency": self.table.predict(arch),
                             "thresholds": [[round(v, 5) for v in row] for row in torch.stack(
                                 tuple(self.model.thresholds())).detach().cpu().tolist()]})


def build_task(model: SuperkernelNet, table: LatencyTable, cfg: TrainConfig, total: int,
               steps_per_epoch: int, validate,
               ema: Ema | None = None, notes: tuple[str, ...] = ()) -> Task:
    """The superkernel search as a ``Task`` for the ``Trainer``."""
    sk: SuperkernelConfig = cfg.model
    warm = round(sk.warmup_frac * total)
    latency = LatencyModel(table, sk.latency_formula)
    smoothing, lam = cfg.optim.label_smoothing, sk.lam * sk.lam_scale

    def forward(m, x, step):
        return m(x, keep_prob=sk.keep_prob if step < warm else 1.0, rescale=sk.gate_dropout_rescale)

    def loss(logits, labels, step):
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        extra = {"ce": ce}
        if step < warm:
            with torch.no_grad():
                extra["latency"] = latency(model.gates())
            return ce, extra
        extra["latency"] = r = latency(model.gates())
        return ce + latency_penalty(r, lam, sk.target_latency), extra

    decisions = _Decisions(model, table, cfg.run.print_freq, total,
                           [_describe(table, sk.latency_table), *notes])

    def on_step_end(step, log):
        if ema is not None:
            ema(step)
        decisions(step, log)

    groups = search_param_groups(model, cfg.optim.weight_decay, sk.threshold_lr_scale,
                                 sk.threshold_weight_decay, sk.weight_decay_on)
    return Task(kind="superkernel", model=model, space=model.spec, num_classes=model.num_classes,
                forward=forward, loss=loss, validate=validate, param_groups=groups,
                model_args={"dropout": sk.dropout, "mask_at": sk.mask_at, "bn_eps": sk.bn_eps,
                            "bn_momentum": sk.bn_momentum},
                on_step_end=on_step_end, deploy=None if ema is None else ema.deploy,
                make_optimizer=optimizer_factory(sk, steps_per_epoch))


def make_validator(splits, cfg: TrainConfig, device: torch.device, table: LatencyTable,
                   net: nn.Module | None = None):
    """Accuracy of the network the thresholds select now (of ``net``, the EMA, when given:
    its own thresholds and weights, as the paper evaluates), and the table latency of the
    trained thresholds' arch."""
    transform = build_transform(cfg.data, cfg.run.channels_last_for(device))
    val_x, val_y = splits.val

    def validate(model, step):
        r = evaluate(net if net is not None else model, plain_forward, val_x, val_y, transform,
                     len(splits.classes), 500, device, cfg.run.amp)
        return {"val_acc": r["acc"], "val_loss": r["loss"],
                "latency": table.predict(model.decode())}
    return validate


def search_layout(cfg: TrainConfig) -> str:
    """``layout``, or by default the one the images need: imagenet with --resize, else cifar."""
    return cfg.model.layout or ("imagenet" if cfg.data.resize else "cifar")


@takes_config(TrainConfig, model=SuperkernelConfig, name="SuperkernelStage")
def search_superkernel(cfg: TrainConfig) -> dict:
    """Run the superkernel search as ``cfg`` says; write arch.json and plots; return the result."""
    dist_info, device, splits = start_run(cfg, graphs=False)
    sk: SuperkernelConfig = cfg.model
    num_classes = len(splits.classes)
    space = mbconv_space(search_layout(cfg))
    model = place(SuperkernelNet(space, num_classes, sk.dropout, sk.mask_at, sk.bn_eps,
                                 sk.bn_momentum, sk.init), device, cfg.run.channels_last_for(device))
    ema = make_ema(model, sk)
    resolution = input_side(cfg.data, splits.train[0])
    table = load_table(sk, space, num_classes, resolution)
    loader = train_loader(splits, cfg, device, dist_info)
    spe = loader.steps_per_epoch
    total = cfg.optim.epochs * spe
    run_dir = run_dir_for(cfg.run)
    validate = make_validator(splits, cfg, device, table, None if ema is None else ema.deploy)
    warnings = [table.resolution_warning(resolution), _target_warning(sk, table)]
    trainer = Trainer(build_task(model, table, cfg, total, spe, validate, ema,
                                 tuple(w for w in warnings if w)), loader, cfg, run_dir, dist_info)
    result = trainer.fit()
    if not dist_info.main:
        return result
    return finish(model, table, cfg, result, run_dir, trainer.log, round(sk.warmup_frac * total))


def _measure(arch: Arch, table: LatencyTable, num_classes: int) -> float | None:
    """Whole-network ms of ``arch`` where the table was measured on a device present here."""
    if table.unit != "ms" or (table.device.startswith("cuda") and not torch.cuda.is_available()):
        return None
    with torch_threads(table.threads):
        return measure_arch_ms(arch, table, lambda a: build_child(a, num_classes),
                               torch.device(table.device))


def finish(model: SuperkernelNet, table: LatencyTable, cfg: TrainConfig, result: dict, run_dir,
           log: RunLog, warm: int) -> dict:
    """Decode, write arch.json and the plots, and say what was found."""
    from spnas.stages.superkernel_plots import plot_superkernel_run
    sk: SuperkernelConfig = cfg.model
    arch = model.decode()
    metrics = {"latency": table.predict(arch), "latency_unit": table.unit,
               "formula_latency": LatencyModel(table, sk.latency_formula).of_arch(arch),
               "supernet_val_acc": result.get("val_acc"), "steps": result["step"]}
    measured = _measure(arch, table, model.num_classes)
    if measured is not None:
        metrics["measured_latency_ms"] = measured
    found_by = {"method": "superkernel", "run": str(run_dir), "recipe": sk.recipe, "lam": sk.lam,
                "lam_scale": sk.lam_scale,
                "target_latency": sk.target_latency, "target_unit": sk.target_unit,
                "latency_table": sk.latency_table or "macs", "table_device": table.device_name,
                "formula": sk.latency_formula, "mask_at": sk.mask_at, "seed": cfg.run.seed}
    arch.save(run_dir / "arch.json", found_by=found_by, metrics=metrics)
    plots = plot_superkernel_run(run_dir, table.unit, warm, sk.target_latency)
    log.info(f"found {arch}")
    log.info(f"predicted latency {metrics['latency']:.3f} {table.unit}"
             + (f", measured {measured:.3f} ms" if measured is not None else "")
             + f"; wrote {run_dir / 'arch.json'} and {', '.join(p.name for p in plots)}")
    if all(model.spec.tokens[c] == "k5e6" for c in arch):
        if warm >= result["step"]:
            why = ("the warm-up (--warmup_frac) covered every step, so the latency loss never "
                   "applied; lower --warmup_frac, or train more --epochs")
        elif sk.target_latency is not None:
            why = ("the latency pressure was too weak; raise --lam or --threshold_lr_scale, or "
                   "lower the target")
        else:
            target = "--target_latency_ms" if table.unit == "ms" else "--target_mmacs"
            why = ("the latency pressure was too weak; raise --lam or --threshold_lr_scale, or "
                   f"give a target ({target})")
        log.info(f"every layer stayed k5e6: {why}")
    return {**result, "arch": str(arch), **metrics}
