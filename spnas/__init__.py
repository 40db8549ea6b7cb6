"""spnas: single-path neural architecture search (SPOS and Single-Path NAS) for PyTorch."""
from .arch import Arch, ArchError, SpaceSpec
from .errors import SpnasError

__version__ = "0.1.0"
__all__ = ["Arch", "ArchError", "SpaceSpec", "SpnasError", "__version__"]
