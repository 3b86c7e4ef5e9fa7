import json

import pytest

from radar_ad.config import DataConfig, RadarConfig
from radar_ad.errors import ConfigError


def test_json_round_trip():
    config = RadarConfig().updated({"train.steps": 7, "network.attention": [False, False, True]})
    again = RadarConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    assert again.network.attention == (False, False, True)


def test_partial_dict_fills_defaults():
    config = RadarConfig.from_dict({"inference": {"stride": 7}})
    assert config.inference.stride == 7 and config.patch_size == 28


@pytest.mark.parametrize("overrides,name", [
    ({"patch_size": 30}, "patch_size"),
    ({"inference.stride": 40}, "inference.stride"),
    ({"decision.one_class_model": "svm"}, "decision.one_class_model"),
    ({"decision.contamination": 0.9}, "decision.contamination"),
    ({"network.attention": [True]}, "network.attention"),
    ({"train.calibration_fraction": 1.5}, "train.calibration_fraction"),
    ({"inference.timestep": 1000}, "inference.timestep"),
    ({"train.steps": "many"}, "train.steps"),
])
def test_invalid_values_name_the_setting(overrides, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        RadarConfig().updated(overrides)


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown setting"):
        RadarConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="unknown setting"):
        RadarConfig().updated({"nope.x": 1})


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RadarConfig.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="cannot read"):
        RadarConfig.from_file(bad)


def test_settings_are_immutable_and_say_what_to_call_instead():
    config = RadarConfig()
    for assign in (lambda: setattr(config.inference, "stride", 14), lambda: setattr(config, "seed", 3)):
        with pytest.raises(ConfigError, match=r"updated\(.*with_settings\(") as error:
            assign()
        assert "inference.stride" in str(error.value) or "seed" in str(error.value)
    changed = config.updated({"inference.stride": 14})
    assert config.inference.stride is None and changed.inference.stride == 14
    assert config.changes(changed) == ["inference.stride"]
    with pytest.raises(ConfigError, match="data.resize"):  # every section validates when built
        DataConfig(resize=3)


def test_plugin_settings_sit_under_their_plugin_and_are_immutable_too():
    config = RadarConfig()
    segmentation = config.inference.responses["segmentation"]
    assert segmentation.width == 16 and "two_sided" not in config.inference.responses  # it has none of its own
    assert config.to_dict()["decision"]["one_class_models"] == {"isolation_forest": {"n_estimators": 200}}
    changed = config.updated({"inference.responses.segmentation.width": 8})
    assert changed.changes(config) == ["inference.responses.segmentation.width"]
    assert changed != config and hash(changed) != hash(config)
    assert RadarConfig.from_dict(json.loads(changed.to_json())) == changed
    with pytest.raises(ConfigError, match=r"inference\.responses\.segmentation\.width cannot be assigned"):
        segmentation.width = 4
    with pytest.raises(ConfigError, match="cannot be assigned"):
        config.inference.responses.section = "x"
    with pytest.raises(ConfigError, match=r"segmentation\.width must be an integer in \[1, 256\]"):
        config.updated({"inference.responses.segmentation.width": 0})
    with pytest.raises(ConfigError, match="unknown setting inference.responses.two_sided"):
        RadarConfig.from_dict({"inference": {"responses": {"two_sided": {}}}})
    with pytest.raises(ConfigError, match="unknown setting 'inference.responses.segmentation.depth'"):
        RadarConfig.from_dict({"inference": {"responses": {"segmentation": {"depth": 3}}}})


def test_old_keys_of_moved_settings_are_read_at_their_new_places():
    old = RadarConfig.from_dict({"inference": {"segmentation_width": 8}, "decision": {"n_estimators": 50}})
    assert old.inference.responses["segmentation"].width == 8
    assert old.decision.one_class_models["isolation_forest"].n_estimators == 50
    with pytest.warns(DeprecationWarning, match="decision.one_class_models.isolation_forest.n_estimators"):
        assert RadarConfig().updated({"decision.n_estimators": 50}) == old.updated(
            {"inference.responses.segmentation.width": 16})
