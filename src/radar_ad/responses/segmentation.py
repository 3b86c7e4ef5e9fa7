"""The segmentation response: a head that sees what DRAEM's discriminative
network sees, on the single step's evidence, learned from synthetic defects.

The hand-made responses measure one noise map against normal levels; on
stochastic textures normal images differ in finish and lighting more than a
defect differs from its own surroundings, and those levels cannot tell the
two apart. This response learns the difference instead. Its input, per
pixel of the finest level: the image itself, and for every pyramid level the
predicted noise and the one-step repair x0_hat - x of the same evaluation
(coarse levels upsampled), each channel standardised by its spread on
normal images, and the log local energy of every level's noise (the
evidence of the two-sided response: a defect that removes texture leaves
a deficit there). Generic synthetic defects (:mod:`radar_ad.defects`: changes
of brightness, contrast, blur and texture in irregular regions from a few
pixels to a third of the image, crisp to soft, faint to strong) are pasted
into the normal calibration images, the model's own evidence of each copy
is computed, and a small U-Net-shaped head (two poolings) is trained to
segment the defects with a focal loss. Inference stays one network
evaluation per patch and level, plus the head.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from ..config import MAX_STEPS, RadarConfig
from ..defects import KINDS, VISIBLE, paste_into
from ..filters import gaussian_smooth, local_energy, smoothing_radius
from ..noise_map import Evidence
from ..progress import progress_bar
from ..pyramid import upsample_region
from ..registry import RESPONSES
from ..response import EvidenceOf, EvidenceResponse, ResponseOutput
from ..settings import described, int_in, require, settings

NORMAL_SHARE = 0.25  # of the crops the head learns from: from normal images
NORMAL = "normal"  # the kind of a crop without a defect
CROPS_PER_EXAMPLE = 2  # one around the defect, one anywhere
BATCH = 12
LEARNING_RATE = 2e-3
FOCAL_GAMMA = 2.0
STATISTICS_IMAGES = 16  # normal images whose evidence sets the input standardisation
# Tiles of the head's output on a large image, and the context each needs
# (the head's reach, a multiple of its pooling factor 4 so tiles stay aligned).
TILE = 256
TILED_ABOVE = 512 * 512
HEAD_REACH = 32
# Synthetic defective images the head learns from, and its crops' pixels in
# all (crops of evidence are held at once, float16, a few channels each).
MAX_EXAMPLES = 20_000
MAX_HEAD_PIXELS = 2**26
MAX_WIDTH = 256
MAX_CROP = 1024


def stack_channels(channels: int, levels: int) -> int:
    """The head's input channels: the image, then per level the noise and
    repair of each channel and the local noise energy."""
    return channels * (1 + 2 * levels) + levels


def level_energies(evidence: Evidence, window: int) -> list[torch.Tensor]:
    """Per level, ``(B, 1, h, w)`` float32: the log local energy of the
    predicted noise (:func:`~radar_ad.filters.local_energy`, ``window``
    px), at the level's own resolution."""
    return [local_energy(noise, window)[:, None].float() for noise in evidence.noise]


def evidence_stack(evidence: Evidence, energies: Sequence[torch.Tensor], rows: tuple[int, int] | None = None,
                   cols: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, K, r, c)`` float32: the image, then each level's noise, repair
    and local noise energy upsampled to the finest level, for the region
    ``rows`` x ``cols`` of the finest level (default: all of it)."""
    height, width = evidence.size
    rows, cols = rows or (0, height), cols or (0, width)
    parts = [evidence.image[..., rows[0]:rows[1], cols[0]:cols[1]].float()]
    for noise, repair, energy in zip(evidence.noise, evidence.repair, energies):
        parts += [upsample_region(level.float(), (height, width), rows, cols) for level in (noise, repair, energy)]
    return torch.cat(parts, 1)


class SegmentationHead(torch.nn.Module):
    """``(N, K, H, W)`` evidence stack -> ``(N, 1, H, W)`` defect logit.

    Each input channel is standardised by fixed numbers (``shift``,
    ``scale``: its mean and spread on normal images); then two 3 x 3
    convolutions at full, half and quarter resolution (batch norm, a fixed
    affine map in evaluation, and ReLU), bilinear upsampling, skip
    connections, and a 1 x 1 convolution: a reach of about 20 px at full
    resolution, beside the coarse levels' own context. Its weights and
    activations are laid out channels-last (what the CPU's convolutions run
    fastest on); the state dict holds the same numbers either way."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.shift: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("shift", torch.zeros(in_channels))
        self.register_buffer("scale", torch.ones(in_channels))

        def block(inputs: int, outputs: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(torch.nn.Conv2d(inputs, outputs, 3, padding=1),
                                       torch.nn.BatchNorm2d(outputs), torch.nn.ReLU())

        self.down_full = torch.nn.Sequential(block(in_channels, width), block(width, width))
        self.down_half = torch.nn.Sequential(block(width, 2 * width), block(2 * width, 2 * width))
        self.down_quarter = torch.nn.Sequential(block(2 * width, 2 * width), block(2 * width, 2 * width))
        self.up_half = block(4 * width, 2 * width)
        self.up_full = block(3 * width, width)
        self.out = torch.nn.Conv2d(width, 1, 1)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented, not in the stubs

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        doubled = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return doubled[..., :like.shape[-2], :like.shape[-1]]

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        x = ((stack - self.shift.view(1, -1, 1, 1)) / self.scale.view(1, -1, 1, 1)).contiguous(
            memory_format=torch.channels_last)
        full = self.down_full(x)
        half = self.down_half(F.max_pool2d(full, 2, ceil_mode=True))
        quarter = self.down_quarter(F.max_pool2d(half, 2, ceil_mode=True))
        half = self.up_half(torch.cat([half, self._up(quarter, half)], 1))
        return self.out(self.up_full(torch.cat([full, self._up(half, full)], 1)))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal binary cross-entropy (defects are a few per cent of the pixels)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    probability = torch.sigmoid(logits)
    right = torch.where(target > 0, probability, 1 - probability)
    return ((1 - right) ** gamma * bce).mean()


def train_head(head: torch.nn.Module, inputs: torch.Tensor, masks: torch.Tensor, steps: int, seed: int,
               progress: bool = False) -> torch.nn.Module:
    """Train ``head`` to segment ``masks`` ``(N, 1, h, w)`` from ``inputs``
    ``(N, K, h, w)`` (any float type): focal loss, Adam with a cosine decay
    to 0, seeded batches of :data:`BATCH`. Returns it in evaluation mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    head.train()
    for step in progress_bar(range(steps), enabled=progress, desc="learning synthetic defects", unit="step",
                             leave=False):
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / steps))
        pick = torch.randint(len(inputs), (min(BATCH, len(inputs)),), generator=generator)
        loss = focal_loss(head(inputs[pick].float()), masks[pick].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


@dataclass
class Examples:
    """What the head learns from: ``inputs`` ``(N, K, c, c)`` float16
    evidence crops, ``masks`` ``(N, 1, c, c)`` bool, each crop's defect kind
    (``"normal"`` without one) and the input standardisation (shift, scale)."""

    inputs: torch.Tensor
    masks: torch.Tensor
    kinds: list[str]
    standardisation: tuple[torch.Tensor, torch.Tensor]


def _crop_at(size: tuple[int, int], crop: int, rng: np.random.Generator,
             around: np.ndarray | None = None) -> tuple[int, int]:
    """The top-left corner of a ``crop`` square inside ``size``: one that
    holds a random pixel of ``around`` (a bool mask) when given, else anywhere."""
    height, width = size
    if around is not None and around.any():
        ys, xs = np.nonzero(around)
        pick = int(rng.integers(len(ys)))
        top = int(ys[pick]) - int(rng.integers(crop))
        left = int(xs[pick]) - int(rng.integers(crop))
    else:
        top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
    return int(np.clip(top, 0, height - crop)), int(np.clip(left, 0, width - crop))


@settings
class SegmentationSettings:
    """The segmentation head and the synthetic defects it learns from."""

    section: ClassVar[str] = "inference.responses.segmentation"
    examples: int = described(480, "Calibration images it learns from, three quarters of them with a synthetic "
                              "defect (two crops each), the rest as they are.")
    steps: int = described(800, "Training steps of the head (12 crops each, Adam, cosine decay).")
    width: int = described(16, "Channels of the head at full resolution (twice that at half and quarter).")
    crop: int = described(96, "Side (px) of the crops it learns from (at most the smallest image's side).")
    sigma: float = described(2.0, "Gaussian smoothing (px) of its map (0: none).")

    def validate(self) -> None:
        section = self.section
        int_in(self.examples, 1, MAX_EXAMPLES, f"{section}.examples")
        int_in(self.steps, 1, MAX_STEPS, f"{section}.steps")
        int_in(self.width, 1, MAX_WIDTH, f"{section}.width")
        int_in(self.crop, 8, MAX_CROP, f"{section}.crop")
        require(self.examples * self.crop**2 <= MAX_HEAD_PIXELS, f"{section}.examples",
                f"at most {MAX_HEAD_PIXELS} / crop^2 (the head's examples are held in memory at once)",
                self.examples)
        require(0 <= self.sigma <= 64, f"{section}.sigma", "in [0, 64] (0: no smoothing)", self.sigma)


@RESPONSES.register("segmentation")
class SegmentationResponse(EvidenceResponse):
    """P = sigmoid of a small U-Net-shaped head on the image and every
    pyramid level's predicted noise, one-step repair and log local noise
    energy (energy_window px; upsampled to the finest level, standardised on
    normal images), trained on generic
    synthetic defects pasted into normal calibration images (seeded);
    map = Gaussian (sigma px) of P; feature = the map's largest value.
    """

    response_feature_names = ("max_defect_probability",)
    candidate = True
    Settings = SegmentationSettings
    settings: SegmentationSettings
    head_: SegmentationHead

    def __init__(self, config: RadarConfig, scales: Sequence[int] | None = None,
                 image_score: str | None = None) -> None:
        super().__init__(config, scales, image_score)
        self.seed = config.seed
        self.channels_ = 1 if config.data.grayscale else 3

    def _new_head(self) -> SegmentationHead:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return SegmentationHead(stack_channels(self.channels_, len(self.scales)), self.settings.width)

    def learn(self, images: Sequence[np.ndarray], evidence_of: EvidenceOf,
              progress: bool = False) -> SegmentationResponse:
        own = self.settings
        self.channels_ = int(images[0].shape[0])
        crop = min(own.crop, *(min(image.shape[1:]) for image in images))
        rng = np.random.default_rng([self.seed, 104_729])
        inputs: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        kinds: list[str] = []

        def keep(stack: torch.Tensor, mask: np.ndarray, around: np.ndarray | None, kind: str) -> None:
            top, left = _crop_at(mask.shape, crop, rng, around)
            inputs.append(stack[:, top:top + crop, left:left + crop].half())
            masks.append(torch.from_numpy(mask[top:top + crop, left:left + crop]))
            kinds.append(kind)

        # Normal crops first, the input standardisation's images' and then the
        # normal examples' (every draw made in the order of one example at a
        # time); an image drawn more than once has its evidence computed once.
        statistics = [int(i) for i in rng.permutation(len(images))[:STATISTICS_IMAGES]]
        n_normal = round(NORMAL_SHARE * own.examples)
        normal = [(i, _crop_at(images[i].shape[1:], crop, rng)) for i in statistics]
        for _ in range(n_normal):
            i = int(rng.integers(len(images)))
            normal.append((i, _crop_at(images[i].shape[1:], crop, rng)))
        drawn: dict[int, list[int]] = {}
        for position, (i, _) in enumerate(normal):
            drawn.setdefault(i, []).append(position)
        crops: dict[int, torch.Tensor] = {}
        sample: dict[int, torch.Tensor] = {}
        for i, positions in drawn.items():
            stack = self._stack(self._evidence(evidence_of, images[i]))[0]
            if i in statistics:
                sample[i] = stack.flatten(1)[:, ::7]
            for position in positions:
                top, left = normal[position][1]
                crops[position] = stack[:, top:top + crop, left:left + crop].half()
        inputs += [crops[position] for position in range(len(normal))]
        masks += [torch.zeros((crop, crop), dtype=torch.bool)] * len(normal)
        kinds += [NORMAL] * len(normal)
        pooled = torch.cat([sample[i] for i in statistics], 1).double()
        standardisation = pooled.mean(1).float(), pooled.std(1).clamp_min(1e-6).float()
        for _ in progress_bar(range(n_normal, own.examples), enabled=progress, initial=n_normal,
                              total=own.examples, desc="synthetic defects", unit="img", leave=False):
            image = images[int(rng.integers(len(images)))]
            other = images[int(rng.integers(len(images)))]
            kind = KINDS[int(rng.integers(len(KINDS)))]
            defective, mask = paste_into(image, other, rng, kind, visible=VISIBLE)
            stack = self._stack(self._evidence(evidence_of, defective))[0]
            for crop_index in range(CROPS_PER_EXAMPLE):
                keep(stack, mask, mask if crop_index == 0 else None, kind)
        self.examples_ = Examples(torch.stack(inputs), torch.stack(masks)[:, None], kinds, standardisation)
        self.head_ = self._trained(self.examples_, own.steps, progress)
        return self

    def _trained(self, examples: Examples, steps: int, progress: bool = False,
                 without: Sequence[str] = ()) -> SegmentationHead:
        head = self._new_head()
        head.shift.copy_(examples.standardisation[0])
        head.scale.copy_(examples.standardisation[1])
        keep = torch.tensor([kind not in without for kind in examples.kinds])
        train_head(head, examples.inputs[keep], examples.masks[keep], steps, self.seed, progress)
        return head

    def without(self, kinds: Sequence[str]) -> SegmentationResponse:
        """A twin that learned from the same examples but the defects of
        ``kinds`` (in a quarter of the steps): what the self-validation
        scores on defects of those kinds, so the head is judged on kinds of
        change it never saw, as a real defect would be."""
        if not hasattr(self, "examples_"):
            raise ValueError("the segmentation response learns from images first (learn)")
        twin = SegmentationResponse(self.config, self.scales, self.image_score)
        twin.channels_ = self.channels_
        twin.head_ = twin._trained(self.examples_, max(1, self.settings.steps // 4), without=kinds)
        return twin

    def _evidence(self, evidence_of: EvidenceOf, image: np.ndarray) -> Evidence:
        return evidence_of([torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))]).select(self.scales)

    def _stack(self, evidence: Evidence) -> torch.Tensor:
        return evidence_stack(evidence, level_energies(evidence, self.inference.energy_window))

    @torch.inference_mode()
    def _probability(self, evidence: Evidence, energies: list[torch.Tensor], rows: tuple[int, int],
                     cols: tuple[int, int]) -> torch.Tensor:
        """``(B, 1, r, c)`` float64 defect probability of a region, one
        image at a time (so that the head's activations of one image stay in
        the CPU's caches)."""
        head = self.head_.to(evidence.image.device)
        stack = evidence_stack(evidence, energies, rows, cols)
        return torch.cat([torch.sigmoid(head(stack[i:i + 1]).double()) for i in range(len(stack))])

    def respond(self, evidence: Evidence) -> ResponseOutput:
        """The smoothed probability map, computed in aligned tiles (with the
        head's reach and the smoothing radius around each) on a large image,
        so memory stays near one tile's whatever the image size."""
        if not hasattr(self, "head_"):
            raise ValueError("the segmentation response learns from images first (learn)")
        evidence = evidence.select(self.scales)
        energies = level_energies(evidence, self.inference.energy_window)
        height, width = evidence.size
        sigma = self.settings.sigma
        if height * width <= TILED_ABOVE:
            probability = self._probability(evidence, energies, (0, height), (0, width))
            anomaly = gaussian_smooth(probability, sigma)[:, 0].float()
            return ResponseOutput(anomaly, anomaly.flatten(1).amax(1, keepdim=True).double())
        halo = HEAD_REACH + -(-smoothing_radius(sigma, (height, width)) // 4) * 4
        anomaly = torch.empty(len(evidence), height, width, dtype=torch.float32, device=evidence.image.device)
        for top in range(0, height, TILE):
            bottom, r0 = min(top + TILE, height), max(0, top - halo)
            r1 = min(height, top + TILE + halo)
            for left in range(0, width, TILE):
                right, c0 = min(left + TILE, width), max(0, left - halo)
                c1 = min(width, left + TILE + halo)
                smoothed = gaussian_smooth(self._probability(evidence, energies, (r0, r1), (c0, c1)), sigma,
                                           (height, width))
                anomaly[:, top:bottom, left:right] = smoothed[:, 0, top - r0:bottom - r0, left - c0:right - c0]
        return ResponseOutput(anomaly, anomaly.flatten(1).amax(1, keepdim=True).double())

    # the head's weights are tensors (response.safetensors in a model
    # directory); a model file of format 4 held them in its JSON, base64
    def state(self) -> dict[str, Any]:
        return {"channels": self.channels_}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.head_.state_dict().items()}

    def load_state(self, state: Any, tensors: dict[str, torch.Tensor]) -> None:
        if not isinstance(state, dict) or set(state) - {"head"} != {"channels"}:
            raise ValueError("response_statistics must be an object with channels (the segmentation head's input "
                             "channels)")
        try:
            self.channels_ = int(state["channels"])
            if not 1 <= self.channels_ <= 4:
                raise ValueError(f"channels must be 1 to 4, got {self.channels_}")
            weights = load_tensors(base64.b64decode(str(state["head"]), validate=True)) if "head" in state else tensors
            head = self._new_head()
            head.load_state_dict(weights)
        except (ValueError, RuntimeError, SafetensorError, TypeError) as exc:
            raise ValueError(f"the segmentation head cannot be read: {exc}") from None
        if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
            raise ValueError("the segmentation head holds NaN or infinite weights")
        self.head_ = head.eval()
