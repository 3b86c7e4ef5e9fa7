"""The HTTP service through a real server on a loopback port: answers that
match the Python API, and every kind of bad upload refused with a 4xx JSON
error (never a 500), a bounded number of requests in flight, and the CLI."""

from __future__ import annotations

import base64
import io
import json
import multiprocessing
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="radar serve needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("uvicorn", reason="radar serve needs uvicorn")
pytest.importorskip("multipart", reason="radar serve needs python-multipart")
httpx = pytest.importorskip("httpx", reason="the serve tests use httpx as the client")

from radar_ad.apps.serve import background_server, create_app  # noqa: E402
from radar_ad.apps.serve import runner as serve_runner  # noqa: E402
from radar_ad.apps.serve.openapi import Readiness  # noqa: E402

from test_cli import radar as run_radar  # noqa: E402


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header (with a valid CRC) claims ``width x height``:
    a decompression bomb as far as the header is concerned."""
    data = png_bytes(np.zeros((8, 8), np.uint8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


@pytest.fixture(scope="module")
def url(fitted):
    radar, _ = fitted
    with background_server(create_app(radar)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def strict_url(fitted):
    """A service with tiny limits: 4 KiB uploads, 60 x 60 pixels."""
    radar, _ = fitted
    with background_server(create_app(radar, max_upload_bytes=4096, max_pixels=3600)) as base:
        yield base


def assert_refused(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    assert fragment.lower() in body["error"].lower(), body


def test_health_model_and_page(client, fitted):
    radar, _ = fitted
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True and set(ready) <= set(Readiness.__annotations__)  # what the schema states
    model = client.get("/model").json()
    assert model["backend"] == "torch" and model["patch_size"] == radar.config.patch_size
    assert model["engine"]["backend"] == "torch" and model["engine"]["parameters"] > 0  # the backend's own words
    assert model["channels"] == 1 and model["grayscale"] is True
    assert model["image_threshold"] == pytest.approx(radar.decision_.threshold_)
    assert model["false_alarms"]["rate"] == 0.1 and model["false_alarms"]["n_conformal"] == 10
    assert model["false_alarms"]["smallest_p_value"] == pytest.approx(1 / 11)
    assert model["false_alarms"]["warning"] is None
    assert model["pixel_threshold"] == pytest.approx(radar.pixel_threshold_)
    assert model["training"]["n_train"] == radar.training_["n_train"]
    assert model["config"] == json.loads(json.dumps(radar.config.to_dict()))
    assert model["limits"]["max_in_flight"] == 8 and model["limits"]["header_timeout"] == 10
    assert model["drift"]["available"] is True and model["drift"]["drift"] is False  # GET /drift tells more
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="verdict"' in page.text and 'id="recent"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # offline
    assert_refused(client.get("/nowhere"), 404)


def test_schema_describes_the_predict_upload_and_its_errors():
    from radar_ad.apps.serve.guards import IMAGE_TYPES

    schema = create_app(None).openapi()
    operation = schema["paths"]["/predict"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"multipart/form-data", *IMAGE_TYPES}  # what the guards accept
    assert body["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert body["content"]["image/png"]["schema"] == {"type": "string", "format": "binary"}
    responses = operation["responses"]
    error = {"$ref": "#/components/schemas/ErrorAnswer"}
    for status in ("400", "408", "413", "415", "422", "500", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == error, status
    assert schema["components"]["schemas"]["ErrorAnswer"]["required"] == ["error"]
    assert "Retry-After" in responses["503"]["headers"]


def test_schema_states_what_the_other_routes_answer():
    schema = create_app(None).openapi()
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}

    def responses(path: str) -> dict:
        return schema["paths"][path]["get"]["responses"]

    for path, status in (("/model", "503"), ("/drift", "503"), ("/recent", "422"), ("/metrics", "501")):
        assert responses(path)[status]["content"] == error, (path, status)
    assert all("Retry-After" in responses(path)["503"]["headers"] for path in ("/model", "/drift"))
    assert set(responses("/metrics")["200"]["content"]) == {"text/plain"}  # the 501 alone is JSON
    for status in ("200", "503"):
        assert responses("/ready")[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Readiness"}
    assert not {"HTTPValidationError", "ValidationError"} & set(schema["components"]["schemas"])  # no default 422
    parameters = {parameter["name"]: parameter for parameter in schema["paths"]["/predict"]["post"]["parameters"]}
    assert "base64 PNG" in parameters["maps"]["description"]


def test_a_loading_service_answers_what_its_schema_states():
    """The answers the schema declares, as a service without its model gives
    them (no model to train: the loading state is where they happen)."""
    loaded = multiprocessing.get_context("spawn").RawValue("i", 1)
    with background_server(create_app(None)) as url, httpx.Client(base_url=url, timeout=60) as http:
        for path in ("/model", "/drift"):
            response = http.get(path)
            assert_refused(response, 503, "loading")
            assert int(response.headers["retry-after"]) > 0
        assert_refused(http.get("/recent", params={"after": "latest"}), 422, "after")
        assert_refused(http.post("/predict", params={"maps": "sometimes"}, content=b"x",
                                 headers={"content-type": "image/png"}), 422, "maps")
        response = http.get("/ready")
        assert response.status_code == 503 and response.json() == {"ready": False}
    with background_server(create_app(None, workers=2, workers_ready=loaded)) as url, \
            httpx.Client(base_url=url, timeout=60) as http:
        response = http.get("/ready")
        body = response.json()
        assert response.status_code == 503 and set(body) <= set(Readiness.__annotations__)
        assert body["ready"] is False and body["workers_ready"] == 1 and "1 of 2" in body["reason"]


@pytest.mark.parametrize("folder", ["good", "blob"])
def test_predict_matches_python_api(client, fitted, surfaces, folder):
    radar, _ = fitted
    path = sorted((surfaces / "test" / folder).glob("*.png"))[0]
    expected = radar.predict(path)
    response = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score"] == pytest.approx(expected.score, rel=1e-6)
    assert body["verdict"] == ("anomalous" if expected.is_anomalous else "normal")
    assert body["is_anomalous"] == expected.is_anomalous
    assert body["threshold"] == pytest.approx(expected.threshold)
    assert body["p_value"] == pytest.approx(expected.p_value) and (body["p_value"] <= 0.1) == expected.is_anomalous
    assert (body["width"], body["height"]) == (64, 64)
    assert body["mask_fraction"] == pytest.approx(expected.mask.mean())
    assert body["milliseconds"] > 0 and "overlay" not in body


def test_maps_are_pngs_of_the_image_size(client, surfaces):
    path = sorted((surfaces / "test" / "crack").glob("*.png"))[0]
    body = client.post("/predict?maps=1", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
    anomaly, mask, overlay = (decode_png(body[key]) for key in ("anomaly_map", "mask", "overlay"))
    assert anomaly.size == mask.size == overlay.size == (64, 64)
    assert anomaly.mode == overlay.mode == "RGB" and mask.mode == "L"
    mask_array = np.asarray(mask)
    assert set(np.unique(mask_array)) <= {0, 255}
    assert (mask_array == 255).mean() == pytest.approx(body["mask_fraction"])


def test_raw_body_upload(client, fitted, surfaces):
    radar, _ = fitted
    path = sorted((surfaces / "test" / "good").glob("*.png"))[1]
    response = client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["score"] == pytest.approx(radar.predict(path).score, rel=1e-6)


def test_too_large_uploads_are_413(strict_url):
    big = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    assert len(big) > 4096
    with httpx.Client(base_url=strict_url, timeout=60) as http:
        assert_refused(http.post("/predict", files={"file": ("big.png", big, "image/png")}), 413, "limit")
        assert_refused(http.post("/predict", content=big, headers={"content-type": "image/png"}), 413)
        # No Content-Length (chunked): counted while it streams in.
        chunks = (big[i:i + 1000] for i in range(0, len(big), 1000))
        assert_refused(http.post("/predict", content=chunks, headers={"content-type": "image/png"}), 413)
        # Small file, too many pixels: refused from the header.
        small = png_bytes(np.full((64, 64), 128, np.uint8))
        assert len(small) < 4096
        assert_refused(http.post("/predict", files={"file": ("flat.png", small, "image/png")}), 413, "pixels")
        assert http.get("/health").status_code == 200


def test_decompression_bombs_are_413_before_decoding(client):
    for width, height in ((7000, 7000), (100_000, 100_000)):  # over max_pixels; over PIL's own limit
        bomb = png_claiming_size(width, height)
        assert len(bomb) < 200
        assert_refused(client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")}), 413, "pixels")


def test_wrong_content_types_are_415(client, surfaces):
    data = sorted((surfaces / "test" / "good").glob("*.png"))[0].read_bytes()
    assert_refused(client.post("/predict", content=data, headers={"content-type": "text/plain"}), 415)
    assert_refused(client.post("/predict", content=data), 415, "content type")
    assert_refused(client.post("/predict", files={"file": ("a.txt", data, "text/plain")}), 415, "file type")
    assert_refused(client.post("/predict", data={"file": "not a file"}), 415)  # url-encoded form


def test_undecodable_uploads_are_400(client, surfaces):
    data = sorted((surfaces / "test" / "good").glob("*.png"))[0].read_bytes()
    cases = {
        "garbage": b"this is not an image at all" * 20,
        "truncated": data[: len(data) // 2],
        "header only": data[:40],
        "empty": b"",
    }
    for content in cases.values():
        for kind in ("image/png", "application/octet-stream"):
            response = client.post("/predict", files={"file": ("x.png", content, kind)})
            assert_refused(response, 400)
        assert_refused(client.post("/predict", content=content, headers={"content-type": "image/png"}), 400)
    assert_refused(client.post("/predict", files={"other": ("x.png", data, "image/png")}), 400, "'file'")
    broken = client.post("/predict", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert_refused(broken, 400)


def test_image_smaller_than_a_patch_is_422(client):
    tiny = png_bytes(np.full((20, 20), 100, np.uint8))
    assert_refused(client.post("/predict", files={"file": ("tiny.png", tiny, "image/png")}), 422, "patch")
    assert_refused(client.post("/predict?maps=maybe", content=tiny, headers={"content-type": "image/png"}),
                   422, "maps")


class BlockingRadar:
    """A radar whose predict waits for ``release``: requests stay in flight
    as long as the test wants, and overlapping model calls are counted."""

    def __init__(self, radar) -> None:
        self._radar = radar
        self.release = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self.active = self.most_active = 0

    def __getattr__(self, name):
        return getattr(self._radar, name)

    def predict(self, image):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.entered.set()
        try:
            assert self.release.wait(60)
            return self._radar.predict(image)
        finally:
            with self._lock:
                self.active -= 1


def test_requests_beyond_max_in_flight_get_503(fitted, surfaces):
    radar, _ = fitted
    blocking = BlockingRadar(radar)
    app = create_app(blocking, max_in_flight=2)
    data = sorted((surfaces / "test" / "good").glob("*.png"))[0].read_bytes()
    results: dict[str, int] = {}

    def post(name: str, base: str) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            results[name] = http.post("/predict", content=data, headers={"content-type": "image/png"}).status_code

    with background_server(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        threads = [threading.Thread(target=post, args=(name, base)) for name in ("first", "second")]
        try:
            threads[0].start()
            assert blocking.entered.wait(30)  # the first is in the model
            threads[1].start()
            for _ in range(3000):  # the second is admitted and waits for the model
                if app.state.admission.in_flight == 2:
                    break
                threading.Event().wait(0.01)
            assert app.state.admission.in_flight == 2
            third = http.post("/predict", content=data, headers={"content-type": "image/png"})
            assert_refused(third, 503, "busy")
            assert int(third.headers["retry-after"]) >= 1
            assert http.get("/health").status_code == 200  # only predictions are limited
        finally:
            blocking.release.set()
            for thread in threads:
                thread.join(60)
        assert results == {"first": 200, "second": 200}
        assert blocking.most_active == 1  # model calls never overlapped
        assert app.state.admission.in_flight == 0
        assert http.post("/predict", content=data, headers={"content-type": "image/png"}).status_code == 200


def first_output_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line a subprocess prints, or "" if none comes within ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RADAR_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "radar_ad", "serve", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_cli_serves_a_model(fitted, surfaces):
    radar, model_dir = fitted
    process = _cli(str(model_dir), "--port", "0")
    try:
        line = first_output_line(process, timeout=120)
        assert line.startswith(f"serving {model_dir} at http://127.0.0.1:"), line + process.stderr.read()
        base = line.split(" at ")[1].split()[0]
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.get("/health").json() == {"status": "ok"}
            path = sorted((surfaces / "test" / "gap").glob("*.png"))[0]
            body = http.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
            assert body["score"] == pytest.approx(radar.predict(path).score, rel=1e-6)
            assert http.get("/model").json()["model_name"] == model_dir.name  # not its path
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("problem", ["missing model", "bad backend", "busy port"])
def test_cli_bad_setup_is_one_line(fitted, tmp_path: Path, monkeypatch, problem):
    def never(*args, **kwargs):  # in this process: a failure, never a server that runs on
        raise AssertionError("the setup should have been refused before the server ran")

    monkeypatch.setattr(serve_runner, "uvicorn_server", never)
    _, model_dir = fitted
    args = {"missing model": [str(tmp_path / "nope")],
            "bad backend": [str(model_dir), "--backend", "tensorflow"],
            "busy port": [str(model_dir), "--port", "{port}"]}[problem]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = run_radar("serve", *[arg.format(port=taken.getsockname()[1]) for arg in args])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radar: error:"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unexpected_failure_is_a_json_500(fitted, surfaces):
    class BrokenRadar(BlockingRadar):
        def predict(self, image):
            raise RuntimeError("boom\nsecond line")

    radar, _ = fitted
    data = sorted((surfaces / "test" / "good").glob("*.png"))[0].read_bytes()
    with background_server(create_app(BrokenRadar(radar))) as base, httpx.Client(base_url=base) as http:
        response = http.post("/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: RuntimeError: boom"}
        assert http.get("/health").status_code == 200
