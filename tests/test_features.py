import numpy as np
import pytest
import torch

from radar_ad.features import FEATURE_NAMES, image_features, square_sums, window_max_features
from radar_ad.registry import RESPONSES


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


def test_two_sided_features_are_each_parts_largest_window_rms():
    parts = torch.zeros(2, 2, 80, 80)
    parts[1, 1, 40:60, 20:40] = 3.0  # a deficit region filling one window
    parts[0, 0, :20, :20] = 2.0
    features = window_max_features(square_sums(parts, 20, 20)).numpy()
    np.testing.assert_allclose(features, [[2.0, 0.0], [0.0, 3.0]])
    # windows larger than the image are clipped to it
    np.testing.assert_allclose(window_max_features(square_sums(torch.ones(1, 2, 10, 10), 20, 20)).numpy(),
                               [[1.0, 1.0]])
    assert (len(RESPONSES.get("two_sided").feature_names) == 2
            and RESPONSES.get("sobel").feature_names == FEATURE_NAMES == ("global_norm", "window_max_norm"))
