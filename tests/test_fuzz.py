"""Property-based fuzzing of what arrives from outside: config files (and so
a model's radar.json), image files, and uploads to the HTTP API. Random or
mutated input must give a clear error (the library's own error type, a 4xx
JSON answer) or a correct answer, never another exception, a 500, a hang or
a "normal" verdict for garbage.

``RADAR_FUZZ_EXAMPLES`` sets the number of examples per property (default:
a quick run for the suite); ``benchmarks/fuzz.py`` runs a long one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from radar_ad.config import RadarConfig
from radar_ad.data import load_image
from radar_ad.errors import ConfigError, DataError

EXAMPLES = int(os.environ.get("RADAR_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("RADAR_FUZZ_EXAMPLES"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Values a tampered or mistyped file may hold in any place.
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def leaves(data: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in data.items():
        found += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return found


def within_bounds(config: RadarConfig) -> None:
    """What a config that was accepted must satisfy: finite numbers, and
    sizes a machine can run (the bounds of radar_ad.config)."""
    for key in leaves(config.to_dict()):
        value = config.to_dict()
        for part in key.split("."):
            value = value[part]
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float):
                assert math.isfinite(number), key
            if isinstance(number, int) and not isinstance(number, bool):
                assert abs(number) <= 2**32, key
    assert config.patch_size <= 512 and config.train.batch_size <= 65536 and config.inference.draws <= 64


@FUZZ
@given(data=st.data())
def test_mutated_configs_are_accepted_within_bounds_or_refused_with_a_config_error(data):
    base = RadarConfig().to_dict()
    keys = leaves(base)
    mutated = json.loads(json.dumps(base))
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4)):
        node = mutated
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = data.draw(ANY_VALUE)
    try:
        config = RadarConfig.from_dict(mutated)
    except ConfigError:
        return
    within_bounds(config)
    assert RadarConfig.from_dict(json.loads(config.to_json())) == config


@FUZZ
@given(value=ANY_VALUE)
def test_arbitrary_json_is_a_config_or_a_config_error(value):
    with contextlib.suppress(ConfigError):
        within_bounds(RadarConfig.from_dict(value))


def image_bytes(kind: str, size: tuple[int, int], seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def mutate(data: bytes, draw) -> bytes:
    """Flip, cut or splice bytes of a valid file."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "truncate", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


VALID_IMAGES = st.builds(image_bytes, st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "GIF"]),
                         st.tuples(st.integers(1, 80), st.integers(1, 80)), st.integers(0, 2**16))


@FUZZ
@given(data=st.data())
def test_random_and_mutated_image_files_decode_correctly_or_are_a_data_error(data, tmp_path_factory):
    raw = data.draw(st.one_of(st.binary(max_size=512), VALID_IMAGES.map(lambda b: mutate(b, data.draw))))
    path = tmp_path_factory.mktemp("fuzz") / "image.png"
    path.write_bytes(raw)
    try:
        array = load_image(path, RadarConfig().data, min_size=8)
    except DataError:
        return
    assert array.dtype == np.float32 and array.ndim == 3 and min(array.shape[1:]) >= 8
    assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


@pytest.fixture(scope="module")
def client(fitted):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from radar_ad.apps.serve import create_app

    with TestClient(create_app(fitted[0], max_pixels=1_000_000)) as test_client:
        yield test_client


CONTENT_TYPES = st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain", "",
                                 "multipart/form-data; boundary=x", "image/png; charset=utf-8"])


@FUZZ
@given(data=st.data())
def test_the_http_api_answers_garbage_with_a_4xx_never_a_verdict(client, data):
    body = data.draw(st.binary(max_size=2048))
    if body[:4] in (b"\x89PNG", b"GIF8", b"BM") or body[:2] in (b"\xff\xd8", b"II", b"MM"):
        return  # could be a real image; the next property covers those
    answer = client.post("/predict", content=body, headers={"content-type": data.draw(CONTENT_TYPES)})
    assert 400 <= answer.status_code < 500, answer.text
    assert "error" in answer.json() and "verdict" not in answer.json()


@FUZZ
@given(data=st.data())
def test_the_http_api_answers_mutated_images_with_a_verdict_or_a_4xx(client, data):
    raw = mutate(data.draw(VALID_IMAGES), data.draw) if data.draw(st.booleans()) else data.draw(VALID_IMAGES)
    answer = client.post("/predict", files={"file": ("x.png", raw, "application/octet-stream")})
    assert answer.status_code < 500, answer.text
    body = answer.json()
    if answer.status_code == 200:
        assert body["verdict"] in ("normal", "anomalous") and math.isfinite(body["score"])
    else:
        assert "error" in body and "verdict" not in body
