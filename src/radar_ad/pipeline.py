"""``Radar``: fit, predict, save and load — the method's orchestration only.

Reads like the method: load normal images -> hold out calibration images ->
train the patch diffusion model -> one-step noise maps of the calibration
images -> response maps -> features -> one-class model and pixel threshold.
Prediction runs the same stages on a new image.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import RadarConfig
from .data import as_image_array, training_images
from .decision import MIN_CALIBRATION_IMAGES, ImageDecision, pixel_threshold
from .errors import ConfigError, DataError, ModelError, NotFittedError, first_line
from .features import feature_names, image_features, two_sided_features
from .files import temporary_dir
from .network import build_scheduler, build_unet, pick_device
from .noise_map import PatchPredictor, noise_map, one_step_noise
from .patches import PatchSampler
from .progress import progress_bar
from .response import (ResponseStatistics, fit_response_statistics, response_map, response_parts,
                       two_sided_map)
from .training import train_unet

FORMAT = "radar-ad"
FORMAT_VERSION = 2
CONFIG_FILE = "radar.json"
WEIGHTS_FILE = "unet.safetensors"
CALIBRATION_FILE = "calibration.safetensors"

ImageLike = Any  # a path, a PIL image or a numpy array
# Images analysed together: their patches go through the network in shared
# batches, while maps of at most this many images are held at once.
IMAGES_PER_PASS = 8
BACKENDS = ("torch", "onnx")


@dataclass
class Prediction:
    """The result for one image.

    ``noise_map``: ``(C, H, W)`` predicted noise; ``anomaly_map``: ``(H, W)``
    the response map (the pixel-level score); ``mask``: ``(H, W)`` bool,
    ``anomaly_map > pixel_threshold``; ``features``: the image features;
    ``image``: ``(C, H, W)`` in [0, 1], the input as the model saw it (after
    any resize), so maps and image line up pixel for pixel.
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

    @property
    def verdict(self) -> str:
        """``"anomalous"`` or ``"normal"``."""
        return "anomalous" if self.is_anomalous else "normal"


class Radar:
    """Reconstruction-free anomaly detection with a patch diffusion model."""

    def __init__(self, config: RadarConfig | None = None, device: str | None = None) -> None:
        self.config = config if config is not None else RadarConfig()
        self.device = device

    # ----------------------------------------------------------------- fit
    def fit(self, source: str | Path | Sequence[ImageLike], *, progress: bool = True,
            checkpoint_dir: str | Path | None = None, resume: bool = False) -> Radar:
        """Learn from normal images: a folder, an MVTec category (its
        ``train/good``), or a sequence of images. Returns ``self``."""
        config = self.config.validate()
        images = self._load_training_images(source, progress)
        channels = images[0].shape[0]
        train_idx, calib_idx = calibration_split(len(images), config)
        device = pick_device(self.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet = build_unet(config.network, channels, config.patch_size)
        scheduler = build_scheduler(config.network)
        sampler = PatchSampler([torch.from_numpy(images[i]) for i in train_idx], config.patch_size)
        result = train_unet(unet, scheduler, sampler, config, device,
                            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                            resume=resume, progress=progress)
        self.channels_ = channels
        self._use_unet(unet)

        self._calibrate([images[i] for i in calib_idx], progress)
        self.training_ = {
            "n_images": len(images), "n_train": len(train_idx), "n_calibration": len(calib_idx),
            "stride1_patches": sampler.n_patches, "steps": result.steps,
            "seconds": round(result.seconds, 2), "final_loss": result.final_loss,
            "patches_per_second": round(result.patches_per_second, 1),
            "resumed_from": result.resumed_from, "device": str(device),
            "radar_ad_version": __version__,
        }
        return self

    def calibrate(self, images: Sequence[ImageLike], progress: bool = False) -> Radar:
        """Refit the one-class model and the pixel threshold on these normal
        images, keeping the network: after changing an inference setting
        (stride, timestep, draws, features) or when the line's normal look
        drifts. Returns ``self``."""
        if not hasattr(self, "noise_"):
            raise NotFittedError("this Radar model has no network yet: call fit() or Radar.load() first")
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        if len(arrays) < MIN_CALIBRATION_IMAGES:
            raise DataError(f"need at least {MIN_CALIBRATION_IMAGES} normal images to calibrate, "
                            f"got {len(arrays)}")
        self._calibrate(arrays, progress)
        return self

    def _calibrate(self, arrays: list[np.ndarray], progress: bool) -> None:
        config = self.config
        inference = config.inference
        chunks: Iterable[list[tuple[list[int], torch.Tensor]]] = self._noise_maps(
            arrays, progress, "calibrating")
        if inference.response == "two_sided":
            # the two-sided response is measured against statistics of these
            # very maps, so they are all computed (and held, float32) first
            chunks = [[(indices, noise.cpu()) for indices, noise in groups] for groups in chunks]
            self.response_statistics_ = fit_response_statistics(
                [noise for groups in chunks for _, noise in groups], inference.energy_window,
                inference.blur_ksize, inference.sobel_ksize, config.decision.pixel_quantile)
        self.calibrated_settings_ = response_settings(config)
        maps, features = [], []
        for groups in chunks:
            for _, anomaly, feats in self._respond_in_order(groups):
                maps.append(anomaly)
                features.append(feats)
        self.decision_ = ImageDecision(config.decision, config.seed).fit(np.stack(features))
        self.pixel_threshold_ = pixel_threshold(maps, config.decision.pixel_quantile)

    def _load_training_images(self, source: Any, progress: bool) -> list[np.ndarray]:
        items = training_images(source) if isinstance(source, (str, Path)) else list(source)
        if not items:
            raise DataError("no training images given")
        loaded = [as_image_array(item, self.config.data, self.config.patch_size)
                  for item in progress_bar(items, enabled=progress and len(items) >= 50, desc="loading")]
        needed = MIN_CALIBRATION_IMAGES + (0 if self.config.train.calibrate_on_training else 1)
        if len(loaded) < needed:
            raise DataError(f"need at least {needed} normal training images, got {len(loaded)}")
        return loaded

    # ------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "decision_"):
            raise NotFittedError("this Radar model is not fitted: call fit() or Radar.load() first")

    def _check_calibrated(self) -> None:
        """Refuse to score with a one-class model, pixel threshold and response
        statistics fitted under other response settings: the numbers would
        be silently meaningless."""
        changed = [key for key, value in response_settings(self.config).items()
                   if self.calibrated_settings_.get(key) != value]
        if changed:
            raise ConfigError(f"inference.{changed[0]} changed since this model was calibrated; "
                              "call calibrate(normal_images) first")

    def _use_unet(self, unet: torch.nn.Module) -> None:
        """Predict noise with ``unet`` through PyTorch (the default backend)."""
        config = self.config
        self.unet_ = unet.eval()
        self.noise_: PatchPredictor = one_step_noise(
            unet, timestep=config.inference.timestep,
            alphas_cumprod=build_scheduler(config.network).alphas_cumprod, seed=config.seed,
            draws=config.inference.draws, channels=self.channels_, patch_size=config.patch_size)
        self.noise_device_ = next(unet.parameters()).device
        self.noise_settings_ = noise_settings(config)
        self.backend = "torch"

    def _check_noise_settings(self) -> None:
        """Follow changes of the settings baked into the noise predictor
        (a rebuilt torch module; an exported graph cannot follow)."""
        if self.noise_settings_ == noise_settings(self.config):
            return
        if self.backend != "torch" or not hasattr(self, "unet_"):
            raise ConfigError("seed, inference.timestep and inference.draws are fixed in an ONNX "
                              "model; change them on the model directory and export again")
        self._use_unet(self.unet_)

    def _noise_maps(self, images: list[np.ndarray], progress: bool = False, desc: str = "analysing",
                    ) -> Iterator[list[tuple[list[int], torch.Tensor]]]:
        """Per chunk of images: (indices into ``images``, ``(b, C, H, W)``
        noise maps) for each group of equal-size images, which share batches."""
        config = self.config
        self._check_noise_settings()
        device = self.noise_device_
        with progress_bar(total=len(images), enabled=progress, desc=desc, unit="img") as bar:
            for start in range(0, len(images), IMAGES_PER_PASS):
                by_shape: dict[tuple[int, ...], list[int]] = {}
                for i in range(start, min(start + IMAGES_PER_PASS, len(images))):
                    by_shape.setdefault(images[i].shape, []).append(i)
                groups = []
                for indices in by_shape.values():
                    batch = torch.from_numpy(np.stack([images[i] for i in indices])).to(device)
                    groups.append((indices, noise_map(self.noise_, batch, patch_size=config.patch_size,
                                                      stride=config.stride,
                                                      batch_size=config.inference.batch_size,
                                                      device=device)))
                bar.update(sum(len(indices) for indices, _ in groups))
                yield groups

    def _respond(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, C, H, W)`` noise maps -> pixel anomaly maps ``(b, H, W)`` and
        image features ``(b, F)``, as ``inference.response`` says."""
        inference = self.config.inference
        if inference.response == "sobel":
            response = response_map(noise, inference.blur_ksize, inference.sobel_ksize)
            return response, image_features(response, inference.window, inference.window_stride,
                                            inference.feature_norm)
        statistics = self.response_statistics_  # _check_calibrated guarantees them
        parts = response_parts(noise, statistics, inference.energy_window, inference.blur_ksize,
                               inference.sobel_ksize)
        return (two_sided_map(parts, statistics, inference.map_sigma),
                two_sided_features(parts, inference.window, inference.window_stride))

    def _analyse(self, images: list[np.ndarray], progress: bool = False, desc: str = "analysing",
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(noise map, anomaly map, features) per image, in input order."""
        for groups in self._noise_maps(images, progress, desc):
            yield from self._respond_in_order(groups)

    def _respond_in_order(self, groups: list[tuple[list[int], torch.Tensor]],
                          ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for indices, noise in groups:
            response, feats = self._respond(noise)
            for j, i in enumerate(indices):
                results[i] = (noise[j].cpu().numpy(), response[j].cpu().numpy(), feats[j].cpu().numpy())
        return [results[i] for i in sorted(results)]

    def predict(self, image: ImageLike) -> Prediction:
        """Verdict, score, maps and mask for one image (path, PIL or array)."""
        return next(iter(self.predict_many([image])))

    def predict_many(self, images: Iterable[ImageLike], progress: bool = False) -> list[Prediction]:
        """:meth:`predict` for many images, batching images of equal size."""
        self._check_fitted()
        self._check_calibrated()
        arrays = [as_image_array(im, self.config.data, self.config.patch_size) for im in images]
        analysed = list(self._analyse(arrays, progress, "detecting"))
        if not analysed:
            return []
        # one call for all images: a forest's per-call overhead is ~30 ms
        scores = self.decision_.score(np.stack([feats for _, _, feats in analysed]))
        out = []
        for image, (noise, anomaly, feats), score in zip(arrays, analysed, scores.tolist()):
            out.append(Prediction(
                score=score, is_anomalous=bool(score > self.decision_.threshold_),
                threshold=self.decision_.threshold_, pixel_threshold=self.pixel_threshold_,
                features=feats, noise_map=noise, anomaly_map=anomaly,
                mask=anomaly > self.pixel_threshold_, image=image))
        return out

    # --------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """What a model file says about itself (``radar.json``; also the
        metadata of an ONNX export): config, thresholds, training record."""
        self._check_fitted()
        self._check_calibrated()
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(), "channels": self.channels_,
            "image_threshold": self.decision_.threshold_,
            "pixel_threshold": self.pixel_threshold_,
            "feature_names": list(feature_names(self.config.inference.response)),
            "response_statistics": (self.response_statistics_.to_dict()
                                    if self.config.inference.response == "two_sided" else None),
            "training": self.training_,
        }

    def save(self, path: str | Path) -> Path:
        """Write a model directory (JSON + safetensors only) atomically:
        built beside ``path`` under a temporary name, then renamed."""
        self._check_fitted()
        if not hasattr(self, "unet_"):
            raise ModelError("a model loaded from an ONNX file has no PyTorch weights to save; "
                             "save the model directory it was exported from instead")
        path = Path(path)
        check_model_target(path)
        tmp = temporary_dir(path)
        try:
            meta = self.metadata()
            weights = {k: v.detach().cpu().contiguous() for k, v in self.unet_.state_dict().items()}
            save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            save_file({"calibration_features": torch.from_numpy(
                self.decision_.calibration_features_)}, str(tmp / CALIBRATION_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            if path.exists():
                old = temporary_dir(path)
                os.replace(path, old / "model")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, backend: str = "torch") -> Radar:
        """Read a model directory written by :meth:`save` (or an ONNX file
        written by ``radar export``); the one-class model is refitted from the
        stored calibration features (deterministic).

        ``backend="onnx"`` runs the network through ONNX Runtime instead of
        PyTorch (on the CPU): the same function, faster there.
        """
        path = Path(path)
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if path.is_file() and path.suffix.lower() == ".onnx":
            from .export import load_onnx  # only ONNX users need onnxruntime

            return load_onnx(path)
        radar = cls._load_dir(path, device)
        if backend == "onnx":
            from .export import use_onnx

            use_onnx(radar)
        return radar

    @classmethod
    def _load_dir(cls, path: Path, device: str | None) -> Radar:
        if not path.is_dir():
            raise ModelError(f"model not found: {path} (expected a model directory "
                             "from `radar train` or an .onnx file from `radar export`)")
        meta_path = path / CONFIG_FILE
        if not meta_path.is_file():
            raise ModelError(f"{path} is not a radar model directory (no {CONFIG_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {meta_path}: {exc}") from None
        check_metadata(meta, str(meta_path))
        for name in (WEIGHTS_FILE, CALIBRATION_FILE):
            if not (path / name).is_file():
                raise ModelError(f"model directory {path} is incomplete: {name} is missing")
        try:
            radar = cls.from_metadata(meta, device=device)
            unet = build_unet(radar.config.network, radar.channels_, radar.config.patch_size)
            unet.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
            calibration = load_file(str(path / CALIBRATION_FILE))["calibration_features"]
        except (ConfigError, KeyError, TypeError, ValueError, RuntimeError, OSError,
                SafetensorError) as exc:
            raise ModelError(f"cannot load model from {path}: {first_line(exc)}") from None
        radar._use_unet(unet.to(pick_device(device)))
        radar._calibrate_from(calibration.numpy(), meta)
        return radar

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], device: str | None = None) -> Radar:
        """An unfitted shell with the saved config, channels, pixel threshold
        and training record; the caller adds a network and calibrates."""
        radar = cls(RadarConfig.from_dict(meta["config"]), device)
        radar.channels_ = int(meta["channels"])
        radar.pixel_threshold_ = float(meta["pixel_threshold"])
        radar.training_ = meta.get("training", {})
        if radar.config.inference.response == "two_sided":
            radar.response_statistics_ = ResponseStatistics.from_dict(meta.get("response_statistics"))
        radar.calibrated_settings_ = response_settings(radar.config)
        return radar

    def _calibrate_from(self, calibration_features: np.ndarray, meta: dict[str, Any]) -> None:
        """Refit the one-class model on the stored calibration features and
        check it lands on the saved threshold."""
        self.decision_ = ImageDecision(self.config.decision, self.config.seed).fit(calibration_features)
        if not np.isclose(self.decision_.threshold_, meta.get("image_threshold", np.nan)):
            warnings.warn("the refitted one-class model's threshold differs from the saved one "
                          "(another scikit-learn version?)", stacklevel=2)


def check_metadata(meta: Any, where: str) -> None:
    """Refuse metadata of another format or format version."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{where} is not a radar-ad model file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{where} has model format version {meta.get('format_version')!r}; "
                         f"this radar-ad ({__version__}) reads version {FORMAT_VERSION}; "
                         "train the model again with it")


def response_settings(config: RadarConfig) -> dict[str, Any]:
    """The inference settings the calibration (one-class model, pixel
    threshold, response statistics) depends on beyond the noise map."""
    inference = config.inference
    keys = ("response", "energy_window", "map_sigma", "blur_ksize", "sobel_ksize", "window",
            "window_stride", "feature_norm")
    return {key: getattr(inference, key) for key in keys}


def noise_settings(config: RadarConfig) -> tuple[int, int, int]:
    """The settings a noise predictor is built with."""
    return config.seed, config.inference.timestep, config.inference.draws


def check_model_target(path: Path) -> None:
    """Refuse to replace anything but an empty folder or a model directory,
    so a typo in ``--out`` cannot wipe a user's data."""
    if path.exists() and not (path.is_dir() and (not any(path.iterdir())
                                                 or (path / CONFIG_FILE).is_file())):
        raise DataError(f"{path} exists and is not a radar model directory; "
                        "refusing to overwrite it")


def calibration_split(n_images: int, config: RadarConfig) -> tuple[list[int], list[int]]:
    """Indices of (training, calibration) images: a seeded share of the normal
    images is held out from diffusion training so the one-class model and the
    pixel threshold see maps of images the network never fitted. With
    ``calibrate_on_training`` both are all images (the paper's protocol)."""
    everything = list(range(n_images))
    if config.train.calibrate_on_training:
        return everything, everything
    n_calib = max(MIN_CALIBRATION_IMAGES, round(config.train.calibration_fraction * n_images))
    if n_calib >= n_images:
        raise DataError(f"{n_images} normal images are too few to hold out {n_calib} for "
                        "calibration; add images or set train.calibrate_on_training")
    order = np.random.default_rng(config.seed).permutation(n_images)
    return sorted(order[n_calib:].tolist()), sorted(order[:n_calib].tolist())
