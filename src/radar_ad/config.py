"""Every setting of the method, in one validated, immutable, JSON-round-trippable place.

The config IS the saved description of a model (the diffusers habit): a model
directory holds this JSON next to the weights, so a loaded model behaves
exactly like the one that was trained. Configs are frozen: a changed setting
is a new config (``config.updated({"inference.stride": 14})``) and, for a
fitted model, a new model (``radar.with_settings({...})``), never an in-place
edit that the model would have to notice later. The names a setting such as
``inference.response`` accepts come from the registries
(:mod:`radar_ad.registry`), so a plug-in is usable as soon as it is registered.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError
from .registry import ONE_CLASS_MODELS, RESPONSES, choices

FEATURE_NORMS = ("rms", "sum")
# How the image score is read: "auto" (chosen at calibration, radar_ad.selection),
# the response's features through the one-class model, or a statistic of the anomaly map.
IMAGE_SCORES = ("auto", "features", "max", "robust_max")
PRECISIONS = ("float32", "bfloat16")
AUTO = "auto"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
NON_FINITE_POLICIES = ("error", "anomalous")
# Upper bounds of the numeric settings: far above any real use, low enough that
# a mistyped or tampered value cannot hang the machine or exhaust its memory.
MAX_CONFORMAL_SIZE = 1_000_000
MAX_SEED = 2**32 - 1
MAX_PATCH_SIZE = 512
MAX_RESIZE = 16_384
MAX_LEVELS = 6
MAX_SCALE = 64
MAX_CHANNELS = 1024
MAX_LAYERS_PER_BLOCK = 8
MAX_TIMESTEPS = 10_000
MAX_STEPS = 10_000_000
MAX_BATCH_SIZE = 65_536
MAX_DRAWS = 64
MAX_WINDOW = 4096
MAX_ESTIMATORS = 10_000
MAX_NEIGHBORS = 10_000
# synthetic defective images the segmentation head learns from, and its crops'
# pixels in all (crops of evidence are held at once, float16, a few channels each)
MAX_SEGMENTATION_EXAMPLES = 20_000
MAX_HEAD_PIXELS = 2**26
MAX_HEAD_WIDTH = 256
MAX_HEAD_CROP = 1024
MAX_SELECTION_COPIES = 64

C = TypeVar("C")


def _require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}", setting=name)


def _int_in(value: Any, low: int, high: int, name: str, note: str = "") -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
             name, f"an integer in [{low}, {high}]{note}", value)


def _optional_int_in(value: Any, low: int, high: int, name: str, meaning: str) -> None:
    if value is not None:
        _int_in(value, low, high, name, f" or null ({meaning})")


def _check_scales(scales: Any, name: str) -> None:
    _require(isinstance(scales, tuple) and 1 <= len(scales) <= MAX_LEVELS and all(
        isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SCALE for s in scales)
        and list(scales) == sorted(set(scales)), name,
        f"a list of 1 to {MAX_LEVELS} increasing integers in [1, {MAX_SCALE}] (downsampling factors)", scales)


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    section = getattr(self, "section", "")
    key = f"{section}.{name}" if section else name
    raise ConfigError(f"settings are immutable: {key} cannot be assigned; use "
                      f"config.updated({{{key!r}: ...}}) for a new config, or "
                      f"radar.with_settings({{{key!r}: ...}}) and then radar.refit_calibration(images) "
                      "for a fitted model", setting=key)


def _frozen_delattr(self: Any, name: str) -> None:
    _frozen_setattr(self, name, None)


def _validate(self: Any) -> None:
    self.validate()


def settings(cls: type[C]) -> type[C]:
    """A frozen dataclass whose assignments raise a :class:`ConfigError` that
    names the call to use instead, and which validates itself when built."""
    cls.__post_init__ = _validate  # type: ignore[attr-defined]
    frozen = dataclass(frozen=True)(cls)
    frozen.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
    frozen.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
    return frozen


@settings
class DataConfig:
    """How images are read. ``resize`` scales the longer side to that many
    pixels (aspect kept); ``None`` keeps native size."""

    section: ClassVar[str] = "data"
    grayscale: bool = True
    resize: int | None = None

    def validate(self) -> None:
        _optional_int_in(self.resize, 8, MAX_RESIZE, "data.resize", "native size")


@settings
class NetworkConfig:
    """The diffusers ``UNet2DModel`` and the DDPM noise schedule.

    ``attention`` says, per resolution level (finest first), whether that
    level uses attention blocks; the paper puts attention in the U-Net but
    does not say where or how wide. The default (widths 16/32/32, attention
    at the coarsest level only) is the fast one among those of equal quality
    (the results page, "Speed").

    ``scales``: the levels of the image pyramid the network learns, as
    downsampling factors (1 is the working resolution, 2 half of it ...),
    each level a class label of the one network. ``repair``: a second output
    per image channel, trained on synthetic defects (``train.defect_share``)
    to point from a defective patch back to its normal self.
    """

    section: ClassVar[str] = "network"
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    scales: tuple[int, ...] = (1, 2, 4)
    repair: bool = True

    def validate(self) -> None:
        _check_scales(self.scales, "network.scales")
        _require(isinstance(self.repair, bool), "network.repair", "true or false", self.repair)
        _require(1 <= len(self.block_out_channels) <= MAX_LEVELS and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 < c <= MAX_CHANNELS
            for c in self.block_out_channels),
            "network.block_out_channels", f"a list of 1 to {MAX_LEVELS} integers in [1, {MAX_CHANNELS}]",
            self.block_out_channels)
        _require(all(isinstance(a, bool) for a in self.attention), "network.attention",
                 "a list of booleans", self.attention)
        _int_in(self.norm_num_groups, 1, MAX_CHANNELS, "network.norm_num_groups")
        _int_in(self.attention_head_dim, 1, MAX_CHANNELS, "network.attention_head_dim")
        _require(len(self.attention) == len(self.block_out_channels),
                 "network.attention", "one boolean per entry of block_out_channels",
                 self.attention)
        _require(all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
                 "network.norm_num_groups", "a divisor of every block_out_channels entry",
                 self.norm_num_groups)
        _int_in(self.layers_per_block, 1, MAX_LAYERS_PER_BLOCK, "network.layers_per_block")
        _int_in(self.num_train_timesteps, 2, MAX_TIMESTEPS, "network.num_train_timesteps")
        _require(self.beta_schedule in BETA_SCHEDULES, "network.beta_schedule", choices(BETA_SCHEDULES),
                 self.beta_schedule)
        _require(0 < self.beta_start < self.beta_end < 1, "network.beta_start/beta_end",
                 "0 < beta_start < beta_end < 1", (self.beta_start, self.beta_end))


@settings
class TrainConfig:
    """The training loop and the split of the normal images.

    ``max_timestep`` limits the timesteps drawn in training (``None``:
    uniform over all T, the standard DDPM objective). The normal images are
    split three ways, seeded: a ``conformal_fraction`` share (or exactly
    ``conformal_size`` images) is held out from everything and only scored,
    for the p-values and the false-alarm rule (``decision.false_alarm_rate``);
    a ``calibration_fraction`` share of the rest fits the response, the
    one-class model and the pixel threshold; the network trains on what is
    left (on everything but the conformal images with
    ``calibrate_on_training``, the paper's protocol).

    ``defect_share``: the share of training patches that carry a synthetic
    defect (:mod:`radar_ad.defects`), for a network with a repair output:
    the noise target stays the noise added to the defective patch, the
    repair target is the way back to the defect-free patch. 0 trains the
    plain DDPM objective.
    """

    section: ClassVar[str] = "train"
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.0
    max_timestep: int | None = None
    checkpoint_every: int = 500
    calibration_fraction: float = 0.15
    calibrate_on_training: bool = False
    conformal_fraction: float = 0.2
    conformal_size: int | None = None
    defect_share: float = 0.25

    def validate(self) -> None:
        _int_in(self.steps, 1, MAX_STEPS, "train.steps")
        _require(0 <= self.defect_share <= 0.9, "train.defect_share", "in [0, 0.9] (0: no synthetic defects)",
                 self.defect_share)
        _int_in(self.batch_size, 1, MAX_BATCH_SIZE, "train.batch_size")
        _require(0 < self.learning_rate <= 1, "train.learning_rate", "in (0, 1]", self.learning_rate)
        _require(0 <= self.weight_decay <= 1, "train.weight_decay", "in [0, 1]", self.weight_decay)
        _int_in(self.warmup_steps, 0, MAX_STEPS, "train.warmup_steps")
        _require(0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1) (0 turns EMA off)",
                 self.ema_decay)
        _optional_int_in(self.max_timestep, 1, MAX_TIMESTEPS, "train.max_timestep", "every timestep")
        _int_in(self.checkpoint_every, 1, MAX_STEPS, "train.checkpoint_every")
        _require(0 < self.calibration_fraction < 1, "train.calibration_fraction",
                 "in (0, 1)", self.calibration_fraction)
        _require(0 <= self.conformal_fraction <= 0.5, "train.conformal_fraction",
                 "in [0, 0.5] (0: no conformal split)", self.conformal_fraction)
        _require(self.conformal_size is None or 0 <= self.conformal_size <= MAX_CONFORMAL_SIZE,
                 "train.conformal_size", f"null (use conformal_fraction) or an integer in [0, {MAX_CONFORMAL_SIZE}]",
                 self.conformal_size)


@settings
class InferenceConfig:
    """The one-step evidence, the response map and the image score.

    ``timestep`` is 0-based as in diffusers: 0 is the paper's first forward
    step x_1; every pyramid level is noised to it. ``draws`` averages the
    predicted noise over K seeded noise draws. ``scales``: the pyramid
    levels the evidence is computed on (a subset of ``network.scales``;
    null: chosen at calibration among the network's first level, its first
    two ... all of them, by :mod:`radar_ad.selection`; a response that sees
    every level at once always gets all of them). ``map_scales``: the levels
    whose maps make the anomaly map and the mask, the first of ``scales``
    (the image features still read every level of ``scales``); null: all of
    them, or, when the self-validation runs, the first levels whose map
    finds its synthetic defects best (a response that sees every level at
    once draws one map from all of them). ``stride`` ``None`` tiles
    each level with the patch size (touching patches, one network
    evaluation per pixel).

    ``response`` names a registered response (:mod:`radar_ad.responses`),
    or ``"auto"`` (the default): the candidate responses are scored on
    synthetic defects pasted into held-out normal calibration images and
    the best is kept (:mod:`radar_ad.selection`; the choice and its
    synthetic AUROC go into the model file). ``"two_sided"`` standardises
    the Sobel response and the local noise energy (in ``energy_window`` px
    windows) of each level against the normal calibration images and scores
    both an excess of structure and a deficit of noise energy; its map is
    smoothed by a Gaussian of ``map_sigma`` px. ``"sobel"`` is the paper's
    response, ``"energy"`` the deficit part alone. ``"segmentation"`` is a
    small convolutional head on the image and every level's noise and
    repair, trained on ``segmentation_examples`` synthetic defective copies
    of calibration images (``segmentation_steps`` steps on
    ``segmentation_crop`` px crops, ``segmentation_width`` channels; its map
    smoothed by ``segmentation_sigma`` px). ``feature_norm`` "rms" divides
    each L2 norm by the square root of its pixel count, so scores of images
    of different sizes are comparable; "sum" is the paper's raw L2 norm
    (both for the ``"sobel"`` response only).

    ``image_score``: how an image's score is read. ``"features"``: the
    response's image features through the one-class model; ``"max"``: the
    largest mean of the anomaly map over ``score_window`` px squares;
    ``"robust_max"``: the same on the map standardised by its own median and
    median absolute deviation (a surface's overall finish cancels);
    ``"auto"``: chosen at calibration with the response.
    ``selection_copies`` defective copies of each self-validation image are
    made.

    ``precision``: the number format the network runs in through PyTorch.
    ``"bfloat16"`` runs it under autocast (fast on CPUs with AVX-512 BF16 or
    AMX, and on recent GPUs); the calibration, and so the thresholds and
    p-values, then come from the same bfloat16 path. The exported graphs
    (ONNX Runtime, OpenVINO) run float32 only. README "Results" gives the
    measurements behind these defaults.
    """

    section: ClassVar[str] = "inference"
    timestep: int = 0
    stride: int | None = None
    draws: int = 1
    batch_size: int = 256
    blur_ksize: int = 5
    sobel_ksize: int = 5
    window: int = 20
    window_stride: int = 20
    feature_norm: str = "rms"
    response: str = AUTO
    scales: tuple[int, ...] | None = None
    map_scales: tuple[int, ...] | None = None
    image_score: str = AUTO
    score_window: int = 11
    energy_window: int = 9
    map_sigma: float = 8.0
    segmentation_examples: int = 480
    segmentation_steps: int = 800
    segmentation_width: int = 16
    segmentation_crop: int = 96
    segmentation_sigma: float = 2.0
    selection_copies: int = 2
    precision: str = "float32"

    def validate(self) -> None:
        _int_in(self.timestep, 0, MAX_TIMESTEPS - 1, "inference.timestep")
        _optional_int_in(self.stride, 1, MAX_PATCH_SIZE, "inference.stride", "the patch size")
        _int_in(self.draws, 1, MAX_DRAWS, "inference.draws")
        _int_in(self.batch_size, 1, MAX_BATCH_SIZE, "inference.batch_size")
        _require(self.blur_ksize in (1, 3, 5, 7, 9, 11), "inference.blur_ksize",
                 "an odd integer from 1 to 11", self.blur_ksize)
        _require(self.sobel_ksize in (3, 5, 7), "inference.sobel_ksize", "3, 5 or 7",
                 self.sobel_ksize)
        _int_in(self.window, 1, MAX_WINDOW, "inference.window")
        _int_in(self.window_stride, 1, MAX_WINDOW, "inference.window_stride")
        _require(self.feature_norm in FEATURE_NORMS, "inference.feature_norm", choices(FEATURE_NORMS),
                 self.feature_norm)
        _require(self.response == AUTO or (isinstance(self.response, str) and self.response in RESPONSES.names()),
                 "inference.response", f"{AUTO} (chosen at calibration) or {RESPONSES.choices()}", self.response)
        if self.scales is not None:
            _check_scales(self.scales, "inference.scales")
        if self.map_scales is not None:
            _check_scales(self.map_scales, "inference.map_scales")
        _require(self.image_score in IMAGE_SCORES, "inference.image_score", choices(IMAGE_SCORES),
                 self.image_score)
        _int_in(self.score_window, 1, MAX_WINDOW, "inference.score_window")
        _int_in(self.energy_window, 1, MAX_WINDOW, "inference.energy_window")
        _require(0 <= self.map_sigma <= 64, "inference.map_sigma", "in [0, 64] (0: no smoothing)",
                 self.map_sigma)
        _int_in(self.segmentation_examples, 1, MAX_SEGMENTATION_EXAMPLES, "inference.segmentation_examples")
        _int_in(self.segmentation_steps, 1, MAX_STEPS, "inference.segmentation_steps")
        _int_in(self.segmentation_width, 1, MAX_HEAD_WIDTH, "inference.segmentation_width")
        _int_in(self.segmentation_crop, 8, MAX_HEAD_CROP, "inference.segmentation_crop")
        _require(self.segmentation_examples * self.segmentation_crop**2 <= MAX_HEAD_PIXELS,
                 "inference.segmentation_examples", f"at most {MAX_HEAD_PIXELS} / segmentation_crop^2 (the head's "
                 "examples are held in memory at once)", self.segmentation_examples)
        _require(0 <= self.segmentation_sigma <= 64, "inference.segmentation_sigma",
                 "in [0, 64] (0: no smoothing)", self.segmentation_sigma)
        _int_in(self.selection_copies, 1, MAX_SELECTION_COPIES, "inference.selection_copies")
        _require(self.precision in PRECISIONS, "inference.precision", choices(PRECISIONS), self.precision)

    @property
    def resolved(self) -> bool:
        """Whether nothing is left for calibration to choose (no ``"auto"``, scales named)."""
        return AUTO not in (self.response, self.image_score) and self.scales is not None


@settings
class DecisionConfig:
    """The one-class image verdict and the pixel mask threshold.

    ``one_class_model`` names a registered one-class model
    (:mod:`radar_ad.one_class`); ``n_estimators`` is the isolation forest's
    tree count, ``n_neighbors`` the neighbourhood of the local outlier factor
    and of the k-nearest-neighbour model.

    The verdict: with ``false_alarm_rate`` alpha, an image is anomalous when
    its conformal p-value is at most alpha, which keeps the share of normal
    images flagged at most alpha (the conformal guarantee; README "False
    alarms"). ``null``: the contamination rule, the one-class model's own
    threshold at ``contamination``, with no stated false-alarm rate. Either
    way the p-value ranks the one-class model's score.

    ``false_alarm_confidence`` 1 - gamma: the rate alpha holds with
    probability 1 - gamma over the draw of the conformal images, not only on
    average: the verdict flags ``p <= alpha'`` for the largest attainable
    ``alpha' <= alpha`` whose Beta quantile says so
    (:func:`radar_ad.decision.confident_rate`); ``null``: the average
    guarantee. ``drift_delta``: the drift alarm's chance of ever firing
    while the line is unchanged; ``drift_defect_share``: the largest share
    of defective images on an ordinary day, which the alarm takes in its
    stride (:mod:`radar_ad.drift`).
    """

    section: ClassVar[str] = "decision"
    one_class_model: str = "isolation_forest"
    false_alarm_rate: float | None = 0.05
    false_alarm_confidence: float | None = None
    drift_delta: float = 0.01
    drift_defect_share: float = 0.1
    contamination: float = 0.05
    n_estimators: int = 200
    n_neighbors: int = 20
    pixel_quantile: float = 0.999
    non_finite: str = "error"

    def validate(self) -> None:
        ONE_CLASS_MODELS.check(self.one_class_model)
        _require(self.false_alarm_rate is None or 0 < self.false_alarm_rate <= 0.5,
                 "decision.false_alarm_rate", "null (the contamination rule) or in (0, 0.5]",
                 self.false_alarm_rate)
        _require(self.false_alarm_confidence is None or (
            isinstance(self.false_alarm_confidence, float) and 0.5 <= self.false_alarm_confidence <= 0.999),
            "decision.false_alarm_confidence", "null (the rate on average) or in [0.5, 0.999]",
            self.false_alarm_confidence)
        _require(isinstance(self.drift_delta, float) and 1e-6 <= self.drift_delta <= 0.5, "decision.drift_delta",
                 "in [1e-6, 0.5]", self.drift_delta)
        _require(isinstance(self.drift_defect_share, float) and 0 <= self.drift_defect_share <= 0.9,
                 "decision.drift_defect_share", "in [0, 0.9]", self.drift_defect_share)
        _require(0 < self.contamination <= 0.5, "decision.contamination", "in (0, 0.5]",
                 self.contamination)
        _int_in(self.n_estimators, 1, MAX_ESTIMATORS, "decision.n_estimators")
        _int_in(self.n_neighbors, 1, MAX_NEIGHBORS, "decision.n_neighbors")
        _require(self.non_finite in NON_FINITE_POLICIES, "decision.non_finite",
                 choices(NON_FINITE_POLICIES), self.non_finite)
        _require(0 < self.pixel_quantile < 1, "decision.pixel_quantile", "in (0, 1)",
                 self.pixel_quantile)


@settings
class RadarConfig:
    """All settings of a RADAR model. ``seed`` seeds every random draw."""

    section: ClassVar[str] = ""
    patch_size: int = 28
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)

    def validate(self) -> RadarConfig:
        levels = len(self.network.block_out_channels)
        factor = 2 ** (levels - 1)
        _int_in(self.seed, 0, MAX_SEED, "seed")
        for part in (self.data, self.network, self.train, self.inference, self.decision):
            part.validate()
        _require(isinstance(self.patch_size, int) and 8 <= self.patch_size <= MAX_PATCH_SIZE
                 and self.patch_size % factor == 0, "patch_size",
                 f"an integer in [8, {MAX_PATCH_SIZE}] divisible by {factor} (the U-Net halves it "
                 f"{levels - 1} times)", self.patch_size)
        _require(self.inference.timestep < self.network.num_train_timesteps,
                 "inference.timestep", f"< network.num_train_timesteps "
                 f"({self.network.num_train_timesteps})", self.inference.timestep)
        _require(self.inference.scales is None or set(self.inference.scales) <= set(self.network.scales),
                 "inference.scales", f"levels of network.scales {list(self.network.scales)}", self.inference.scales)
        levels_read = self.inference.scales or self.network.scales
        _require(self.inference.map_scales is None or self.inference.map_scales == levels_read[
            :len(self.inference.map_scales)], "inference.map_scales",
            f"the first levels of inference.scales (or of network.scales) {list(levels_read)}",
            self.inference.map_scales)
        _require((self.train.defect_share > 0) == self.network.repair, "train.defect_share",
                 "above 0 for a network with a repair output, 0 without one (network.repair: false)",
                 self.train.defect_share)
        _require(self.stride <= self.patch_size, "inference.stride",
                 f"<= patch_size ({self.patch_size}) so patches cover the image",
                 self.inference.stride)
        return self

    @property
    def stride(self) -> int:
        """The inference tiling stride in pixels (``inference.stride``, or
        the patch size when that is null)."""
        return self.inference.stride or self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # a dataclass, made by settings()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadarConfig:
        """Build from a (possibly partial) dict; unknown keys are an error,
        so a typo in a config file never passes silently."""
        if not isinstance(data, dict):
            raise ConfigError("a config must be a JSON object")
        return _build(cls, data, "").validate()

    def updated(self, overrides: dict[str, Any]) -> RadarConfig:
        """A copy with dotted-key overrides, e.g. ``{"train.steps": 500}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown setting {key!r}", setting=key)
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"unknown setting {key!r}", setting=key)
            node[leaf] = value
        return RadarConfig.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def changes(self, other: RadarConfig) -> list[str]:
        """The dotted names of the settings whose values differ in ``other``."""
        return _changes(self.to_dict(), other.to_dict(), "")

    @classmethod
    def from_file(cls, path: str | Path) -> RadarConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        return cls.from_dict(data)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting {prefix + unknown[0]!r}; known: "
                          + ", ".join(prefix + k for k in known))
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix + name} must be an object")
            kwargs[name] = _build(type(current), value, f"{prefix}{name}.")
        elif isinstance(current, tuple) or (current is None and "tuple" in str(known[name].type)):
            if value is None and current is None:
                kwargs[name] = None
                continue
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{prefix + name} must be a list, got {value!r}")
            kwargs[name] = tuple(value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{prefix + name} must be true or false, got {value!r}")
            kwargs[name] = value
        elif isinstance(current, float) or (current is None and "float" in str(known[name].type)):
            if value is None and "None" in str(known[name].type):
                kwargs[name] = None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{prefix + name} must be a number, got {value!r}")
            else:
                kwargs[name] = float(value)
        elif isinstance(current, int) or current is None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{prefix + name} must be an integer, got {value!r}")
            kwargs[name] = value
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _changes(a: dict[str, Any], b: dict[str, Any], prefix: str) -> list[str]:
    changed = []
    for key, value in a.items():
        if isinstance(value, dict):
            changed += _changes(value, b[key], f"{prefix}{key}.")
        elif value != b[key]:
            changed.append(prefix + key)
    return changed
