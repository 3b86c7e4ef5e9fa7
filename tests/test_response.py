import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, uniform_filter
from sklearn.metrics import roc_auc_score

from radar_ad.filters import blur, blur_sobel_map, gaussian_smooth, local_energy, sobel_magnitude
from radar_ad.responses.two_sided import ResponseStatistics, fit_response_statistics, response_parts, two_sided_map


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


def test_blur_sobel_map_is_blur_then_sobel_as_in_opencv():
    x = np.random.default_rng(2).normal(size=(64, 48)).astype(np.float32)
    blurred = cv2.GaussianBlur(x, (5, 5), 0)
    expected = np.hypot(cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=5),
                        cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=5))
    ours = blur_sobel_map(torch.from_numpy(x)[None, None])[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_flat_map_has_zero_response_and_an_edge_lights_up():
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert blur_sobel_map(flat).abs().max() < 1e-5
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1
    r = blur_sobel_map(step)[0]
    assert r[:, 14:18].min() > r[:, :8].max() + 1


def test_colour_channels_combine_as_root_sum_of_squares():
    x = torch.rand(2, 3, 30, 30)
    joint = blur_sobel_map(x)
    single = torch.stack([blur_sobel_map(x[:, c:c + 1]) for c in range(3)])
    torch.testing.assert_close(joint, single.pow(2).sum(0).sqrt())


def test_local_energy_is_a_mirrored_box_mean_of_the_squared_noise():
    x = np.random.default_rng(3).normal(size=(2, 33, 47))
    ours = local_energy(torch.from_numpy(x)[None], 9)[0].numpy()
    # channels averaged, then a 9 x 9 mean with the mirrored border torch and scipy call "reflect"/"mirror"
    expected = np.log(uniform_filter((x**2).mean(0), 9, mode="mirror") + 1e-12)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_gaussian_smooth_equals_scipy():
    x = np.random.default_rng(4).random((40, 50))
    ours = gaussian_smooth(torch.from_numpy(x)[None, None], 2.5)[0, 0].numpy()
    np.testing.assert_allclose(ours, gaussian_filter(x, 2.5, mode="mirror", truncate=3.0), atol=1e-3)
    unchanged = torch.from_numpy(x)[None, None]
    assert torch.equal(gaussian_smooth(unchanged, 0), unchanged)
    # a kernel wider than a small image is truncated to it, not an error, and still averages
    small = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    smoothed = gaussian_smooth(small, 12.0)
    assert smoothed.shape == (1, 1, 8, 8) and smoothed.std() < 0.5 * small.std()
    assert abs(float(smoothed.mean() - small.mean())) < 0.05


def test_banded_matrices_and_convolution_give_the_same_smoothing(monkeypatch):
    """Small maps are filtered by banded-matrix products, large ones by 1-D
    convolutions: both mirror the border the same way."""
    import radar_ad.filters as response_module

    x = torch.rand(3, 1, 45, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    def filtered():
        return [gaussian_smooth(x, 6.0), gaussian_smooth(x, 30.0), sobel_magnitude(x, 5), blur(x.float(), 7)]
    banded = filtered()
    monkeypatch.setattr(response_module, "BANDED_MAX", 0)
    for a, b in zip(banded, filtered()):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 if a.dtype == torch.float32 else 1e-12)


def _noise(seed, n=6, size=96):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_two_sided_map_finds_removed_and_added_structure():
    statistics = fit_response_statistics([_noise(0)], energy_window=9)
    assert statistics.energy_std > 0 and statistics.deficit_scale > 0 and statistics.structure_scale > 0
    noise = _noise(1, n=3)
    noise[1, :, 30:60, 30:60] *= 0.2          # texture removed: weak predicted noise
    noise[2, :, 30:60, 44:48] += 4.0          # structure added: a bright line
    parts = response_parts(noise, statistics, 9)
    anomaly = two_sided_map(parts, statistics, sigma=2.0)
    inside = np.s_[35:55, 35:55]
    # the deficit part carries the removed texture, the structure part the line
    assert parts[1, 1][inside].mean() > 5 * parts[0, 1][inside].mean() + 1
    assert parts[2, 0][30:60, 40:52].mean() > 5 * parts[0, 0][30:60, 40:52].mean() + 1
    for defective in (1, 2):
        assert anomaly[defective][inside].mean() > 3 * anomaly[0][inside].mean()
        assert anomaly[defective][inside].mean() > 3 * anomaly[defective][:20, :20].mean()
    # a normal map mostly stays under one normal high quantile
    assert (anomaly[0] > 1.5).float().mean() < 0.01


def test_the_maps_smoothings_keep_a_small_defect_sharp_and_fill_a_large_faint_one():
    sigmas = (1.0, 2.0, 4.0, 8.0, 16.0)
    statistics = fit_response_statistics([_noise(0, n=8, size=128)], energy_window=9, map_sigmas=sigmas)
    assert len(statistics.map_quantiles) == len(sigmas) and all(q > 0 for q in statistics.map_quantiles)
    # smoothing averages the normal map's speckle away: its high quantile falls with the scale
    assert list(statistics.map_quantiles) == sorted(statistics.map_quantiles, reverse=True)
    noise = _noise(1, n=3, size=128)
    noise[1, :, 62:66, 62:66] += 6.0           # a small strong spot
    noise[2, :, 24:104, 24:104] *= 0.93        # a large faint loss of texture
    parts = response_parts(noise, statistics, 9)
    several = two_sided_map(parts, statistics, 8.0, sigmas=sigmas)
    fine, coarse = (two_sided_map(parts, statistics, sigma) / q for sigma, q in
                    ((1.0, statistics.map_quantiles[0]), (16.0, statistics.map_quantiles[-1])))
    normal_level = float(torch.quantile(several[0].flatten(), 0.999))

    def flagged(anomaly: torch.Tensor) -> int:
        return int((anomaly > normal_level).sum())

    # the spot: found, and flagged over far fewer pixels than the coarse smoothing alone would
    assert float(several[1, 62:66, 62:66].min()) > normal_level
    coarse_level = float(torch.quantile(coarse[0].flatten(), 0.999))
    assert flagged(several[1]) < 0.5 * int((coarse[1] > coarse_level).sum())
    # the faint region: ranked better than by the finest smoothing alone
    truth = torch.zeros(128, 128, dtype=torch.bool)
    truth[24:104, 24:104] = True
    labels = np.concatenate([np.zeros(128 * 128), truth.flatten().numpy()])

    def pixel_auroc(anomaly: torch.Tensor) -> float:
        return roc_auc_score(labels, np.concatenate([anomaly[0].flatten().numpy(), anomaly[2].flatten().numpy()]))

    assert pixel_auroc(several) > pixel_auroc(fine) + 0.1
    assert pixel_auroc(several) > 0.9


def test_statistics_read_lists_and_fields_a_model_made_before_them_lacks():
    statistics = fit_response_statistics([_noise(0, n=2, size=40)], energy_window=5, map_sigmas=(1.0, 4.0))
    stored = statistics.to_dict()
    assert isinstance(stored["map_quantiles"], list) and len(stored["map_quantiles"]) == 2
    assert ResponseStatistics.from_dict(stored) == statistics
    older = {k: v for k, v in stored.items() if k != "map_quantiles"}
    assert ResponseStatistics.from_dict(older).map_quantiles == ()
    for bad in ({**stored, "map_quantiles": 1.0}, {**stored, "energy_mean": [1.0]}, {**stored, "other": 1.0}):
        with pytest.raises(ValueError, match="response_statistics"):
            ResponseStatistics.from_dict(bad)


def test_response_statistics_round_trip_and_equal_pooled_statistics():
    maps = [_noise(0, n=2, size=40), _noise(1, n=1, size=56)]
    statistics = fit_response_statistics(maps, energy_window=5)
    assert ResponseStatistics.from_dict(statistics.to_dict()) == statistics
    energy = torch.cat([local_energy(m, 5).flatten() for m in maps])
    assert statistics.energy_mean == pytest.approx(float(energy.mean()))
    assert statistics.energy_std == pytest.approx(float(energy.std()))
    for bad in (None, {}, {"energy_mean": 1.0}, [1, 2]):
        with pytest.raises(ValueError, match="response_statistics"):
            ResponseStatistics.from_dict(bad)
