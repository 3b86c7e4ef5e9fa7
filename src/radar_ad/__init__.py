"""radar-ad: real-time, reconstruction-free anomaly detection and segmentation
with diffusion models (the RADAR method).

The public names load on first use (PEP 562): ``import radar_ad`` alone does
not import PyTorch, so the command line answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.9.0"

# public name -> the module that defines it
_LAZY = {"Prediction": ".outputs", "Radar": ".pipeline", "RadarConfig": ".config", "RadarError": ".errors"}

__all__ = ["Prediction", "Radar", "RadarConfig", "RadarError", "__version__"]

if TYPE_CHECKING:
    from .config import RadarConfig
    from .errors import RadarError
    from .outputs import Prediction
    from .pipeline import Radar


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'radar_ad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
