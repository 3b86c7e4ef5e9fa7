"""The image pyramid: area-averaged levels, levels smaller than a patch
mirrored up to it (never an error), and the way back to the finest level,
whole or region by region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radar_ad.evidence_passes import EvidencePasses
from radar_ad.pyramid import downsample, level_size, mirror_indices, pad_to, upsample, upsample_region


def test_a_level_is_the_area_average():
    image = torch.arange(8 * 12, dtype=torch.float64).reshape(1, 1, 8, 12)
    half = downsample(image, 2)
    assert half.shape == (1, 1, 4, 6)
    assert torch.allclose(half[0, 0, 0, 0], image[0, 0, :2, :2].mean())
    assert level_size(230, 565, 4) == (58, 141) and level_size(5, 7, 8) == (1, 1)
    assert downsample(image, 1) is image


def test_mirroring_runs_back_and_forth_for_any_length():
    assert mirror_indices(3, 8).tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    small = torch.arange(6.0).reshape(1, 2, 3)
    padded = pad_to(small, 5)
    assert padded.shape == (1, 5, 5) and torch.equal(padded[:, :2, :3], small)
    assert torch.equal(pad_to(torch.zeros(1, 30, 40), 28), torch.zeros(1, 30, 40))


@pytest.mark.parametrize("size, coarse", [((256, 200), (64, 50)), ((230, 565), (58, 141)), ((31, 17), (8, 4))])
def test_a_region_upsampled_equals_the_same_region_of_the_whole(size, coarse):
    maps = torch.rand(2, 3, *coarse, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = upsample(maps, size)
    for rows in ((0, size[0]), (3, size[0] // 2), (size[0] - 2, size[0])):
        for cols in ((0, size[1]), (1, 9), (size[1] - 1, size[1])):
            assert torch.allclose(upsample_region(maps, size, rows, cols), whole[..., rows[0]:rows[1], cols[0]:cols[1]])


def test_images_smaller_than_a_patch_at_the_coarsest_level_get_every_level(pyramid_fitted):
    radar, _ = pyramid_fitted  # 28 px patches, scales 1/2/4
    image = (np.random.default_rng(0).random((40, 33)) * 255).astype(np.uint8)  # level 4: 10 x 8 px
    passes = EvidencePasses(radar.backend_, radar.config)
    evidence = passes.evidence_of([torch.from_numpy(image[None].astype(np.float32) / 255)])
    assert evidence.scales == (1, 2, 4)
    assert [tuple(n.shape[-2:]) for n in evidence.noise] == [(40, 33), (20, 16), (10, 8)]
    assert all(torch.isfinite(part).all() for part in evidence.noise + evidence.repair)
    prediction = radar.predict(image)
    assert prediction.anomaly_map.shape == (40, 33) and np.isfinite(prediction.score)
