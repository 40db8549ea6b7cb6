"""``spnas import-reference``: a state_dict of the original SPOS CIFAR code as an spnas checkpoint.

The original code (ShunLu91/Single-Path-One-Shot-NAS) saves
``torch.save(model.state_dict())``: ``train_supernet.py`` a supernet (every
layer holds all four choices, whatever ``--num_choices`` it trained with),
``retrain_best_choice.py`` one standalone network. The SPOS space
(``spaces/spos.py``) computes in the original's structure and channel order,
so importing is a renaming of keys; no weight is permuted or changed.

Key table (``{i}`` layer 0-19, ``{j}`` choice 0-3 = k3 k5 k7 x; the supernet
has ``{i}.{j}.``, a standalone network ``{i}.`` only; ``*`` = weight, bias,
running_mean, running_var, num_batches_tracked as the module has them)::

    original                                spnas
    stem.0.weight, stem.1.*                 stem.0.weight, stem.1.*
    choice_block.{i}.{j}.cb_main.{m}.*      layers.{i}.{j}.main.{n}.{0 conv | 1 BN}.*
        k3 k5 k7: m = 0,1 | 3,4 | 5,6                     n = 0 | 1 | 2
        x:        m = 0,1 | 2,3 | 5,6 | 7,8 | 10,11 | 12,13    n = 0 .. 5
    choice_block.{i}.{j}.cb_proj.{m}.*      layers.{i}.{j}.proj.{n}.{0 | 1}.*   (stride 2)
                  m = 0,1 | 2,3                           n = 0 | 1
    last_conv.0.weight, last_conv.1.*       head.0.0.weight, head.0.1.*
    classifier.weight                       head.3.weight

(the original's ReLUs sit at the indices the table skips.) Everything else
is read from the file: the kind (keys ``choice_block.0.0.*``: a supernet;
``choice_block.0.cb_main.*``: a network), the classes (rows of
``classifier.weight``), the layout (layer 0 has ``cb_proj``, i.e. stride 2,
only in the ``--resize`` = imagenet layout) and a network's path (``x``:
``cb_main.0`` is a 3x3 depthwise conv; else the kernel of ``cb_main.3``).
Then every key and shape is checked against the spnas network; anything that
does not fit is one ``SpnasError`` naming the key. Only 20-layer files
import: the original's ``last_conv`` always takes 640 channels, so its
``--layers N < 20`` networks do not run. A ``module.`` prefix on every key
(``nn.DataParallel``) is dropped.

The checkpoint says the data was CIFAR-10 with ``val_size`` 0: the original
trained on all 50,000 training images, so no split is held out of it.
``spnas search`` then needs ``--val_size N`` and warns that the scoring split
holds images the supernet trained on.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from spnas.arch import Arch
from spnas.config import DataConfig, ImportReferenceConfig, RetrainConfig, SupernetConfig
from spnas.engine.checkpoint import FORMAT, UNREADABLE, save_checkpoint, unreadable_reason
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.spaces import make_space
from spnas.spaces.spos import KERNELS, TOKENS, WIDTHS, XCEPTION, SposNet, SposSupernet

REFERENCE_CODE = "ShunLu91/Single-Path-One-Shot-NAS"
CONV_AT = {"k": (0, 3, 5), "x": (0, 2, 5, 7, 10, 12), "proj": (0, 2)}  # its BN is at +1
RENAMED = (("stem.", "stem."), ("head.0.", "last_conv."), ("head.3.", "classifier."))
_UNIT_KEY = re.compile(r"^layers\.(\d+)\.(?:(\d+)\.)?(main|proj)\.(\d+)\.([01])\.(.+)$")
_BLOCK = re.compile(r"^choice_block\.(\d+)\.")


@dataclass
class Reference:
    """What a file of the original code holds."""

    kind: str                   # "supernet" | "standalone"
    layout: str                 # "cifar" | "imagenet" (the original's --resize)
    num_classes: int
    arch: Arch | None           # a standalone network's path


def reference_key(key: str, arch: Arch | None = None) -> str:
    """The original's name of the spnas state-dict key ``key`` (``arch``: a network's path)."""
    for ours, theirs in RENAMED:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    m = _UNIT_KEY.match(key)
    if not m:
        raise ValueError(f"{key} has no counterpart in the original code")
    layer, choice, part, n, bn, rest = m.groups()
    if choice is not None:
        c = int(choice)
    elif arch is not None:
        c = arch[int(layer)]
    else:
        raise ValueError(f"{key} is a key of a standalone network: pass its arch")
    block = "proj" if part == "proj" else "x" if c == XCEPTION else "k"
    unit = f"choice_block.{layer}." + (f"{choice}." if choice is not None else "")
    return f"{unit}cb_{part}.{CONV_AT[block][int(n)] + int(bn)}.{rest}"


def read_state(src: Path) -> dict[str, torch.Tensor]:
    """The file's state_dict (``weights_only``), or one clear error."""
    if not src.is_file():
        what = "is a folder" if src.is_dir() else "not found"
        raise SpnasError(f"{src} {what}; give the .pth file the original code saved")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        raise SpnasError(f"{src} is not a readable torch file ({unreadable_reason(e)[:160]})") from None
    if not isinstance(state, dict):
        raise SpnasError(f"{src} holds a {type(state).__name__}, not a state_dict")
    if state.get("format") == FORMAT:
        raise SpnasError(f"{src} is already an spnas checkpoint; use it as it is")
    if isinstance(state.get("state_dict"), dict):  # {"state_dict": ..., "epoch": ...}
        state = state["state_dict"]
    for k, v in state.items():
        if not isinstance(k, str):
            raise SpnasError(f"{src} is not a state_dict: its key {k!r} is not text (a "
                             "parameter name)")
        if not isinstance(v, torch.Tensor):
            raise SpnasError(f"{src} is not a state_dict: its entry {k!r} is a "
                             f"{type(v).__name__}, not a tensor")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise SpnasError(f"{src}: {k} holds NaN or infinite values (a run that diverged, "
                             "or a damaged file); import one saved before that")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shape(t) -> str:
    if not isinstance(t, torch.Tensor):
        return f"none (a {type(t).__name__}, not a tensor)"
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _get(state: dict, key: str, src: Path) -> torch.Tensor:
    if key not in state:
        raise SpnasError(f"{src}: key {key} is missing")
    return state[key]


def describe(state: dict[str, torch.Tensor], src: Path) -> Reference:
    """Kind, layout, classes and (for a network) path, read from the keys and shapes."""
    if any(k.startswith("choice_block.0.0.") for k in state):
        kind, unit0 = "supernet", "choice_block.0.0."
    elif any(k.startswith("choice_block.0.cb_main.") for k in state):
        kind, unit0 = "standalone", "choice_block.0."
    else:
        some = ", ".join(list(state)[:3]) or "none"
        raise SpnasError(f"{src} is not a state_dict of the original SPOS code: it has no "
                         "choice_block.0.0.* (supernet) or choice_block.0.cb_main.* (network) "
                         f"keys (its first keys: {some})")
    layers = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if layers != list(range(len(WIDTHS))):
        raise SpnasError(f"{src} holds {len(layers)} choice blocks (indices {layers[0]}.."
                         f"{layers[-1]}); only {len(WIDTHS)}-layer files import: the original's "
                         f"last_conv always takes {WIDTHS[-1]} channels, so only --layers "
                         f"{len(WIDTHS)} builds a network that runs")
    layout = "imagenet" if f"{unit0}cb_proj.0.weight" in state else "cifar"
    classifier = _get(state, "classifier.weight", src)
    if classifier.dim() != 2:
        raise SpnasError(f"{src}: classifier.weight has shape {_shape(classifier)}, expected "
                         "[classes, 1024]")
    arch = infer_path(state, layout, src) if kind == "standalone" else None
    return Reference(kind, layout, classifier.shape[0], arch)


def infer_path(state: dict[str, torch.Tensor], layout: str, src: Path) -> Arch:
    """A standalone network's choices: x has a 3x3 first conv, else cb_main.3's kernel."""
    choices: list[int] = []
    for i in range(len(WIDTHS)):
        first = _get(state, f"choice_block.{i}.cb_main.0.weight", src)
        if not isinstance(first, torch.Tensor) or first.dim() != 4:
            raise SpnasError(f"{src}: choice_block.{i}.cb_main.0.weight has shape "
                             f"{_shape(first)}; expected a convolution weight (4 dimensions)")
        if first.shape[-1] == 3:
            choices.append(XCEPTION)
            continue
        dw = _get(state, f"choice_block.{i}.cb_main.3.weight", src)
        k = dw.shape[-1]
        if dw.dim() != 4 or k not in KERNELS[:XCEPTION]:
            raise SpnasError(f"{src}: choice_block.{i}.cb_main.3.weight has shape {_shape(dw)}; "
                             "expected a depthwise kernel of 3x3, 5x5 or 7x7")
        choices.append(KERNELS.index(k))
    return Arch(make_space("spos", layout), tuple(choices))


def check_expectations(ref: Reference, src: Path, resize: bool | None,
                       classes: int | None) -> None:
    """``--resize`` / ``--no-resize`` and ``--classes``, when given, must fit the file."""
    if resize is not None and resize != (ref.layout == "imagenet"):
        found = ("the --resize (imagenet) layout: layer 0 has stride 2 (cb_proj)"
                 if ref.layout == "imagenet" else "the CIFAR layout: layer 0 has stride 1 (no cb_proj)")
        raise SpnasError(f"{'--resize' if resize else '--no-resize'} was given, but {src} is "
                         f"in {found}; drop the flag")
    if classes is not None and classes != ref.num_classes:
        raise SpnasError(f"--classes {classes} was given, but {src} classifies "
                         f"{ref.num_classes} classes (classifier.weight has "
                         f"{ref.num_classes} rows)")


def convert(state: dict[str, torch.Tensor], ref: Reference, src: Path) -> SposSupernet | SposNet:
    """The spnas network holding the file's tensors; every key and shape checked."""
    net: SposSupernet | SposNet
    if ref.arch is None:
        net = SposSupernet(make_space("spos", ref.layout), ref.num_classes)
    else:
        net = SposNet(ref.arch, ref.num_classes)
    own = net.state_dict()
    names = {reference_key(k, ref.arch): k for k in own}
    what = f"the original's {ref.kind} ({ref.layout} layout)"
    missing = [r for r in names if r not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SpnasError(f"{src}: key {missing[0]} of {what} is missing{more}; expected "
                         f"shape {_shape(own[names[missing[0]]])}")
    extra = [k for k in state if k not in names]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise SpnasError(f"{src}: unexpected key {extra[0]}{more}; {what} has no such tensor")
    for r, k in names.items():
        if state[r].shape != own[k].shape:
            raise SpnasError(f"{src}: {r} has shape {_shape(state[r])}, {what} needs "
                             f"{_shape(own[k])}")
    net.load_state_dict({k: state[r] for r, k in names.items()})
    return net


def restrict_choices(net: SposSupernet, num_choices: int) -> SposSupernet:
    """The supernet of the first ``num_choices`` blocks only (those the original trained)."""
    if num_choices == len(TOKENS):
        return net
    small = SposSupernet(make_space("spos", net.spec.layout, num_choices=num_choices),
                         net.num_classes)
    own = small.state_dict()
    small.load_state_dict({k: v for k, v in net.state_dict().items() if k in own})
    return small


def _config(ref: Reference, model: SupernetConfig | RetrainConfig) -> dict:
    """A TrainConfig-shaped record: CIFAR-10, the layout's --resize, no held-out split."""
    data = DataConfig(dataset="cifar10", val_size=0, resize=ref.layout == "imagenet")
    return {"data": dataclasses.asdict(data), "optim": None, "run": None,
            "model": dataclasses.asdict(model), "model_type": type(model).__name__}


def payload(ref: Reference, net: SposSupernet | SposNet, src: Path) -> dict:
    """The checkpoint (``checkpoint.save_checkpoint``) of an imported network."""
    arch: str | None
    model_cfg: SupernetConfig | RetrainConfig
    if ref.arch is None:
        if not isinstance(net, SposSupernet):
            raise TypeError(f"the original's supernet imports as an SposSupernet, not {type(net).__name__}")
        space, arch = net.spec, None
        model_cfg = SupernetConfig(layers=space.num_layers, num_choices=len(space.allowed[0]))
    else:
        space, arch = ref.arch.space, str(ref.arch)
        model_cfg = RetrainConfig(arch=arch)
    return {"kind": "supernet" if ref.arch is None else "child", "space": space.to_dict(),
            "arch": arch, "num_classes": ref.num_classes, "model_args": {},
            "model": net.state_dict(), "train_model": None, "optimizer": None, "step": 0,
            "epoch": 0, "config": _config(ref, model_cfg), "metrics": {}, "extra": {},
            "imported_from": {"path": str(src.resolve()), "code": REFERENCE_CODE,
                              "kind": ref.kind}}


@takes_config(ImportReferenceConfig, "src")
def import_reference(cfg: ImportReferenceConfig) -> dict:
    """Read ``cfg.src`` (a state_dict of the original code), write the spnas checkpoint
    ``cfg.out``; returns what was imported.

    ``resize`` / ``classes``: None = take the file's; otherwise the file must agree.
    ``num_choices``: a supernet keeps only its first K blocks (as trained with
    the original's ``--num_choices K``).
    """
    if not (cfg.src and cfg.out):
        raise SpnasError(f"{'--out DST.pt' if cfg.src else 'SRC.pth'} is required: "
                         "spnas import-reference SRC.pth --out DST.pt")
    src, out = Path(cfg.src).expanduser(), Path(cfg.out).expanduser()
    if out.is_dir():
        raise SpnasError(f"--out {out} is a folder; give the checkpoint file to write, e.g. "
                         f"--out {out / (src.stem + '.pt')}")
    if out.exists() and not cfg.overwrite:
        raise SpnasError(f"{out} already exists; pass --overwrite to replace it or choose --out")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise SpnasError(f"--out {out} is the file being imported; choose another --out")
    state = read_state(src)
    ref = describe(state, src)
    check_expectations(ref, src, cfg.resize, cfg.classes)
    if ref.arch is not None and cfg.num_choices != len(TOKENS):
        raise SpnasError("--num_choices is for a supernet; a standalone network has one path")
    net = convert(state, ref, src)
    if isinstance(net, SposSupernet):  # convert's network for a supernet (ref.arch is None)
        net = restrict_choices(net, cfg.num_choices)
    ckpt = payload(ref, net, src)
    save_checkpoint(out, ckpt)
    return {"src": str(src), "out": str(out), "kind": ckpt["kind"], "layout": ref.layout,
            "num_classes": ref.num_classes, "arch": ckpt["arch"],
            "num_choices": len(ckpt["space"]["allowed"][0]), "tensors": len(state)}


def format_import(r: dict) -> str:
    """What was imported, and the command that uses it next."""
    what = (f"supernet, {r['num_choices']} choices per layer" if r["kind"] == "supernet"
            else f"network {r['arch']}")
    if r["kind"] == "supernet":
        nxt = (f"spnas search --checkpoint {r['out']} --data_path DATA --val_size 5000  "
               "(the original trained on all 50,000 images: the scoring split is not held "
               "out of its training; search warns)")
    else:
        nxt = f"spnas evaluate --checkpoint {r['out']} --data_path DATA"
    return (f"imported {r['src']}: the original's {what} ({r['layout']} layout, "
            f"{r['num_classes']} classes, {r['tensors']} tensors)\n"
            f"wrote {r['out']}\nnext: {nxt}")
