"""``inference.precision``: the network in bfloat16 through PyTorch, its
calibration (thresholds, p-values) from the same path; the float32 graphs
refuse such a model in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from radar_ad.data import evaluation_images, training_images
from radar_ad.errors import ConfigError, ModelError, NotCalibratedError

from test_cli import radar as run_radar


@pytest.fixture(scope="module")
def bfloat16(fitted, surfaces):
    radar, _ = fitted
    model = radar.with_settings({"inference.precision": "bfloat16"})
    normal = training_images(surfaces)
    return model.refit_calibration(normal[:30], conformal=normal[30:40])


def test_bfloat16_runs_the_network_in_bfloat16_and_ranks_like_float32(fitted, surfaces, bfloat16):
    radar, _ = fitted
    patches = torch.rand(6, 1, radar.config.patch_size, radar.config.patch_size,
                         generator=torch.Generator().manual_seed(0))
    index, level = torch.arange(6), torch.zeros(6, dtype=torch.long)
    full, half = radar.backend_(patches, index, level), bfloat16.backend_(patches, index, level)
    assert full.dtype == half.dtype == torch.float32
    difference = float((full - half).abs().max())
    assert 0 < difference < 0.25 * float(full.abs().max())  # rounded to bfloat16, not another network

    files = [item.path for item in evaluation_images(surfaces)]
    exact, rounded = radar.predict_many(files), bfloat16.predict_many(files)
    assert all(np.isfinite(p.score) and 0 < p.p_value <= 1 for p in rounded)
    assert spearmanr([p.score for p in exact], [p.score for p in rounded])[0] > 0.9
    agree = sum(a.is_anomalous == b.is_anomalous for a, b in zip(exact, rounded))
    assert agree >= 0.8 * len(files)


def test_a_precision_change_asks_for_calibration_and_survives_saving(fitted, bfloat16, tmp_path, surfaces):
    radar, _ = fitted
    changed = radar.with_settings({"inference.precision": "bfloat16"})
    with pytest.raises(NotCalibratedError, match="inference.precision"):
        changed.predict(training_images(surfaces)[0])
    reloaded = type(radar).load(bfloat16.save(tmp_path / "bf16"))
    assert reloaded.config.inference.precision == "bfloat16"
    image = training_images(surfaces)[45]
    assert reloaded.predict(image).score == pytest.approx(bfloat16.predict(image).score, rel=1e-6)
    with pytest.raises(ConfigError, match="inference.precision"):
        radar.with_settings({"inference.precision": "float16"})


def test_the_float32_graphs_refuse_a_bfloat16_model(bfloat16, tmp_path):
    for backend in ("onnx", "openvino"):
        with pytest.raises(ModelError, match="float32.*bfloat16"):
            bfloat16.with_backend(backend)
    with pytest.raises(ModelError, match="float32"):
        bfloat16.export(tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_cli_detects_in_bfloat16_and_refuses_a_float32_engine_in_one_line(bfloat16, surfaces, tmp_path):
    model = bfloat16.save(tmp_path / "model")
    images = surfaces / "test" / "good"
    result = run_radar("detect", str(model), str(images), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    refused = run_radar("detect", str(model), str(images), "--out", str(tmp_path / "out2"), "--backend", "onnx")
    assert refused.returncode != 0 and "bfloat16" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
