"""``Radar``: the method's orchestration, built from parts a reader can name.

Fitting reads like the method: load normal images -> hold out calibration
and conformal images -> train the patch diffusion network on every pyramid
level -> whatever the config leaves open (response, levels, image score)
chosen by self-validation on synthetic defects in the calibration images
(:mod:`radar_ad.selection`) -> the one-step evidence of the held-out images
(the backend, every level) -> the response learned and fitted on the
calibration evidence -> image features -> one-class decision and pixel
threshold fitted on the calibration images, scored on the conformal ones for
p-values. Prediction runs the same stages on a new image.

A fitted ``Radar`` is made of:

- ``network_``: the trained PyTorch U-Net (:class:`~radar_ad.backend.TorchBackend`;
  ``None`` for a model opened from an exported file);
- ``backend_``: the engine that predicts the noise (the network itself, or
  ONNX Runtime, OpenVINO ... built from it; :mod:`radar_ad.backend`);
- ``calibration_``: what was learned from normal held-out images
  (:class:`Calibration`: the fitted response, the one-class decision with
  its conformal scores, the pixel threshold and the self-validation's
  record), or ``None`` after a settings change that needs a new one.

Settings are immutable: :meth:`Radar.with_settings` returns a new model;
when the change affects the maps, that model asks for :meth:`Radar.calibrate`
before it predicts.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import __version__
from .backend import NOISE_SETTINGS, NoiseBackend, TorchBackend
from .config import RadarConfig
from .data import as_image_array, list_images, training_images
from .decision import MIN_CALIBRATION_IMAGES, ImageDecision, is_anomalous, pixel_threshold
from .drift import DriftMonitor
from .errors import (
    ConfigError,
    DataError,
    ModelError,
    NonFiniteError,
    NotCalibratedError,
    NotFittedError,
    RadarError,
    first_line,
)
from .network import build_scheduler, build_unet, pick_device
from .noise_map import Evidence, one_step_evidence
from .patches import PyramidSampler
from .persistence import (
    FORMAT,
    FORMAT_VERSION,
    Conformal,
    check_finite_numbers,
    check_model_target,
    checkpoint_dir,
    read_conformal,
    read_model_dir,
    replace_conformal,
    write_model_dir,
)
from .progress import progress_bar
from .registry import BACKENDS
from .response import EvidenceResponse, build_response, restore_response
from .selection import choose
from .training import DeviceStrategy, check_checkpoint_dir, images_digest, is_checkpoint_dir, train_unet

ImageLike = Any  # a path, a PIL image or a numpy array
# Images analysed together: their patches go through the network in shared
# batches, while maps of at most this many images are held at once.
IMAGES_PER_PASS = 8
# Settings a fitted model can change without a new calibration, and those
# whose change only needs the one-class model refitted on the stored features.
FREE_SETTINGS = frozenset({"inference.batch_size", "decision.non_finite", "decision.drift_delta",
                           "decision.drift_defect_share"})
DECISION_SETTINGS = frozenset({"decision.one_class_model", "decision.contamination", "decision.n_estimators",
                               "decision.n_neighbors", "decision.false_alarm_rate",
                               "decision.false_alarm_confidence"})
# Settings the trained network fixes: changing them means training again.
TRAINED_SETTINGS = ("network.", "train.", "patch_size", "data.grayscale")


@dataclass
class Prediction:
    """The result for one image.

    ``noise_map``: ``(C, H, W)`` predicted noise of the finest pyramid
    level the model reads; ``anomaly_map``: ``(H, W)``
    the response map (the pixel-level score); ``mask``: ``(H, W)`` bool,
    ``anomaly_map > pixel_threshold``; ``features``: the image features;
    ``image``: ``(C, H, W)`` in [0, 1], the input as the model saw it (after
    any resize), so maps and image line up pixel for pixel. ``p_value``: the
    conformal p-value of ``score`` (small = unlike the normal images; with
    ``decision.false_alarm_rate`` alpha the verdict is ``p_value <= alpha``),
    ``None`` for a model without conformal images.
    """

    score: float
    is_anomalous: bool
    threshold: float
    pixel_threshold: float
    features: np.ndarray
    noise_map: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    p_value: float | None = None

    @property
    def verdict(self) -> str:
        """``"anomalous"`` or ``"normal"``."""
        return "anomalous" if self.is_anomalous else "normal"


@dataclass(frozen=True)
class Calibration:
    """What a model learned from normal held-out images; ``conformal_info``
    says where its conformal images came from, ``selection`` how the
    self-validation chose the response, levels and image score (``None``
    when the config named them all)."""

    response: EvidenceResponse
    decision: ImageDecision
    pixel_threshold: float
    conformal_info: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] | None = None


@dataclass
class StreamedPrediction:
    """One item of :func:`stream_predictions`: its position, the item, its
    prediction and the seconds per image of the chunk it was predicted in;
    with ``keep_going``, an item that could not be predicted has
    ``prediction`` None and ``error`` the one-line reason."""

    index: int
    item: Any
    prediction: Any
    seconds: float
    error: str | None = None


def stream_predictions(predict: Callable[[list[Any]], list[Any]], items: Sequence[Any],
                       chunk_size: int = IMAGES_PER_PASS, keep_going: bool = False) -> Iterator[StreamedPrediction]:
    """Predict ``items`` ``chunk_size`` at a time, in order, yielding each
    prediction as soon as its chunk is done: memory stays at one chunk's maps
    whatever the number of items. ``predict`` is ``Radar.predict_many`` or any
    function of the same shape (a baseline's).

    ``keep_going``: an item that fails with a :class:`RadarError` (unreadable,
    too small, a non-finite score) becomes a streamed item with its
    ``error``, and the batch goes on (a failing chunk is retried item by
    item, so one bad file costs its neighbours nothing but time)."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}", setting="chunk_size")
    for start in range(0, len(items), chunk_size):
        chunk = list(items[start:start + chunk_size])
        began = time.perf_counter()
        try:
            predictions: list[Any] = predict(chunk)
            errors: list[str | None] = [None] * len(chunk)
        except RadarError as exc:
            if not keep_going:
                raise
            predictions, errors = [], []
            for item in chunk if len(chunk) > 1 else []:
                try:
                    predictions.append(predict([item])[0])
                    errors.append(None)
                except RadarError as one:
                    predictions.append(None)
                    errors.append(first_line(one))
            if len(chunk) == 1:
                predictions, errors = [None], [first_line(exc)]
        seconds = (time.perf_counter() - began) / max(1, len(chunk))
        for offset, (item, prediction, error) in enumerate(zip(chunk, predictions, errors)):
            yield StreamedPrediction(start + offset, item, prediction, seconds, error)


class Radar:
    """Reconstruction-free anomaly detection with a patch diffusion model.

    ``Radar(config)`` only stores settings; :meth:`fit` learns and returns
    ``self``; :meth:`predict` before that raises :class:`NotFittedError`.
    """

    def __init__(self, config: RadarConfig | None = None, device: str | None = None) -> None:
        self.config = config if config is not None else RadarConfig()
        self.device = device

    # ------------------------------------------------------------ the parts
    def check_fitted(self, calibrated: bool = True) -> None:
        """The one not-fitted check: a network (and, with ``calibrated``, a
        calibration for the current settings) or a clear error saying which call is missing."""
        if getattr(self, "backend_", None) is None:
            raise NotFittedError("this Radar model is not fitted: call fit() or Radar.load() first")
        if calibrated and self.calibration_ is None:
            raise NotCalibratedError(f"{self.stale_setting_} changed since this model was calibrated; "
                                     "call calibrate(normal_images) first", setting=self.stale_setting_)

    @property
    def backend(self) -> str:
        """The name of the backend that predicts the noise."""
        self.check_fitted(calibrated=False)
        return self.backend_.name

    @property
    def unet(self) -> torch.nn.Module:
        """The trained diffusers ``UNet2DModel`` (for methods that run the
        network themselves, such as the reconstruction baselines)."""
        self.check_fitted(calibrated=False)
        if self.network_ is None:
            raise ModelError(f"a model opened from an exported file runs on {self.backend_.label} and has no "
                             "PyTorch network; load the model directory it was exported from instead")
        return self.network_.unet

    @property
    def response_(self) -> EvidenceResponse:
        self.check_fitted()
        return self.calibration_.response  # type: ignore[union-attr]

    @property
    def decision_(self) -> ImageDecision:
        self.check_fitted()
        return self.calibration_.decision  # type: ignore[union-attr]

    @property
    def pixel_threshold_(self) -> float:
        self.check_fitted()
        return self.calibration_.pixel_threshold  # type: ignore[union-attr]

    def _learned(self, network: TorchBackend | None, backend: NoiseBackend, channels: int,
                 training: dict[str, Any], calibration: Calibration | None, stale: str | None = None) -> Radar:
        self.network_ = network
        self.backend_ = backend
        self.channels_ = int(channels)
        self.training_ = training
        self.calibration_ = calibration
        self.stale_setting_ = stale
        return self

    # ----------------------------------------------------------------- fit
    def fit(self, source: str | Path | Sequence[ImageLike], *, progress: bool = True,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            strategy: DeviceStrategy | None = None) -> Radar:
        """Learn from normal images: a folder, an MVTec category (its
        ``train/good``), or a sequence of images. Returns ``self``.

        Settings the config leaves to calibration (``inference.response``
        ``"auto"``, ``inference.scales`` null, ``inference.image_score``
        ``"auto"``) are chosen by self-validation (:mod:`radar_ad.selection`):
        afterwards ``config`` names what was chosen, and
        :meth:`selection` says how.

        ``strategy`` runs the training loop elsewhere than on this model's
        device (e.g. data-parallel over several processes); see
        :class:`~radar_ad.training.DeviceStrategy`. Only its main process
        calibrates: on the others the model ends trained but not calibrated."""
        config = self.config
        images = self._load_training_images(source, progress)
        channels = images[0].shape[0]
        split = calibration_split(len(images), config)
        device = strategy.device if strategy is not None else pick_device(self.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet = build_unet(config.network, channels, config.patch_size)
        scheduler = build_scheduler(config.network)
        sampler = PyramidSampler([torch.from_numpy(images[i]) for i in split.train], config.patch_size,
                                 config.network.scales)
        result = train_unet(unet, scheduler, sampler, config, strategy or device,
                            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                            resume=resume, progress=progress, images=images_digest(images))
        network = TorchBackend(unet, config, channels)
        training = {
            "n_images": len(images), "n_train": len(split.train), "n_calibration": len(split.calibration),
            "n_conformal": len(split.conformal),
            "stride1_patches": sampler.n_patches, "steps": result.steps,
            "seconds": round(result.seconds, 2), "final_loss": result.final_loss,
            "patches_per_second": round(result.patches_per_second, 1),
            "resumed_from": result.resumed_from, "device": str(device),
            "radar_ad_version": __version__,
        }
        if strategy is not None and strategy.world_size > 1:
            training.update(processes=strategy.world_size, mixed_precision=strategy.mixed_precision)
        self._learned(network, network, channels, training, None, "the network")
        if strategy is not None and not strategy.is_main:
            return self
        began = time.perf_counter()
        self.calibration_ = self._calibrate([images[i] for i in split.calibration],
                                            [images[i] for i in split.conformal], progress,
                                            {"source": "training split"})
        training["calibration_seconds"] = round(time.perf_counter() - began, 2)
        self.warn_false_alarms()
        return self

    def calibrate(self, images: Sequence[ImageLike], progress: bool = False,
                  conformal: Sequence[ImageLike] | None = None) -> Radar:
        """Refit the response, the one-class model and the pixel threshold on
        these normal images, keeping the network: after :meth:`with_settings`
        changed a setting that shapes the maps, or when the line's normal look
        drifts. The conformal images are ``conformal`` when given, else a
        seeded ``train.conformal_fraction`` share of ``images`` that the rest
        is fitted without. Settings left to calibration are chosen again
        (:meth:`fit`). Returns ``self``."""
        self.check_fitted(calibrated=False)
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        if conformal is None:
            split = calibration_split(len(arrays), self.config, network_trained=True)
            arrays, scored = [arrays[i] for i in split.calibration], [arrays[i] for i in split.conformal]
        else:
            scored = [as_image_array(im, self.config.data, self.config.patch_size) for im in conformal]
        if len(arrays) < MIN_CALIBRATION_IMAGES:
            raise DataError(f"need at least {MIN_CALIBRATION_IMAGES} normal images to calibrate, "
                            f"got {len(arrays)}")
        self.calibration_ = self._calibrate(arrays, scored, progress, {"source": "Radar.calibrate"})
        self.stale_setting_ = None
        self.warn_false_alarms()
        return self

    def calibrate_conformal(self, images: Sequence[ImageLike], progress: bool = False,
                            source: str = "Radar.calibrate_conformal") -> Radar:
        """Replace the conformal images, and nothing else, by these normal
        images (which nothing of the model may have been fitted on): the
        p-values and the false-alarm threshold follow the line's current
        normal look without retraining. Returns ``self``."""
        self.check_fitted()
        calibration: Calibration = self.calibration_  # type: ignore[assignment]
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        if not arrays:
            raise DataError("no normal images to calibrate the false-alarm rate on")
        features = self._features(calibration.response, arrays, progress, "scoring normal images")
        decision = ImageDecision(self.config.decision, self.config.seed, calibration.decision.model).fit(
            calibration.decision.calibration_features_, features)
        self.calibration_ = replace(calibration, decision=decision, conformal_info=self._stamp(source))
        self.warn_false_alarms()
        return self

    @staticmethod
    def _stamp(source: str) -> dict[str, str]:
        return {"source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def drift_monitor(self) -> DriftMonitor | None:
        """A drift monitor (:mod:`radar_ad.drift`) on this model's conformal
        scores and verdict threshold, alarming at ``decision.drift_delta`` and
        taking ``decision.drift_defect_share`` of defects in its stride;
        ``None`` for a model without conformal images."""
        self.check_fitted()
        decision = self.config.decision
        return DriftMonitor.for_decision(self.decision_, decision.drift_delta, decision.drift_defect_share,
                                         self.config.seed)

    def warn_false_alarms(self) -> None:
        """Warn (one line, :mod:`warnings`) when the false-alarm rule cannot
        flag any image with this model's conformal images."""
        line = self.decision_.warning()
        if line:
            warnings.warn(line, stacklevel=3)

    def _features(self, response: EvidenceResponse, arrays: list[np.ndarray], progress: bool,
                  desc: str) -> np.ndarray:
        features = [feats for groups in self._evidence_chunks(arrays, response.scales, progress, desc)
                    for _, _, feats in self._respond_in_order(response, groups)]
        return np.stack(features) if features else np.zeros((0, len(response.feature_names)))

    def _calibrate(self, arrays: list[np.ndarray], conformal: list[np.ndarray], progress: bool,
                   info: dict[str, str]) -> Calibration:
        learned: EvidenceResponse | None = None
        record: dict[str, Any] | None = None
        if not self.config.inference.resolved:
            selection = choose(self.config, arrays, self._evidence_many, self._evidence_of, progress)
            self.config = self.config.updated(selection.settings())
            learned, record = selection.response, selection.record()
        config = self.config
        response = learned or build_response(config)
        if response.learns_from_images and learned is None:
            response.learn(arrays, self._evidence_of, progress)
        chunks: Iterable[list[tuple[list[int], Evidence]]] = self._evidence_chunks(arrays, response.scales, progress,
                                                                                   "calibrating")
        if response.needs_fit:
            # the response is measured against statistics of these very maps,
            # so they are all computed (and held, float32) first
            chunks = [[(indices, evidence.to("cpu")) for indices, evidence in groups] for groups in chunks]
            response.fit([evidence for groups in chunks for _, evidence in groups])
        maps, features = [], []
        for groups in chunks:
            for _, anomaly, feats in self._respond_in_order(response, groups):
                maps.append(anomaly)
                features.append(feats)
        # the conformal images only get scored: nothing above saw them
        conformal_features = self._features(response, conformal, progress, "scoring conformal images")
        decision = ImageDecision(config.decision, config.seed, response.one_class_model).fit(
            np.stack(features), conformal_features)
        return Calibration(response, decision, pixel_threshold(maps, config.decision.pixel_quantile),
                           {**self._stamp(info["source"]), **info}, record)

    def selection(self) -> dict[str, Any] | None:
        """How calibration chose the settings the config left open: what was
        asked, every candidate's image and pixel AUROC on synthetic defects
        in held-out calibration images, the choice (``None`` when the config
        named them all)."""
        self.check_fitted()
        return self.calibration_.selection  # type: ignore[union-attr]

    def requested_config(self) -> RadarConfig:
        """The config as it was given, before calibration chose what it left
        open (``config`` itself when it named everything)."""
        record = self.selection()
        return self.config if record is None else self.config.updated(record["requested"])

    def _load_training_images(self, source: Any, progress: bool) -> list[np.ndarray]:
        items = training_images(source) if isinstance(source, (str, Path)) else list(source)
        if not items:
            raise DataError("no training images given")
        loaded = [as_image_array(item, self.config.data, self.config.patch_size)
                  for item in progress_bar(items, enabled=progress and len(items) >= 50, desc="loading")]
        calibration_split(len(loaded), self.config)  # enough images for the split, or a DataError now
        return loaded

    # ------------------------------------------------------------ settings
    def with_settings(self, overrides: dict[str, Any]) -> Radar:
        """A new model with dotted-key setting changes, sharing this one's
        network: ``radar.with_settings({"inference.stride": 14})``.

        A change of the decision's one-class model refits it on the stored
        calibration features; ``inference.batch_size`` needs nothing; any
        other inference or data setting gives a model that asks for
        :meth:`calibrate` before it predicts. Settings the trained network
        fixes (network, training, patch size, colour) are refused. This model
        is left as it was."""
        config = self.config.updated(overrides)
        if getattr(self, "backend_", None) is None:
            return Radar(config, self.device)
        changed = self.config.changes(config)
        fixed = [key for key in changed if key.startswith(TRAINED_SETTINGS)]
        if fixed:
            raise ConfigError(f"{fixed[0]} is fixed by the trained network; train a new model to change it",
                              setting=fixed[0])
        network, backend = self.network_, self.backend_
        if any(key in NOISE_SETTINGS for key in changed):
            # the per-patch function changes: rebuild it from the network, or
            # (an exported graph without one) let the backend say it cannot
            if network is None:
                backend = backend.with_noise_settings(config)
            else:
                rebuilt = network.with_noise_settings(config)
                backend = rebuilt if backend is network else BACKENDS.get(backend.name).from_network(
                    rebuilt, backend.layers)
                network = rebuilt
        calibration, stale = self.calibration_, self.stale_setting_
        needs = [key for key in changed if key not in FREE_SETTINGS]
        if needs and calibration is not None and all(key in DECISION_SETTINGS for key in needs):
            decision = calibration.decision
            model = None if calibration.response.image_score == "features" else calibration.decision.model
            calibration = replace(calibration, decision=ImageDecision(config.decision, config.seed, model).fit(
                decision.calibration_features_, decision.conformal_features_))
        elif needs:
            calibration, stale = None, needs[0]
        twin = Radar(config, self.device)
        return twin._learned(network, backend, self.channels_, self.training_, calibration, stale)

    def with_backend(self, name: str, layers: tuple[str, ...] = ()) -> Radar:
        """The same model with the noise predicted by another registered
        backend (built from this model's PyTorch network and checked against
        it), e.g. ``radar.with_backend("onnx")``."""
        self.check_fitted(calibrated=False)
        backend_class = BACKENDS.get(name)
        if self.network_ is None:
            if name == self.backend_.name and tuple(layers) == self.backend_.layers:
                return self
            raise ModelError("a model opened from an exported file has no PyTorch network to build "
                             f"another backend from; open the file with backend={name!r} instead")
        twin = Radar(self.config, self.device)
        return twin._learned(self.network_, backend_class.from_network(self.network_, tuple(layers)),
                             self.channels_, self.training_, self.calibration_, self.stale_setting_)

    # ------------------------------------------------------------- predict
    def _levels(self, scales: Sequence[int]) -> list[int]:
        """The network's class labels of pyramid ``scales``."""
        return [self.config.network.scales.index(scale) for scale in scales]

    def _evidence_chunks(self, images: list[np.ndarray], scales: Sequence[int], progress: bool = False,
                         desc: str = "analysing") -> Iterator[list[tuple[list[int], Evidence]]]:
        """Per chunk of images: (indices into ``images``, their
        :class:`~radar_ad.noise_map.Evidence` at ``scales``) for each group
        of equal-size images, which share batches."""
        config = self.config
        device = self.backend_.device
        with progress_bar(total=len(images), enabled=progress, desc=desc, unit="img") as bar:
            for start in range(0, len(images), IMAGES_PER_PASS):
                by_shape: dict[tuple[int, ...], list[int]] = {}
                for i in range(start, min(start + IMAGES_PER_PASS, len(images))):
                    by_shape.setdefault(images[i].shape, []).append(i)
                groups = []
                for indices in by_shape.values():
                    batch = [torch.from_numpy(images[i]) for i in indices]  # no stacked copy
                    groups.append((indices, one_step_evidence(
                        self.backend_, batch, scales, self._levels(scales), patch_size=config.patch_size,
                        stride=config.stride, batch_size=config.inference.batch_size, device=device)))
                bar.update(sum(len(indices) for indices, _ in groups))
                yield groups

    def _evidence_of(self, images: Sequence[torch.Tensor]) -> Evidence:
        """The evidence of same-size ``(C, H, W)`` images at every level of
        the network, on the CPU (for a response that learns from images it
        makes; :meth:`EvidenceResponse.learn`)."""
        config = self.config
        scales = config.network.scales
        return one_step_evidence(self.backend_, images, scales, self._levels(scales), patch_size=config.patch_size,
                                 stride=config.stride, batch_size=config.inference.batch_size,
                                 device=self.backend_.device).to("cpu")

    def _evidence_many(self, images: Sequence[np.ndarray], desc: str) -> list[Evidence]:
        """One :class:`Evidence` per image (every level of the network, on the CPU), in order."""
        found: dict[int, Evidence] = {}
        for groups in self._evidence_chunks(list(images), self.config.network.scales, False, desc):
            for indices, evidence in groups:
                for j, i in enumerate(indices):
                    found[i] = evidence.items([j]).to("cpu")
        return [found[i] for i in range(len(images))]

    @staticmethod
    def _respond_in_order(response: EvidenceResponse, groups: list[tuple[list[int], Evidence]],
                          ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(noise map of the finest level read, anomaly map, features) per
        image of a chunk, in input order."""
        results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for indices, evidence in groups:
            output = response(evidence)
            for j, i in enumerate(indices):
                results[i] = (evidence.noise[0][j].cpu().numpy(), output.anomaly_map[j].cpu().numpy(),
                              output.features[j].cpu().numpy())
        return [results[i] for i in sorted(results)]

    def predict(self, image: ImageLike) -> Prediction:
        """Verdict, score, maps and mask for one image (path, PIL or array)."""
        return self.predict_many([image])[0]

    def predict_many(self, images: Iterable[ImageLike], progress: bool = False) -> list[Prediction]:
        """:meth:`predict` for many images, batching images of equal size
        (all of them in memory: :meth:`predict_stream` for long lists)."""
        self.check_fitted()
        calibration: Calibration = self.calibration_  # type: ignore[assignment]
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        analysed = [result for groups in self._evidence_chunks(arrays, calibration.response.scales, progress,
                                                               "detecting")
                    for result in self._respond_in_order(calibration.response, groups)]
        if not analysed:
            return []
        # one call for all images: a forest has a large per-call overhead
        decision = calibration.decision
        scores = decision.score(np.stack([feats for _, _, feats in analysed]))
        fail_safe = self._non_finite_scores(scores)
        p_values = decision.p_values(scores)
        return [Prediction(score=score, is_anomalous=bool(is_anomalous(score, decision.threshold_)) or fail_safe[i],
                           threshold=decision.threshold_, pixel_threshold=calibration.pixel_threshold,
                           features=feats, noise_map=noise, anomaly_map=anomaly,
                           mask=anomaly > calibration.pixel_threshold, image=image,
                           p_value=None if p_values is None or fail_safe[i] else float(p_values[i]))
                for i, (image, (noise, anomaly, feats), score) in enumerate(zip(arrays, analysed, scores.tolist()))]

    def _non_finite_scores(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are not finite, when ``decision.non_finite`` is
        "anomalous" (they are then flagged); with "error" (the default) a
        non-finite score raises :class:`NonFiniteError`: it never becomes a
        verdict, least of all "normal"."""
        bad = ~np.isfinite(scores)
        if bad.any() and self.config.decision.non_finite == "error":
            where = "" if len(scores) == 1 else f" (image {int(np.argmax(bad)) + 1} of {len(scores)})"
            raise NonFiniteError(f"the anomaly score is {scores[bad][0]}{where}, not a number a verdict can come "
                                 "from: the image or the model is broken (decision.non_finite: anomalous flags "
                                 "such images instead)")
        return bad

    def predict_stream(self, images: Sequence[ImageLike], chunk_size: int = IMAGES_PER_PASS,
                       keep_going: bool = False) -> Iterator[StreamedPrediction]:
        """Predictions of ``images`` in order, ``chunk_size`` images read and
        analysed at a time; ``keep_going``: a bad image becomes an item with
        an ``error`` instead of ending the stream (see :func:`stream_predictions`)."""
        return stream_predictions(self.predict_many, images, chunk_size, keep_going)

    # --------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """What a model file says about itself (``radar.json``; also the
        metadata of an exported file): config, thresholds, training record."""
        self.check_fitted()
        calibration: Calibration = self.calibration_  # type: ignore[assignment]
        decision = calibration.decision
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(), "channels": self.channels_,
            # null when the false-alarm rule can flag nothing (too few conformal images)
            "image_threshold": decision.threshold_ if np.isfinite(decision.threshold_) else None,
            "model_threshold": decision.model_threshold_,
            "false_alarms": self.false_alarms(),
            "pixel_threshold": calibration.pixel_threshold,
            "feature_names": list(calibration.response.feature_names),
            "response_statistics": calibration.response.state(),
            "selection": calibration.selection,
            "training": self.training_,
        }

    def false_alarms(self) -> dict[str, Any]:
        """The decision rule in a reader's terms: the false-alarm rate (null:
        the contamination rule), the conformal images behind the p-values and
        where they came from, the smallest attainable p-value and, when the
        rule cannot flag anything, the warning."""
        self.check_fitted()
        calibration: Calibration = self.calibration_  # type: ignore[assignment]
        n = calibration.decision.n_conformal
        rate, contamination = self.config.decision.false_alarm_rate, self.config.decision.contamination
        confidence, cut = self.config.decision.false_alarm_confidence, calibration.decision.rate_cut_
        if rate is None:
            rule = f"anomalous above the one-class model's threshold at contamination {contamination:g}"
        elif confidence is None:
            rule = f"anomalous when the p-value is at most {rate:g} ({n} conformal images)"
        else:
            rule = (f"anomalous when the p-value is at most {cut:.4g}: a false-alarm rate of at most {rate:g} with "
                    f"probability {confidence:g} over the {n} conformal images")
        return {
            "rate": rate,
            "confidence": confidence,
            "p_value_cut": cut,
            "rule": rule,
            "n_conformal": n,
            "smallest_p_value": 1.0 / (n + 1) if n else None,
            "conformal_source": dict(calibration.conformal_info),
            "warning": calibration.decision.warning(),
        }

    def _network_or_refuse(self) -> TorchBackend:
        self.check_fitted()
        if self.network_ is None:
            raise ModelError(f"a model opened from an exported file runs on {self.backend_.label} and has no "
                             "PyTorch weights; use the model directory it was exported from instead")
        return self.network_

    def save(self, path: str | Path) -> Path:
        """Write a model directory (JSON + safetensors only) atomically:
        built beside ``path`` under a temporary name, then renamed."""
        network = self._network_or_refuse()
        return write_model_dir(Path(path), self.metadata(), network.state_dict(),
                               self.decision_.calibration_features_, self._conformal())

    def _conformal(self) -> Conformal:
        calibration: Calibration = self.calibration_  # type: ignore[assignment]
        return Conformal(calibration.decision.conformal_features_, dict(calibration.conformal_info))

    def export(self, path: str | Path, format: str = "onnx") -> Path:
        """Write the model as one file that the named backend runs (e.g.
        ``"onnx"``: a self-contained ``.onnx`` file), checked against PyTorch."""
        exporters = [name for name, backend in BACKENDS.items() if backend.exports]
        if format not in exporters:
            raise ConfigError(f"format must be {', '.join(exporters) or 'none'}, got {format!r}",
                              setting="format")
        network = self._network_or_refuse()
        return BACKENDS.get(format).export(network, self.metadata(), self.decision_.calibration_features_,
                                           self._conformal(), Path(path))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, backend: str | None = None,
             settings: dict[str, Any] | None = None) -> Radar:
        """Read a model directory written by :meth:`save`, or a model file
        written by :meth:`export`; the one-class model is refitted from the
        stored calibration features (deterministic).

        ``backend`` names a registered backend: by default ``torch`` for a
        directory and the exporting backend for a file (``onnx`` for
        ``.onnx``); ``Radar.load(model_dir, backend="onnx")`` runs the same
        network through ONNX Runtime, checked against PyTorch first.
        ``settings``: changes applied on loading (:meth:`with_settings`), e.g.
        ``{"decision.false_alarm_rate": 0.01}``.
        """
        radar = cls._load(Path(path), device, backend)
        return radar.with_settings(settings) if settings else radar

    @classmethod
    def _load(cls, path: Path, device: str | None, backend: str | None) -> Radar:
        if backend is not None:
            BACKENDS.check(backend)
        if path.is_file():
            return cls._load_file(path, device, backend)
        meta, weights, calibration = read_model_dir(path)
        conformal = read_conformal(path)
        try:
            config = RadarConfig.from_dict(meta["config"])
            channels = int(meta["channels"])
            unet = build_unet(config.network, channels, config.patch_size)
            unet.load_state_dict(weights)
        except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load model from {path}: {first_line(exc)}") from None
        network = TorchBackend(unet.to(pick_device(device)), config, channels)
        radar = cls._assemble(meta, calibration, conformal, network, network, str(path), device)
        return radar if backend in (None, "torch") else radar.with_backend(backend)

    @classmethod
    def _load_file(cls, path: Path, device: str | None, backend: str | None) -> Radar:
        suffix = path.suffix.lower()
        readers = [name for name, entry in BACKENDS.items() if suffix in entry.reads]
        if not readers:
            raise ModelError(f"{path} is not a model directory or a model file that a backend reads")
        name = backend or next((n for n in readers if BACKENDS.get(n).exports == suffix), readers[0])
        if name not in readers:
            raise ModelError(f"a {suffix} file runs on {', '.join(readers)}, not {name}")
        opened = BACKENDS.get(name).open_file(path)
        radar = cls._assemble(opened.metadata, opened.calibration_features, opened.conformal, None,
                              opened.backend, str(path), device)
        _check_graph(radar, path)
        return radar

    @classmethod
    def _assemble(cls, meta: dict[str, Any], calibration_features: np.ndarray, conformal: Conformal | None,
                  network: TorchBackend | None, backend: NoiseBackend, where: str, device: str | None) -> Radar:
        """A fitted model from stored metadata, calibration features and a
        backend; the one-class model is refitted and checked against the
        saved threshold."""
        check_finite_numbers({"pixel_threshold": meta.get("pixel_threshold"),
                              "response_statistics": meta.get("response_statistics"),
                              "calibration features": np.asarray(calibration_features),
                              "conformal features": None if conformal is None else np.asarray(conformal.features)},
                             where)
        try:
            config = RadarConfig.from_dict(meta["config"])
            if not config.inference.resolved:
                raise ValueError("its inference.response, scales and image_score must be chosen (not auto)")
            response = restore_response(config, meta.get("response_statistics"))
            width = len(response.feature_names)
            if np.ndim(calibration_features) != 2 or np.shape(calibration_features)[1] != width:
                raise ValueError(f"the calibration features have shape {np.shape(calibration_features)}; the "
                                 f"{config.inference.response} response makes {width} per image")
            decision = ImageDecision(config.decision, config.seed, response.one_class_model).fit(
                np.asarray(calibration_features, dtype=np.float64), None if conformal is None else conformal.features)
            selection = meta.get("selection")
            if selection is not None and not isinstance(selection, dict):
                raise ValueError("selection must be an object or null")
            calibration = Calibration(response, decision, float(meta["pixel_threshold"]),
                                      {} if conformal is None else dict(conformal.info), selection)
            channels = int(meta["channels"])
        except (ConfigError, DataError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"cannot load model from {where}: {first_line(exc)}") from None
        saved = meta.get("model_threshold", meta.get("image_threshold"))
        if not np.isclose(decision.model_threshold_, np.nan if saved is None else saved):
            warnings.warn("the refitted one-class model's threshold differs from the saved one "
                          "(another scikit-learn version?)", stacklevel=3)
        return cls(config, device)._learned(network, backend, channels, meta.get("training", {}), calibration)


def _check_graph(radar: Radar, path: Path) -> None:
    """Run an exported file's graph once on the patch shape its metadata
    describes: a file whose graph and metadata disagree (edited, or glued
    together from two models) is refused on loading, not on the first image."""
    patch, channels = radar.config.patch_size, radar.channels_
    try:
        levels = torch.arange(len(radar.config.network.scales))
        output = radar.backend_.predict(torch.zeros(len(levels), channels, patch, patch),
                                        torch.zeros(len(levels), dtype=torch.int64), levels)
        ok = all(tuple(part.shape) == (len(levels), channels, patch, patch) and bool(torch.isfinite(part).all())
                 for part in (output.noise, output.repair))
    except Exception:  # the runtimes raise their own unexported types
        ok = False
    if not ok:
        raise ModelError(f"{path}: its graph does not match its metadata ({channels} channel(s), {patch} px "
                         "patches) or gives non-finite noise; export the model again")


def train_model(config: RadarConfig, data: str | Path, out: str | Path, *, resume: bool = False,
                device: str | None = None, progress: bool = True, strategy: DeviceStrategy | None = None) -> Radar:
    """Train on ``data`` and write the model directory ``out``: the output
    location is checked first, a checkpoint is kept beside it while training
    (``resume`` continues one) and removed once the model is written.

    With a data-parallel ``strategy`` every process runs this: all check the
    output (the same answer on a shared filesystem, so all stop together),
    train, and wait while the main process calibrates and writes the model."""
    out = Path(os.path.abspath(out))  # "." names the working folder
    check_model_target(out)  # before training, not after an hour of it
    checkpoint = checkpoint_dir(out)
    check_checkpoint_dir(checkpoint)  # a user's folder of that name: refused before any work
    radar = Radar(config, device=device).fit(data, progress=progress, checkpoint_dir=checkpoint, resume=resume,
                                             strategy=strategy)
    if strategy is None or strategy.is_main:
        radar.save(out)
        if is_checkpoint_dir(checkpoint):  # ours (train_unet refused anything else before training)
            shutil.rmtree(checkpoint, ignore_errors=True)
    if strategy is not None:
        strategy.wait()  # the others return once the model directory is in place
    return radar


def calibrate_false_alarms(model_dir: str | Path, normal: str | Path, *, device: str | None = None,
                           progress: bool = True) -> tuple[Radar, Path | None]:
    """``radar calibrate``: replace a model directory's conformal images by
    the normal images in ``normal`` (a folder, or an MVTec category's
    ``train/good``), keeping the network, the response, the one-class model
    and the pixel threshold. The previous conformal file stays beside the new
    one as a backup, whose path is returned (``None`` for a model that had
    none). Returns the recalibrated model too."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise ModelError(f"{model_dir} is an exported file; calibrate the model directory it was "
                         "exported from, then export it again")
    radar = Radar.load(model_dir, device=device)
    radar.calibrate_conformal(list_images(normal), progress=progress, source=str(normal))
    return radar, replace_conformal(model_dir, radar._conformal())


class ImageSplit(NamedTuple):
    """Indices of the normal images each part of a model is fitted on."""

    train: list[int]  # the diffusion network
    calibration: list[int]  # the response statistics, the one-class model, the pixel threshold
    conformal: list[int]  # nothing: only scored, for the p-values


def calibration_split(n_images: int, config: RadarConfig, network_trained: bool = False) -> ImageSplit:
    """The seeded three-way split of the normal images (``TrainConfig``):
    the conformal share is held out from everything, a calibration share of
    the rest from diffusion training, so the one-class model and the pixel
    threshold see maps of images the network never fitted, and the p-values
    scores of images nothing fitted. With ``calibrate_on_training``
    calibration and training share the non-conformal images (the paper's
    protocol). ``network_trained``: the images only calibrate (no training
    share; the conformal share is ``conformal_fraction``'s, as
    ``conformal_size`` counts training images).

    A ``conformal_fraction`` share shrinks to what small folders allow (the
    false-alarm warning then says what is missing); an explicit
    ``conformal_size`` that does not fit is an error."""
    train_config = config.train
    shares_training = train_config.calibrate_on_training or network_trained
    needed = MIN_CALIBRATION_IMAGES + (0 if shares_training else 1)
    if n_images < needed:
        raise DataError(f"need at least {needed} normal images, got {n_images}")
    n_calib = max(MIN_CALIBRATION_IMAGES, round(train_config.calibration_fraction * n_images))
    if network_trained:
        n_calib = n_images  # all but the conformal images below
    room = n_images - (MIN_CALIBRATION_IMAGES if shares_training else n_calib + 1)
    if train_config.conformal_size is not None and not network_trained:
        n_conformal = train_config.conformal_size
        if n_conformal > room:
            raise DataError(f"{n_images} normal images are too few to hold out train.conformal_size = "
                            f"{n_conformal} conformal images (at most {max(0, room)} here); add images or "
                            "lower it", setting="train.conformal_size")
    else:
        n_conformal = max(0, min(round(train_config.conformal_fraction * n_images), room))
    if not shares_training and n_calib + n_conformal >= n_images:
        raise DataError(f"{n_images} normal images are too few to hold out {n_calib} for "
                        "calibration; add images or set train.calibrate_on_training")
    order = np.random.default_rng(config.seed).permutation(n_images)
    conformal, rest = sorted(order[:n_conformal].tolist()), order[n_conformal:]
    if shares_training:
        everything = sorted(rest.tolist())
        return ImageSplit([] if network_trained else everything, everything, conformal)
    return ImageSplit(sorted(rest[n_calib:].tolist()), sorted(rest[:n_calib].tolist()), conformal)
