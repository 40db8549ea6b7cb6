"""spnas: single-path neural architecture search (SPOS and Single-Path NAS) for PyTorch.

The package is its API: each stage is one call taking its stage dataclass::

    import spnas
    spnas.train_supernet(spnas.SupernetStage())          # spnas train
    spnas.search(spnas.SearchRunConfig(checkpoint="checkpoints/spos_supernet"))
    spnas.retrain(spnas.RetrainStage())                  # spnas retrain
    spnas.evaluate(spnas.EvaluateConfig(checkpoint="checkpoints/retrain"))
    spnas.pipeline("recipes/smoke.yaml", "runs/smoke", overrides={"data_path": "data"})

Layout (the flow of data): ``config``, ``fields``, ``arch``, ``runtime``,
``files`` (settings, architectures, processes and devices, safe writes) ->
``data/`` (datasets, augmentation, device loading) -> ``spaces/`` (the SPOS and
MBConv spaces) -> ``engine/`` (the trainer, evaluation, checkpoints, logs,
counting and latency, the search algorithms) -> ``stages/`` (one module per
command) -> ``cli/``.
"""
from .arch import Arch, ArchError, SpaceSpec
from .config import (
    CurvesConfig,
    EvaluateConfig,
    ExportConfig,
    ImportReferenceConfig,
    ProfileConfig,
    SearchRunConfig,
)
from .defaults import FinetuneStage, RetrainStage, SuperkernelStage, SupernetStage
from .engine.signals import Terminated
from .errors import SpnasError

__version__ = "0.2.0"

_STAGES = {  # name -> (module, attribute), imported on first use (torch-heavy)
    "train_supernet": ("spnas.stages.train", "train_supernet"),
    "search": ("spnas.stages.search", "search_supernet"),
    "superkernel": ("spnas.stages.superkernel", "search_superkernel"),
    "retrain": ("spnas.stages.retrain", "retrain"),
    "finetune": ("spnas.stages.finetune", "finetune"),
    "evaluate": ("spnas.stages.evaluate", "evaluate_checkpoint"),
    "export": ("spnas.stages.export", "export_checkpoint"),
    "profile": ("spnas.stages.profile", "profile"),
    "import_reference": ("spnas.stages.import_reference", "import_reference"),
    "curves": ("spnas.engine.curves", "compare_runs"),
    "pipeline": ("spnas.stages.pipeline", "pipeline"),
}


def __getattr__(name: str):
    if name in _STAGES:
        import importlib
        module, attr = _STAGES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'spnas' has no attribute {name!r}")


__all__ = ["Arch", "ArchError", "CurvesConfig", "EvaluateConfig", "ExportConfig", "FinetuneStage",
           "ImportReferenceConfig", "ProfileConfig", "RetrainStage", "SearchRunConfig",
           "SpaceSpec", "SpnasError", "SuperkernelStage", "SupernetStage", "Terminated",
           "__version__",
           *_STAGES]
