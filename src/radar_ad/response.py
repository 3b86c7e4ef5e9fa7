"""From the one-step evidence to the pixel anomaly map: the response stage.

A response turns the one-step evidence of a batch of images
(:class:`~radar_ad.noise_map.Evidence`: the image and, per pyramid level,
the predicted noise and the repair) into ``(B, H, W)`` pixel anomaly maps
at the finest level and ``(B, F)`` image features, after learning what it
needs from normal calibration images. Responses are plug-ins
(:data:`~radar_ad.registry.RESPONSES`; one module each in
``radar_ad/responses/``) of two kinds:

- a :class:`Response` reads one noise map (the paper's kind: blur + Sobel,
  local noise energy ...) or one repair map; :class:`LevelFusion` runs one
  per pyramid level, each with its own normal statistics, upsamples their
  maps to the finest level and keeps the largest, and passes every level's
  features on;
- an :class:`EvidenceResponse` reads the whole evidence at once (a head
  that sees the image and every level).

Either way :class:`EvidenceResponse` is what the pipeline holds (built by
:func:`build_response`), and it reads the image score as
``inference.image_score`` says: the response's own features for the
one-class model, or a statistic of the map (:func:`~radar_ad.features.map_scores`).

The filters the responses are made of live in :mod:`radar_ad.filters`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from .config import AUTO, RadarConfig
from .deprecation import module_getattr
from .features import SquareSums, map_score_name, map_scores, square_sums
from .noise_map import Evidence
from .pyramid import upsample
from .registry import RESPONSES

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
    """Base of a response's learned numbers (a dataclass of floats and
    tuples of floats), stored in the model file as ``response_statistics``
    (:meth:`Response.state`). A field with a default may be missing from
    what :meth:`from_dict` reads (a model made before the field)."""

    def to_dict(self) -> dict[str, float | list[float]]:
        return {k: [float(x) for x in v] if isinstance(v, tuple) else float(v)
                for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[S], data: Any) -> S:
        """From :meth:`to_dict`'s output; ``ValueError`` for anything else."""
        known = fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in known}
        required = {f.name for f in known if f.default is MISSING and f.default_factory is MISSING}
        if not isinstance(data, dict) or not required <= set(data) <= names:
            raise ValueError(f"response_statistics must be an object with {', '.join(sorted(names))}")
        lists = {f.name for f in known if isinstance(f.default, tuple)}
        if any(isinstance(v, list) != (k in lists) for k, v in data.items()):
            raise ValueError(f"response_statistics: {', '.join(sorted(lists)) or 'no field'} must be lists, "
                             "the others numbers")
        return cls(**{k: tuple(float(x) for x in v) if k in lists else float(v) for k, v in data.items()})


def map_statistics(cls: type[S], state: Any, map_sigmas: Sequence[float]) -> S:
    """``cls.from_dict(state)`` for a response whose map is smoothed at
    each of ``map_sigmas``: ``ValueError`` unless the statistics hold one
    of their ``map_quantiles`` per smoothing."""
    statistics = cls.from_dict(state)
    quantiles = getattr(statistics, "map_quantiles", ())
    if len(quantiles) != len(map_sigmas):
        raise ValueError(f"response_statistics holds {len(quantiles)} map_quantiles for {len(map_sigmas)} "
                         "inference.map_sigmas")
    return statistics


class Response:
    """Base of a response that reads one noise map (run on each pyramid
    level by :class:`LevelFusion`).

    ``__init__`` stores the settings (the shared ones of
    ``config.inference``, and the response's own, ``settings``, when its
    class names a ``Settings`` section); :meth:`fit` learns from normal
    calibration noise maps and returns ``self``; ``__call__`` maps noise
    maps to anomaly maps and features, from the pieces
    :func:`respond_in_tiles` also runs region by region on a large image
    (:meth:`context`, :meth:`feature_maps`, :meth:`anomaly`,
    :meth:`features`). What :meth:`fit` learned round-trips through
    :meth:`state` (JSON numbers) and :meth:`load_state`.
    ``candidate``: the ``"auto"`` response considers it. ``reads``: which
    of a level's maps it is given (:class:`~radar_ad.noise_map.Evidence`'s
    ``"noise"``, the predicted noise, or ``"repair"``, the one-step repair).
    """

    name: ClassVar[str] = ""
    feature_names: ClassVar[tuple[str, ...]] = ()
    candidate: ClassVar[bool] = False
    reads: ClassVar[str] = "noise"
    Settings: ClassVar[type | None] = None

    def __init__(self, config: RadarConfig) -> None:
        self.inference = config.inference
        self.pixel_quantile = config.decision.pixel_quantile
        self.settings: Any = config.inference.responses.of(self)

    def fit(self, noise_maps: Sequence[torch.Tensor]) -> Response:
        """Learn normal levels from ``(b, C, H, W)`` noise maps of normal
        images; a response that learns nothing leaves this as it is."""
        return self

    def __call__(self, noise_map: torch.Tensor) -> ResponseOutput:
        """Anomaly maps and features of whole ``(B, C, H, W)`` noise maps."""
        size = (int(noise_map.shape[-2]), int(noise_map.shape[-1]))
        maps = self.feature_maps(noise_map, size)
        sums = square_sums(maps, self.inference.window, self.inference.window_stride)
        return ResponseOutput(self.anomaly(maps, size), self.features(sums))

    def context(self, size: tuple[int, int]) -> tuple[int, int]:
        """For an (H, W) image: how many pixels of noise map around a pixel
        its feature maps depend on, and how many pixels of feature maps
        around a pixel its anomaly map depends on."""
        raise NotImplementedError

    def feature_maps(self, noise_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, C, h, w)`` noise (a region of an (H, W) = ``size`` map) ->
        ``(B, P, h, w)``: the maps the features are RMS values of."""
        raise NotImplementedError

    def anomaly(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, P, h, w)`` feature maps -> ``(B, h, w)`` float32 anomaly map."""
        raise NotImplementedError

    def features(self, sums: SquareSums) -> torch.Tensor:
        """``(B, F)`` float64 image features from the feature maps' :class:`SquareSums`
        over ``inference.window`` windows (stride ``inference.window_stride``)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any] | None:
        """What :meth:`fit` learned, as JSON (None: nothing)."""
        return None

    def load_state(self, state: Any) -> None:
        """Take back what :meth:`state` gave; ``ValueError`` for anything else."""
        if state is not None:
            raise ValueError(f"the {self.name} response stores no statistics, got {state!r}")

    @classmethod
    def describe(cls) -> str:
        """How the map is computed, for an exported model's metadata."""
        return (cls.__doc__ or cls.name).strip().split("\n\n")[0]


NormalEvidence = Callable[[], Sequence[Evidence]]
"""The evidence of every normal calibration image, computed (and held,
float32) when first called: what :meth:`EvidenceResponse.fit` learns normal
levels from."""


def _implements(cls: type, base: type, method: str) -> bool:
    """Whether ``cls`` overrides ``base``'s ``method`` (a response that does
    not learn from something leaves its method as the base has it)."""
    return getattr(cls, method) is not getattr(base, method)


class EvidenceResponse:
    """What the pipeline holds: one-step evidence -> anomaly maps and image
    features, with the image score ``image_score`` says.

    A subclass implements :meth:`respond` (the map and its own features)
    and what it learns, each a method the base leaves empty:

    - :meth:`learn`: from the normal calibration images themselves and the
      evidence of images it makes from them (synthetic defects, say);
    - :meth:`fit`: normal levels, from the evidence of the normal
      calibration images;
    - :meth:`state` (JSON numbers, ``response_statistics`` in
      ``radar.json``) and :meth:`tensors` (``response.safetensors``), read
      back by :meth:`load_state`.

    ``__init__`` stores the settings: the pyramid ``scales`` it reads (by
    default every level of the network), the ``image_score`` rule (by
    default the config's, which must then be resolved), the shared ones of
    ``config.inference``, and the response's own (``settings``) when its
    class names a ``Settings`` section (a :func:`radar_ad.settings.settings`
    class, under ``inference.responses.<name>``). ``candidate``: ``"auto"``
    considers it.
    """

    name: ClassVar[str] = ""
    response_feature_names: ClassVar[tuple[str, ...]] = ()
    candidate: ClassVar[bool] = False
    Settings: ClassVar[type | None] = None

    def __init__(self, config: RadarConfig, scales: Sequence[int] | None = None,
                 image_score: str | None = None) -> None:
        inference = config.inference
        self.config = config
        self.inference = inference
        self.pixel_quantile = config.decision.pixel_quantile
        self.settings: Any = inference.responses.of(self)
        self.scales = tuple(scales if scales is not None else config.network.scales)
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

    def learn(self, images: Sequence[np.ndarray], evidence_of: EvidenceOf,
              progress: bool = False) -> EvidenceResponse:
        """Before :meth:`fit`: learn from the normal calibration images
        themselves (``(C, H, W)`` arrays in [0, 1]) and the evidence
        ``evidence_of`` gives of images made from them."""
        return self

    def fit(self, evidence: NormalEvidence) -> EvidenceResponse:
        """Learn normal levels from the evidence of normal images (call
        ``evidence()`` to have it)."""
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
        """What :meth:`learn` and :meth:`fit` learned, as JSON numbers (None: nothing)."""
        return None

    def tensors(self) -> dict[str, torch.Tensor]:
        """What :meth:`learn` and :meth:`fit` learned, as named tensors (weights, say)."""
        return {}

    def load_state(self, state: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`state` and :meth:`tensors` gave; ``ValueError``
        for anything else."""
        if state is not None or tensors:
            raise ValueError(f"the {self.name} response stores nothing it learned, got {state!r}"
                             + (f" and tensors {', '.join(sorted(tensors))}" if tensors else ""))

    @classmethod
    def describe(cls) -> str:
        """How the map is computed, for an exported model's metadata."""
        return (cls.__doc__ or cls.name).strip().split("\n\n")[0]


def learns_from_images(entry: Any) -> bool:
    """Whether a registered response (class or instance) learns from images
    (implements :meth:`EvidenceResponse.learn`): the costly kind, which the
    selection tries last and hands on once learned."""
    cls = entry if isinstance(entry, type) else type(entry)
    return issubclass(cls, EvidenceResponse) and _implements(cls, EvidenceResponse, "learn")


def reads_every_level(entry: Any) -> bool:
    """Whether a registered response reads every level of the network at
    once (an :class:`EvidenceResponse`) rather than one level at a time (a
    :class:`Response`, which the pipeline runs on the chosen levels)."""
    return not (isinstance(entry, type) and issubclass(entry, Response))


class LevelFusion(EvidenceResponse):
    """A :class:`Response` computed on each level's noise map (or repair,
    as it :attr:`~Response.reads`) with its own normal statistics; the
    anomaly map is the largest of the maps of the first
    ``inference.map_scales`` levels (each upsampled to the finest
    level; all levels when it is null); the features are every level's,
    named ``name@scale`` beyond the first level, and a map statistic
    (``image_score``) reads the largest of every level's maps. Its levels
    are ``inference.scales`` unless given."""

    def __init__(self, config: RadarConfig, scales: Sequence[int] | None = None, image_score: str | None = None,
                 response: type[Response] | None = None) -> None:
        super().__init__(config, scales if scales is not None else config.inference.scales or config.network.scales,
                         image_score)
        self.response = response or RESPONSES.get(config.inference.response)
        self.levels_ = [self.response(config) for _ in self.scales]
        drawn = config.inference.map_scales or self.scales  # the levels whose maps make the anomaly map
        if tuple(drawn) != self.scales[:len(drawn)]:
            raise ValueError(f"inference.map_scales {list(drawn)} must be the first of the levels {list(self.scales)}")
        self.map_levels = len(drawn)

    def level_feature_names(self) -> tuple[str, ...]:
        return tuple(name if scale == 1 else f"{name}@{scale}" for scale in self.scales
                     for name in self.response.feature_names)

    def fit(self, evidence: NormalEvidence) -> LevelFusion:
        if _implements(self.response, Response, "fit"):
            normal = evidence()
            for level, response in zip(self.scales, self.levels_):
                response.fit([self._read(item, level) for item in normal])
        return self

    def _read(self, evidence: Evidence, scale: int) -> torch.Tensor:
        """The level's map the response reads (:attr:`Response.reads`)."""
        maps: list[torch.Tensor] = getattr(evidence, self.response.reads)
        return maps[evidence.level(scale)]

    def respond_levels(self, evidence: Evidence) -> list[ResponseOutput]:
        """Each level's output, its anomaly map at the level's resolution."""
        return [respond_in_tiles(response, self._read(evidence, level))
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
        states = {str(level): response.state() for level, response in zip(self.scales, self.levels_)}
        return None if all(state is None for state in states.values()) else {"levels": states}

    def load_state(self, state: Any, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"the {self.response.name} response stores no tensors, got {', '.join(sorted(tensors))}")
        if state is None:
            for response in self.levels_:
                response.load_state(None)
            return
        levels = state.get("levels") if isinstance(state, dict) else None
        if not isinstance(levels, dict) or set(levels) != {str(level) for level in self.scales}:
            raise ValueError(f"response_statistics must be an object with levels {list(self.scales)}")
        for level, response in zip(self.scales, self.levels_):
            response.load_state(levels[str(level)])


def build_response(config: RadarConfig, name: str | None = None, scales: Sequence[int] | None = None,
                   image_score: str | None = None) -> EvidenceResponse:
    """The pipeline's response for ``config`` (or the named response,
    scales and image score): a registered :class:`EvidenceResponse`, or a
    :class:`LevelFusion` of a registered :class:`Response`."""
    entry = RESPONSES.get(name or config.inference.response)
    if not reads_every_level(entry):
        return LevelFusion(config, scales, image_score, response=entry)
    return entry(config, scales, image_score)


def restore_response(config: RadarConfig, state: Any, tensors: dict[str, torch.Tensor]) -> EvidenceResponse:
    """The fitted response of a model file, from its config, its
    ``response_statistics`` and its response tensors."""
    response = build_response(config)
    response.load_state(state, tensors)
    return response


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
    (default :data:`TILED_ABOVE`), each tile with the context the response
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
    if height * width <= min_pixels or (height <= tile and width <= tile):
        return response(noise_map)
    feature_halo, map_halo = response.context(size)
    window, stride = response.inference.window, response.inference.window_stride
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


# The filters moved to radar_ad.filters; their old paths warn.
FILTERS = ("gaussian_kernel", "sobel_kernels", "blur", "sobel_magnitude", "blur_sobel_map", "local_energy",
           "smoothing_radius", "gaussian_smooth")
__getattr__ = module_getattr(__name__, renamed={"respond": (__name__, "respond_in_tiles"),
                                                "response_map": ("radar_ad.filters", "blur_sobel_map"),
                                                **{name: ("radar_ad.filters", name) for name in FILTERS}})
