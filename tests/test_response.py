import cv2
import numpy as np
import pytest
import torch

from radar_ad.response import blur, response_map, sobel_magnitude


# OpenCV 4 and 5 agree on the fixed kernels up to 7; OpenCV 5 also tabulates 9
# (rounded to 1/256), where ours keeps the exact Gaussian of OpenCV 4.
@pytest.mark.parametrize("ksize", [3, 5, 7])
def test_blur_equals_opencv(ksize):
    x = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    ours = blur(torch.from_numpy(x)[None, None], ksize)[0, 0].numpy()
    np.testing.assert_allclose(ours, cv2.GaussianBlur(x, (ksize, ksize), 0), atol=1e-5)


@pytest.mark.parametrize("ksize", [3, 5, 7])
def test_sobel_equals_opencv(ksize):
    x = np.random.default_rng(1).random((41, 29)).astype(np.float32)
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=ksize)
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=ksize)
    ours = sobel_magnitude(torch.from_numpy(x)[None, None], ksize)[0, 0].numpy()
    np.testing.assert_allclose(ours, np.hypot(gx, gy), rtol=1e-4, atol=1e-4)


def test_response_map_is_blur_then_sobel_as_in_opencv():
    x = np.random.default_rng(2).normal(size=(64, 48)).astype(np.float32)
    blurred = cv2.GaussianBlur(x, (5, 5), 0)
    expected = np.hypot(cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=5),
                        cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=5))
    ours = response_map(torch.from_numpy(x)[None, None])[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_flat_map_has_zero_response_and_an_edge_lights_up():
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert response_map(flat).abs().max() < 1e-5
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1
    r = response_map(step)[0]
    assert r[:, 14:18].min() > r[:, :8].max() + 1


def test_colour_channels_combine_as_root_sum_of_squares():
    x = torch.rand(2, 3, 30, 30)
    joint = response_map(x)
    single = torch.stack([response_map(x[:, c:c + 1]) for c in range(3)])
    torch.testing.assert_close(joint, single.pow(2).sum(0).sqrt())
