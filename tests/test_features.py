import numpy as np
import pytest
import torch

from radar_ad.features import energy_deficit, image_features


def test_known_values():
    response = torch.zeros(1, 40, 40)
    response[0, :20, :20] = 2.0  # one window of value 2, three of 0
    rms = image_features(response, 20, 20, "rms")[0].numpy()
    np.testing.assert_allclose(rms, [1.0, 2.0])  # sqrt(mean of 4 on a quarter), window rms 2
    raw = image_features(response, 20, 20, "sum")[0].numpy()
    np.testing.assert_allclose(raw, [40.0, 40.0])  # sqrt(400 * 4)


def test_rms_features_do_not_grow_with_image_size():
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.random((1, 60, 60)))
    large = torch.from_numpy(np.tile(small.numpy(), (1, 3, 3)))
    f_small = image_features(small)[0].numpy()
    f_large = image_features(large)[0].numpy()
    np.testing.assert_allclose(f_small, f_large, rtol=0.02)
    assert image_features(large, norm="sum")[0, 0] > 2.5 * image_features(small, norm="sum")[0, 0]


def test_window_clipped_to_small_images_and_batch():
    response = torch.rand(3, 10, 12)
    features = image_features(response, 20, 20)
    assert features.shape == (3, 2)
    assert torch.all(features[:, 1] >= features[:, 0] - 1e-12)


def test_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        image_features(torch.rand(1, 30, 30), norm="max")


def test_energy_deficit_finds_the_weakest_window():
    noise = torch.randn(2, 1, 80, 80, generator=torch.Generator().manual_seed(0))
    noise[1, :, 40:60, 20:40] *= 0.1  # a region where texture was removed
    deficit = energy_deficit(noise, 20, 20)
    assert deficit.shape == (2,)
    assert deficit[1] < 0.2 < 0.8 < deficit[0]
    # a constant map: every window has the same RMS, channels averaged
    flat = torch.full((1, 3, 40, 40), 0.5)
    assert torch.allclose(energy_deficit(flat), torch.tensor([0.5], dtype=torch.float64))
    # windows larger than the image are clipped to it
    assert torch.allclose(energy_deficit(flat[..., :10, :10], 20, 20), torch.tensor([0.5], dtype=torch.float64))
