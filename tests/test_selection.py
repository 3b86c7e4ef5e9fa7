"""The default chosen without labelled defects: self-validation on synthetic
defects in held-out calibration images picks the response, levels and image
score, deterministically under the seed, records the choice in the model
file, prints it on `radar train`, and what a config names is forced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radar_ad import Radar
from radar_ad.config import AUTO
from radar_ad.data import as_image_array
from radar_ad.errors import ConfigError
from radar_ad.evidence_passes import EvidencePasses
from radar_ad.persistence import CONFIG_FILE
from radar_ad.selection import (
    Candidate,
    auroc_standard_error,
    best_map_within_one_standard_error,
    candidates,
    choose_map,
    describe_record,
    evaluate,
    map_auroc,
    prepare,
)

from test_cli import radar as run_radar

OPEN = {"inference.response": AUTO, "inference.scales": None, "inference.image_score": AUTO}


@pytest.fixture(scope="module")
def normal_images(surfaces) -> list:
    return sorted((surfaces / "train" / "good").glob("*.png"))


@pytest.fixture(scope="module")
def chosen(pyramid_fitted, normal_images) -> Radar:
    radar, _ = pyramid_fitted
    return radar.with_settings(OPEN).refit_calibration(normal_images[:30], conformal=normal_images[30:42])


def test_candidates_span_every_response_level_set_and_image_score(pyramid_fitted):
    config = pyramid_fitted[0].config.updated(OPEN)
    options = candidates(config)
    assert {o.response for o in options} == {"two_sided", "segmentation"}
    assert {o.scales for o in options if o.response == "two_sided"} == {(1,), (1, 2), (1, 2, 4)}
    assert {o.scales for o in options if o.response == "segmentation"} == {(1, 2, 4)}  # it reads every level
    assert {o.image_score for o in options} == {"features", "max", "robust_max"}
    assert len(options) == 12 and options[0].response == "two_sided"  # the cheaper response first
    # what the config names is forced
    named = candidates(config.updated({"inference.response": "segmentation", "inference.image_score": "max"}))
    assert [(o.response, o.scales, o.image_score) for o in named] == [("segmentation", (1, 2, 4), "max")]
    levels = candidates(config.updated({"inference.response": "two_sided", "inference.scales": [1, 2]}))
    assert {o.scales for o in levels} == {(1, 2)} and len(levels) == 3


def test_the_choice_is_recorded_deterministic_and_what_the_model_runs(chosen, pyramid_fitted, normal_images, tmp_path):
    record = chosen.selection()
    assert record["requested"] == {"inference.response": AUTO, "inference.scales": None,
                                   "inference.map_scales": None, "inference.image_score": AUTO}
    rows = record["candidates"]
    assert len(rows) == 12 and sum(row["chosen"] for row in rows) == 1
    best = max(row["image_auroc"] for row in rows)
    picked = next(row for row in rows if row["chosen"])
    error = record["standard_error"]
    assert 0 < error < 0.5 and picked["image_auroc"] == record["synthetic_image_auroc"]
    if best < 0.5 + 2 * error:  # nothing ranks the synthetic defects above chance: the first is kept, and said
        assert picked is rows[0] and "above chance" in record["note"]
    else:  # among those within one standard error of the best, the best map (the cheapest on a tie)
        assert picked["image_auroc"] >= best - error and not record["note"]

        def best_map(row):  # a per-level response can draw its map from its first levels
            if row["inference.response"] != "two_sided":
                return row["pixel_auroc"]
            return max(other["pixel_auroc"] for other in rows if other["inference.response"] == "two_sided"
                       and row["inference.scales"][:len(other["inference.scales"])] == other["inference.scales"])

        within = [row for row in rows if row["image_auroc"] >= best - error]
        assert best_map(picked) == max(best_map(row) for row in within)
        assert all(best_map(row) < best_map(picked) for row in within[:within.index(picked)])
    assert 0 <= record["synthetic_image_auroc"] <= 1 and record["images"]["defective"] == 2 * record["images"]["check"]
    # the model is the choice: its config names it, nothing is left open
    inference = chosen.config.inference
    assert (inference.response, list(inference.scales), inference.image_score) == (
        picked["inference.response"], picked["inference.scales"], picked["inference.image_score"])
    assert chosen.requested_config().inference.response == AUTO
    # a per-level response on several levels gets its map's levels chosen apart: the fewest within one
    # standard error of the best map, recorded and run
    maps = record["maps"]
    if picked["inference.response"] == "two_sided" and len(picked["inference.scales"]) > 1:
        assert [row["inference.map_scales"] for row in maps] == [
            picked["inference.scales"][:k] for k in range(1, len(picked["inference.scales"]) + 1)]
        mine = next(row for row in maps if row["chosen"])
        best_map = max(row["pixel_auroc"] for row in maps)
        assert all(row["pixel_auroc"] < best_map - row["standard_error"] for row in maps[:maps.index(mine)])
        assert list(inference.map_scales) == mine["inference.map_scales"] == record["chosen"]["inference.map_scales"]
        assert record["synthetic_pixel_auroc"] == mine["pixel_auroc"]
    else:
        assert maps == [] and inference.map_scales is None
    # the same seed chooses the same, to the last digit
    again = pyramid_fitted[0].with_settings(OPEN).refit_calibration(normal_images[:30], conformal=normal_images[30:42])
    assert again.selection() == record
    # it travels in radar.json, and a loaded model scores as the fitted one
    model_dir = chosen.save(tmp_path / "model")
    assert json.loads((model_dir / CONFIG_FILE).read_text())["selection"] == json.loads(json.dumps(record))
    loaded = Radar.load(model_dir)
    image = normal_images[45]
    assert loaded.predict(image).score == chosen.predict(image).score
    assert "self-validation chose response" in describe_record(record)


def test_a_named_configuration_records_no_selection(pyramid_fitted):
    radar, _ = pyramid_fitted
    assert radar.selection() is None and radar.requested_config() == radar.config


def test_radar_train_prints_the_choice_and_its_synthetic_auroc(surfaces, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "patch_size": 16, "network": {"block_out_channels": [8, 16], "attention": [False, False]},
        "train": {"steps": 30, "batch_size": 16, "calibration_fraction": 0.4, "conformal_size": 10},
        "inference": {"responses": {"segmentation": {"examples": 24, "steps": 10, "crop": 32}}}}))
    result = run_radar("train", surfaces, "--out", tmp_path / "model", "--config", config, "-q")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("self-validation chose response") and "synthetic-defect image AUROC" in line
    record = json.loads((tmp_path / "model" / CONFIG_FILE).read_text())["selection"]
    assert f"{record['synthetic_image_auroc']:.3f}" in line
    assert np.isfinite(record["synthetic_image_auroc"])


def test_the_best_map_among_the_candidates_within_one_standard_error_of_the_best_is_chosen():
    # Hanley and McNeil's standard error: shrinks with more images, zero at a perfect ranking
    assert auroc_standard_error(0.75, 30, 60) > auroc_standard_error(0.75, 300, 600) > 0
    assert auroc_standard_error(1.0, 30, 60) == 0.0
    assert auroc_standard_error(0.5, 30, 60) == pytest.approx(0.0645, abs=5e-4)  # sqrt((n0+n1+1)/(12 n0 n1))
    aurocs = [0.60, 0.55, 0.66, 0.70]  # cheapest first
    maps = [0.99, 0.80, 0.90, 0.90]
    assert best_map_within_one_standard_error(aurocs, maps, 0.05) == 2  # 0.66 and 0.70 are within; a tie: the first
    assert best_map_within_one_standard_error(aurocs, maps, 0.12) == 0  # 0.60 is within too, and draws the best map
    assert best_map_within_one_standard_error(aurocs, maps, 0.0) == 3  # only the best
    # a per-level response's map is its best first levels'; one that reads every level draws one map
    pooled = {("two_sided", (1,)): 0.95, ("two_sided", (1, 2)): 0.93, ("segmentation", (1, 2)): 0.97}
    assert map_auroc(Candidate("two_sided", (1, 2), "features"), pooled, None) == 0.95
    assert map_auroc(Candidate("two_sided", (1, 2), "features"), pooled, (1, 2)) == 0.93  # the map's levels named
    assert map_auroc(Candidate("segmentation", (1, 2), "max"), pooled, None) == 0.97


def test_the_map_keeps_the_fewest_levels_that_draw_the_defects_as_well_as_any():
    rng = np.random.default_rng(0)
    keys = [("two_sided", (1,)), ("two_sided", (1, 2)), ("two_sided", (1, 2, 4))]
    base = rng.uniform(0.7, 0.95, 40)
    # the second map is better on every image by 0.02: the paired error is tiny, the finer map is not kept
    per_image = {keys[0]: base, keys[1]: base + 0.02, keys[2]: base + 0.015}
    pooled = {keys[0]: 0.90, keys[1]: 0.92, keys[2]: 0.915}
    pick, rows = choose_map(keys, pooled, per_image)
    assert pick == 1 and [row["chosen"] for row in rows] == [False, True, False]
    assert rows[0]["standard_error"] < 0.02 and rows[1]["standard_error"] == 0.0
    # the same means, but the images disagree about which map is better: the first level is kept
    noisy = {keys[0]: base, keys[1]: base + 0.02 + rng.normal(0, 0.2, 40), keys[2]: base + rng.normal(0, 0.2, 40)}
    pick, rows = choose_map(keys, pooled, noisy)
    assert pick == 0 and rows[0]["inference.map_scales"] == [1] and rows[0]["standard_error"] > 0.02
    # images whose mask leaves no normal pixel (NaN) are left out of the error
    with_nan = {key: np.append(values, np.nan) for key, values in per_image.items()}
    assert choose_map(keys, pooled, with_nan)[0] == 1


def test_the_map_from_the_first_levels_and_the_features_from_all(pyramid_fitted, normal_images):
    radar, _ = pyramid_fitted
    named = {"inference.response": "two_sided", "inference.image_score": "features"}
    both = radar.with_settings({**named, "inference.scales": [1, 2, 4], "inference.map_scales": [1]}).refit_calibration(
        normal_images[:30], conformal=normal_images[30:42])
    finest = radar.with_settings({**named, "inference.scales": [1]}).refit_calibration(
        normal_images[:30], conformal=normal_images[30:42])
    image = normal_images[45]
    a, b = both.predict(image), finest.predict(image)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-6, atol=1e-6)
    assert a.pixel_threshold == pytest.approx(b.pixel_threshold, rel=1e-6)
    assert a.features.size == 3 * b.features.size  # the image features read every level
    # a map statistic reads every level's map, not only the drawn ones
    scored = radar.with_settings({**named, "inference.scales": [1, 2, 4], "inference.image_score": "max"})
    widest = scored.refit_calibration(normal_images[:30], conformal=normal_images[30:42]).predict(image)
    drawn = scored.with_settings({"inference.map_scales": [1]}).refit_calibration(
        normal_images[:30], conformal=normal_images[30:42]).predict(image)
    assert drawn.score == pytest.approx(widest.score, rel=1e-6)
    np.testing.assert_allclose(drawn.anomaly_map, b.anomaly_map, rtol=1e-6, atol=1e-6)
    # only the first levels of those read
    with pytest.raises(ConfigError, match="inference.map_scales"):
        radar.config.updated({"inference.scales": [1, 2, 4], "inference.map_scales": [2]})


def test_calibration_after_the_choice_is_what_a_calibration_of_the_named_choice_gives(pyramid_fitted, normal_images):
    """Calibration reuses the evidence the self-validation computed, image
    for image in order, and ends where calibrating the chosen settings
    from scratch ends."""
    radar, _ = pyramid_fitted
    chosen = radar.with_settings({**OPEN, "inference.response": "two_sided"}).refit_calibration(
        normal_images[:30], conformal=normal_images[30:42])
    assert chosen.selection() is not None and len(chosen.selection()["candidates"]) == 9
    named = radar.with_settings(chosen.selection()["chosen"]).refit_calibration(
        normal_images[:30], conformal=normal_images[30:42])
    assert named.selection() is None
    np.testing.assert_allclose(chosen.decision_.calibration_features_, named.decision_.calibration_features_,
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(chosen.decision_.conformal_scores_, named.decision_.conformal_scores_,
                               rtol=1e-5, atol=1e-8)
    assert chosen.pixel_threshold_ == pytest.approx(named.pixel_threshold_, rel=1e-5)


def test_held_evidence_scores_as_the_images_it_came_from(pyramid_fitted, normal_images):
    """Every candidate scores an image the same whether its evidence is
    given or computed, and the one-class model's scores of all images in
    one call are each image's own."""
    radar, _ = pyramid_fitted
    config = radar.config.updated(OPEN)
    options = [option for option in candidates(config) if option.response == "two_sided"]
    passes = EvidencePasses(radar.backend_, radar.config)
    arrays = [as_image_array(path, radar.config.data, radar.config.patch_size) for path in normal_images[:20]]
    prepared = prepare(config, options, arrays[:12], passes.evidence_each, passes.evidence_of)
    computed = evaluate(prepared, arrays[12:], passes.evidence_each, keep_maps=True)
    held = evaluate(prepared, arrays[16:], passes.evidence_each, keep_maps=True,
                    held=passes.evidence_each(arrays[12:16], "held"))
    for option in options:
        assert len(computed.scores[option]) == 8
        np.testing.assert_allclose(held.scores[option], computed.scores[option], rtol=1e-5, atol=1e-8)
    for key, maps in computed.maps.items():
        np.testing.assert_allclose(np.stack(held.maps[key]), np.stack(maps), rtol=1e-5, atol=1e-6)
    one = evaluate(prepared, arrays[12:13], passes.evidence_each)
    for option in options:
        assert one.scores[option][0] == pytest.approx(computed.scores[option][0], rel=1e-5)
