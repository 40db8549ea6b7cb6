"""``spnas export``: ONNX or TorchScript, loaded back and checked against PyTorch.

* ONNX: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter
  (PyTorch's default since 2.9; the TorchScript-based one is deprecated and
  slated for removal). Needs ``onnx`` and ``onnxscript``; the check runs the
  file in onnxruntime. All three are the optional extra ``spnas[onnx]``.
  The batch dimension is dynamic (input ``images``, output ``logits``).
* TorchScript: ``torch.jit.trace`` under ``no_grad`` (the SPOS units then run
  plain tensor ops instead of their autograd Functions, see spaces/common.py),
  loaded back with ``torch.jit.load``.

The exported file is written beside the target under a temporary name, loaded
back, and its outputs compared with the PyTorch network's on random inputs
and on real test images (normalised as in training). Only when the largest
absolute difference is within ``tolerance`` is it renamed into place; an
existing file is never replaced without ``overwrite``. ``out`` may name an
existing folder (or end with ``/``): the file is then written inside it, under
the checkpoint's name (``<name>.onnx``), as ``cp`` does; a folder is never
replaced.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from spnas.config import ExportConfig
from spnas.data.loading import build_transform, input_side, settings_input_side
from spnas.engine.checkpoint import checkpoint_space
from spnas.engine.counting import default_resolution
from spnas.errors import SpnasError
from spnas.fields import takes_config
from spnas.files import replaced_from_temp
from spnas.stages.evaluate import checkpoint_data, load_child, read_checkpoint_dataset

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# the endings of a file name that say its format: an --out ending in another format's is a mistake
ENDINGS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}
ONNX_HINT = ("pip install onnx onnxscript onnxruntime (or pip install -e '.[onnx]' in the spnas "
             "checkout)")
Runner = Callable[[torch.Tensor], torch.Tensor]


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        program = torch.onnx.export(net, (example,), dynamo=True, verbose=False,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    except ImportError as e:
        raise SpnasError(f"ONNX export needs {e.name or 'onnx and onnxscript'}: "
                         f"{ONNX_HINT}") from None
    if program is None:  # torch returns the program whenever dynamo=True
        raise SpnasError(f"torch {torch.__version__} made no ONNX program of the network")
    program.save(str(path))


def _load_onnx(path: Path) -> Runner:
    try:
        import onnxruntime
    except ImportError:
        raise SpnasError(f"checking the ONNX file needs onnxruntime: {ONNX_HINT}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _export_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
        traced = torch.jit.trace(net, example, check_trace=False)  # checked below, on more inputs
        torch.jit.save(traced, str(path))


def _load_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: module(x)


EXPORTERS = {"onnx": (_export_onnx, _load_onnx),
             "torchscript": (_export_torchscript, _load_torchscript)}


def export_target(checkpoint: Path, fmt: str, out: str | Path | None) -> Path:
    """The file to write: ``out``, or inside ``out`` when it is a folder, or beside the
    checkpoint (``best.pt`` -> ``best.onnx``)."""
    name = checkpoint.with_suffix(FORMATS[fmt]).name
    if not out:
        return checkpoint.with_name(name)
    given = Path(out).expanduser()
    if given.is_dir() or str(out).endswith(("/", os.sep)):
        return given / name
    for other, endings in ENDINGS.items():
        ending = next((e for e in endings if given.name.lower().endswith(e)), None)
        if other != fmt and ending:
            raise SpnasError(f"--out {out} ends in {ending}, the ending of {other} files, but "
                             f"--format is {fmt}; pass --format {other}, or an --out ending in "
                             f"{ENDINGS[fmt][0]}")
    return given


def check_inputs(ckpt: dict, images: int, data_path: str | None, seed: int = 0) -> dict:
    """Random inputs of the side the run's network took (the export is traced on them),
    and the first ``images`` test images normalised as the run did."""
    data = checkpoint_data(ckpt, data_path)
    inputs = {}
    if images:
        ds = read_checkpoint_dataset(ckpt, replace(data, download=False),  # checks never download
                                     ", or --check_images 0 to check on random inputs only")
        inputs["real images"] = build_transform(data, False).plain(ds.test_x[:images])
        res = input_side(data, ds.test_x)
    else:
        res = settings_input_side(data) or default_resolution(checkpoint_space(ckpt))
    gen = torch.Generator().manual_seed(seed)
    return {"random": torch.randn(3, 3, res, res, generator=gen) * 2, **inputs}


@torch.no_grad()
@takes_config(ExportConfig, "checkpoint")
def export_checkpoint(cfg: ExportConfig) -> dict:
    """Export a child checkpoint's network; returns the file and the largest differences."""
    fmt, out, tolerance = cfg.format, cfg.out, cfg.tolerance
    ckpt, net = load_child(cfg.checkpoint)
    target = export_target(Path(ckpt["path"]), fmt, out)
    if target.is_dir():
        raise SpnasError(f"{target} is a folder; give --out a file name, or a folder to "
                         "write into that holds no folder of that name")
    if target.exists() and target.resolve() == Path(ckpt["path"]).resolve():
        raise SpnasError(f"--out {target} is the checkpoint itself; choose another --out")
    if target.exists() and not cfg.overwrite:
        raise SpnasError(f"{target} already exists; pass --overwrite to replace it or choose --out")
    inputs = check_inputs(ckpt, cfg.check_images, cfg.data_path)
    export, load = EXPORTERS[fmt]
    with replaced_from_temp(target) as tmp:  # checked before it replaces anything
        export(net, inputs["random"][:2], tmp)
        run = load(tmp)
        diffs = {name: (run(x).float() - net(x)).abs().max().item() for name, x in inputs.items()}
        worst = max(diffs.values())
        if not worst <= tolerance:
            raise SpnasError(f"the {fmt} export differs from PyTorch by up to {worst:.3g} "
                             f"(> --tolerance {tolerance:g}); nothing was written")
    return {"file": str(target), "format": fmt, "arch": ckpt["arch"], "max_abs_diff": diffs,
            "tolerance": tolerance, "bytes": target.stat().st_size,
            "inputs": {k: list(v.shape) for k, v in inputs.items()}}


def format_export(r: dict) -> str:
    lines = [f"wrote {r['file']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB)"]
    lines += [f"  max |{r['format']} - PyTorch| on {name} {r['inputs'][name]}: {d:.3g}"
              for name, d in r["max_abs_diff"].items()]
    lines.append(f"  within the tolerance {r['tolerance']:g}")
    return "\n".join(lines)
