"""Synthetic defects: exact masks, a visible change, seeded, every kind."""

from __future__ import annotations

import numpy as np
import pytest

from radar_ad.defects import KINDS, paste_defect


def _texture(seed: int, shape=(84, 84)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.1 * rng.standard_normal(shape), 0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_the_image_where_its_mask_is(kind):
    for seed in range(5):
        image = _texture(seed)
        defective, mask = paste_defect(image.copy(), _texture(seed + 100, (120, 90)), np.random.default_rng(seed),
                                       kind)
        assert defective.shape == image.shape and mask.dtype == bool
        assert 0 < mask.sum() < 0.6 * mask.size
        assert defective.min() >= 0 and defective.max() <= 1
        change = np.abs(defective - image)
        # the change sits on the mask (soft edges spill a pixel or two, not more)
        assert change[mask].mean() > 0.05
        far = ~_dilate(mask, 3)
        assert change[far].max() < 0.02


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage
    return ndimage.binary_dilation(mask, iterations=radius)


def test_seeded_and_kinds_drawn_at_random():
    image, other = _texture(0), _texture(1, (100, 100))
    a = paste_defect(image.copy(), other, np.random.default_rng(3))
    b = paste_defect(image.copy(), other, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="kind must be one of"):
        paste_defect(image, other, np.random.default_rng(0), "scratch")
