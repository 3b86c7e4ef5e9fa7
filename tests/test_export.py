"""ONNX export and the ONNX Runtime backend: same maps, same verdicts."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from radar_ad import Radar, RadarConfig
from radar_ad.backends.onnx import CALIBRATION_KEY, CONFORMAL_KEY, GRAPH_KEY, METADATA_KEY
from radar_ad.data import as_image_array, evaluation_images
from radar_ad.errors import ConfigError, MissingDependencyError, ModelError
from radar_ad.evidence_passes import EvidencePasses
from radar_ad.noise_map import border_weights
from radar_ad.patches import grid_positions, stitch
from radar_ad.registry import BACKENDS

from test_cli import assert_one_line_error
from test_cli import radar as run_radar

# The stated parity: anomaly maps of the two backends agree to 1e-3 of the
# model's pixel threshold (float32 kernels differ in summation order only).
MAP_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def exported(pyramid_fitted, tmp_path_factory):
    radar, _ = pyramid_fitted
    return radar.export(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def assert_parity(reference, other, paths):
    for a, b in zip(reference.predict_many(paths), other.predict_many(paths)):
        tolerance = MAP_TOLERANCE * reference.pixel_threshold_
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= tolerance
        assert a.is_anomalous == b.is_anomalous
        assert a.score == pytest.approx(b.score, abs=1e-3)
        assert a.threshold == b.threshold and a.pixel_threshold == b.pixel_threshold
        assert a.p_value is not None and a.p_value == pytest.approx(b.p_value)


def test_onnx_file_predicts_like_pytorch(pyramid_fitted, surfaces, exported):
    radar, _ = pyramid_fitted
    loaded = Radar.load(exported)
    assert loaded.backend_name == "onnx" and radar.backend_name == "torch"
    paths = [item.path for item in evaluation_images(surfaces)]
    assert_parity(radar, loaded, paths)
    # the test split has both verdicts, so "identical" is not "all normal"
    verdicts = {p.is_anomalous for p in loaded.predict_many(paths)}
    assert verdicts == {True, False}


def test_onnx_backend_of_a_model_directory(pyramid_fitted, surfaces):
    radar, model_dir = pyramid_fitted
    onnx_radar = Radar.load(model_dir, backend="onnx")
    assert onnx_radar.backend_name == "onnx"
    assert_parity(radar, onnx_radar, [item.path for item in evaluation_images(surfaces)][:6])


def test_file_is_self_describing(pyramid_fitted, exported):
    """Everything a loader needs is in the file's metadata: no pickles, no
    model directory."""
    radar, _ = pyramid_fitted
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads(props[METADATA_KEY])
    assert meta["image_threshold"] == radar.decision_.threshold_
    assert meta["pixel_threshold"] == radar.pixel_threshold_
    assert RadarConfig.from_dict(meta["config"]) == radar.config
    calibration = np.array(json.loads(props[CALIBRATION_KEY]))
    np.testing.assert_array_equal(calibration, radar.decision_.calibration_features_)
    conformal = json.loads(props[CONFORMAL_KEY])  # the p-values travel with the file
    np.testing.assert_array_equal(np.array(conformal["features"]), radar.decision_.conformal_features_)
    assert conformal["info"]["source"] == "training split" and meta["false_alarms"]["n_conformal"] == 10
    graph = json.loads(props[GRAPH_KEY])
    assert "index" in graph["inputs"] and "level" in graph["inputs"] and "pyramid" in graph
    assert [i.name for i in session.get_inputs()] == ["patches", "index", "level"]
    assert [o.name for o in session.get_outputs()] == ["noise", "repair"]


def test_graph_alone_reproduces_the_evidence_of_every_level(pyramid_fitted, surfaces, exported):
    """An inferencer without radar-ad: make each pyramid level and cut
    patches as the metadata says, run the graph with plain onnxruntime,
    stitch -> radar's own noise and repair maps."""
    radar, _ = pyramid_fitted
    image = as_image_array(surfaces / "test" / "good" / "001.png", radar.config.data, 28)
    patch, stride = radar.config.patch_size, radar.config.stride
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    expected = EvidencePasses(radar.backend_, radar.config).evidence_of([torch.from_numpy(image)])
    for level, scale in enumerate(radar.config.network.scales):
        _, height, width = image.shape
        size = (max(1, round(height / scale)), max(1, round(width / scale)))
        small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(image)[None], size)[0].numpy()
        rows = np.r_[np.arange(size[0]), np.arange(size[0])[::-1]]  # mirrored at the bottom and right edges
        cols = np.r_[np.arange(size[1]), np.arange(size[1])[::-1]]
        padded = small[:, np.resize(rows, max(patch, size[0]))][:, :, np.resize(cols, max(patch, size[1]))]
        ys = grid_positions(padded.shape[1], patch, stride).tolist()
        xs = grid_positions(padded.shape[2], patch, stride).tolist()
        patches = np.stack([padded[:, y:y + patch, x:x + patch] for y in ys for x in xs]).astype(np.float32)
        feed = {"patches": patches, "index": np.arange(len(patches)), "level": np.full(len(patches), level)}
        for k, name in enumerate(("noise", "repair")):
            output = session.run([name], feed)[0]
            stitched = stitch(torch.from_numpy(output), *padded.shape[1:], stride, border_weights(patch, patch // 7))
            got = stitched[0, :, :size[0], :size[1]].numpy()
            want = (expected.noise if k == 0 else expected.repair)[level][0].numpy()
            np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3, 64, 70])
def test_dynamic_batch(pyramid_fitted, exported, batch):
    """diffusers' U-Net takes a Python branch at 64 images; the graph must
    not have baked in the example's batch size."""
    radar, _ = pyramid_fitted
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    patches = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    index = torch.arange(batch) * 37
    level = torch.arange(batch) % len(radar.config.network.scales)
    with torch.inference_mode():
        expected = radar.backend_(patches, index, level).numpy()
    got = session.run(["noise", "repair"], {"patches": patches.numpy(), "index": index.numpy(), "level": level.numpy()})
    np.testing.assert_allclose(np.concatenate(got, 1), expected, atol=1e-4)


def test_onnx_model_cannot_be_saved_or_reexported(exported, tmp_path):
    loaded = Radar.load(exported)
    with pytest.raises(ModelError, match="ONNX"):
        loaded.save(tmp_path / "model")
    with pytest.raises(ModelError, match="ONNX"):
        loaded.export(tmp_path / "again.onnx")


def test_cli_export_and_detect(pyramid_fitted, surfaces, tmp_path):
    _, model_dir = pyramid_fitted
    onnx_file = tmp_path / "model.onnx"
    result = run_radar("export", model_dir, "--out", onnx_file)
    assert result.returncode == 0, result.stderr
    assert onnx_file.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    images = surfaces / "test" / "blob"
    rows = {}
    runs = {"torch": [model_dir], "onnx-dir": [model_dir, "--backend", "onnx"], "onnx-file": [onnx_file]}
    results = [run_radar("detect", *args, images, "--out", tmp_path / name, "-q", "--no-maps")
               for name, args in runs.items()]
    for name, result in zip(runs, results):
        assert result.returncode == 0, result.stderr
        rows[name] = [line.split(",")[3] for line in (tmp_path / name / "results.csv").read_text().splitlines()[1:]]
    assert rows["torch"] == rows["onnx-dir"] == rows["onnx-file"] and len(rows["torch"]) == 2


def test_cli_bad_onnx_and_backend(pyramid_fitted, surfaces, tmp_path):
    _, model_dir = pyramid_fitted
    image = surfaces / "test" / "good" / "000.png"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    cases = [(("detect", garbage, image, "--out", tmp_path / "o"), "cannot read ONNX model"),
             (("detect", model_dir, image, "--out", tmp_path / "o", "--backend", "tensorrt"),
              "backend must be one of"),
             (("export", model_dir, "--out", tmp_path, "--format", "onnx"), "is a folder"),
             (("export", model_dir, "--out", tmp_path / "m.tflite", "--format", "tflite"), "--format must be onnx")]
    for args, fragment in cases:
        assert_one_line_error(run_radar(*args), fragment)


def test_foreign_onnx_file_is_refused(tmp_path):
    """An ONNX model from elsewhere loads in onnxruntime but is not a radar model."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelError, match="not one written by `radar export`"):
        Radar.load(path)


@pytest.mark.parametrize("backend", [name for name, backend in BACKENDS.items() if ".onnx" in backend.reads])
def test_file_with_activation_outputs_opens_as_before(exported, surfaces, tmp_path, backend):
    """A file exported with network activations (an ``activation_layers``
    key and an extra graph output per layer) opens and predicts like one
    without them: both are ignored."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(exported))
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    model.graph.node.append(helper.make_node("Identity", [conv.output[0]], ["activation:conv_in"]))
    model.graph.output.append(helper.make_tensor_value_info("activation:conv_in", TensorProto.FLOAT, None))
    entry = model.metadata_props.add()
    entry.key, entry.value = "activation_layers", json.dumps(["conv_in"])
    path = tmp_path / "with_activations.onnx"
    onnx.save(model, str(path))
    try:
        with_activations = Radar.load(path, backend=backend)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    image = surfaces / "test" / "good" / "000.png"
    expected = Radar.load(exported).predict(image)
    assert with_activations.predict(image).score == pytest.approx(expected.score, abs=1e-3)


def test_settings_baked_into_the_graph_cannot_change(exported, surfaces):
    loaded = Radar.load(exported)
    with pytest.raises(ConfigError, match="export again"):
        loaded.with_settings({"inference.timestep": 5}).predict(surfaces / "test" / "good" / "000.png")
