"""Tests of radar_ad.metrics against independent references.

AUPRO is checked against a deliberately naive implementation written here:
its own flood fill for 8-connected components, one pass per distinct
threshold, per-component loops, and numpy's trapezoid rule. Everything else
is checked against numbers worked out by hand in the comments.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from radar_ad.errors import ConfigError, DataError
from radar_ad.metrics import aupro, f1_max, image_metrics, pixel_metrics

_trapezoid = getattr(np, "trapezoid", None) or np.trapz


# ------------------------------------------------------------ brute reference
def _components_8(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first flood fill (no scipy)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for r in range(height):
        for c in range(width):
            if not mask[r, c] or seen[r, c]:
                continue
            region = []
            queue = deque([(r, c)])
            seen[r, c] = True
            while queue:
                y, x = queue.popleft()
                region.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            regions.append(region)
    return regions


def _brute_aupro(masks, maps, fpr_limit=0.3) -> float:
    masks = [np.asarray(m) != 0 for m in masks]
    maps = [np.asarray(a, dtype=np.float32).astype(np.float64) for a in maps]
    regions = [(i, region) for i, m in enumerate(masks) for region in _components_8(m)]
    n_normal = sum(int((~m).sum()) for m in masks)
    thresholds = sorted({float(v) for a in maps for v in a.ravel()}, reverse=True)

    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        overlaps = []
        for i, region in regions:
            above = sum(1 for (y, x) in region if maps[i][y, x] >= t)
            overlaps.append(above / len(region))
        pros.append(sum(overlaps) / len(overlaps))
        false_pos = sum(int(((a >= t) & ~m).sum()) for a, m in zip(maps, masks))
        fprs.append(false_pos / n_normal)

    # Keep points up to the limit; close the curve at the limit by linear
    # interpolation on the segment that crosses it.
    xs, ys = [], []
    for k, (x, y) in enumerate(zip(fprs, pros)):
        if x <= fpr_limit:
            xs.append(x)
            ys.append(y)
        else:
            if xs[-1] < fpr_limit:
                x0, y0 = fprs[k - 1], pros[k - 1]
                xs.append(fpr_limit)
                ys.append(y0 + (y - y0) * (fpr_limit - x0) / (x - x0))
            break
    return float(_trapezoid(ys, xs)) / fpr_limit


def _random_case(rng: np.random.Generator, quantise: bool):
    """2-4 images of different sizes; masks with several blobs of different
    sizes (rectangles, single pixels, diagonal chains); optionally coarse
    scores so that many pixels tie, across classes and images."""
    n_images = int(rng.integers(2, 5))
    masks, maps = [], []
    for _ in range(n_images):
        h, w = int(rng.integers(5, 13)), int(rng.integers(5, 13))
        mask = np.zeros((h, w), dtype=np.uint8)
        for _ in range(int(rng.integers(0, 4))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            dy, dx = int(rng.integers(1, 4)), int(rng.integers(1, 5))
            mask[y : y + dy, x : x + dx] = 255
        if rng.random() < 0.5:  # a diagonal chain: one component only under 8-connectivity
            k = int(rng.integers(2, min(h, w)))
            mask[np.arange(k), np.arange(k)] = 255
        amap = rng.random((h, w)).astype(np.float32)
        amap += 0.4 * (mask > 0)  # informative but imperfect
        if quantise:
            amap = np.round(amap * 5) / 5
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    # at least one defect somewhere
    if not any(m.any() for m in masks):
        masks[0][0, 0] = 255
    return masks, maps


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed: int, fpr_limit: float) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = _random_case(rng, quantise=seed % 2 == 1)
    expected = _brute_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)
    assert pixel_metrics(masks, maps, fpr_limit=fpr_limit)["aupro"] == pytest.approx(expected, abs=1e-9)


def test_brute_force_reference_is_8_connected() -> None:
    # Guard the reference itself: a diagonal pair is one region, two pixels
    # a knight's move apart are two.
    assert len(_components_8(np.eye(3, dtype=bool))) == 1
    knight = np.zeros((3, 3), dtype=bool)
    knight[0, 0] = knight[1, 2] = True
    assert len(_components_8(knight)) == 2


# ------------------------------------------------------------ AUPRO by hand
def test_aupro_hand_worked_example() -> None:
    # One 1x6 image.  mask  = [1, 1, 0, 0, 0, 1]
    #                 score = [.9, .2, .8, .1, .3, .5]
    # Components: A = {0, 1} (size 2), B = {5} (size 1); 3 normal pixels.
    # Per pixel: A adds 1/(2*2) = .25 to PRO, B adds 1/(1*2) = .5, normal adds 1/3 to FPR.
    # Descending: .9 A -> (0, .25); .8 N -> (1/3, .25); .5 B -> (1/3, .75);
    #             .3 N -> (2/3, .75); .2 A -> (2/3, 1); .1 N -> (1, 1); start (0, 0).
    # limit .3 : area = .3 * .25 = .075                 -> /.3 = .25
    # limit .5 : area = 1/3 * .25 + (.5 - 1/3) * .75 = 1/12 + 1/8 = 5/24 -> /.5 = 5/12
    # limit 1  : area = 1/12 + 1/3 * .75 + 1/3 * 1 = 2/3
    mask = np.array([[1, 1, 0, 0, 0, 1]], dtype=bool)
    amap = np.array([[0.9, 0.2, 0.8, 0.1, 0.3, 0.5]], dtype=np.float32)
    assert aupro([mask], [amap]) == pytest.approx(0.25, abs=1e-12)
    assert aupro([mask], [amap], fpr_limit=0.5) == pytest.approx(5 / 12, abs=1e-12)
    assert aupro([mask], [amap], fpr_limit=1.0) == pytest.approx(2 / 3, abs=1e-12)

    # Pixel AUROC: defect/normal pairs ranked right: .9 beats 3, .5 beats 2, .2 beats 1 -> 6/9.
    # Pixel F1max over top-k: k=1 P1 R1/3 F.5; k=2 .4; k=3 P2/3 R2/3 F2/3; k=4 4/7;
    #                         k=5 P3/5 R1 F.75; k=6 P.5 R1 F2/3 -> .75.
    result = pixel_metrics([mask], [amap], fpr_limit=0.5)
    assert result["pixel_auroc"] == pytest.approx(2 / 3, abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(0.75, abs=1e-12)
    assert result["aupro"] == pytest.approx(5 / 12, abs=1e-12)


def test_aupro_ties_enter_together() -> None:
    # mask [1, 0, 0, 0], score [.5, .5, .1, .1]: the defect ties with a normal pixel.
    # Curve: (0, 0) -> (1/3, 1) -> (1, 1).  PRO at FPR .3 is .9 (interpolated),
    # area = .5 * .3 * .9 = .135 -> /.3 = .45.  (Defect-first would give 1, normal-first 0.)
    mask = np.array([[255, 0, 0, 0]], dtype=np.uint8)
    amap = np.array([[0.5, 0.5, 0.1, 0.1]], dtype=np.float32)
    assert aupro([mask], [amap]) == pytest.approx(0.45, abs=1e-12)
    # Order of the tied pixels in memory must not matter.
    assert aupro([mask[:, ::-1]], [amap[:, ::-1]]) == pytest.approx(0.45, abs=1e-12)


def test_constant_map_gives_diagonal() -> None:
    # All scores tie: curve (0, 0) -> (1, 1); area to .3 is .045 -> .15.
    masks = [np.eye(4, dtype=bool), np.zeros((3, 5), dtype=bool)]
    maps = [np.zeros((4, 4)), np.zeros((3, 5))]
    assert aupro(masks, maps) == pytest.approx(0.15, abs=1e-12)
    assert pixel_metrics(masks, maps)["pixel_auroc"] == pytest.approx(0.5)


def test_eight_connectivity_in_aupro() -> None:
    # A diagonal pair is ONE component under 8-connectivity, two under 4.
    mask = np.array([[1, 0, 0, 0], [0, 1, 0, 1]], dtype=bool)
    amap = np.array([[0.9, 0.5, 0.5, 0.5], [0.5, 0.1, 0.5, 0.1]], dtype=np.float32)
    # 8-conn: A = {(0,0), (1,1)} size 2, B = {(1,3)} size 1, 2 components.
    # .9: A pixel adds 1/4 -> (0, .25); .5: all 5 normals -> (1, .25); .1 -> (1, 1).
    # AUPRO(.3) = .25.   (4-conn: 3 single components -> first step 1/3 -> .3333.)
    assert aupro([mask], [amap]) == pytest.approx(0.25, abs=1e-12)


def test_perfect_and_inverted_maps() -> None:
    rng = np.random.default_rng(3)
    masks = [np.zeros((6, 7), dtype=np.uint8), np.zeros((9, 5), dtype=np.uint8), np.zeros((4, 4), dtype=np.uint8)]
    masks[0][1:3, 2:5] = 255
    masks[1][6:9, 0] = 255
    masks[1][0, 4] = 255
    maps = [rng.random(m.shape) * 0.5 + 0.5 * (m > 0) + 0.01 * (m > 0) for m in masks]
    perfect = pixel_metrics(masks, maps)
    assert perfect["aupro"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["pixel_auroc"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["pixel_f1max"] == pytest.approx(1.0, abs=1e-12)
    inverted = pixel_metrics(masks, [-m for m in maps])
    assert inverted["aupro"] == pytest.approx(0.0, abs=1e-12)
    assert inverted["pixel_auroc"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------ pixel_metrics
def test_pixel_metrics_sizes_and_255_masks_match_bool() -> None:
    rng = np.random.default_rng(7)
    masks_255 = [np.zeros(shape, dtype=np.uint8) for shape in ((8, 10), (5, 12), (11, 6))]
    masks_255[0][2:5, 3:7] = 255
    masks_255[2][8:, 1:3] = 255
    maps = [rng.random(m.shape).astype(np.float32) + 0.3 * (m > 0) for m in masks_255]
    masks_bool = [m > 0 for m in masks_255]
    a = pixel_metrics(masks_255, maps)
    b = pixel_metrics(masks_bool, maps)
    assert set(a) == {"pixel_auroc", "aupro", "pixel_f1max"}
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-15)
        assert 0.0 <= a[key] <= 1.0
    assert a["aupro"] == pytest.approx(_brute_aupro(masks_255, maps), abs=1e-9)


def test_pixel_metrics_undefined_is_nan() -> None:
    normal_only = pixel_metrics([np.zeros((4, 4))], [np.random.default_rng(0).random((4, 4))])
    assert all(math.isnan(v) for v in normal_only.values())
    defect_only = pixel_metrics([np.ones((3, 3))], [np.random.default_rng(0).random((3, 3))])
    assert all(math.isnan(v) for v in defect_only.values())


def test_pixel_auroc_subsample_is_seeded_and_close() -> None:
    rng = np.random.default_rng(11)
    masks = [np.zeros((60, 60), dtype=bool) for _ in range(3)]
    for m in masks:
        m[10:30, 20:45] = True
    maps = [rng.normal(size=m.shape) + 1.0 * m for m in masks]
    full = pixel_metrics(masks, maps)
    sub1 = pixel_metrics(masks, maps, max_pixels=4000, seed=1)
    sub2 = pixel_metrics(masks, maps, max_pixels=4000, seed=1)
    assert sub1 == sub2
    assert sub1["pixel_auroc"] == pytest.approx(full["pixel_auroc"], abs=0.03)
    # AUPRO and F1max stay exact.
    assert sub1["aupro"] == full["aupro"]
    assert sub1["pixel_f1max"] == full["pixel_f1max"]


def test_pixel_metrics_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        pixel_metrics([np.zeros((3, 3))], [np.zeros((3, 4))])
    with pytest.raises(DataError):
        pixel_metrics([np.zeros((3, 3))], [])
    with pytest.raises(DataError):
        pixel_metrics([np.zeros((3, 3))], [np.full((3, 3), np.nan)])
    with pytest.raises(ConfigError):
        aupro([np.eye(3)], [np.eye(3)], fpr_limit=0.0)
    with pytest.raises(ConfigError):
        pixel_metrics([np.eye(3)], [np.eye(3)], fpr_limit=1.5)


# ------------------------------------------------------------ image level
def test_image_metrics_confusion_matrix() -> None:
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    verdicts = [1, 0, 1, 0, 1, 0, 0, 1]
    # TP = 3 (idx 0, 2, 7), FN = 1 (idx 1), FP = 1 (idx 4), TN = 3 (idx 3, 5, 6)
    # accuracy 6/8, precision 3/4, recall 3/4, f1 3/4.
    # scores: defects .9 .3 .8 .7, normals .1 .6 .2 .4.
    # AUROC: pairs won: .9 4, .8 4, .7 4, .3 2 -> 14/16 = .875.
    # F1max: top-3 all defects (P1, R3/4, F 6/7); top-4 adds .6 normal;
    #        top-6 (.9 .8 .7 .6 .4 .3) P4/6 R1 F .8; so max = 6/7.
    scores = [0.9, 0.3, 0.8, 0.1, 0.6, 0.2, 0.4, 0.7]
    result = image_metrics(labels, scores, np.array(verdicts, dtype=bool))
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["precision"] == pytest.approx(0.75)
    assert result["recall"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx(0.75)
    assert result["image_auroc"] == pytest.approx(0.875)
    assert result["image_f1max"] == pytest.approx(6 / 7)


def test_image_metrics_asymmetric_confusion() -> None:
    # labels 1 1 1 1 0 0, verdicts 1 0 0 0 1 1: TP 1, FN 3, FP 2, TN 0.
    # accuracy 1/6, precision 1/3, recall 1/4, f1 = 2*(1/3)(1/4)/(7/12) = 2/7.
    result = image_metrics([1, 1, 1, 1, 0, 0], [5, 4, 3, 2, 1, 0], [1, 0, 0, 0, 1, 1])
    assert result["accuracy"] == pytest.approx(1 / 6)
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 4)
    assert result["f1"] == pytest.approx(2 / 7)
    assert result["image_auroc"] == pytest.approx(1.0)
    assert result["image_f1max"] == pytest.approx(1.0)


def test_image_metrics_no_positive_verdicts_is_zero_not_error() -> None:
    result = image_metrics([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2], [0, 0, 0, 0])
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["precision"] == 0.0
    assert result["recall"] == 0.0
    assert result["f1"] == 0.0


@pytest.mark.parametrize("label", [0, 1])
def test_image_metrics_single_class_is_nan(label: int) -> None:
    result = image_metrics([label] * 4, [0.1, 0.5, 0.3, 0.9], [0, 1, 0, 1])
    assert math.isnan(result["image_auroc"])
    assert math.isnan(result["image_f1max"])
    assert result["accuracy"] == pytest.approx(0.5)


def test_f1_max_known_case() -> None:
    # labels 0 0 1 1, scores .1 .4 .35 .8 (the scikit-learn docs example).
    # top-1 P1 R.5 F2/3; top-2 P.5 R.5 F.5; top-3 P2/3 R1 F.8; top-4 P.5 R1 F2/3 -> .8
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert f1_max([0, 1], [0.0, 1.0]) == pytest.approx(1.0)
    assert math.isnan(f1_max([0, 0, 0], [0.1, 0.2, 0.3]))


def test_image_metrics_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        image_metrics([0, 1, 2], [0.1, 0.2, 0.3], [0, 1, 1])
    with pytest.raises(DataError):
        image_metrics([0, 1], [0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(DataError):
        image_metrics([0, 1], [0.1, float("nan")], [0, 1])
