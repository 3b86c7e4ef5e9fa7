"""radar-ad: real-time, reconstruction-free anomaly detection and segmentation
with diffusion models (the RADAR method)."""

__version__ = "0.8.0"

from .config import RadarConfig  # noqa: E402
from .errors import RadarError  # noqa: E402
from .pipeline import Prediction, Radar  # noqa: E402

__all__ = ["Prediction", "Radar", "RadarConfig", "RadarError", "__version__"]
