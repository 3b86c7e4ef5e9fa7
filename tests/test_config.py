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
