"""From the one-step evidence to the pixel anomaly map: the response stage.

A response turns the one-step evidence of a batch of images
(:class:`~radar_ad.noise_map.Evidence`: the image and, per pyramid level,
the predicted noise and the repair) into ``(B, H, W)`` pixel anomaly maps
at the finest level and ``(B, F)`` image features, after learning what it
needs from normal calibration images. Responses are plug-ins
(:data:`~radar_ad.registry.RESPONSES`; one module each in
``radar_ad/responses/``) of two kinds:

- a :class:`Response` reads one noise map (the paper's kind: blur + Sobel,
  local noise energy ...); :class:`LevelFusion` runs one per pyramid level,
  each with its own normal statistics, upsamples their maps to the finest
  level and keeps the largest, and passes every level's features on;
- an :class:`EvidenceResponse` reads the whole evidence at once (a head
  that sees the image and every level).

Either way :class:`EvidenceResponse` is what the pipeline holds (built by
:func:`build_response`), and it reads the image score as
``inference.image_score`` says: the response's own features for the
one-class model, or a statistic of the map (:func:`~radar_ad.features.map_scores`).

A torch implementation (separable convolutions, OpenCV's default
BORDER_REFLECT_101 border) rather than a call into OpenCV, so the same code
runs batched on the GPU and exports to ONNX; tests show it equal to
``cv2.GaussianBlur(x, (k, k), 0)`` followed by ``cv2.Sobel(..., ksize=k)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .config import AUTO, RadarConfig
from .deprecation import module_getattr
from .features import SquareSums, map_score_name, map_scores, square_sums
from .noise_map import Evidence
from .pyramid import upsample
from .registry import RESPONSES

# OpenCV's fixed kernels for ksize <= 7 with sigma <= 0 (getGaussianKernel).
_SMALL_GAUSSIANS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel(ksize: int) -> torch.Tensor:
    """OpenCV's ``getGaussianKernel(ksize, 0)``."""
    if ksize in _SMALL_GAUSSIANS:
        return torch.tensor(_SMALL_GAUSSIANS[ksize], dtype=torch.float64)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _binomial(n: int) -> torch.Tensor:
    return torch.tensor([math.comb(n, k) for k in range(n + 1)], dtype=torch.float64)


def sobel_kernels(ksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(derivative, smoothing) 1-D kernels of OpenCV's ``Sobel`` of order 1."""
    smooth = _binomial(ksize - 1)
    central = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    # [-1, 0, 1] smoothed by the binomial of order ksize - 3: e.g. [-1, -2, 0, 2, 1].
    deriv = F.conv1d(F.pad(_binomial(ksize - 3).view(1, 1, -1), (2, 2)),
                     central.flip(0).view(1, 1, -1)).view(-1)
    return deriv, smooth


# :func:`_separable` multiplies by banded matrices (one BLAS call per axis)
# instead of convolving with a 1-D kernel, which runs far below the
# machine's rate, while the matrices' work (n per pixel) stays within
# BANDED_PER_TAP times the kernel's (its taps per pixel), and their size
# within BANDED_MAX pixels a side (a few MB each, a bounded cache).
BANDED_PER_TAP = 64
BANDED_MAX = 1024


@functools.lru_cache(maxsize=12)
def _banded(length: int, kernel: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(length, length)`` matrix B such that ``B @ v`` is ``v`` mirrored at
    both ends (``F.pad`` ``reflect``) correlated with ``kernel`` (odd length,
    its half-width below ``length``)."""
    half = len(kernel) // 2
    source = torch.arange(length)[:, None] + torch.arange(-half, half + 1)[None]
    source = source.abs()  # mirrored before the first pixel ...
    source = torch.where(source > length - 1, 2 * (length - 1) - source, source)  # ... and after the last
    rows = torch.arange(length)[:, None].expand_as(source)
    weights = torch.tensor(kernel, dtype=torch.float64).expand_as(source)
    matrix = torch.zeros(length, length, dtype=torch.float64)
    matrix.index_put_((rows.reshape(-1), source.reshape(-1)), weights.reshape(-1), accumulate=True)
    return matrix.to(dtype=dtype, device=device)


def _separable(x: torch.Tensor, along_x: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Correlate ``(N, 1, H, W)`` with ``along_y`` (rows) then ``along_x``,
    mirrored at the border."""
    height, width = x.shape[-2:]
    kx, ky = along_x.numel() // 2, along_y.numel() // 2
    longest = max(height, width)
    taps = min(along_x.numel(), along_y.numel())
    if longest <= min(BANDED_MAX, BANDED_PER_TAP * taps) and kx < width and ky < height:
        rows = _banded(width, tuple(along_x.tolist()), x.dtype, x.device)
        columns = _banded(height, tuple(along_y.tolist()), x.dtype, x.device)
        return torch.matmul(columns, torch.matmul(x, rows.T))
    wx = along_x.to(x).view(1, 1, 1, -1)
    wy = along_y.to(x).view(1, 1, -1, 1)
    x = F.conv2d(F.pad(x, (kx, kx, 0, 0), mode="reflect"), wx)
    return F.conv2d(F.pad(x, (0, 0, ky, ky), mode="reflect"), wy)


def blur(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """Gaussian blur of ``(N, 1, H, W)``, equal to ``cv2.GaussianBlur(x, (k, k), 0)``."""
    if ksize == 1:
        return x
    kernel = gaussian_kernel(ksize)
    return _separable(x, kernel, kernel)


def sobel_magnitude(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """Gradient magnitude of ``(N, 1, H, W)`` from OpenCV-equal Sobel x and y."""
    deriv, smooth = sobel_kernels(ksize)
    gx = _separable(x, deriv, smooth)
    gy = _separable(x, smooth, deriv)
    return torch.sqrt(gx * gx + gy * gy)


def blur_sobel_map(noise_map: torch.Tensor, blur_ksize: int = 5, sobel_ksize: int = 5) -> torch.Tensor:
    """Pixel anomaly map ``(B, H, W)`` from a predicted-noise map ``(B, C, H, W)``.

    Colour channels are processed separately and combined as the root sum of
    squares of their Sobel magnitudes (the magnitude of the joint gradient).
    """
    batch, channels, height, width = noise_map.shape
    flat = noise_map.reshape(batch * channels, 1, height, width)
    magnitude = sobel_magnitude(blur(flat, blur_ksize), sobel_ksize)
    magnitude = magnitude.reshape(batch, channels, height, width)
    return magnitude[:, 0] if channels == 1 else magnitude.pow(2).sum(1).sqrt()


def local_energy(noise_map: torch.Tensor, window: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: log mean squared predicted noise
    over ``window`` x ``window`` neighbourhoods (mirrored at the border).
    ``size``: the (H, W) of the whole map when ``noise_map`` is a region of
    it (the window is clipped to the whole map, not to the region)."""
    squared = noise_map.double().pow(2).mean(1, keepdim=True)
    height, width = size or squared.shape[-2:]
    wy, wx = min(window, height), min(window, width)
    padded = F.pad(squared, (wx // 2, wx - 1 - wx // 2, wy // 2, wy - 1 - wy // 2), mode="reflect")
    return torch.log(F.avg_pool2d(padded, (wy, wx), stride=1) + 1e-12)[:, 0]


def smoothing_radius(sigma: float, size: tuple[int, int]) -> int:
    """The half-width of :func:`gaussian_smooth`'s kernel on an (H, W) map
    (0: no smoothing): 3 sigma, at most the image size less one."""
    if sigma <= 0:
        return 0
    return max(1, min(math.ceil(3 * sigma), size[0] - 1, size[1] - 1))


def gaussian_smooth(x: torch.Tensor, sigma: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Gaussian smoothing of ``(N, 1, H, W)``; the kernel is truncated at
    3 sigma and at the image size (mirrored border). ``size``: the (H, W) of
    the whole map when ``x`` is a region of it."""
    if sigma <= 0:
        return x
    radius = smoothing_radius(sigma, size or (x.shape[-2], x.shape[-1]))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return _separable(x, kernel / kernel.sum(), kernel / kernel.sum())


# ------------------------------------------------------------------ the stage
QUANTILE_SAMPLE = 8_000_000  # pixels per part behind a response's quantiles (float64: 128 MB)


@dataclass
class ResponseOutput:
    """``anomaly_map`` ``(B, H, W)`` float32 (the pixel-level score) and
    ``features`` ``(B, F)`` float64 (the image features) of a batch."""

    anomaly_map: torch.Tensor
    features: torch.Tensor


S = TypeVar("S", bound="Statistics")

EvidenceOf = Callable[[Sequence[torch.Tensor]], Evidence]
"""The model's one-step :class:`~radar_ad.noise_map.Evidence` of same-size
``(C, H, W)`` images in [0, 1] (on the CPU): what
:meth:`EvidenceResponse.learn` may run on images it makes."""


class Statistics:
    """Base of a response's learned numbers (a dataclass of floats), stored
    in the model file as ``response_statistics``."""

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[S], data: Any) -> S:
        """From :meth:`to_dict`'s output; ``ValueError`` for anything else."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"response_statistics must be an object with {', '.join(sorted(names))}")
        return cls(**{k: float(v) for k, v in data.items()})


class Response:
    """Base of a response that reads one noise map (run on each pyramid
    level by :class:`LevelFusion`).

    ``__init__`` stores the settings; :meth:`fit` learns from normal
    calibration noise maps and returns ``self``; ``__call__`` maps noise maps
    to anomaly maps and features. A response that learns normal levels names
    their dataclass in ``statistics_class`` and sets ``statistics_`` in
    :meth:`fit`; they round-trip through :meth:`state` and :meth:`from_state`
    (JSON numbers, stored in the model file as ``response_statistics``).
    ``candidate``: the ``"auto"`` response considers it.
    """

    name: ClassVar[str] = ""
    feature_names: ClassVar[tuple[str, ...]] = ()
    statistics_class: ClassVar[type[Statistics] | None] = None
    candidate: ClassVar[bool] = False
    statistics_: Any

    def __init__(self, config: RadarConfig) -> None:
        self.inference = config.inference
        self.pixel_quantile = config.decision.pixel_quantile

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` must see the calibration noise maps first."""
        return self.statistics_class is not None

    def fit(self, noise_maps: Sequence[torch.Tensor]) -> Response:
        """Learn normal levels from ``(b, C, H, W)`` noise maps of normal images."""
        return self

    def __call__(self, noise_map: torch.Tensor) -> ResponseOutput:
        """Anomaly maps and features of whole ``(B, C, H, W)`` noise maps."""
        size = (int(noise_map.shape[-2]), int(noise_map.shape[-1]))
        maps = self.feature_maps(noise_map, size)
        sums = square_sums(maps, *self.windows())
        return ResponseOutput(self.anomaly(maps, size), self.features(sums))

    def windows(self) -> tuple[int, int]:
        """The side and stride of the windows the features are taken over:
        ``inference.window`` and ``inference.window_stride``."""
        return self.inference.window, self.inference.window_stride

    # The pieces of __call__, which :func:`respond_in_tiles` also runs region by region
    # on a large image. A response that overrides __call__ instead (and
    # leaves context() None) is always run on the whole image.
    def context(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """For an (H, W) image: how many pixels of noise map around a pixel
        its feature maps depend on, and how many pixels of feature maps
        around a pixel its anomaly map depends on. ``None``: this response
        cannot be computed in tiles."""
        return None

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, C, h, w)`` noise (a region of an (H, W) = ``size`` map) ->
        ``(B, P, h, w)``: the maps the features are RMS values of."""
        raise NotImplementedError

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, P, h, w)`` feature maps -> ``(B, h, w)`` float32 anomaly map."""
        raise NotImplementedError

    def features(self, sums: SquareSums) -> torch.Tensor:
        """``(B, F)`` float64 image features from the feature maps' :class:`SquareSums`."""
        raise NotImplementedError

    def state(self) -> dict[str, Any] | None:
        """What :meth:`learn` and :meth:`fit` learned, as JSON (None: nothing)."""
        return None if self.statistics_class is None else self.statistics_.to_dict()

    @classmethod
    def from_state(cls, config: RadarConfig, state: Any) -> Response:
        """A fitted response from :meth:`state`'s output; ``ValueError`` for
        anything else."""
        response = cls(config)
        if cls.statistics_class is not None:
            response.statistics_ = cls.statistics_class.from_dict(state)
        elif state is not None:
            raise ValueError(f"the {cls.name} response stores no statistics, got {state!r}")
        return response

    @classmethod
    def describe(cls) -> str:
        """How the map is computed, for an exported model's metadata."""
        return (cls.__doc__ or cls.name).strip().split("\n\n")[0]


class EvidenceResponse:
    """What the pipeline holds: one-step evidence -> anomaly maps and image
    features, with the image score ``image_score`` says.

    ``__init__`` stores the settings (the pyramid ``scales`` it reads and the
    ``image_score`` rule; by default the config's, which must then be
    resolved); :meth:`learn` (for a response that ``learns_from_images``)
    and :meth:`fit` learn from normal calibration images; ``__call__`` gives
    the anomaly map and the image features (:attr:`feature_names`). A
    subclass implements :meth:`respond` (the map and its own features), and
    the state methods when it learns anything. ``all_levels``: it reads every
    level of the network at once. ``candidate``: ``"auto"`` considers it.
    """

    name: ClassVar[str] = ""
    response_feature_names: ClassVar[tuple[str, ...]] = ()
    learns_from_images: ClassVar[bool] = False
    all_levels: ClassVar[bool] = True
    candidate: ClassVar[bool] = False

    def __init__(self, config: RadarConfig, scales: Sequence[int] | None = None,
                 image_score: str | None = None) -> None:
        inference = config.inference
        self.config = config
        self.inference = inference
        self.pixel_quantile = config.decision.pixel_quantile
        chosen = scales if scales is not None else (config.network.scales if self.all_levels
                                                     else inference.scales or config.network.scales)
        self.scales = tuple(chosen)
        self.image_score = image_score or inference.image_score
        if self.image_score == AUTO:
            raise ValueError("image_score is 'auto': the selection resolves it before a response is built")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The image features ``__call__`` gives: the response's own, or the
        one map statistic of ``image_score``."""
        if self.image_score == "features":
            return self.level_feature_names()
        return (map_score_name(self.image_score, self.inference.score_window),)

    def level_feature_names(self) -> tuple[str, ...]:
        """The names of :meth:`respond`'s features."""
        return self.response_feature_names

    @property
    def one_class_model(self) -> str:
        """The one-class model of the image decision: the configured one on
        the response's features; ``"score"`` (the statistic is the score)
        for a map statistic."""
        return self.config.decision.one_class_model if self.image_score == "features" else "score"

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` must see the calibration evidence first."""
        return False

    def learn(self, images: Sequence[np.ndarray], evidence_of: EvidenceOf,
              progress: bool = False) -> EvidenceResponse:
        """Before :meth:`fit`, for a response with ``learns_from_images``:
        learn from the normal calibration images themselves (``(C, H, W)``
        arrays in [0, 1]) and the evidence ``evidence_of`` gives of images it
        makes from them (synthetic defects, say). Others learn nothing here."""
        return self

    def fit(self, evidence: Sequence[Evidence]) -> EvidenceResponse:
        """Learn normal levels from the evidence of normal images."""
        return self

    def without(self, kinds: Sequence[str]) -> EvidenceResponse:
        """This response as it would be had it never learned from synthetic
        defects of ``kinds`` (:data:`radar_ad.defects.KINDS`): itself, for a
        response that learns nothing from them."""
        return self

    def respond(self, evidence: Evidence) -> ResponseOutput:
        """The anomaly maps and the response's own features (:meth:`level_feature_names`)."""
        raise NotImplementedError

    def __call__(self, evidence: Evidence) -> ResponseOutput:
        output = self.respond(evidence)
        if self.image_score == "features":
            return output
        return ResponseOutput(output.anomaly_map, map_scores(output.anomaly_map, self.image_score,
                                                             self.inference.score_window))

    def state(self) -> dict[str, Any] | None:
        """What :meth:`learn` and :meth:`fit` learned, as JSON (None: nothing)."""
        return None

    @classmethod
    def from_state(cls, config: RadarConfig, state: Any) -> EvidenceResponse:
        """A fitted response from :meth:`state`'s output; ``ValueError`` for anything else."""
        if state is not None:
            raise ValueError(f"the {cls.name} response stores no statistics, got {state!r}")
        return cls(config)

    @classmethod
    def describe(cls) -> str:
        """How the map is computed, for an exported model's metadata."""
        return (cls.__doc__ or cls.name).strip().split("\n\n")[0]


class LevelFusion(EvidenceResponse):
    """A :class:`Response` computed on each level's noise map with its own
    normal statistics; the anomaly map is the largest of the maps of the
    first ``inference.map_scales`` levels (each upsampled to the finest
    level; all levels when it is null); the features are every level's,
    named ``name@scale`` beyond the first level, and a map statistic
    (``image_score``) reads the largest of every level's maps."""

    all_levels = False

    def __init__(self, config: RadarConfig, scales: Sequence[int] | None = None, image_score: str | None = None,
                 response: type[Response] | None = None) -> None:
        super().__init__(config, scales, image_score)
        self.response = response or RESPONSES.get(config.inference.response)
        self.levels_ = [self.response(config) for _ in self.scales]
        drawn = config.inference.map_scales or self.scales  # the levels whose maps make the anomaly map
        if tuple(drawn) != self.scales[:len(drawn)]:
            raise ValueError(f"inference.map_scales {list(drawn)} must be the first of the levels {list(self.scales)}")
        self.map_levels = len(drawn)

    def level_feature_names(self) -> tuple[str, ...]:
        return tuple(name if scale == 1 else f"{name}@{scale}" for scale in self.scales
                     for name in self.response.feature_names)

    @property
    def needs_fit(self) -> bool:
        return self.response.statistics_class is not None

    def fit(self, evidence: Sequence[Evidence]) -> LevelFusion:
        for level, response in zip(self.scales, self.levels_):
            response.fit([item.noise[item.level(level)] for item in evidence])
        return self

    def respond_levels(self, evidence: Evidence) -> list[ResponseOutput]:
        """Each level's output, its anomaly map at the level's resolution."""
        return [respond_in_tiles(response, evidence.noise[evidence.level(level)])
                for level, response in zip(self.scales, self.levels_)]

    @staticmethod
    def fuse(outputs: Sequence[ResponseOutput], size: tuple[int, int]) -> ResponseOutput:
        """One output from the levels': the largest upsampled map, every level's features."""
        anomaly: torch.Tensor | None = None
        for output in outputs:
            level_map = upsample(output.anomaly_map[:, None], size)[:, 0]
            anomaly = level_map if anomaly is None else torch.maximum(anomaly, level_map)
        assert anomaly is not None
        return ResponseOutput(anomaly, torch.cat([output.features for output in outputs], 1))

    def respond(self, evidence: Evidence) -> ResponseOutput:
        outputs = self.respond_levels(evidence)
        fused = self.fuse(outputs, evidence.size)
        if self.map_levels == len(outputs):
            return fused
        return ResponseOutput(self.fuse(outputs[:self.map_levels], evidence.size).anomaly_map, fused.features)

    def __call__(self, evidence: Evidence) -> ResponseOutput:
        if self.image_score == "features" or self.map_levels == len(self.scales):
            return super().__call__(evidence)
        outputs = self.respond_levels(evidence)
        scored = self.fuse(outputs, evidence.size).anomaly_map
        return ResponseOutput(self.fuse(outputs[:self.map_levels], evidence.size).anomaly_map,
                              map_scores(scored, self.image_score, self.inference.score_window))

    def state(self) -> dict[str, Any] | None:
        if self.response.statistics_class is None:
            return None
        return {"levels": {str(level): response.state() for level, response in zip(self.scales, self.levels_)}}

    @classmethod
    def restore(cls, config: RadarConfig, response: type[Response], state: Any) -> LevelFusion:
        """A fitted fusion of ``response`` from :meth:`state`'s output."""
        fusion = cls(config, response=response)
        if response.statistics_class is None:
            if state is not None:
                raise ValueError(f"the {response.name} response stores no statistics, got {state!r}")
            return fusion
        levels = state.get("levels") if isinstance(state, dict) else None
        if not isinstance(levels, dict) or set(levels) != {str(level) for level in fusion.scales}:
            raise ValueError(f"response_statistics must be an object with levels {list(fusion.scales)}")
        fusion.levels_ = [response.from_state(config, levels[str(level)]) for level in fusion.scales]
        return fusion


def build_response(config: RadarConfig, name: str | None = None, scales: Sequence[int] | None = None,
                   image_score: str | None = None) -> EvidenceResponse:
    """The pipeline's response for ``config`` (or the named response,
    scales and image score): a registered :class:`EvidenceResponse`, or a
    :class:`LevelFusion` of a registered :class:`Response`."""
    entry = RESPONSES.get(name or config.inference.response)
    if isinstance(entry, type) and issubclass(entry, Response):
        return LevelFusion(config, scales, image_score, response=entry)
    return entry(config, scales, image_score)


def restore_response(config: RadarConfig, state: Any) -> EvidenceResponse:
    """The fitted response of a model file, from its config and ``response_statistics``."""
    entry = RESPONSES.get(config.inference.response)
    if isinstance(entry, type) and issubclass(entry, Response):
        return LevelFusion.restore(config, entry, state)
    return entry.from_state(config, state)


class RunningMoments:
    """Mean and sample standard deviation (n - 1, as ``torch.std``) of every
    element added, from running float64 sums: bounded memory over many maps."""

    def __init__(self) -> None:
        self.count = 0
        self.total = torch.zeros((), dtype=torch.float64)
        self.squares = torch.zeros((), dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:
        self.count += values.numel()
        self.total += values.sum()
        self.squares += values.pow(2).sum()

    @property
    def mean(self) -> float:
        return float(self.total / self.count)

    @property
    def std(self) -> float:
        variance = float(self.squares - self.count * self.mean**2) / max(self.count - 1, 1)
        return max(variance, 0.0) ** 0.5


# A large image's response is computed in tiles of TILE x TILE output pixels
# (each with the context its filters need): beyond the maps an image's result
# holds, memory then grows by a constant instead of ~400 bytes per pixel.
TILE = 256
TILED_ABOVE = 512 * 512  # pixels; smaller images are computed whole


def respond_in_tiles(response: Response, noise_map: torch.Tensor, tile: int | None = None,
                     min_pixels: int | None = None) -> ResponseOutput:
    """``response(noise_map)``, computed in ``tile`` x ``tile`` tiles
    (default :data:`TILE`) when the map has more than ``min_pixels`` pixels
    (default :data:`TILED_ABOVE`) and the response says what context it
    needs (:meth:`Response.context`).

    Each tile's feature maps and anomaly map are computed on the tile plus
    that context (clipped to the image, whose borders are mirrored as on the
    whole map), the anomaly map is cropped into place and the features come
    from :class:`~radar_ad.features.SquareSums` of the windows whose corner
    lies in the tile: the results equal the whole-image ones to float
    rounding. Peak memory: the ``(B, H, W)`` float32 anomaly map plus one
    tile's intermediates."""
    tile = TILE if tile is None else tile
    min_pixels = TILED_ABOVE if min_pixels is None else min_pixels
    batch, _, height, width = noise_map.shape
    size = (int(height), int(width))
    context = response.context(size)
    if context is None or height * width <= min_pixels or (height <= tile and width <= tile):
        return response(noise_map)
    feature_halo, map_halo = context
    window, stride = response.windows()
    # pixels of context before and after a tile: for its anomaly map, and
    # after it for the windows that start in it
    before = feature_halo + map_halo
    after = feature_halo + max(map_halo, min(window, height) - 1, min(window, width) - 1)
    anomaly = torch.empty(batch, height, width, dtype=torch.float32, device=noise_map.device)
    sums: SquareSums | None = None
    for top in range(0, height, tile):
        bottom = min(top + tile, height)
        r0, r1 = max(0, top - before), min(height, bottom + after)
        for left in range(0, width, tile):
            right = min(left + tile, width)
            c0, c1 = max(0, left - before), min(width, right + after)
            maps = response.feature_maps(noise_map[:, :, r0:r1, c0:c1], size)
            anomaly[:, top:bottom, left:right] = response.anomaly(maps, size)[
                :, top - r0:bottom - r0, left - c0:right - c0]
            piece = square_sums(maps, window, stride, size, (r0, c0), (top, bottom, left, right))
            sums = piece if sums is None else sums.merge(piece)
            del maps
    assert sums is not None
    return ResponseOutput(anomaly, response.features(sums))


def strided_quantiles(parts: Iterable[torch.Tensor], count: int, quantile: float) -> list[float]:
    """The ``quantile`` of each part over ``(b, P, H, W)`` tensors holding
    ``count`` pixels per part, from an evenly strided sample of at most
    :data:`QUANTILE_SAMPLE` of them (only the sample is kept)."""
    step = max(1, math.ceil(count / QUANTILE_SAMPLE))
    sample = torch.cat([p.transpose(0, 1).flatten(1)[:, ::step].clone() for p in parts], dim=1)
    return [float(q) for q in np.quantile(sample.numpy(), quantile, axis=1)]


__getattr__ = module_getattr(__name__, renamed={"respond": (__name__, "respond_in_tiles"),
                                                "response_map": (__name__, "blur_sobel_map")})
