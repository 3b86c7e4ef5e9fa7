"""The segmentation response: what a defect does to the predicted noise,
learned from synthetic defects.

The hand-made responses measure the noise map against normal levels; on
stochastic textures (magnetic tiles) normal images differ in finish and
lighting more than a defect differs from its own surroundings, and those
levels cannot tell the two apart. This response learns the difference
instead: generic synthetic defects (:mod:`radar_ad.defects`: foreign texture
in Perlin-noise regions, pits, thin cracks, chipped borders) are pasted into
crops of the normal calibration images, the model's own one-step noise map
of each crop is computed, and a small dilated convolutional head is trained
to segment the defects from the noise map alone (DRAEM's idea, on the
single step's evidence rather than a reconstruction). Inference stays one
network evaluation per patch plus the head.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..config import RadarConfig
from ..defects import paste_defect
from ..features import SquareSums, window_max_features
from ..progress import progress_bar
from ..registry import RESPONSES
from ..response import NoiseOf, Response, gaussian_smooth, smoothing_radius, strided_quantiles

DILATIONS = (1, 2, 4, 8, 16)
DEFECTIVE_SHARE = 0.7  # of the synthetic crops; the rest stay normal
CROP_PATCHES = 3  # a crop is 3 x 3 patches (or the smallest image's side)
BATCH = 16
LEARNING_RATE = 2e-3
FOCAL_GAMMA = 2.0
NOISE_CHUNK = 64  # crops per noise_of call


class SegmentationHead(torch.nn.Module):
    """``(N, 1, H, W)`` noise of one channel -> ``(N, 1, H, W)`` defect
    logit: 3 x 3 convolutions dilated 1, 2, 4, 8, 16 (a 31 px reach on each
    side), batch norm (a fixed affine map in evaluation, so the output at a
    pixel depends on its neighbourhood only) and ReLU, then a 1 x 1
    convolution."""

    def __init__(self, width: int) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        previous = 1
        for dilation in DILATIONS:
            layers += [torch.nn.Conv2d(previous, width, 3, padding=dilation, dilation=dilation),
                       torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
            previous = width
        layers.append(torch.nn.Conv2d(width, 1, 1))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.layers(noise)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal binary cross-entropy (defects are a few per cent of the pixels)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    probability = torch.sigmoid(logits)
    right = torch.where(target > 0, probability, 1 - probability)
    return ((1 - right) ** gamma * bce).mean()


def train_head(head: torch.nn.Module, inputs: torch.Tensor, masks: torch.Tensor, steps: int, seed: int,
               progress: bool = False) -> torch.nn.Module:
    """Train ``head`` to segment ``masks`` ``(N, 1, h, w)`` from ``inputs``
    ``(N, C, h, w)``: focal loss, Adam with a cosine decay to 0, seeded
    batches of :data:`BATCH`. Returns it in evaluation mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    head.train()
    for step in progress_bar(range(steps), enabled=progress, desc="learning synthetic defects", unit="step",
                             leave=False):
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / steps))
        pick = torch.randint(len(inputs), (min(BATCH, len(inputs)),), generator=generator)
        loss = focal_loss(head(inputs[pick]), masks[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def synthetic_crops(images: Sequence[np.ndarray], n: int, size: int, rng: np.random.Generator,
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``n`` random ``size`` x ``size`` crops of the ``(C, H, W)`` images, a
    :data:`DEFECTIVE_SHARE` of them with a synthetic defect (from the
    channel mean, the change added to every channel): ``(crops, masks (n, 1,
    size, size) float)``."""
    crops, masks = [], []
    for _ in range(n):
        image = images[int(rng.integers(len(images)))]
        top = int(rng.integers(0, image.shape[1] - size + 1))
        left = int(rng.integers(0, image.shape[2] - size + 1))
        crop = image[:, top:top + size, left:left + size].astype(np.float64)
        mask = np.zeros((size, size), bool)
        if rng.random() < DEFECTIVE_SHARE:
            gray = crop.mean(0)
            other = images[int(rng.integers(len(images)))].mean(0)
            defective, mask = paste_defect(gray, other, rng)
            crop = np.clip(crop + (defective - gray)[None], 0, 1)
        crops.append(torch.from_numpy(crop.astype(np.float32)))
        masks.append(torch.from_numpy(mask))
    return crops, torch.stack(masks)[:, None].float()


@RESPONSES.register("segmentation")
class SegmentationResponse(Response):
    """P = sigmoid of a small dilated CNN on the predicted noise (the
    largest P over the channels), trained on generic synthetic defects
    pasted into the calibration images (seeded); map = Gaussian
    (segmentation_sigma px) of P; feature = the largest value of P's excess
    over normal_level (its high quantile on the calibration images), smoothed
    the same way.
    """

    feature_names = ("max_defect_excess",)
    learns_from_images = True
    head_: torch.nn.Module
    normal_level_: float

    def __init__(self, config: RadarConfig) -> None:
        super().__init__(config)
        self.seed = config.seed
        self.patch_size = config.patch_size

    def learn(self, images: Sequence[np.ndarray], noise_of: NoiseOf, progress: bool = False) -> SegmentationResponse:
        inference = self.inference
        size = min(CROP_PATCHES * self.patch_size, *(min(image.shape[1:]) for image in images))
        rng = np.random.default_rng([self.seed, 104_729])
        crops, masks = synthetic_crops(images, inference.segmentation_examples, size, rng)
        noise = torch.cat([noise_of(crops[start:start + NOISE_CHUNK]).float()
                           for start in range(0, len(crops), NOISE_CHUNK)])
        del crops
        # one head for every channel: each channel's noise is an example of its own
        channels = int(noise.shape[1])
        noise = noise.reshape(-1, 1, size, size)
        masks = masks.repeat_interleave(channels, 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = SegmentationHead(inference.segmentation_width)
        self.head_ = train_head(head, noise, masks, inference.segmentation_steps, self.seed, progress)
        return self

    def fit(self, noise_maps: Sequence[torch.Tensor]) -> SegmentationResponse:
        if not hasattr(self, "head_"):
            raise ValueError("the segmentation response learns from images first (Response.learn)")
        # streamed: only the quantile's sample of the probabilities is kept
        count = sum(int(noise.shape[0] * noise.shape[-2] * noise.shape[-1]) for noise in noise_maps)
        probabilities = (self._probability(noise) for noise in noise_maps)
        self.normal_level_ = strided_quantiles(probabilities, count, self.pixel_quantile)[0] if count else 0.0
        return self

    @property
    def needs_fit(self) -> bool:
        return True

    @torch.inference_mode()
    def _probability(self, noise_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` noise -> ``(B, 1, H, W)`` float64 defect probability
        (the largest over the channels)."""
        batch, channels, height, width = noise_map.shape
        head = self.head_.to(noise_map.device)
        logits = head(noise_map.float().reshape(batch * channels, 1, height, width))
        return torch.sigmoid(logits.double()).reshape(batch, channels, height, width).amax(1, keepdim=True)

    def context(self, size: tuple[int, int]) -> tuple[int, int]:
        radius = smoothing_radius(self.inference.segmentation_sigma, size)
        return sum(DILATIONS) + radius, radius

    def windows(self) -> tuple[int, int]:
        # the image feature is the map's largest value: a defect of a few
        # pixels is diluted by any larger window
        return 1, 1

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, 2, h, w)``: the probability, and its excess over the normal
        level smoothed like the map."""
        probability = self._probability(noise_map)
        excess = gaussian_smooth((probability - self.normal_level_).clamp_min(0),
                                 self.inference.segmentation_sigma, size)
        return torch.cat([probability, excess], 1)

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return gaussian_smooth(maps[:, :1], self.inference.segmentation_sigma, size)[:, 0].float()

    def features(self, sums: SquareSums) -> torch.Tensor:
        return window_max_features(sums)[:, 1:]

    # the head's weights travel in the model's JSON as a base64 safetensors
    # blob (tensors only, nothing that runs code), like every other
    # response's statistics
    def state(self) -> dict[str, Any]:
        weights = {k: v.detach().cpu().contiguous() for k, v in self.head_.state_dict().items()}
        return {"normal_level": self.normal_level_, "head": base64.b64encode(save_tensors(weights)).decode("ascii")}

    @classmethod
    def from_state(cls, config: RadarConfig, state: Any) -> SegmentationResponse:
        response = cls(config)
        if not isinstance(state, dict) or set(state) != {"normal_level", "head"}:
            raise ValueError("response_statistics must be an object with normal_level, head (the segmentation "
                             "head's weights)")
        try:
            response.normal_level_ = float(state["normal_level"])
            weights = load_tensors(base64.b64decode(str(state["head"]), validate=True))
            head = SegmentationHead(config.inference.segmentation_width)
            head.load_state_dict(weights)
        except (ValueError, RuntimeError, SafetensorError) as exc:
            raise ValueError(f"response_statistics: the segmentation head cannot be read: {exc}") from None
        if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
            raise ValueError("response_statistics: the segmentation head holds NaN or infinite weights")
        response.head_ = head.eval()
        return response
