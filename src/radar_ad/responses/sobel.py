"""The paper's response: Gaussian blur then Sobel gradient magnitude of the
predicted-noise map; features are its RMS (or L2 norm) over the whole map and
its largest window RMS."""

from __future__ import annotations

import torch

from ..features import FEATURE_NAMES, image_features
from ..registry import RESPONSES
from ..response import Response, ResponseOutput, response_map


@RESPONSES.register("sobel")
class SobelResponse(Response):
    """Gaussian blur (blur_ksize) then Sobel gradient magnitude (sobel_ksize) of
    the predicted noise; colour channels combine as the root sum of squares.

    Image features: the map's global RMS (``feature_norm: sum``: L2 norm) and
    its largest RMS over window x window windows (stride window_stride). Only
    sees structure a defect adds.
    """

    feature_names = FEATURE_NAMES

    def __call__(self, noise_map: torch.Tensor) -> ResponseOutput:
        inference = self.inference
        response = response_map(noise_map, inference.blur_ksize, inference.sobel_ksize)
        return ResponseOutput(response, image_features(response, inference.window, inference.window_stride,
                                                       inference.feature_norm))
