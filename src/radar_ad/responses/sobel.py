"""The paper's response: Gaussian blur then Sobel gradient magnitude of the
predicted-noise map; features are its RMS (or L2 norm) over the whole map and
its largest window RMS."""

from __future__ import annotations

import torch

from ..features import FEATURE_NAMES, SquareSums, rms_features
from ..filters import blur_sobel_map
from ..registry import RESPONSES
from ..response import Response


@RESPONSES.register("sobel")
class SobelResponse(Response):
    """Gaussian blur (blur_ksize) then Sobel gradient magnitude (sobel_ksize) of
    the predicted noise; colour channels combine as the root sum of squares.

    Image features: the map's global RMS (``feature_norm: sum``: L2 norm) and
    its largest RMS over window x window windows (stride window_stride). Only
    sees structure a defect adds.
    """

    feature_names = FEATURE_NAMES

    def context(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.inference.blur_ksize // 2 + self.inference.sobel_ksize // 2, 0

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return blur_sobel_map(noise_map, self.inference.blur_ksize, self.inference.sobel_ksize)[:, None]

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return maps[:, 0]

    def features(self, sums: SquareSums) -> torch.Tensor:
        return rms_features(sums, self.inference.feature_norm)
