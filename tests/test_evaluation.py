"""Evaluation at the model's input size and at the ground truth's own size
(the MVTec protocol), and the false-alarm rate it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from radar_ad.data import LabeledImage
from radar_ad.errors import ConfigError
from radar_ad.evaluation import evaluate, truth_and_map, upsample


def test_native_resolution_scores_at_the_masks_own_size(tmp_path):
    image = tmp_path / "defect.png"
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(image)
    mask_path = tmp_path / "defect_mask.png"
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:45] = 255
    Image.fromarray(mask).save(mask_path)
    anomaly_map = np.random.default_rng(0).random((20, 30)).astype(np.float32)  # the model saw it at half size

    truth, upsampled = truth_and_map(LabeledImage(image, "crack", mask_path), anomaly_map, "native")
    assert truth.shape == upsampled.shape == (40, 60) and truth.sum() == 10 * 15
    # bilinear with half-pixel centres: PIL's resize of the same float map (an independent implementation)
    reference = np.asarray(Image.fromarray(anomaly_map, mode="F").resize((60, 40), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(upsampled[1:-1, 1:-1], reference[1:-1, 1:-1], atol=1e-5)

    truth, same = truth_and_map(LabeledImage(image, "crack", mask_path), anomaly_map, "model")
    assert truth.shape == same.shape == (20, 30) and 5 * 7 <= truth.sum() <= 5 * 8  # nearest-resized mask
    # a normal image has no mask: its own size, all false
    truth, upsampled = truth_and_map(LabeledImage(image, "good"), anomaly_map, "native")
    assert truth.shape == (40, 60) and not truth.any() and upsampled.shape == (40, 60)


def test_upsample_is_torch_bilinear_and_keeps_equal_sizes():
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert upsample(ramp, (3, 4)) is not ramp and np.array_equal(upsample(ramp, (3, 4)), ramp)
    expected = torch.nn.functional.interpolate(torch.from_numpy(ramp)[None, None], size=(6, 8), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    np.testing.assert_array_equal(upsample(ramp, (6, 8)), expected)


def test_evaluate_reports_both_resolutions_and_the_false_alarm_rate(fitted, surfaces):
    radar, _ = fitted
    model = evaluate(radar, surfaces)
    native = evaluate(radar, surfaces, pixel_resolution="native")
    # the generated surfaces are stored at the model's size: the same pixels either way
    assert model.metrics["pixel_auroc"] == pytest.approx(native.metrics["pixel_auroc"])
    assert native.metrics["pixel_resolution"] == "native" and model.metrics["false_alarm_rate"] == 0.1
    normal = [r for r in model.results if r.label == "good"]
    assert model.metrics["false_alarms_observed"] == pytest.approx(np.mean([r.is_anomalous for r in normal]))
    assert all(r.p_value is not None and (r.p_value <= 0.1) == r.is_anomalous for r in model.results)
    with pytest.raises(ConfigError, match="pixel_resolution"):
        evaluate(radar, surfaces, pixel_resolution="mvtec")
