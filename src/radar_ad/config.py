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

import copy
import json
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

from .deprecation import warn_renamed
from .errors import ConfigError
from .registry import ONE_CLASS_MODELS, RESPONSES, choices
from .settings import PluginSettings, as_dict, build, described, int_in, optional_int_in, require, settings

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
MAX_NEIGHBORS = 10_000
MAX_SELECTION_COPIES = 64
MAX_MAP_SIGMAS = 8
# the two_sided map's smoothings: octaves from the finest detail to a sixteenth of a 256 px image
MAP_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
# Settings that moved into a plug-in's own section: old dotted key -> new one.
# Config files and model files of format 4 use the old keys.
MOVED_SETTINGS = {
    **{f"inference.segmentation_{name}": f"inference.responses.segmentation.{name}"
       for name in ("examples", "steps", "width", "crop", "sigma")},
    "decision.n_estimators": "decision.one_class_models.isolation_forest.n_estimators",
}


def _check_scales(scales: Any, name: str) -> None:
    require(isinstance(scales, tuple) and 1 <= len(scales) <= MAX_LEVELS and all(
        isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SCALE for s in scales)
        and list(scales) == sorted(set(scales)), name,
        f"a list of 1 to {MAX_LEVELS} increasing integers in [1, {MAX_SCALE}] (downsampling factors)", scales)

@settings
class DataConfig:
    """How images are read. ``resize`` scales the longer side to that many
    pixels (aspect kept); ``None`` keeps native size."""

    section: ClassVar[str] = "data"
    grayscale: bool = described(True, "Read images as grayscale; false reads RGB (`radar train --rgb`).")
    resize: int | None = described(None, "Scale the longer side to this many pixels (aspect kept); null keeps the "
                                         "native size.")

    def validate(self) -> None:
        optional_int_in(self.resize, 8, MAX_RESIZE, "data.resize", "native size")


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
    block_out_channels: tuple[int, ...] = described((16, 32, 32), "U-Net widths per level.")
    attention: tuple[bool, ...] = described((False, False, True), "Attention blocks per level (finest first; by "
                                                                  "default at the coarsest level, 7 px).")
    layers_per_block: int = described(1, "ResNet blocks per level.")
    attention_head_dim: int = described(8, "Channels per attention head.")
    norm_num_groups: int = described(8, "GroupNorm groups.")
    num_train_timesteps: int = described(1000, "T, the number of DDPM timesteps.")
    beta_schedule: str = described("linear", "DDPM noise schedule.")
    beta_start: float = described(1e-4, "DDPM schedule: the first beta.")
    beta_end: float = described(0.02, "DDPM schedule: the last beta.")
    scales: tuple[int, ...] = described((1, 2, 4), "The pyramid levels the network learns (downsampling factors), each"
                                                   " a class label of the one network.")
    repair: bool = described(True, "A second output per channel: the repair of a defective patch, learned from "
                                   "synthetic defects.")

    def validate(self) -> None:
        _check_scales(self.scales, "network.scales")
        require(isinstance(self.repair, bool), "network.repair", "true or false", self.repair)
        require(1 <= len(self.block_out_channels) <= MAX_LEVELS and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 < c <= MAX_CHANNELS
            for c in self.block_out_channels),
            "network.block_out_channels", f"a list of 1 to {MAX_LEVELS} integers in [1, {MAX_CHANNELS}]",
            self.block_out_channels)
        require(all(isinstance(a, bool) for a in self.attention), "network.attention",
                 "a list of booleans", self.attention)
        int_in(self.norm_num_groups, 1, MAX_CHANNELS, "network.norm_num_groups")
        int_in(self.attention_head_dim, 1, MAX_CHANNELS, "network.attention_head_dim")
        require(len(self.attention) == len(self.block_out_channels),
                 "network.attention", "one boolean per entry of block_out_channels",
                 self.attention)
        require(all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
                 "network.norm_num_groups", "a divisor of every block_out_channels entry",
                 self.norm_num_groups)
        int_in(self.layers_per_block, 1, MAX_LAYERS_PER_BLOCK, "network.layers_per_block")
        int_in(self.num_train_timesteps, 2, MAX_TIMESTEPS, "network.num_train_timesteps")
        require(self.beta_schedule in BETA_SCHEDULES, "network.beta_schedule", choices(BETA_SCHEDULES),
                 self.beta_schedule)
        require(0 < self.beta_start < self.beta_end < 1, "network.beta_start/beta_end",
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
    steps: int = described(2000, "Optimiser steps.")
    batch_size: int = described(64, "Patches per step.")
    learning_rate: float = described(1e-3, "AdamW learning rate (linear warm-up, cosine decay to 10 %).")
    weight_decay: float = described(1e-4, "AdamW weight decay.")
    warmup_steps: int = described(100, "Steps of linear learning-rate warm-up.")
    ema_decay: float = described(0.0, "EMA of the weights (0 = off; e.g. 0.999 for long runs).")
    max_timestep: int | None = described(None, "Draw training timesteps below this (null: all T, the standard "
                                               "objective).")
    checkpoint_every: int = described(500, "Steps between checkpoints.")
    calibration_fraction: float = described(0.15, "Normal images held out for calibration.")
    calibrate_on_training: bool = described(False, "The paper's protocol: calibrate on the training images.")
    conformal_fraction: float = described(0.2, "Normal images held out from everything and only scored, for the "
                                               "p-values (shrinks to what a small folder allows).")
    conformal_size: int | None = described(None, "Exactly this many conformal images instead (an error when the folder"
                                                 " is too small).")
    defect_share: float = described(0.25, "Share of training patches with a synthetic defect (the repair's target; "
                                          "their noise is left out of the noise loss); 0 (with `network.repair: "
                                          "false`): the plain DDPM objective.")

    def validate(self) -> None:
        int_in(self.steps, 1, MAX_STEPS, "train.steps")
        require(0 <= self.defect_share <= 0.9, "train.defect_share", "in [0, 0.9] (0: no synthetic defects)",
                 self.defect_share)
        int_in(self.batch_size, 1, MAX_BATCH_SIZE, "train.batch_size")
        require(0 < self.learning_rate <= 1, "train.learning_rate", "in (0, 1]", self.learning_rate)
        require(0 <= self.weight_decay <= 1, "train.weight_decay", "in [0, 1]", self.weight_decay)
        int_in(self.warmup_steps, 0, MAX_STEPS, "train.warmup_steps")
        require(0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1) (0 turns EMA off)",
                 self.ema_decay)
        optional_int_in(self.max_timestep, 1, MAX_TIMESTEPS, "train.max_timestep", "every timestep")
        int_in(self.checkpoint_every, 1, MAX_STEPS, "train.checkpoint_every")
        require(0 < self.calibration_fraction < 1, "train.calibration_fraction",
                 "in (0, 1)", self.calibration_fraction)
        require(0 <= self.conformal_fraction <= 0.5, "train.conformal_fraction",
                 "in [0, 0.5] (0: no conformal split)", self.conformal_fraction)
        require(self.conformal_size is None or 0 <= self.conformal_size <= MAX_CONFORMAL_SIZE,
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
    the largest of its Gaussian smoothings of ``map_sigmas`` px, each in
    units of its normal high quantile (one smoothing of ``map_sigma`` px
    when ``map_sigmas`` is empty). ``"sobel"`` is the paper's
    response, ``"energy"`` the deficit part alone. ``"repair"`` (never
    chosen by ``"auto"``) measures how far the one-step repair moves each
    pixel against its normal level, per level, with the map of
    ``"two_sided"``. ``"segmentation"`` is a
    small convolutional head on the image and every level's noise and
    repair, trained on synthetic defective copies of calibration images.
    ``responses``: each response's own settings, under its name (e.g.
    ``inference.responses.segmentation.width``); the settings above are
    those several responses read. ``feature_norm`` "rms" divides
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
    timestep: int = described(0, "0-based; 0 is the first forward step x_1.")
    stride: int | None = described(None, "Tiling stride; null: the patch size (touching patches).")
    draws: int = described(1, "Average the noise map over K seeded noise draws.")
    batch_size: int = described(256, "Patches per network call.")
    blur_ksize: int = described(5, "Blur kernel size of the Sobel response.")
    sobel_ksize: int = described(5, "Sobel kernel size.")
    window: int = described(20, "Window of the window-maximum features.")
    window_stride: int = described(20, "Stride of the window-maximum features.")
    feature_norm: str = described("rms", "\"sobel\" response only: \"rms\" (size-independent) or \"sum\" (the paper's "
                                         "raw L2).")
    response: str = described(AUTO, "\"auto\": chosen at calibration by self-validation on synthetic defects; or a "
                                    "registered response: \"two_sided\": Sobel response above and local noise energy "
                                    "below their normal levels, per pyramid level; \"sobel\": the paper's response "
                                    "only; \"energy\": the noise-energy deficit only; \"repair\" (by name only): the "
                                    "one-step repair's magnitude above its normal level, per pyramid level; "
                                    "\"segmentation\": a small head on the image and every level's noise and repair, "
                                    "trained on synthetic defects.")
    scales: tuple[int, ...] | None = described(None, "The pyramid levels the response reads; null: chosen at "
                                                     "calibration (a per-level response: the first level, the first "
                                                     "two ... all; \"segmentation\": all).")
    map_scales: tuple[int, ...] | None = described(None, "The first levels of `scales` whose maps make the pixel map "
                                                         "and the mask (the image features read them all); null: all, "
                                                         "or chosen by the self-validation on its synthetic defects' "
                                                         "pixels (a per-level response).")
    image_score: str = described(AUTO, "How the map becomes the image's score: \"features\": the response's features "
                                       "through the one-class model; \"max\": the largest mean of the map over "
                                       "`score_window` px squares; \"robust_max\": the same on the map standardised by"
                                       " its own median and MAD; \"auto\": chosen with the response.")
    score_window: int = described(11, 'The square (px) of "max" and "robust_max".')
    energy_window: int = described(9, 'Window (px) of the local noise energy ("two_sided", "energy").')
    map_sigma: float = described(8.0, 'Gaussian smoothing (px) of the pixel map ("energy"; "two_sided" and '
                                      '"repair" when `map_sigmas` is empty).')
    map_sigmas: tuple[float, ...] = described(
        MAP_SIGMAS, 'The pixel map of "two_sided" and "repair" at several smoothings (px): each smoothed map in '
                    'units of its own high quantile on the normal calibration images, and the map their maximum, so '
                    'a small defect stays sharp and a large faint one fills in; empty: one smoothing of `map_sigma` '
                    'px.')
    selection_copies: int = described(2, "Self-validation: synthetic defective copies of each held-out calibration "
                                         "image.")
    precision: str = described("float32", "The number format of the network through PyTorch: \"bfloat16\" runs it "
                                          "under autocast (fast where the CPU has AVX-512 BF16 or AMX); calibration, "
                                          "thresholds and p-values come from the same path; the exported graphs (ONNX "
                                          "Runtime, OpenVINO) run float32 only and refuse such a model.")
    responses: PluginSettings = field(default_factory=lambda: PluginSettings(RESPONSES, "inference.responses"))

    def validate(self) -> None:
        int_in(self.timestep, 0, MAX_TIMESTEPS - 1, "inference.timestep")
        optional_int_in(self.stride, 1, MAX_PATCH_SIZE, "inference.stride", "the patch size")
        int_in(self.draws, 1, MAX_DRAWS, "inference.draws")
        int_in(self.batch_size, 1, MAX_BATCH_SIZE, "inference.batch_size")
        require(self.blur_ksize in (1, 3, 5, 7, 9, 11), "inference.blur_ksize",
                 "an odd integer from 1 to 11", self.blur_ksize)
        require(self.sobel_ksize in (3, 5, 7), "inference.sobel_ksize", "3, 5 or 7",
                 self.sobel_ksize)
        int_in(self.window, 1, MAX_WINDOW, "inference.window")
        int_in(self.window_stride, 1, MAX_WINDOW, "inference.window_stride")
        require(self.feature_norm in FEATURE_NORMS, "inference.feature_norm", choices(FEATURE_NORMS),
                 self.feature_norm)
        require(self.response == AUTO or (isinstance(self.response, str) and self.response in RESPONSES.names()),
                 "inference.response", f"{AUTO} (chosen at calibration) or {RESPONSES.choices()}", self.response)
        if self.scales is not None:
            _check_scales(self.scales, "inference.scales")
        if self.map_scales is not None:
            _check_scales(self.map_scales, "inference.map_scales")
        require(self.image_score in IMAGE_SCORES, "inference.image_score", choices(IMAGE_SCORES),
                 self.image_score)
        int_in(self.score_window, 1, MAX_WINDOW, "inference.score_window")
        int_in(self.energy_window, 1, MAX_WINDOW, "inference.energy_window")
        require(0 <= self.map_sigma <= 64, "inference.map_sigma", "in [0, 64] (0: no smoothing)",
                 self.map_sigma)
        require(isinstance(self.map_sigmas, tuple) and len(self.map_sigmas) <= MAX_MAP_SIGMAS and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 64 for s in self.map_sigmas)
            and list(self.map_sigmas) == sorted(set(self.map_sigmas)), "inference.map_sigmas",
            f"a list of at most {MAX_MAP_SIGMAS} increasing numbers in (0, 64]", self.map_sigmas)
        int_in(self.selection_copies, 1, MAX_SELECTION_COPIES, "inference.selection_copies")
        require(self.precision in PRECISIONS, "inference.precision", choices(PRECISIONS), self.precision)

    @property
    def resolved(self) -> bool:
        """Whether nothing is left for calibration to choose (no ``"auto"``, scales named)."""
        return AUTO not in (self.response, self.image_score) and self.scales is not None


@settings
class DecisionConfig:
    """The one-class image verdict and the pixel mask threshold.

    ``one_class_model`` names a registered one-class model
    (:mod:`radar_ad.one_class`); ``n_neighbors`` is the neighbourhood of
    the local outlier factor and of the k-nearest-neighbour model;
    ``one_class_models``: each model's own settings, under its name (e.g.
    ``decision.one_class_models.isolation_forest.n_estimators``).

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
    one_class_model: str = described("isolation_forest", "A registered one-class model: \"isolation_forest\", "
                                                         "\"local_outlier_factor\" or \"knn\" (distance to the k-th "
                                                         "nearest calibration image's features).")
    false_alarm_rate: float | None = described(0.05, "Anomalous when the conformal p-value is at most this (alpha): at"
                                                     " most this share of normal images flagged; null: the "
                                                     "contamination rule.")
    false_alarm_confidence: float | None = described(None, "1 - gamma: the false-alarm rate holds with this "
                                                           "probability over the draw of the conformal images, not "
                                                           "only on average (the verdict flags p <= alpha' for the "
                                                           "largest attainable alpha' <= `false_alarm_rate` whose Beta"
                                                           " quantile says so); null: the average guarantee.")
    drift_delta: float = described(0.01, "The drift alarm's chance of ever firing while the line is unchanged "
                                         "(`radar_ad.drift`, `radar drift`).")
    drift_defect_share: float = described(0.1, "The largest share of defective images on an ordinary day: the drift "
                                               "alarm takes it in its stride and fires when more images are flagged "
                                               "than it and the false-alarm rate explain.")
    contamination: float = described(0.05, "The one-class model's own threshold (the rule when `false_alarm_rate` is "
                                           "null): share of normal calibration images it lets through as anomalous.")
    n_neighbors: int = described(20, 'Neighbours of LocalOutlierFactor and of "knn" (k).')
    pixel_quantile: float = described(0.999, "Mask threshold as a quantile of normal pixels.")
    non_finite: str = described("error", "An image whose score is not a number (a broken image or model): an error (an"
                                         " error row in `detect`/`watch`, 422 in `serve`, `NonFiniteError` in Python) "
                                         "or, fail-safe, \"anomalous\"; never \"normal\".")
    one_class_models: PluginSettings = field(
        default_factory=lambda: PluginSettings(ONE_CLASS_MODELS, "decision.one_class_models"))

    def validate(self) -> None:
        ONE_CLASS_MODELS.check(self.one_class_model)
        require(self.false_alarm_rate is None or 0 < self.false_alarm_rate <= 0.5,
                 "decision.false_alarm_rate", "null (the contamination rule) or in (0, 0.5]",
                 self.false_alarm_rate)
        require(self.false_alarm_confidence is None or (
            isinstance(self.false_alarm_confidence, float) and 0.5 <= self.false_alarm_confidence <= 0.999),
            "decision.false_alarm_confidence", "null (the rate on average) or in [0.5, 0.999]",
            self.false_alarm_confidence)
        require(isinstance(self.drift_delta, float) and 1e-6 <= self.drift_delta <= 0.5, "decision.drift_delta",
                 "in [1e-6, 0.5]", self.drift_delta)
        require(isinstance(self.drift_defect_share, float) and 0 <= self.drift_defect_share <= 0.9,
                 "decision.drift_defect_share", "in [0, 0.9]", self.drift_defect_share)
        require(0 < self.contamination <= 0.5, "decision.contamination", "in (0, 0.5]",
                 self.contamination)
        int_in(self.n_neighbors, 1, MAX_NEIGHBORS, "decision.n_neighbors")
        require(self.non_finite in NON_FINITE_POLICIES, "decision.non_finite",
                 choices(NON_FINITE_POLICIES), self.non_finite)
        require(0 < self.pixel_quantile < 1, "decision.pixel_quantile", "in (0, 1)",
                 self.pixel_quantile)


@settings
class RadarConfig:
    """All settings of a RADAR model. ``seed`` seeds every random draw."""

    section: ClassVar[str] = ""
    patch_size: int = described(28, "Patch side in pixels (the paper's); must be divisible by 2^(levels - 1).")
    seed: int = described(0, "Seeds every random draw: split, initialisation, patches, timesteps, noise, one-class "
                             "model.")
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)

    def validate(self) -> RadarConfig:
        levels = len(self.network.block_out_channels)
        factor = 2 ** (levels - 1)
        int_in(self.seed, 0, MAX_SEED, "seed")
        for part in (self.data, self.network, self.train, self.inference, self.decision):
            part.validate()
        require(isinstance(self.patch_size, int) and 8 <= self.patch_size <= MAX_PATCH_SIZE
                 and self.patch_size % factor == 0, "patch_size",
                 f"an integer in [8, {MAX_PATCH_SIZE}] divisible by {factor} (the U-Net halves it "
                 f"{levels - 1} times)", self.patch_size)
        require(self.inference.timestep < self.network.num_train_timesteps,
                 "inference.timestep", f"< network.num_train_timesteps "
                 f"({self.network.num_train_timesteps})", self.inference.timestep)
        require(self.inference.scales is None or set(self.inference.scales) <= set(self.network.scales),
                 "inference.scales", f"levels of network.scales {list(self.network.scales)}", self.inference.scales)
        levels_read = self.inference.scales or self.network.scales
        require(self.inference.map_scales is None or self.inference.map_scales == levels_read[
            :len(self.inference.map_scales)], "inference.map_scales",
            f"the first levels of inference.scales (or of network.scales) {list(levels_read)}",
            self.inference.map_scales)
        require((self.train.defect_share > 0) == self.network.repair, "train.defect_share",
                 "above 0 for a network with a repair output, 0 without one (network.repair: false)",
                 self.train.defect_share)
        require(self.stride <= self.patch_size, "inference.stride",
                 f"<= patch_size ({self.patch_size}) so patches cover the image",
                 self.inference.stride)
        reads = "noise" if self.inference.response == AUTO else getattr(
            RESPONSES.get(self.inference.response), "reads", "noise")
        require(reads != "repair" or self.network.repair, "inference.response",
                 "a response that reads the predicted noise: this network has no repair output (network.repair: "
                 "false)", self.inference.response)
        return self

    @property
    def stride(self) -> int:
        """The inference tiling stride in pixels (``inference.stride``, or
        the patch size when that is null)."""
        return self.inference.stride or self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadarConfig:
        """Build from a (possibly partial) dict; unknown keys are an error,
        so a typo in a config file never passes silently."""
        if not isinstance(data, dict):
            raise ConfigError("a config must be a JSON object")
        return build(cls, _moved_to_plugins(data), "").validate()

    def updated(self, overrides: dict[str, Any]) -> RadarConfig:
        """A copy with dotted-key overrides, e.g. ``{"train.steps": 500}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key in MOVED_SETTINGS:
                warn_renamed(f"the setting {key}", MOVED_SETTINGS[key])
                key = MOVED_SETTINGS[key]
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

def _moved_to_plugins(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the settings of :data:`MOVED_SETTINGS` at their new
    places (a config of model format 4); a setting given at both places is
    an error."""
    data = copy.deepcopy(data)
    for old, new in MOVED_SETTINGS.items():
        section, name = old.split(".")
        part = data.get(section)
        if not isinstance(part, dict) or name not in part:
            continue
        _, *between, leaf = new.split(".")
        node = part
        for step in between:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{new.rsplit('.', 1)[0]} must be an object")
        if leaf in node:
            raise ConfigError(f"{old} and {new} are one setting; give it once, as {new}", setting=new)
        node[leaf] = part.pop(name)
    return data

def _changes(a: dict[str, Any], b: dict[str, Any], prefix: str) -> list[str]:
    changed = []
    for key, value in a.items():
        if isinstance(value, dict):
            changed += _changes(value, b[key], f"{prefix}{key}.")
        elif value != b[key]:
            changed.append(prefix + key)
    return changed
