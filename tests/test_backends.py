"""The backend contract, written once and run over every registered backend:
the same noise and repair as PyTorch for any batch size, the same maps and
verdicts, and a description of itself."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from radar_ad import Radar
from radar_ad.backend import BackendOutput, NoiseBackend
from radar_ad.data import evaluation_images
from radar_ad.errors import MissingDependencyError
from radar_ad.registry import BACKENDS

from test_cli import radar as run_radar

TOLERANCE = 1e-3  # float32 kernels of different engines differ in summation order only


@pytest.fixture(scope="module", params=BACKENDS.names())
def backend_radar(request, pyramid_fitted) -> Radar:
    radar, _ = pyramid_fitted
    try:
        return radar.with_backend(request.param)
    except MissingDependencyError as exc:  # every engine is in the [test] extra; a user's may lack one
        pytest.skip(str(exc))


def test_noise_and_repair_match_pytorch_at_any_batch_size_and_level(pyramid_fitted, backend_radar):
    radar, _ = pyramid_fitted
    reference = radar.backend_
    backend = backend_radar.backend_
    assert isinstance(backend, NoiseBackend)
    patch, channels = radar.config.patch_size, radar.channels_
    for n in (1, 3, 64, 70):
        generator = torch.Generator().manual_seed(n)
        patches = torch.rand(n, channels, patch, patch, generator=generator)
        index = torch.randint(0, 4096, (n,), generator=generator)
        level = torch.randint(0, len(radar.config.network.scales), (n,), generator=generator)
        expected, got = reference.predict(patches, index, level), backend.predict(patches, index, level)
        assert isinstance(got, BackendOutput) and got.noise.shape == got.repair.shape == (n, channels, patch, patch)
        assert (got.noise.cpu() - expected.noise.cpu()).abs().max() <= TOLERANCE
        assert (got.repair.cpu() - expected.repair.cpu()).abs().max() <= TOLERANCE
        np.testing.assert_allclose(backend(patches, index, level).cpu(), torch.cat([got.noise, got.repair], 1).cpu(),
                                   atol=1e-6)


def test_same_maps_and_verdicts_as_pytorch(pyramid_fitted, surfaces, backend_radar):
    radar, _ = pyramid_fitted
    paths = [item.path for item in evaluation_images(surfaces)]
    reference, got = radar.predict_many(paths), backend_radar.predict_many(paths)
    for a, b in zip(reference, got):
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= TOLERANCE * radar.pixel_threshold_
        assert a.is_anomalous == b.is_anomalous and a.score == pytest.approx(b.score, abs=1e-3)
    assert {p.is_anomalous for p in got} == {True, False}  # both verdicts occur: "same" is not "all normal"


def test_describes_itself(backend_radar):
    description = backend_radar.backend_.describe()
    assert description["backend"] == backend_radar.backend_name
    assert backend_radar.backend_.label


def test_cli_detect_gives_the_same_verdicts_on_every_backend(pyramid_fitted, surfaces, tmp_path):
    _, model_dir = pyramid_fitted
    onnx_file = Radar.load(model_dir).export(tmp_path / "model.onnx")
    runs = {"torch": [model_dir]}
    for name, backend in BACKENDS.items():
        runs[f"{name}-dir"] = [model_dir, "--backend", name]
        if ".onnx" in backend.reads:
            runs[f"{name}-file"] = [onnx_file, "--backend", name]
    verdicts = {}
    results = [run_radar("detect", *args, surfaces / "test", "--out", tmp_path / run, "-q", "--no-maps")
               for run, args in runs.items()]
    for run, result in zip(runs, results):
        out = tmp_path / run
        if "pip install" in result.stderr:
            pytest.skip(result.stderr.strip())
        assert result.returncode == 0, (run, result.stderr)
        verdicts[run] = [row["verdict"] for row in csv.DictReader((out / "results.csv").open())]
    assert len({tuple(v) for v in verdicts.values()}) == 1, verdicts
    assert set(verdicts["torch"]) == {"normal", "anomalous"}
