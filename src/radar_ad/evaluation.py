"""Evaluate a fitted model on a labelled MVTec-layout test split.

Runs prediction over the test images in bounded chunks, then reports the
paper's metrics at the model's own threshold beside the field's
threshold-free ones (see :mod:`radar_ad.metrics`), and the false-alarm rate
observed on the normal test images.

Pixel metrics are scored at the model's input size (``"model"``: masks
resized, nearest, to the maps) or at each ground-truth mask's own size
(``"native"``: maps upsampled bilinearly to the mask, the MVTec protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import LabeledImage, evaluation_images, image_size, load_mask
from .errors import ConfigError
from .files import json_ready
from .metrics import image_metrics, pixel_metrics
from .outputs import Prediction
from .pipeline import Radar
from .progress import progress_bar

PIXEL_RESOLUTIONS = ("model", "native")


@dataclass
class ImageResult:
    path: Path
    label: str
    score: float
    is_anomalous: bool
    p_value: float | None = None


def upsample(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An ``(H, W)`` map resized bilinearly to ``shape`` (half-pixel centres,
    as image resizers do)."""
    if anomaly_map.shape == tuple(shape):
        return anomaly_map.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def truth_and_map(item: LabeledImage, anomaly_map: np.ndarray, resolution: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ground truth, map)`` of one test image, both at the ``resolution``
    that pixel metrics are scored at (:data:`PIXEL_RESOLUTIONS`)."""
    if resolution == "model":
        return load_mask(item.mask_path, anomaly_map.shape), anomaly_map.astype(np.float32)
    mask = load_mask(item.mask_path, None) if item.mask_path is not None else None
    shape = mask.shape if mask is not None else image_size(item.path)[::-1]
    truth = mask if mask is not None else np.zeros(shape, dtype=bool)
    return truth, upsample(anomaly_map, truth.shape)


@dataclass
class Evaluation:
    metrics: dict[str, float | int | str | None]
    results: list[ImageResult] = field(default_factory=list)


def evaluate(radar: Radar, dataset: str | Path, *, progress: bool = False,
             on_prediction: Callable[[LabeledImage, Prediction], None] | None = None,
             pixel_resolution: str = "model") -> Evaluation:
    """Metrics of ``radar`` on ``dataset/test`` (with ``ground_truth`` masks
    where present). ``on_prediction`` sees each (item, prediction), e.g. to
    keep a few maps for a report, without holding all of them here.
    ``pixel_resolution``: one of :data:`PIXEL_RESOLUTIONS` (module docstring)."""
    if pixel_resolution not in PIXEL_RESOLUTIONS:
        raise ConfigError(f"pixel_resolution must be {' or '.join(PIXEL_RESOLUTIONS)}, got {pixel_resolution!r}",
                          setting="pixel_resolution")
    items = evaluation_images(dataset)
    have_masks = any(item.mask_path is not None for item in items if item.is_defective)
    results: list[ImageResult] = []
    masks, maps = [], []
    seconds = 0.0
    with progress_bar(total=len(items), enabled=progress, desc="evaluating", unit="img") as bar:
        for streamed in radar.predict_stream([item.path for item in items]):
            item, prediction = items[streamed.index], streamed.prediction
            assert prediction is not None  # without keep_going a failure raises instead
            seconds += streamed.seconds
            results.append(ImageResult(item.path, item.label, prediction.score, prediction.is_anomalous,
                                       prediction.p_value))
            if have_masks and (item.mask_path is not None or not item.is_defective):
                truth, anomaly_map = truth_and_map(item, prediction.anomaly_map, pixel_resolution)
                masks.append(truth)
                maps.append(anomaly_map)
            if on_prediction is not None:
                on_prediction(item, prediction)
            bar.update(1)

    labels = np.array([r.label != "good" for r in results], dtype=int)
    metrics: dict[str, float | int | str | None] = dict(image_metrics(
        labels, np.array([r.score for r in results]), np.array([r.is_anomalous for r in results])))
    if have_masks:
        metrics.update(pixel_metrics(masks, maps))
    else:
        metrics.update({"pixel_auroc": None, "aupro": None, "pixel_f1max": None})
    flagged_normal = int(sum(r.is_anomalous for r in results if r.label == "good"))
    metrics.update({
        "n_images": len(results), "n_normal": int((labels == 0).sum()),
        "n_defective": int(labels.sum()), "seconds_per_image": seconds / max(1, len(results)),
        "false_alarm_rate": radar.config.decision.false_alarm_rate,
        "false_alarms_observed": flagged_normal / max(1, int((labels == 0).sum())),
        "pixel_resolution": pixel_resolution,
    })
    for label in sorted({r.label for r in results} - {"good"}):
        flagged = [r.is_anomalous for r in results if r.label == label]
        metrics[f"recall_{label}"] = float(np.mean(flagged))
    return Evaluation(json_ready(metrics), results)

