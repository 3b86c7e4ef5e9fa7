"""The three extension points are registries: the names a config accepts and
the command line offers are exactly the registered ones, and an unknown name
is an error that lists them (never a silent fallback)."""

from __future__ import annotations

import pytest

from radar_ad import RadarConfig
from radar_ad.decision import OneClassModel
from radar_ad.errors import ConfigError
from radar_ad.registry import BACKENDS, ONE_CLASS_MODELS, RESPONSES, Registry
from radar_ad.response import EvidenceResponse, Response

from test_cli import radar as run_radar


def test_every_plug_in_is_registered_under_its_name():
    assert {"sobel", "two_sided", "energy", "segmentation"} <= set(RESPONSES.names())
    assert {"isolation_forest", "local_outlier_factor", "knn"} <= set(ONE_CLASS_MODELS.names())
    assert {"torch", "onnx", "openvino"} <= set(BACKENDS.names())
    for name, entry in RESPONSES.items():
        # one noise map (run per pyramid level), or the whole evidence at once
        assert entry.name == name
        assert (issubclass(entry, Response) and entry.feature_names) or (
            issubclass(entry, EvidenceResponse) and entry.response_feature_names)
    for name, entry in ONE_CLASS_MODELS.items():
        assert issubclass(entry, OneClassModel) and entry.name == name


@pytest.mark.parametrize("key, registry", [("inference.response", RESPONSES),
                                           ("decision.one_class_model", ONE_CLASS_MODELS)])
def test_unknown_names_list_the_registered_ones(key, registry):
    with pytest.raises(ConfigError) as error:
        RadarConfig().updated({key: "no_such_thing"})
    message = str(error.value)
    assert message.startswith(f"{key} must be") and "one of" in message and "no_such_thing" in message
    assert all(name in message for name in registry.names())
    for name in registry.names():  # and every registered one is accepted
        assert RadarConfig().updated({key: name}).to_dict()


def test_a_registry_refuses_two_entries_under_one_name():
    registry: Registry = Registry("thing", "thing", symbol="RESPONSES", plugins="radar_ad.responses")

    @registry.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="twice"):
        @registry.register("a")
        class B:
            pass


def test_cli_help_lists_the_registered_backends():
    result = run_radar("detect", "--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for name in BACKENDS.names():
        assert name in flat
