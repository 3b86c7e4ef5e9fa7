"""Anomaly-detection metrics: image-level scores and pixel-level AUROC, F1max
and the MVTec-AD AUPRO.

Image level reports the paper's accuracy, precision, recall and F1 at the
model's own verdicts, plus the threshold-free image AUROC and F1max.

Pixel level pools every pixel of every image (images may differ in size).
AUPRO follows the MVTec-AD protocol exactly, not on a coarse threshold grid:
the whole PRO/FPR curve is built from one descending sort of all pooled
pixels with cumulative sums, so it is exact and costs one ``argsort`` even for
tens of millions of pixels. Connected components of the ground truth use
8-connectivity (``scipy.ndimage.label`` with a 3x3 structure of ones), as in
the MVTec-AD reference code.

A metric that is undefined for the given data (only one class present) is
returned as ``float('nan')`` rather than raising, so that an evaluation over
many categories never stops on one degenerate split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from .errors import ConfigError, DataError

__all__ = ["image_metrics", "pixel_metrics", "aupro", "f1_max"]

_NAN = float("nan")
# 8-connectivity: diagonal neighbours belong to the same defect region.
_STRUCTURE = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------- validation
def _binary_vector(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D 0/1 integer vector; anything else is a user error, not a crash."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int8)
    if not np.isin(array, (0, 1)).all():
        raise DataError(f"{name} must contain only 0/1 (or booleans)")
    return array.astype(np.int8)


def _score_vector(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D finite float vector (sklearn rejects NaN/inf with a less useful message)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from exc
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return array


def _check_fpr_limit(fpr_limit: float) -> float:
    """AUPRO integrates over FPR in [0, fpr_limit]; outside (0, 1] it means nothing."""
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ConfigError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return limit


def _both_classes(labels: np.ndarray) -> bool:
    """Threshold-free metrics are only defined when both classes occur."""
    positives = int(np.count_nonzero(labels))
    return 0 < positives < labels.size


# ---------------------------------------------------------------- image level
def f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best F1 over every score threshold (from ``precision_recall_curve``).

    Gives the detector's F1 at its best operating point, independent of how
    the model picked its own threshold. NaN when only one class is present
    (no positives makes recall undefined; no negatives makes it trivial).
    """
    y = _binary_vector(labels, "labels")
    s = _score_vector(scores, "scores")
    if y.shape != s.shape:
        raise DataError(f"labels {y.shape} and scores {s.shape} differ in length")
    return _f1_max(y, s)


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """f1_max on already validated arrays (avoids copying 30M pixels twice)."""
    if not _both_classes(labels):
        return _NAN
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(
        2.0 * precision * recall,
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    return float(f1.max())


def image_metrics(labels: ArrayLike, scores: ArrayLike, verdicts: ArrayLike) -> dict[str, float]:
    """Image-level metrics.

    ``labels``: 1 = defective, 0 = normal, shape (N,); ``scores``: higher =
    more anomalous, (N,); ``verdicts``: bool or 0/1 predicted anomalous, (N,).

    Returns ``accuracy``, ``precision``, ``recall``, ``f1`` at the model's own
    verdicts (the paper's metrics; ``zero_division=0`` so a model that flags
    nothing scores 0 instead of raising), plus the threshold-free
    ``image_auroc`` and ``image_f1max``. With only one class present those
    two are NaN (not an exception).
    """
    y = _binary_vector(labels, "labels")
    s = _score_vector(scores, "scores")
    v = _binary_vector(verdicts, "verdicts")
    if not y.shape == s.shape == v.shape:
        raise DataError(f"labels {y.shape}, scores {s.shape} and verdicts {v.shape} differ in length")
    if y.size == 0:
        raise DataError("image_metrics needs at least one image")
    both = _both_classes(y)
    return {
        "accuracy": float(accuracy_score(y, v)),
        "precision": float(precision_score(y, v, zero_division=0)),
        "recall": float(recall_score(y, v, zero_division=0)),
        "f1": float(f1_score(y, v, zero_division=0)),
        "image_auroc": float(roc_auc_score(y, s)) if both else _NAN,
        "image_f1max": _f1_max(y, s) if both else _NAN,
    }


# ---------------------------------------------------------------- pixel level
def _pool(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool all pixels of all images into flat arrays.

    Returns ``scores`` (float32, all pixels), ``component`` (int32, 0 for a
    normal pixel, otherwise a component id unique across images) and
    ``sizes`` (pixel count per component id; ``sizes[0]`` is the normal count).
    Float32 halves the memory of ~30M pooled pixels; scores are therefore
    compared at float32 precision.
    """
    if len(masks) != len(maps):
        raise DataError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    if len(masks) == 0:
        raise DataError("pixel metrics need at least one image")
    shapes = []
    for index, (mask, amap) in enumerate(zip(masks, maps)):
        mask_shape, map_shape = np.shape(mask), np.shape(amap)
        if len(mask_shape) != 2:
            raise DataError(f"mask {index} must be 2-D (H, W), got shape {mask_shape}")
        if map_shape != mask_shape:
            raise DataError(f"anomaly map {index} has shape {map_shape} but its mask has {mask_shape}")
        shapes.append(mask_shape)
    total = sum(h * w for h, w in shapes)
    # Filled in place: no list of per-image copies next to the pooled arrays.
    scores = np.empty(total, dtype=np.float32)
    component = np.empty(total, dtype=np.int32)
    size_parts = [np.zeros(1, dtype=np.int64)]  # [normal count], then per image
    start = 0
    offset = 0
    for (height, width), mask, amap in zip(shapes, masks, maps):
        stop = start + height * width
        scores[start:stop] = np.asarray(amap, dtype=np.float32).ravel()
        labelled, count = ndimage.label(np.asarray(mask) != 0, structure=_STRUCTURE)
        part = component[start:stop]
        part[:] = labelled.ravel()
        # Per image, so no int64 copy of all pooled labels is ever made.
        counts = np.bincount(part, minlength=count + 1)
        size_parts[0] += counts[0]
        size_parts.append(counts[1:])
        if count:
            part[part > 0] += offset
        offset += count
        start = stop
    if not np.isfinite(scores).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    sizes = np.concatenate(size_parts)
    return scores, component, sizes


def _aupro_pooled(scores: np.ndarray, component: np.ndarray, sizes: np.ndarray, fpr_limit: float) -> float:
    """Exact MVTec AUPRO from pooled pixels, the whole curve in one sort.

    Walking pixels by descending score, a pixel of component c raises PRO by
    1 / (size_c * n_components) and a normal pixel raises FPR by
    1 / n_normal; cumulative sums give PRO and FPR at every threshold. Only
    the last pixel of each run of tied scores is a valid curve point, since
    all pixels with the same score pass a threshold together.
    """
    n_normal = int(sizes[0])
    n_components = sizes.size - 1
    if n_normal == 0 or n_components == 0:
        return _NAN

    order = np.argsort(scores)[::-1]  # descending; tie order is irrelevant
    sorted_scores = scores[order]
    sorted_component = component[order]
    del order

    # Marks the last pixel of every run of equal scores (the run's pixels
    # enter together). A boolean mask, not an int64 index, to save memory.
    run_end = np.empty(sorted_scores.size, dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=run_end[:-1])
    run_end[-1] = True
    del sorted_scores

    # FPR after every pixel; normal counts are exact in float64 (< 2**53).
    running = np.cumsum(sorted_component == 0, dtype=np.float64)
    running /= n_normal
    # Points past the first one beyond fpr_limit never enter the integral:
    # cut the curve there to save time and memory on ~30M pixels.
    beyond = run_end & (running > fpr_limit)
    cut = int(np.argmax(beyond)) + 1 if beyond.any() else running.size
    del beyond
    run_end = run_end[:cut]
    n_points = int(np.count_nonzero(run_end)) + 1  # + the (0, 0) start
    fpr = np.zeros(n_points)
    np.compress(run_end, running[:cut], out=fpr[1:])
    del running

    weight = np.zeros(sizes.size, dtype=np.float64)
    weight[1:] = 1.0 / (sizes[1:].astype(np.float64) * n_components)
    running = weight[sorted_component[:cut]]  # PRO increment of every pixel
    del sorted_component
    np.cumsum(running, out=running)
    pro = np.zeros(n_points)
    np.compress(run_end, running, out=pro[1:])
    del running, run_end
    return _partial_area(fpr, pro, fpr_limit) / fpr_limit


def _partial_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under a curve with non-decreasing ``fpr`` (ending at 1)
    for FPR in [0, limit], closing it with the curve linearly interpolated at
    ``limit``."""
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x = fpr[:inside]
    y = pro[:inside]
    if x[-1] < limit:
        # fpr ends at 1 >= limit, so a point beyond the limit exists.
        x0, x1 = fpr[inside - 1], fpr[inside]
        y0, y1 = pro[inside - 1], pro[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x = np.append(x, limit)
        y = np.append(y, y_limit)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) * 0.5)


def aupro(masks: Sequence[ArrayLike], maps: Sequence[ArrayLike], fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve for FPR in [0, fpr_limit],
    divided by ``fpr_limit`` so a perfect map gives 1.0 (MVTec-AD protocol).

    PRO at a threshold is the mean, over every connected component of every
    ground-truth mask (8-connectivity, ``scipy.ndimage.label`` with a 3x3
    structure), of the fraction of that component's pixels above the
    threshold; so small defects weigh as much as large ones, unlike pixel
    AUROC. FPR is the fraction of normal pixels (mask 0, all images) above
    the threshold. Exact: every distinct score is a threshold. NaN when there
    is no defective or no normal pixel.
    """
    limit = _check_fpr_limit(fpr_limit)
    scores, component, sizes = _pool(masks, maps)
    return _aupro_pooled(scores, component, sizes, limit)


def pixel_metrics(
    masks: Sequence[ArrayLike],
    maps: Sequence[ArrayLike],
    *,
    fpr_limit: float = 0.3,
    max_pixels: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Pixel-level metrics over all pixels of all images pooled.

    ``masks``: (H_i, W_i) ground truth, bool or 0/255 (all zero for normal
    images); ``maps``: (H_i, W_i) float anomaly maps matching their masks;
    sizes may differ between images.

    Returns ``pixel_auroc`` (ROC AUC over the pooled pixels), ``aupro`` (see
    :func:`aupro`) and ``pixel_f1max``. ``max_pixels`` caps, by a seeded
    uniform subsample, the pixels used for ``pixel_auroc`` only, to bound its
    time and memory; ``aupro`` and ``pixel_f1max`` always use every pixel.
    A metric that is undefined (no defective or no normal pixel, in the
    subsample for AUROC) is NaN.
    """
    limit = _check_fpr_limit(fpr_limit)
    if max_pixels is not None and int(max_pixels) < 1:
        raise ConfigError(f"max_pixels must be a positive integer or None, got {max_pixels}")
    scores, component, sizes = _pool(masks, maps)
    defective = component != 0

    auroc_scores, auroc_labels = scores, defective
    if max_pixels is not None and scores.size > int(max_pixels):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(scores.size, size=int(max_pixels), replace=False))
        auroc_scores, auroc_labels = scores[keep], defective[keep]
    pixel_auroc = float(roc_auc_score(auroc_labels, auroc_scores)) if _both_classes(auroc_labels) else _NAN

    pixel_f1max = _f1_max(defective, scores)
    del defective
    return {
        "pixel_auroc": pixel_auroc,
        "aupro": _aupro_pooled(scores, component, sizes, limit),
        "pixel_f1max": pixel_f1max,
    }
