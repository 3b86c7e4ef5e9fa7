"""Evaluate a fitted model on a labelled MVTec-layout test split.

Runs prediction over the test images in bounded chunks, then reports the
paper's metrics at the model's own threshold beside the field's
threshold-free ones (see :mod:`radar_ad.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import LabeledImage, evaluation_images, load_mask
from .files import json_ready
from .metrics import image_metrics, pixel_metrics
from .pipeline import Prediction, Radar
from .progress import progress_bar


@dataclass
class ImageResult:
    path: Path
    label: str
    score: float
    is_anomalous: bool


@dataclass
class Evaluation:
    metrics: dict[str, float | int | None]
    results: list[ImageResult] = field(default_factory=list)


def evaluate(radar: Radar, dataset: str | Path, *, progress: bool = False,
             on_prediction: Callable[[LabeledImage, Prediction], None] | None = None) -> Evaluation:
    """Metrics of ``radar`` on ``dataset/test`` (with ``ground_truth`` masks
    where present). ``on_prediction`` sees each (item, prediction), e.g. to
    keep a few maps for a report, without holding all of them here."""
    items = evaluation_images(dataset)
    have_masks = any(item.mask_path is not None for item in items if item.is_defective)
    results: list[ImageResult] = []
    masks, maps = [], []
    seconds = 0.0
    with progress_bar(total=len(items), enabled=progress, desc="evaluating", unit="img") as bar:
        for streamed in radar.predict_stream([item.path for item in items]):
            item, prediction = items[streamed.index], streamed.prediction
            seconds += streamed.seconds
            results.append(ImageResult(item.path, item.label, prediction.score, prediction.is_anomalous))
            if have_masks and (item.mask_path is not None or not item.is_defective):
                masks.append(load_mask(item.mask_path, prediction.anomaly_map.shape))
                maps.append(prediction.anomaly_map.astype(np.float32))
            if on_prediction is not None:
                on_prediction(item, prediction)
            bar.update(1)

    labels = np.array([r.label != "good" for r in results], dtype=int)
    metrics: dict[str, float | int | None] = dict(image_metrics(
        labels, np.array([r.score for r in results]), np.array([r.is_anomalous for r in results])))
    if have_masks:
        metrics.update(pixel_metrics(masks, maps))
    else:
        metrics.update({"pixel_auroc": None, "aupro": None, "pixel_f1max": None})
    metrics.update({
        "n_images": len(results), "n_normal": int((labels == 0).sum()),
        "n_defective": int(labels.sum()), "seconds_per_image": seconds / max(1, len(results)),
    })
    for label in sorted({r.label for r in results} - {"good"}):
        flagged = [r.is_anomalous for r in results if r.label == label]
        metrics[f"recall_{label}"] = float(np.mean(flagged))
    return Evaluation(json_ready(metrics), results)

