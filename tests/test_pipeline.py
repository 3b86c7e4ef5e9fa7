"""End to end: a tiny model trained briefly on generated surfaces."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from radar_ad import Radar
from radar_ad.data import evaluation_images, load_mask
from radar_ad.errors import ConfigError, DataError, ModelError, NotFittedError
from radar_ad.evaluation import evaluate
from radar_ad.persistence import CONFIG_FILE, WEIGHTS_FILE
from radar_ad.splits import three_way_split

from conftest import tiny_config


def test_defective_images_score_above_normal_ones(fitted, surfaces):
    radar, _ = fitted
    items = evaluation_images(surfaces)
    predictions = radar.predict_many([item.path for item in items])
    normal = [p.score for i, p in zip(items, predictions) if not i.is_defective]
    defective = [p.score for i, p in zip(items, predictions) if i.is_defective]
    # AUROC from the pairwise comparisons: most defective above most normal
    pairs = np.mean([d > n for d in defective for n in normal])
    assert pairs >= 0.85, pairs
    assert np.median(defective) > np.max(normal) or pairs >= 0.9


def test_masks_overlap_true_defects(fitted, surfaces):
    radar, _ = fitted
    items = [i for i in evaluation_images(surfaces) if i.is_defective]
    predictions = radar.predict_many([i.path for i in items])
    inside, outside = [], []
    for item, prediction in zip(items, predictions):
        truth = load_mask(item.mask_path, prediction.mask.shape)
        inside.append(prediction.mask[truth].mean())
        outside.append(prediction.mask[~truth].mean())
    # the predicted mask is far denser on the true defect than off it
    assert np.mean(inside) > 5 * np.mean(outside) + 0.02, (np.mean(inside), np.mean(outside))


def test_prediction_fields(fitted, surfaces):
    radar, _ = fitted
    p = radar.predict(surfaces / "test" / "good" / "000.png")
    assert p.noise_map.shape == (1, 64, 64) and p.anomaly_map.shape == (64, 64)
    assert p.mask.dtype == bool and p.mask.shape == (64, 64)
    assert p.image.shape == (1, 64, 64)
    assert p.is_anomalous == (p.score > p.threshold)
    np.testing.assert_array_equal(p.mask, p.anomaly_map > p.pixel_threshold)


def test_save_load_predicts_identically(fitted, surfaces):
    radar, model_dir = fitted
    loaded = Radar.load(model_dir)
    paths = [i.path for i in evaluation_images(surfaces)][:6]
    for a, b in zip(radar.predict_many(paths), loaded.predict_many(paths)):
        assert a.score == b.score and a.is_anomalous == b.is_anomalous
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert {p.name for p in model_dir.iterdir()} == {"radar.json", "unet.safetensors", "calibration.safetensors",
                                                     "conformal.safetensors", "response.safetensors"}


def test_a_model_directory_of_format_4_loads_and_predicts_the_same(fitted, surfaces, tmp_path):
    """Format 4 had the plug-ins' settings among the shared ones and no
    response file: such a directory loads with its settings at their new places."""
    radar, model_dir = fitted
    old = Path(shutil.copytree(model_dir, tmp_path / "old"))
    (old / "response.safetensors").unlink()
    meta = json.loads((old / CONFIG_FILE).read_text())
    meta["format_version"] = 4
    inference, decision = meta["config"]["inference"], meta["config"]["decision"]
    for name, value in inference.pop("responses")["segmentation"].items():
        inference[f"segmentation_{name}"] = value
    inference["segmentation_width"] = 12
    decision["n_estimators"] = decision.pop("one_class_models")["isolation_forest"]["n_estimators"]
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = Radar.load(old)
    assert loaded.config.inference.responses["segmentation"].width == 12
    assert loaded.config.decision.one_class_models["isolation_forest"] == radar.config.decision.one_class_models[
        "isolation_forest"]
    paths = [i.path for i in evaluation_images(surfaces)][:4]
    for a, b in zip(radar.predict_many(paths), loaded.predict_many(paths)):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    # one setting at both places is refused rather than guessed
    inference["responses"] = {"segmentation": {"width": 8}}
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="inference.segmentation_width and inference.responses.segmentation.width"):
        Radar.load(old)


def test_a_model_made_before_the_maps_smoothings_keeps_its_one_smoothing(fitted, surfaces, tmp_path):
    radar, model_dir = fitted
    assert radar.config.inference.map_sigmas and radar.response_.state()["levels"]["1"]["map_quantiles"]
    old = Path(shutil.copytree(model_dir, tmp_path / "old"))
    meta = json.loads((old / CONFIG_FILE).read_text())
    del meta["config"]["inference"]["map_sigmas"]
    for level in meta["response_statistics"]["levels"].values():
        del level["map_quantiles"]
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = Radar.load(old)
    assert loaded.config.inference.map_sigmas == ()
    path = [i.path for i in evaluation_images(surfaces) if i.is_defective][0]
    before, now = radar.predict(path), loaded.predict(path)
    assert now.score == before.score  # the features do not read the map
    assert np.isfinite(now.anomaly_map).all() and not np.allclose(now.anomaly_map, before.anomaly_map)
    # smoothings without their normal quantiles (or the reverse) are a broken file, refused in one line
    meta["config"]["inference"]["map_sigmas"] = [1, 2]
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="map_quantiles"):
        Radar.load(old)


def test_same_image_same_result_whatever_the_batch(fitted, surfaces):
    radar, _ = fitted
    paths = [i.path for i in evaluation_images(surfaces)][:5]
    alone = radar.predict(paths[3])
    batched = radar.predict_many(paths)[3]
    np.testing.assert_allclose(alone.anomaly_map, batched.anomaly_map, rtol=1e-4, atol=1e-4)


def test_evaluate_reports_every_metric(fitted, surfaces):
    radar, _ = fitted
    metrics = evaluate(radar, surfaces).metrics
    for key in ("accuracy", "precision", "recall", "f1", "image_auroc", "image_f1max",
                "pixel_auroc", "aupro", "n_images", "seconds_per_image"):
        assert key in metrics
    assert metrics["n_images"] == 8 + 12
    assert metrics["image_auroc"] >= 0.85 and metrics["pixel_auroc"] >= 0.8
    json.dumps(metrics, allow_nan=False)


def test_fit_is_deterministic(surfaces):
    config = tiny_config(**{"train.steps": 3})
    a = Radar(config).fit(surfaces, progress=False)
    b = Radar(config).fit(surfaces, progress=False)
    path = surfaces / "test" / "good" / "001.png"
    np.testing.assert_array_equal(a.predict(path).anomaly_map, b.predict(path).anomaly_map)


def test_three_way_split_holds_out_images():
    config = tiny_config(**{"train.calibration_fraction": 0.15, "train.conformal_size": None})
    train, calib, conformal = three_way_split(40, config)
    assert (len(calib), len(conformal)) == (6, 8) and not set(train) & set(calib)
    assert len(train) + len(calib) + len(conformal) == 40
    both = three_way_split(40, tiny_config(**{"train.calibrate_on_training": True}))
    assert both.train == both.calibration == sorted(set(range(40)) - set(both.conformal))


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        Radar().predict(np.zeros((64, 64), np.uint8))


def test_load_rejects_bad_model_directories(fitted, tmp_path):
    _, model_dir = fitted
    with pytest.raises(ModelError, match="not found"):
        Radar.load(tmp_path / "missing")
    with pytest.raises(ModelError, match="not a radar model"):
        Radar.load(tmp_path)
    for broken in ("version", "incomplete", "weights"):
        target = tmp_path / broken
        target.mkdir()
        for f in model_dir.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        if broken == "version":
            meta = json.loads((target / CONFIG_FILE).read_text())
            meta["format_version"] = 99
            (target / CONFIG_FILE).write_text(json.dumps(meta))
            match = "format version 99"
        elif broken == "incomplete":
            (target / WEIGHTS_FILE).unlink()
            match = "incomplete"
        else:
            (target / WEIGHTS_FILE).write_bytes(b"garbage")
            match = "cannot load"
        with pytest.raises(ModelError, match=match):
            Radar.load(target)


def _texture(rng, height, width, channels=None):
    y, x = np.mgrid[:height, :width]
    base = 128 + 60 * np.cos(2 * np.pi * (x + y) / 9) + rng.normal(0, 4, (height, width))
    image = np.clip(base, 0, 255).astype(np.uint8)
    return image if channels is None else np.dstack([image] * channels)


def test_mixed_sizes_and_rgb_work():
    rng = np.random.default_rng(0)
    images = [_texture(rng, 40 + 7 * (i % 3), 64 - 5 * (i % 4), channels=3) for i in range(8)]
    config = tiny_config(**{"train.steps": 3, "data.grayscale": False, "train.conformal_size": None})
    radar = Radar(config).fit(images, progress=False)
    predictions = radar.predict_many([_texture(rng, 33, 90, 3), _texture(rng, 60, 45, 3)])
    assert predictions[0].noise_map.shape == (3, 33, 90)
    assert predictions[1].anomaly_map.shape == (60, 45)


def test_paper_protocol_calibrates_on_training_images():
    rng = np.random.default_rng(1)
    images = [_texture(rng, 40, 40) for _ in range(6)]
    config = tiny_config(**{"train.steps": 2, "train.calibrate_on_training": True, "train.conformal_size": 0})
    radar = Radar(config).fit(images, progress=False)
    assert radar.training_["n_train"] == radar.training_["n_calibration"] == 6


def test_calibrate_follows_changed_inference_settings(fitted, surfaces):
    """Changing the timestep after fitting rebuilds the noising step (not a
    stale one) and refit_calibration() refits the thresholds for it."""
    _, model_dir = fitted
    radar = Radar.load(model_dir)
    image = surfaces / "test" / "blob" / "000.png"
    before = radar.predict(image)
    radar = radar.with_settings({"inference.timestep": 50})
    normal = [item.path for item in evaluation_images(surfaces) if not item.is_defective]
    radar.refit_calibration(normal)
    after = radar.predict(image)
    assert not np.allclose(before.noise_map, after.noise_map)
    assert after.pixel_threshold != before.pixel_threshold
    with pytest.raises(DataError, match="at least"):
        radar.refit_calibration(normal[:2])


def test_paper_response_round_trip_and_switching_needs_calibration(fitted, surfaces, tmp_path):
    """The paper's Sobel-only response stays available: calibrate with it,
    save, load and get the same predictions; switching back to the two-sided
    response on a model calibrated without it asks for calibration."""
    _, model_dir = fitted
    radar = Radar.load(model_dir)
    assert radar.config.inference.response == "two_sided"
    normal = [item.path for item in evaluation_images(surfaces) if not item.is_defective]
    radar = radar.with_settings({"inference.response": "sobel"})
    radar.refit_calibration(normal)
    paths = [item.path for item in evaluation_images(surfaces)][:4]
    predictions = radar.predict_many(paths)
    saved = radar.save(tmp_path / "paper")
    meta = json.loads((saved / CONFIG_FILE).read_text())
    assert meta["feature_names"] == ["global_norm", "window_max_norm"] and meta["response_statistics"] is None
    # a file written with the features' earlier names loads the same: the names are only recorded
    meta["feature_names"] = ["global_l2", "window_max_l2"]
    (saved / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = Radar.load(saved)
    for a, b in zip(predictions, loaded.predict_many(paths)):
        assert a.score == b.score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    loaded = loaded.with_settings({"inference.response": "two_sided"})
    with pytest.raises(ConfigError, match="calibrate"):
        loaded.predict(paths[0])
    loaded.refit_calibration(normal)
    assert loaded.predict(paths[0]).features.shape == (2,)
    # any response setting changed after calibration is refused, not silently used
    loaded = loaded.with_settings({"inference.map_sigma": 2.0})
    with pytest.raises(ConfigError, match="map_sigma"):
        loaded.predict_many(paths[:1])
    with pytest.raises(ConfigError, match="calibrate"):
        loaded.save(tmp_path / "stale")
    # a model file with broken response statistics is a one-line ModelError
    meta = json.loads((model_dir / CONFIG_FILE).read_text())
    meta["response_statistics"] = None
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="response_statistics"):
        Radar.load(broken)


def test_a_defect_that_removes_texture_is_found(fitted, surfaces):
    """A region whose texture is smoothed away raises the map there, the
    score, and the verdict."""
    radar, _ = fitted
    item = next(i for i in evaluation_images(surfaces) if not i.is_defective)
    image = np.asarray(Image.open(item.path), dtype=np.float32)
    smudged = image.copy()
    region = np.s_[16:44, 16:44]
    smudged[region] = gaussian_filter(image, 6)[region]
    before, after = radar.predict_many([image.astype(np.uint8), smudged.astype(np.uint8)])
    assert after.anomaly_map[region].mean() > 1.2 * before.anomaly_map[region].mean()
    assert after.score > before.score + 1 and after.is_anomalous


def test_with_settings_gives_a_new_model_and_leaves_this_one(fitted, surfaces):
    radar, _ = fitted
    path = surfaces / "test" / "good" / "001.png"
    before = radar.predict(path)
    # assignment is refused with the call to use instead
    with pytest.raises(ConfigError, match=r"with_settings"):
        radar.config.inference.stride = 14
    # another network batch size changes nothing the calibration depends on: it is kept
    rebatched = radar.with_settings({"inference.batch_size": 7})
    assert rebatched.decision_ is radar.decision_ and rebatched.pixel_threshold_ == radar.pixel_threshold_
    same = rebatched.predict(path)  # float kernels batch differently: equal to rounding
    np.testing.assert_allclose(same.anomaly_map, before.anomaly_map, rtol=1e-4, atol=1e-5)
    assert same.score == pytest.approx(before.score, abs=1e-4)
    # another one-class model is refitted on the stored calibration features, no images needed
    knn = radar.with_settings({"decision.one_class_model": "knn"})
    assert knn.decision_.threshold_ != radar.decision_.threshold_
    np.testing.assert_array_equal(knn.predict(path).anomaly_map, before.anomaly_map)
    # the trained network fixes its own settings
    with pytest.raises(ConfigError, match="train a new model"):
        radar.with_settings({"network.block_out_channels": [8, 16, 16]})
    # and the original model is untouched by all of it
    assert radar.config.decision.one_class_model == "isolation_forest"
    assert radar.predict(path).score == before.score


def test_training_never_writes_into_or_removes_a_users_folder(surfaces, tmp_path):
    """A user's own folder where the checkpoint would go is refused before
    training and left as it was; the checkpoint folder training makes is
    marked as its own and removed once the model is written."""
    from radar_ad.training import CHECKPOINT_FILE, remove_checkpoint_dir
    from radar_ad.workflows import train_model

    users = tmp_path / "model.checkpoint"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    config = tiny_config(**{"train.steps": 2, "train.checkpoint_every": 1})
    with pytest.raises(DataError, match="not made by radar-ad"):
        train_model(config, surfaces, tmp_path / "model", progress=False)
    assert (users / "notes.txt").read_text() == "mine" and not (tmp_path / "model").exists()
    # an empty folder of the user's, a link to one, and one holding a file of the checkpoint's name: refused too
    empty, linked, lookalike = tmp_path / "empty.checkpoint", tmp_path / "linked.checkpoint", users
    empty.mkdir()
    linked.symlink_to(empty, target_is_directory=True)
    (users / CHECKPOINT_FILE).write_bytes(b"mine too")
    for model in ("empty", "linked", "model"):
        with pytest.raises(DataError, match="not made by radar-ad"):
            train_model(config, surfaces, tmp_path / model, progress=False)
    assert empty.is_dir() and not any(empty.iterdir()) and linked.is_symlink()
    assert sorted(p.name for p in lookalike.iterdir()) == [CHECKPOINT_FILE, "notes.txt"]
    assert remove_checkpoint_dir(users) is False and remove_checkpoint_dir(linked) is False and users.is_dir()
    train_model(config, surfaces, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / CONFIG_FILE).is_file() and not (tmp_path / "other.checkpoint").exists()


def test_renamed_names_warn_and_do_what_the_new_ones_do(fitted, monkeypatch):
    """A renamed name keeps its old spelling for one release: each use warns
    (DeprecationWarning) and does what the new name does."""
    import warnings

    import radar_ad.pipeline as pipeline
    import radar_ad.response as response
    from radar_ad import RadarConfig, filters, outputs, workflows

    radar, _ = fitted
    with pytest.warns(DeprecationWarning, match="Radar.backend_name"):
        assert radar.backend == radar.backend_name == "torch"
    with pytest.warns(DeprecationWarning, match="Radar.torch_backend_"):
        assert radar.network_ is radar.torch_backend_ is not None
    calls = []
    twin = Radar(tiny_config())
    monkeypatch.setattr(twin, "refit_calibration", lambda *args: calls.append(("refit", args)) or twin)
    monkeypatch.setattr(twin, "calibrate_false_alarms", lambda *args: calls.append(("false alarms", args)) or twin)
    with pytest.warns(DeprecationWarning, match="Radar.refit_calibration"):
        assert twin.calibrate(["a.png"], False, ["b.png"]) is twin
    with pytest.warns(DeprecationWarning, match="Radar.calibrate_false_alarms"):
        assert twin.calibrate_conformal(["c.png"], True, "line 2") is twin
    assert calls == [("refit", (["a.png"], False, ["b.png"])), ("false alarms", (["c.png"], True, "line 2"))]
    with pytest.warns(DeprecationWarning, match="radar_ad.splits.three_way_split"):
        assert pipeline.calibration_split is three_way_split
    with pytest.warns(DeprecationWarning, match="respond_in_tiles"):
        assert response.respond is response.respond_in_tiles
    with pytest.warns(DeprecationWarning, match="radar_ad.filters.blur_sobel_map"):
        assert response.response_map is filters.blur_sobel_map
    with pytest.warns(DeprecationWarning, match="response.gaussian_smooth is deprecated; use radar_ad.filters"):
        assert response.gaussian_smooth is filters.gaussian_smooth
    with pytest.warns(DeprecationWarning, match="the setting inference.segmentation_width is deprecated"):
        moved = RadarConfig().updated({"inference.segmentation_width": 8})
    assert moved.inference.responses["segmentation"].width == 8
    # names that moved to a module of their own still load from the pipeline, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipeline.train_model is workflows.train_model
        assert pipeline.calibrate_false_alarms is workflows.calibrate_false_alarms
        assert pipeline.Prediction is outputs.Prediction and pipeline.stream_predictions is outputs.stream_predictions
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018
