"""``Radar``: the method's orchestration, built from parts a reader can name.

Fitting reads like the method: load normal images -> hold out calibration
and conformal images (:mod:`radar_ad.splits`) -> train the patch diffusion
network on every pyramid level -> calibrate (:mod:`radar_ad.calibration`):
whatever the config leaves open (response, levels, image score) chosen by
self-validation on synthetic defects in the calibration images
(:mod:`radar_ad.selection`) -> the one-step evidence of the held-out images
(the backend, every level; :mod:`radar_ad.evidence_passes`) -> the response
learned and fitted on the calibration evidence -> image features ->
one-class decision and pixel threshold fitted on the calibration images,
scored on the conformal ones for p-values. Prediction runs the same stages
on a new image (:mod:`radar_ad.outputs`).

A fitted ``Radar`` is made of:

- ``torch_backend_``: the trained PyTorch U-Net as a backend
  (:class:`~radar_ad.backend.TorchBackend`; ``None`` for a model opened from
  an exported file);
- ``backend_``: the engine that predicts the noise (the network itself, or
  ONNX Runtime, OpenVINO ... built from it; :mod:`radar_ad.backend`), named
  by ``backend_name``;
- ``calibration_``: what was learned from normal held-out images
  (:class:`~radar_ad.calibration.Calibration`: the fitted response, the
  one-class decision with its conformal scores, the pixel threshold and the
  self-validation's record), or ``None`` after a settings change that needs
  a new one.

Settings are immutable: :meth:`Radar.with_settings` returns a new model;
when the change affects the maps, that model asks for
:meth:`Radar.refit_calibration` before it predicts. Saving writes a model
directory (:mod:`radar_ad.persistence`); :meth:`Radar.load` reads one back
(:mod:`radar_ad.loading`); the disk workflows behind ``radar train`` and
``radar calibrate-false-alarms`` are in :mod:`radar_ad.workflows`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .backend import NOISE_SETTINGS, NoiseBackend, TorchBackend
from .calibration import Calibration, describe_false_alarms, fit_calibration, with_conformal, with_decision_settings
from .config import RadarConfig
from .data import as_image_array, training_images
from .decision import MIN_CALIBRATION_IMAGES, ImageDecision
from .deprecation import module_getattr, warn_renamed
from .drift import DriftMonitor
from .errors import ConfigError, DataError, ModelError, NotCalibratedError, NotFittedError
from .evidence_passes import EvidencePasses, respond_in_order
from .loading import read_model
from .network import build_scheduler, build_unet, pick_device
from .outputs import IMAGES_PER_PASS, Prediction, StreamedPrediction, stream_predictions
from .patches import PyramidSampler
from .persistence import FORMAT, FORMAT_VERSION, RESPONSE_TENSORS_KEY, Conformal, tensors_to_text, write_model_dir
from .progress import progress_bar
from .registry import BACKENDS
from .response import EvidenceResponse
from .splits import ImageSplit, three_way_split
from .training import DeviceStrategy, images_digest, train_unet

__all__ = ["IMAGES_PER_PASS", "Calibration", "ImageLike", "ImageSplit", "Prediction", "Radar", "StreamedPrediction",
           "stream_predictions", "three_way_split"]

ImageLike = Any  # a path, a PIL image or a numpy array
# Settings a fitted model can change without a new calibration, and those
# whose change only needs the one-class model refitted on the stored features.
FREE_SETTINGS = frozenset({"inference.batch_size", "decision.non_finite", "decision.drift_delta",
                           "decision.drift_defect_share"})
DECISION_SETTINGS = frozenset({"decision.one_class_model", "decision.contamination", "decision.n_neighbors",
                               "decision.false_alarm_rate", "decision.false_alarm_confidence"})
DECISION_SECTIONS = ("decision.one_class_models.",)  # every setting under these, too
# Settings the trained network fixes: changing them means training again.
TRAINED_SETTINGS = ("network.", "train.", "patch_size", "data.grayscale")

# The disk workflows load on first use (they build on Radar); the old name of the split warns.
__getattr__ = module_getattr(__name__, moved={"train_model": "radar_ad.workflows",
                                              "calibrate_false_alarms": "radar_ad.workflows"},
                             renamed={"calibration_split": ("radar_ad.splits", "three_way_split")})


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
                                     "call refit_calibration(normal_images) first", setting=self.stale_setting_)

    @property
    def backend_name(self) -> str:
        """The name of the backend that predicts the noise."""
        self.check_fitted(calibrated=False)
        return self.backend_.name

    @property
    def unet(self) -> torch.nn.Module:
        """The trained diffusers ``UNet2DModel`` (for methods that run the
        network themselves, such as the reconstruction baselines)."""
        self.check_fitted(calibrated=False)
        if self.torch_backend_ is None:
            raise ModelError(f"a model opened from an exported file runs on {self.backend_.label} and has no "
                             "PyTorch network; load the model directory it was exported from instead")
        return self.torch_backend_.unet

    @property
    def response_(self) -> EvidenceResponse:
        return self._calibration().response

    @property
    def decision_(self) -> ImageDecision:
        return self._calibration().decision

    @property
    def pixel_threshold_(self) -> float:
        return self._calibration().pixel_threshold

    def _calibration(self) -> Calibration:
        self.check_fitted()
        return self.calibration_  # type: ignore[return-value]

    def _learned(self, torch_backend: TorchBackend | None, backend: NoiseBackend, channels: int,
                 training: dict[str, Any], calibration: Calibration | None, stale: str | None = None) -> Radar:
        self.torch_backend_ = torch_backend
        self.backend_ = backend
        self.channels_ = int(channels)
        self.training_ = training
        self.calibration_ = calibration
        self.stale_setting_ = stale
        return self

    def _passes(self) -> EvidencePasses:
        return EvidencePasses(self.backend_, self.config)

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
        split = three_way_split(len(images), config)
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
        self.config, self.calibration_ = fit_calibration(
            self.config, self.backend_, [images[i] for i in split.calibration], [images[i] for i in split.conformal],
            progress, {"source": "training split"})
        training["calibration_seconds"] = round(time.perf_counter() - began, 2)
        self.warn_false_alarms()
        return self

    def refit_calibration(self, images: Sequence[ImageLike], progress: bool = False,
                          conformal: Sequence[ImageLike] | None = None) -> Radar:
        """Refit the whole calibration (the response, the one-class model and
        the pixel threshold) on these normal images, keeping the network:
        after :meth:`with_settings` changed a setting that shapes the maps,
        or when the line's normal look drifts. The conformal images are
        ``conformal`` when given, else a seeded ``train.conformal_fraction``
        share of ``images`` that the rest is fitted without. Settings left to
        calibration are chosen again (:meth:`fit`). Returns ``self``."""
        self.check_fitted(calibrated=False)
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        if conformal is None:
            split = three_way_split(len(arrays), self.config, network_trained=True)
            arrays, scored = [arrays[i] for i in split.calibration], [arrays[i] for i in split.conformal]
        else:
            scored = [as_image_array(im, self.config.data, self.config.patch_size) for im in conformal]
        if len(arrays) < MIN_CALIBRATION_IMAGES:
            raise DataError(f"need at least {MIN_CALIBRATION_IMAGES} normal images to calibrate, "
                            f"got {len(arrays)}")
        self.config, self.calibration_ = fit_calibration(self.config, self.backend_, arrays, scored, progress,
                                                         {"source": "Radar.refit_calibration"})
        self.stale_setting_ = None
        self.warn_false_alarms()
        return self

    def calibrate_false_alarms(self, images: Sequence[ImageLike], progress: bool = False,
                               source: str = "Radar.calibrate_false_alarms") -> Radar:
        """Replace the conformal images, and nothing else, by these normal
        images (which nothing of the model may have been fitted on): the
        p-values and the false-alarm threshold follow the line's current
        normal look without retraining (``radar calibrate-false-alarms`` on
        a model directory). Returns ``self``."""
        calibration = self._calibration()
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        if not arrays:
            raise DataError("no normal images to calibrate the false-alarm rate on")
        features = self._passes().features(calibration.response, arrays, progress, "scoring normal images")
        self.calibration_ = with_conformal(calibration, self.config, features, source)
        self.warn_false_alarms()
        return self

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

    def selection(self) -> dict[str, Any] | None:
        """How calibration chose the settings the config left open: what was
        asked, every candidate's image and pixel AUROC on synthetic defects
        in held-out calibration images, the choice (``None`` when the config
        named them all)."""
        return self._calibration().selection

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
        three_way_split(len(loaded), self.config)  # enough images for the split, or a DataError now
        return loaded

    # ------------------------------------------------------------ settings
    def with_settings(self, overrides: dict[str, Any]) -> Radar:
        """A new model with dotted-key setting changes, sharing this one's
        network: ``radar.with_settings({"inference.stride": 14})``.

        A change of the decision's one-class model refits it on the stored
        calibration features; ``inference.batch_size`` needs nothing; any
        other inference or data setting gives a model that asks for
        :meth:`refit_calibration` before it predicts. Settings the trained
        network fixes (network, training, patch size, colour) are refused.
        This model is left as it was."""
        config = self.config.updated(overrides)
        if getattr(self, "backend_", None) is None:
            return Radar(config, self.device)
        changed = self.config.changes(config)
        fixed = [key for key in changed if key.startswith(TRAINED_SETTINGS)]
        if fixed:
            raise ConfigError(f"{fixed[0]} is fixed by the trained network; train a new model to change it",
                              setting=fixed[0])
        network, backend = self.torch_backend_, self.backend_
        if any(key in NOISE_SETTINGS for key in changed):
            # the per-patch function changes: rebuild it from the network, or
            # (an exported graph without one) let the backend say it cannot
            if network is None:
                backend = backend.with_noise_settings(config)
            else:
                rebuilt = network.with_noise_settings(config)
                backend = rebuilt if backend is network else BACKENDS.get(backend.name).from_network(rebuilt)
                network = rebuilt
        calibration, stale = self.calibration_, self.stale_setting_
        needs = [key for key in changed if key not in FREE_SETTINGS]
        decision_only = all(key in DECISION_SETTINGS or key.startswith(DECISION_SECTIONS) for key in needs)
        if needs and calibration is not None and decision_only:
            calibration = with_decision_settings(calibration, config)
        elif needs:
            calibration, stale = None, needs[0]
        twin = Radar(config, self.device)
        return twin._learned(network, backend, self.channels_, self.training_, calibration, stale)

    def with_backend(self, name: str) -> Radar:
        """The same model with the noise predicted by another registered
        backend (built from this model's PyTorch network and checked against
        it), e.g. ``radar.with_backend("onnx")``."""
        self.check_fitted(calibrated=False)
        backend_class = BACKENDS.get(name)
        if self.torch_backend_ is None:
            if name == self.backend_.name:
                return self
            raise ModelError("a model opened from an exported file has no PyTorch network to build "
                             f"another backend from; open the file with backend={name!r} instead")
        twin = Radar(self.config, self.device)
        return twin._learned(self.torch_backend_, backend_class.from_network(self.torch_backend_), self.channels_,
                             self.training_, self.calibration_, self.stale_setting_)

    # ------------------------------------------------------------- predict
    def predict(self, image: ImageLike) -> Prediction:
        """Verdict, score, maps and mask for one image (path, PIL or array)."""
        return self.predict_many([image])[0]

    def predict_many(self, images: Iterable[ImageLike], progress: bool = False) -> list[Prediction]:
        """:meth:`predict` for many images, batching images of equal size
        (all of them in memory: :meth:`predict_stream` for long lists)."""
        calibration = self._calibration()
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        analysed = [result for groups in self._passes().chunks(arrays, calibration.response.scales, progress,
                                                               "detecting")
                    for result in respond_in_order(calibration.response, groups)]
        if not analysed:
            return []
        decision = calibration.decision
        verdicts = decision.decide(np.stack([feats for _, _, feats in analysed]), self.config.decision.non_finite)
        return [Prediction(score=verdict.score, is_anomalous=verdict.is_anomalous, threshold=decision.threshold_,
                           pixel_threshold=calibration.pixel_threshold, features=feats, noise_map=noise,
                           anomaly_map=anomaly, mask=anomaly > calibration.pixel_threshold, image=image,
                           p_value=verdict.p_value)
                for image, (noise, anomaly, feats), verdict in zip(arrays, analysed, verdicts)]

    def predict_stream(self, images: Sequence[ImageLike], chunk_size: int = IMAGES_PER_PASS,
                       keep_going: bool = False) -> Iterator[StreamedPrediction[ImageLike, Prediction]]:
        """Predictions of ``images`` in order, ``chunk_size`` images read and
        analysed at a time; ``keep_going``: a bad image becomes an item with
        an ``error`` instead of ending the stream (see :func:`~radar_ad.outputs.stream_predictions`)."""
        return stream_predictions(self.predict_many, images, chunk_size, keep_going)

    # --------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """What a model file says about itself (``radar.json``; also the
        metadata of an exported file): config, thresholds, training record."""
        calibration = self._calibration()
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
        return describe_false_alarms(self.config.decision, self._calibration())

    def _network_or_refuse(self) -> TorchBackend:
        self.check_fitted()
        if self.torch_backend_ is None:
            raise ModelError(f"a model opened from an exported file runs on {self.backend_.label} and has no "
                             "PyTorch weights; use the model directory it was exported from instead")
        return self.torch_backend_

    def save(self, path: str | Path) -> Path:
        """Write a model directory (JSON + safetensors only) atomically:
        built beside ``path`` under a temporary name, then renamed."""
        network = self._network_or_refuse()
        return write_model_dir(Path(path), self.metadata(), network.state_dict(),
                               self.decision_.calibration_features_, self._conformal(),
                               self._calibration().response.tensors())

    def _conformal(self) -> Conformal:
        return self._calibration().conformal()

    def export(self, path: str | Path, format: str = "onnx") -> Path:
        """Write the model as one file that the named backend runs (e.g.
        ``"onnx"``: a self-contained ``.onnx`` file), checked against PyTorch."""
        exporters = [name for name, backend in BACKENDS.items() if backend.exports]
        if format not in exporters:
            raise ConfigError(f"format must be {', '.join(exporters) or 'none'}, got {format!r}",
                              setting="format")
        network = self._network_or_refuse()
        metadata = {**self.metadata(), RESPONSE_TENSORS_KEY: tensors_to_text(self._calibration().response.tensors())}
        return BACKENDS.get(format).export(network, metadata, self.decision_.calibration_features_,
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
        stored = read_model(Path(path), device, backend)
        radar = cls(stored.config, device)._learned(stored.torch_backend, stored.backend, stored.channels,
                                                    stored.training, stored.calibration)
        if stored.torch_backend is not None and backend not in (None, "torch"):
            radar = radar.with_backend(backend)
        return radar.with_settings(settings) if settings else radar

    # ------------------------------------------- deprecated spellings (one release)
    @property
    def backend(self) -> str:
        """Deprecated spelling of :attr:`backend_name`."""
        warn_renamed("Radar.backend", "Radar.backend_name")
        return self.backend_name

    @property
    def network_(self) -> TorchBackend | None:
        """Deprecated spelling of :attr:`torch_backend_`."""
        warn_renamed("Radar.network_", "Radar.torch_backend_")
        return self.torch_backend_

    def calibrate(self, images: Sequence[ImageLike], progress: bool = False,
                  conformal: Sequence[ImageLike] | None = None) -> Radar:
        """Deprecated spelling of :meth:`refit_calibration`."""
        warn_renamed("Radar.calibrate", "Radar.refit_calibration")
        return self.refit_calibration(images, progress, conformal)

    def calibrate_conformal(self, images: Sequence[ImageLike], progress: bool = False,
                            source: str = "Radar.calibrate_false_alarms") -> Radar:
        """Deprecated spelling of :meth:`calibrate_false_alarms`."""
        warn_renamed("Radar.calibrate_conformal", "Radar.calibrate_false_alarms")
        return self.calibrate_false_alarms(images, progress, source)
