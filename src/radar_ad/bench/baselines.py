"""The paper's comparison methods, run on the very network RADAR trained.

Reconstruction methods ask the same patch U-Net to *restore* the image
instead of reading its one-step noise prediction: noise each patch to a start
timestep, run a reverse chain back to a clean patch, stitch, and take the
residual ``|x - x_hat|`` as the anomaly map. They differ only in the chain:

- ``ddpm250`` / ``ddpm25``: the full stochastic DDPM chain (AnoDDPM),
- ``ddim10``: a deterministic 10-step DDIM chain from t=250,
- ``onestep``: a single x0 prediction from t=250 (DiffusionAD without its
  segmentation network).

``statistical`` needs no network: classical texture descriptors (GLCM, local
entropy, SSIM against a smoothed copy, Hough lines), the paper's ablation.
It needs scikit-image (the ``radar-ad[bench]`` extra), imported when the
method is built, so a missing extra is one clear error before any image is
analysed and the reconstruction methods run without it.

Every method hands the same one-class protocol as RADAR (:class:`OneClassMethod`)
an ``(H, W)`` anomaly map and a fixed-length feature vector per image, so a
benchmark compares the evidence, not the decision machinery: the calibration
and the decision are RADAR's own (:class:`~radar_ad.decision.ImageDecision`,
:func:`~radar_ad.decision.pixel_threshold`), and so is the output
(:class:`~radar_ad.outputs.Prediction`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..config import RadarConfig
from ..decision import ImageDecision, pixel_threshold
from ..errors import DataError, NotFittedError, require
from ..features import FEATURE_NAMES, image_features, window_means
from ..filters import blur
from ..network import build_scheduler, predict_noise
from ..noise_map import border_weights
from ..outputs import IMAGES_PER_PASS, Prediction  # IMAGES_PER_PASS: images whose patches share U-Net batches
from ..patches import stitch, tile
from ..pipeline import Radar

# The start timestep (0-based, as in diffusers) of the long chains, as in the paper.
DEEP_TIMESTEP = 250
SHALLOW_TIMESTEP = 25
DDIM_STEPS = 10
# Methods with more U-Net evaluations per patch than this are marked slow.
SLOW_EVALUATIONS = 50


@dataclass
class MethodOutput:
    """One image's evidence: ``anomaly_map`` ``(H, W)`` float32 (higher =
    more anomalous, image-sized) and ``features`` ``(F,)`` float64."""

    anomaly_map: np.ndarray
    features: np.ndarray


class Baseline:
    """A comparison method: images ``(C, H, W)`` in [0, 1] -> maps and features.

    ``network_evaluations`` counts U-Net calls per patch position (0 for
    methods without the network); ``slow`` tells a harness to run the method
    on a subset only.
    """

    key: str = ""
    name: str = ""
    network_evaluations: int = 0
    slow: bool = False
    feature_names: tuple[str, ...] = ()

    def fit_reference(self, calibration: list[np.ndarray]) -> None:
        """Learn normal statistics the map needs; most methods need none."""

    def analyse(self, images: list[np.ndarray]) -> list[MethodOutput]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r})"


# ----------------------------------------------------------------------- reconstruction


class ReconstructionBaseline(Baseline):
    """Tile -> noise to ``start_timestep`` -> reverse chain -> stitch ->
    blurred channel-mean residual ``|x - x_hat|`` -> RADAR's two features.

    The residual is blurred with a kernel of ``blur_ksize + sobel_ksize - 1``
    pixels (9 by default): the support of RADAR's blur followed by its Sobel,
    so both methods' maps pool evidence over the same neighbourhood. The
    residual needs that smoothing more than the noise map: the reverse chain
    re-invents fine detail everywhere, which is pixel-level noise in
    ``|x - x_hat|``.

    Noise is seeded per image from ``config.seed`` (a CPU generator, so CPU
    and GPU agree): an image's result does not depend on which other images
    share its batch, and the same input always gives the same output.
    """

    def __init__(self, radar: Radar, start_timestep: int, *, key: str, name: str) -> None:
        config = radar.config
        if not 0 <= start_timestep < config.network.num_train_timesteps:
            raise ValueError(f"start_timestep must be in [0, {config.network.num_train_timesteps}), "
                             f"got {start_timestep}")
        # radar.unet: the trained PyTorch network (NotFittedError before fit,
        # ModelError for a model opened from an exported file)
        self.unet = radar.unet
        self.config = config
        self.channels = int(radar.channels_)
        # the torch U-Net's own device: with the ONNX backend the noise
        # predictor runs on the CPU while the U-Net may sit on a GPU
        self.device = next(self.unet.parameters()).device
        self.start_timestep = int(start_timestep)
        self.scheduler = build_scheduler(config.network)
        self.key, self.name = key, name
        self.feature_names = FEATURE_NAMES
        inference = config.inference
        self.residual_ksize = inference.blur_ksize + inference.sobel_ksize - 1

    @property
    def slow(self) -> bool:  # type: ignore[override]  # derived here, a class attribute elsewhere
        return self.network_evaluations > SLOW_EVALUATIONS

    def analyse(self, images: list[np.ndarray]) -> list[MethodOutput]:
        """Maps and features per image, in input order; same-size images go
        through the U-Net together."""
        arrays = [self._checked(image) for image in images]
        results: dict[int, MethodOutput] = {}
        for indices in _shape_groups(arrays, IMAGES_PER_PASS):
            batch = torch.from_numpy(np.stack([arrays[i] for i in indices])).to(self.device)
            with torch.inference_mode():
                maps, feats = self._evidence(batch)
            for j, i in enumerate(indices):
                results[i] = MethodOutput(maps[j].float().cpu().numpy(),
                                          feats[j].double().cpu().numpy())
        return [results[i] for i in range(len(arrays))]

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Same-size images ``(B, C, H, W)`` in [0, 1] -> their reconstructions
        ``(B, C, H, W)`` in [0, 1]."""
        config = self.config
        p, stride = config.patch_size, config.stride
        batch, _, height, width = images.shape
        with torch.inference_mode():
            clean = tile(images.to(self.device).float(), p, stride) * 2 - 1  # (B * N, C, p, p)
            per_image = clean.shape[0] // batch
            generators = [torch.Generator().manual_seed(config.seed) for _ in range(batch)]
            noise = torch.cat([torch.randn((per_image, *clean.shape[1:]), generator=g)
                               for g in generators]).to(clean)
            start = torch.tensor([self.start_timestep], device=clean.device)
            noisy = self.scheduler.add_noise(clean, noise, start)
            restored = self._reverse(noisy, generators, per_image)
            restored = (restored.clamp(-1, 1) + 1) / 2
            return stitch(restored, height, width, stride, border_weights(p, p // 7))

    def _reverse(self, noisy: torch.Tensor, generators: list[torch.Generator],
                 per_image: int) -> torch.Tensor:
        """``(B * N, C, p, p)`` patches noised to the start timestep -> the
        chain's clean estimate in [-1, 1]; ``generators[b]`` drives image b."""
        raise NotImplementedError

    def _evidence(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` -> anomaly maps ``(B, H, W)`` and features ``(B, 2)``."""
        inference = self.config.inference
        residual = (images - self.reconstruct(images)).abs().mean(1, keepdim=True)
        anomaly = blur(residual, self.residual_ksize)[:, 0]
        feats = image_features(anomaly, inference.window, inference.window_stride,
                               inference.feature_norm)
        return anomaly, feats

    def _predict_noise(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """eps_theta(x, t) for ``(M, C, p, p)`` patches of the finest pyramid
        level, ``inference.batch_size`` at a time."""
        size = self.config.inference.batch_size
        eps = torch.empty_like(x)
        for start in range(0, x.shape[0], size):
            eps[start:start + size] = predict_noise(self.unet, x[start:start + size], int(timestep))
        return eps

    def _checked(self, image: np.ndarray) -> np.ndarray:
        array = np.asarray(image, dtype=np.float32)
        p = self.config.patch_size
        if array.ndim != 3 or array.shape[0] != self.channels:
            raise DataError(f"{self.key}: expected a ({self.channels}, H, W) image, "
                            f"got shape {array.shape}")
        if min(array.shape[1:]) < p:
            raise DataError(f"{self.key}: image {array.shape[1]}x{array.shape[2]} is smaller "
                            f"than one {p}x{p} patch")
        return array


class DDPMReconstruction(ReconstructionBaseline):
    """AnoDDPM: noise to ``start_timestep``, then every DDPM step t -> t-1
    down to a clean x0 (``start_timestep + 1`` U-Net evaluations), with
    diffusers' ``DDPMScheduler`` (the training schedule; x0 clipped)."""

    def __init__(self, radar: Radar, start_timestep: int = DEEP_TIMESTEP, *,
                 key: str | None = None, name: str | None = None) -> None:
        default_key, default_name = self.describe(start_timestep)
        super().__init__(radar, start_timestep, key=key or default_key, name=name or default_name)
        # Explicit timesteps start..0: each step goes to t - 1 and the last
        # one (t = 0) to the clean sample, with no added noise.
        self.scheduler.set_timesteps(timesteps=list(range(self.start_timestep, -1, -1)))
        self.network_evaluations = len(self.scheduler.timesteps)

    @staticmethod
    def describe(start_timestep: int = DEEP_TIMESTEP) -> tuple[str, str]:
        """The default ``(key, name)`` of the chain from ``start_timestep``."""
        return (f"ddpm{start_timestep}", f"DDPM reconstruction from t={start_timestep}"
                + (" (AnoDDPM)" if start_timestep == DEEP_TIMESTEP else ""))

    def _reverse(self, noisy: torch.Tensor, generators: list[torch.Generator],
                 per_image: int) -> torch.Tensor:
        x = noisy
        for t in self.scheduler.timesteps.tolist():
            eps = self._predict_noise(x, t)
            # One step call per image with its own generator, so its noise
            # does not depend on the other images in the batch.
            x = torch.cat([
                self.scheduler.step(eps[s:s + per_image], t, x[s:s + per_image],
                                    generator=g).prev_sample
                for s, g in zip(range(0, x.shape[0], per_image), generators)])
        return x


class DDIMReconstruction(ReconstructionBaseline):
    """Deterministic DDIM (eta 0) from ``start_timestep`` in ``steps`` U-Net
    evaluations: t = 250, 225, ..., 25, the last step going straight to the
    clean x0 (its predicted original sample, which is DDIM's step to
    abar = 1)."""

    def __init__(self, radar: Radar, start_timestep: int = DEEP_TIMESTEP,
                 steps: int = DDIM_STEPS, *, key: str | None = None,
                 name: str | None = None) -> None:
        default_key, default_name = self.describe(start_timestep, steps)
        super().__init__(radar, start_timestep, key=key or default_key, name=name or default_name)
        if steps < 1 or start_timestep < steps or start_timestep % steps:
            raise ValueError(f"steps must be a divisor of start_timestep ({start_timestep}), got {steps}")
        stride = start_timestep // steps
        ddim = DDIMScheduler.from_config(self.scheduler.config)
        # DDIMScheduler.step goes from t to t - num_train_timesteps // num_inference_steps;
        # choose num_inference_steps so that jump is exactly our stride.
        total = ddim.config.num_train_timesteps
        ddim.set_timesteps(total // stride)
        if total // ddim.num_inference_steps != stride:
            raise ValueError(f"DDIM cannot step by {stride} with {total} training timesteps; "
                             "choose start_timestep and steps so that the stride divides it")
        self.ddim = ddim
        self.timesteps = [start_timestep - k * stride for k in range(steps)]
        self.network_evaluations = steps

    @staticmethod
    def describe(start_timestep: int = DEEP_TIMESTEP, steps: int = DDIM_STEPS) -> tuple[str, str]:
        """The default ``(key, name)`` of the chain."""
        return f"ddim{steps}", f"DDIM reconstruction from t={start_timestep} in {steps} steps"

    def _reverse(self, noisy: torch.Tensor, generators: list[torch.Generator],
                 per_image: int) -> torch.Tensor:
        x = noisy
        for t in self.timesteps:
            out = self.ddim.step(self._predict_noise(x, t), t, x, eta=0.0)
            x = out.prev_sample
        return out.pred_original_sample


class OneStepReconstruction(ReconstructionBaseline):
    """One prediction at ``start_timestep``:
    x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar), clipped to [-1, 1]."""

    network_evaluations = 1

    def __init__(self, radar: Radar, start_timestep: int = DEEP_TIMESTEP, *,
                 key: str | None = None, name: str | None = None) -> None:
        default_key, default_name = self.describe(start_timestep)
        super().__init__(radar, start_timestep, key=key or default_key, name=name or default_name)

    @staticmethod
    def describe(start_timestep: int = DEEP_TIMESTEP) -> tuple[str, str]:
        """The default ``(key, name)`` of the prediction from ``start_timestep``."""
        return ("onestep", f"One-step x0 prediction from t={start_timestep} "
                "(DiffusionAD without segmentation network)")

    def _reverse(self, noisy: torch.Tensor, generators: list[torch.Generator],
                 per_image: int) -> torch.Tensor:
        abar = float(self.scheduler.alphas_cumprod[self.start_timestep])
        eps = self._predict_noise(noisy, self.start_timestep)
        return ((noisy - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)


# The paper's reconstruction methods, in table order: (class, its arguments after the radar).
RECONSTRUCTIONS: tuple[tuple[Any, tuple[int, ...]], ...] = (
    (DDPMReconstruction, (DEEP_TIMESTEP,)),
    (DDPMReconstruction, (SHALLOW_TIMESTEP,)),
    (DDIMReconstruction, (DEEP_TIMESTEP, DDIM_STEPS)),
    (OneStepReconstruction, (DEEP_TIMESTEP,)),
)


def reconstruction_baselines(radar: Radar) -> list[Baseline]:
    """``ddpm250``, ``ddpm25``, ``ddim10``, ``onestep`` on ``radar``'s
    fitted PyTorch network (``radar.unet``: a :class:`NotFittedError` before
    ``fit``, a :class:`ModelError` for a model opened from an exported file)."""
    return [method(radar, *arguments) for method, arguments in RECONSTRUCTIONS]


def _shape_groups(arrays: list[np.ndarray], size: int) -> Iterator[list[int]]:
    """Indices of same-shape images, at most ``size`` per group, in input order."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        by_shape.setdefault(array.shape, []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), size):
            yield indices[start:start + size]


# ----------------------------------------------------------------------- statistical


STATISTICAL_FEATURE_NAMES = (
    *(f"glcm_{prop}_d{d}" for prop in ("contrast", "dissimilarity", "homogeneity", "energy",
                                       "correlation") for d in (1, 2, 4)),
    "entropy_mean", "entropy_std", "entropy_window_max", "entropy_window_min",
    "ssim_mean", "ssim_window_min",
    "hough_lines_per_10k_px", "hough_mean_length", "hough_angle_spread",
)


class StatisticalBaseline(Baseline):
    """Classical texture descriptors, no network (the paper's ablation).

    Features: GLCM properties at distances 1, 2, 4 (averaged over four
    angles) of the image quantised to ``levels`` grey levels; local entropy
    (disk of ``entropy_radius``) mean, std and the extreme window means;
    SSIM against a Gaussian-smoothed copy (mean, weakest window); Hough-line
    statistics of the Canny edges. The map is the local entropy's two-sided
    deviation from its normal level, ``|entropy - mean| / std`` with one mean
    and std pooled over all calibration pixels (:meth:`fit_reference`),
    blurred: a flat patch on a texture and a busy patch on a plain surface
    both light up. Colour images are reduced to their channel mean.
    """

    key = "statistical"
    name = "Texture statistics (GLCM, local entropy, SSIM, Hough lines)"
    network_evaluations = 0
    slow = False
    feature_names = STATISTICAL_FEATURE_NAMES

    def __init__(self, config: RadarConfig, *, levels: int = 32, entropy_radius: int = 4,
                 smooth_sigma: float = 2.0, canny_sigma: float = 2.0,
                 hough_line_length: int = 15, hough_line_gap: int = 3) -> None:
        self._sk = _scikit_image()
        self.config = config
        self.levels = levels
        self.entropy_radius = entropy_radius
        self.smooth_sigma = smooth_sigma
        self.canny_sigma = canny_sigma
        self.hough_line_length = hough_line_length
        self.hough_line_gap = hough_line_gap

    def fit_reference(self, calibration: list[np.ndarray]) -> None:
        """Pool the local entropy of normal images into one mean and std."""
        if not calibration:
            raise DataError("statistical: no calibration images to learn the normal entropy from")
        pooled = np.concatenate([self._entropy(_gray(image)).ravel() for image in calibration])
        self.entropy_mean_ = float(pooled.mean())
        self.entropy_std_ = max(float(pooled.std()), 1e-6)

    def analyse(self, images: list[np.ndarray]) -> list[MethodOutput]:
        if not hasattr(self, "entropy_mean_"):
            raise NotFittedError("statistical: call fit_reference() with normal images first "
                                 "(the map is standardised by their local entropy)")
        return [self._analyse_one(_gray(image)) for image in images]

    def _entropy(self, gray: np.ndarray) -> np.ndarray:
        return self._sk.entropy(self._quantised(gray), self._sk.disk(self.entropy_radius)).astype(np.float64)

    def _quantised(self, gray: np.ndarray) -> np.ndarray:
        """Grey levels 0..levels-1 (uint8): fewer levels keep GLCMs dense and
        local entropy below its ceiling of log2(footprint size)."""
        levels = (gray * self.levels).astype(np.int64)
        return np.clip(levels, 0, self.levels - 1).astype(np.uint8)

    def _analyse_one(self, gray: np.ndarray) -> MethodOutput:
        sk = self._sk
        inference = self.config.inference
        window, stride = inference.window, inference.window_stride

        angles = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
        glcm = sk.graycomatrix(self._quantised(gray), distances=[1, 2, 4], angles=angles,
                            levels=self.levels, symmetric=True, normed=True)
        props = [sk.graycoprops(glcm, prop).mean(axis=1) for prop in
                 ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")]
        # A constant image has an undefined GLCM correlation (NaN): call it 1.
        glcm_features = np.nan_to_num(np.concatenate(props), nan=1.0)

        local_entropy = self._entropy(gray)
        entropy_windows = _window_means(local_entropy, window, stride)
        entropy_features = [local_entropy.mean(), local_entropy.std(),
                            entropy_windows.max(), entropy_windows.min()]

        smooth = sk.gaussian(gray, sigma=self.smooth_sigma)
        win_size = min(7, *gray.shape)
        _, ssim_map = sk.structural_similarity(gray, smooth, full=True, data_range=1.0,
                                            win_size=win_size - (win_size % 2 == 0))
        ssim_features = [ssim_map.mean(), _window_means(ssim_map, window, stride).min()]

        edges = sk.canny(gray, sigma=self.canny_sigma)
        lines = sk.probabilistic_hough_line(edges, threshold=10, line_length=self.hough_line_length,
                                         line_gap=self.hough_line_gap, rng=self.config.seed)
        hough_features = _line_statistics(np.asarray(lines, dtype=np.float64).reshape(-1, 4),
                                          gray.size)

        deviation = np.abs(local_entropy - self.entropy_mean_) / self.entropy_std_
        anomaly = blur(torch.from_numpy(deviation)[None, None], inference.blur_ksize)[0, 0]
        features = np.concatenate([glcm_features, entropy_features, ssim_features, hough_features])
        return MethodOutput(anomaly.float().numpy(), features.astype(np.float64))


def _line_statistics(lines: np.ndarray, n_pixels: int) -> list[float]:
    """``(L, 4)`` segments x0, y0, x1, y1 -> lines per 10,000 pixels (so
    image size does not matter), mean length, and the spread of their
    orientations, 1 - |mean exp(2i theta)| (0: all parallel, 1: no preferred
    direction; doubled angles because a line at theta and theta + pi is the
    same line). No lines: 0, 0, 1."""
    if len(lines) == 0:
        return [0.0, 0.0, 1.0]
    dx, dy = lines[:, 2] - lines[:, 0], lines[:, 3] - lines[:, 1]
    theta = np.arctan2(dy, dx)
    spread = 1.0 - float(np.abs(np.exp(2j * theta).mean()))
    return [len(lines) * 1e4 / n_pixels, float(np.hypot(dx, dy).mean()), spread]


def _window_means(values: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Means of ``(H, W)`` over ``window`` x ``window`` windows (clipped to the
    image), pooled exactly as RADAR's window features."""
    return window_means(torch.from_numpy(np.ascontiguousarray(values))[None, None],
                        window, stride).flatten().numpy()


def _scikit_image() -> SimpleNamespace:
    """The scikit-image functions the statistical baseline uses, or a
    one-line error naming the extra that brings them."""
    def part(module: str) -> Any:
        return require(module, "bench", "the statistical baseline", package="scikit-image")

    feature, filters, rank = part("skimage.feature"), part("skimage.filters"), part("skimage.filters.rank")
    metrics, morphology, transform = part("skimage.metrics"), part("skimage.morphology"), part("skimage.transform")
    return SimpleNamespace(canny=feature.canny, graycomatrix=feature.graycomatrix, graycoprops=feature.graycoprops,
                           gaussian=filters.gaussian, entropy=rank.entropy,
                           structural_similarity=metrics.structural_similarity, disk=morphology.disk,
                           probabilistic_hough_line=transform.probabilistic_hough_line)


def _gray(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W)`` float64, the channel mean."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3:
        raise DataError(f"statistical: expected a (C, H, W) image, got shape {array.shape}")
    return np.clip(array.mean(axis=0), 0.0, 1.0)


def baseline_names() -> dict[str, str]:
    """Key -> name of every baseline, in table order: the reconstruction
    methods, then the statistical one (no network or scikit-image needed)."""
    names = dict(method.describe(*arguments) for method, arguments in RECONSTRUCTIONS)
    names[StatisticalBaseline.key] = StatisticalBaseline.name
    return names


# ----------------------------------------------------------------------- one-class protocol


class OneClassMethod:
    """Wraps a :class:`Baseline` with the SAME one-class protocol RADAR uses:
    the baseline's reference, the one-class model and the pixel threshold are
    all fitted on normal calibration images only, and each image is decided
    by :meth:`ImageDecision.decide <radar_ad.decision.ImageDecision.decide>`
    (the verdict rule, the p-value and the ``decision.non_finite`` policy).

    Its predictions are :class:`~radar_ad.outputs.Prediction` objects whose
    ``noise_map`` is empty, ``(0, H, W)``: a baseline reads no one-step noise.
    """

    def __init__(self, baseline: Baseline, config: RadarConfig) -> None:
        self.baseline = baseline
        self.config = config

    def fit(self, calibration: list[np.ndarray], conformal: list[np.ndarray] | None = None) -> OneClassMethod:
        """Fit on normal images, and score the normal ``conformal`` ones for
        p-values and the false-alarm rule; returns ``self``."""
        self.baseline.fit_reference(calibration)
        outputs = self.baseline.analyse(calibration)
        decision = self.config.decision
        scored = self.baseline.analyse(conformal) if conformal else []
        # an empty list reaches ImageDecision as (0,) features: its DataError
        self.decision_ = ImageDecision(decision, self.config.seed).fit(
            np.array([output.features for output in outputs]),
            np.array([output.features for output in scored]) if scored else None)
        self.pixel_threshold_ = pixel_threshold([output.anomaly_map for output in outputs],
                                                decision.pixel_quantile)
        return self

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """Score, verdict, map and mask per ``(C, H, W)`` image, in input order."""
        if not hasattr(self, "decision_"):
            raise NotFittedError(f"{self.baseline.key}: call fit() with normal calibration "
                                 "images before predict()")
        outputs = self.baseline.analyse(images)
        if not outputs:
            return []
        decision = self.decision_
        verdicts = decision.decide(np.stack([output.features for output in outputs]))
        return [Prediction(score=verdict.score, is_anomalous=verdict.is_anomalous, threshold=decision.threshold_,
                           pixel_threshold=self.pixel_threshold_, features=output.features,
                           noise_map=np.zeros((0, *output.anomaly_map.shape), dtype=np.float32),
                           anomaly_map=output.anomaly_map, mask=output.anomaly_map > self.pixel_threshold_,
                           image=np.asarray(image, dtype=np.float32), p_value=verdict.p_value)
                for image, output, verdict in zip(images, outputs, verdicts)]


def __getattr__(name: str) -> Any:
    if name == "MethodPrediction":  # the deprecated name of the baselines' output type
        warnings.warn("radar_ad.bench.baselines.MethodPrediction is deprecated: the baselines return "
                      "radar_ad.outputs.Prediction (radar_ad.Prediction)", DeprecationWarning, stacklevel=2)
        return Prediction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
