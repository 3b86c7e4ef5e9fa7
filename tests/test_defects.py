"""Synthetic defects: every kind across its stated ranges, with an exact mask, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from radar_ad import defects
from radar_ad.defects import KINDS, paste_defect, paste_into

DRAWS = 60


def _texture(seed: int, shape=(120, 150)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.1 * rng.standard_normal(shape), 0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_spans_its_ranges_with_an_exact_mask(kind):
    image, other = _texture(0), _texture(1, (90, 200))
    extents, opacities, edges, crisp = [], [], [], 0
    for seed in range(DRAWS):
        defect = paste_defect(image, other, np.random.default_rng(seed), kind)
        assert defect.kind == kind and defect.image.shape == image.shape and defect.mask.dtype == bool
        assert defect.image.min() >= 0 and defect.image.max() <= 1
        # exact: the mask is where the change's weight is at least half its opacity ...
        assert np.array_equal(defect.mask, defect.weight >= defect.opacity / 2 - 1e-12)
        assert defect.mask.any()
        # ... and where the weight is zero the image is unchanged to the bit
        untouched = defect.weight == 0
        assert np.array_equal(defect.image[untouched], image[untouched])
        # the change follows the weight: never more than the weight allows
        assert np.all(np.abs(defect.image - image) <= defect.weight + 1e-12)
        rows, cols = np.nonzero(defect.mask)
        span = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert span <= defects.ASPECT**0.5 * defect.extent + 2
        extents.append(defect.extent)
        opacities.append(defect.opacity)
        edges.append(defect.edge)
        crisp += defect.edge == 0
    largest = defects.LARGEST_FRACTION * min(image.shape)
    assert defects.SMALLEST <= min(extents) < 6 and 0.5 * largest < max(extents) <= largest  # a few px to a third
    assert min(opacities) < 0.35 and max(opacities) > 0.85  # faint to strong
    assert 0 < crisp < DRAWS and max(edges) > 2  # crisp to soft


def test_a_defect_is_visible_where_it_is_strong():
    image, other = _texture(0), _texture(1)
    changes = []
    for seed in range(DRAWS):
        defect = paste_defect(image, other, np.random.default_rng(seed), "brightness")
        strong = defect.weight > 0.8
        if strong.any():
            changes.append(np.abs(defect.image - image)[strong].mean())
    assert np.median(changes) > 0.05


def test_seeded_kinds_drawn_at_random_and_colour_images():
    image, other = _texture(0), _texture(1, (100, 100))
    a = paste_defect(image, other, np.random.default_rng(3))
    b = paste_defect(image, other, np.random.default_rng(3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert {paste_defect(image, other, np.random.default_rng(s)).kind for s in range(40)} == set(KINDS)
    with pytest.raises(ValueError, match="kind must be one of"):
        paste_defect(image, other, np.random.default_rng(0), "scratch")
    colour = np.stack([image, image * 0.9, image * 0.8]).astype(np.float32)
    defective, mask = paste_into(colour, colour, np.random.default_rng(4), "brightness")
    assert defective.shape == colour.shape and defective.dtype == np.float32 and mask.any()
    change = defective - colour
    assert np.abs(change[:, ~mask]).max() < np.abs(change[:, mask]).max()
