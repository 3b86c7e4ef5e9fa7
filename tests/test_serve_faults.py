"""The HTTP service under faults: clients that trickle their upload or their
headers (against a real ``radar serve`` process, over raw sockets), too many uploads at once,
nonsense limits on the command line, a model whose score is not finite, and
what ``GET /model`` reveals about the server's disk."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="radar serve needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("uvicorn", reason="radar serve needs uvicorn")
pytest.importorskip("multipart", reason="radar serve needs python-multipart")
httpx = pytest.importorskip("httpx", reason="the serve tests use httpx as the client")

from test_serve import first_output_line  # noqa: E402

from radar_ad.apps import serve as serve_module  # noqa: E402
from radar_ad.apps.cli import main  # noqa: E402
from radar_ad.apps.serve import background_server, create_app, runner  # noqa: E402
from radar_ad.errors import ConfigError, NonFiniteError  # noqa: E402
from radar_ad.persistence import model_fingerprint  # noqa: E402

BODY_TIMEOUT = 3.0
HEADER_TIMEOUT = 2.0
MAX_IN_FLIGHT = 2
MAX_PIXELS = 5000  # a 64 x 64 image passes, an 80 x 80 one does not


def json_reply(sock: socket.socket) -> bytes:
    """An answer read off a raw socket, up to the end of its JSON body."""
    reply = b""
    while b"}" not in reply:
        chunk = sock.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def good_png(surfaces: Path) -> bytes:
    return sorted((surfaces / "test" / "good").glob("*.png"))[0].read_bytes()


def assert_refused(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    assert fragment.lower() in body["error"].lower(), body


class SlowClient(threading.Thread):
    """An uploader on a raw socket: the headers promise ``len(body)`` bytes,
    then one byte every ``interval`` seconds, never the last one, until the
    server answers (or ``limit`` seconds pass)."""

    def __init__(self, address: tuple[str, int], body: bytes, interval: float = 0.2, limit: float = 15) -> None:
        super().__init__(daemon=True)
        self.address, self.body, self.interval, self.limit = address, body, interval, limit
        self.sent = 0
        self.reply = b""
        self.answered_after: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, not lost on this thread
            self.error = exc

    def _run(self) -> None:
        started = time.monotonic()
        deadline = started + self.limit
        with socket.create_connection(self.address, timeout=self.limit) as sock:
            head = (f"POST /predict HTTP/1.1\r\nHost: {self.address[0]}\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(self.body)}\r\n\r\n")
            sock.sendall(head.encode())
            while time.monotonic() < deadline:
                if select.select([sock], [], [], self.interval)[0]:
                    break  # the server answers: stop sending, read it
                if self.sent < len(self.body) - 1:
                    sock.sendall(self.body[self.sent:self.sent + 1])
                    self.sent += 1
            else:
                return  # no answer: reply stays empty
            self.answered_after = time.monotonic() - started
            sock.settimeout(max(0.5, deadline - time.monotonic()))
            with contextlib.suppress(OSError):  # a reset after the answer: what came is enough
                while chunk := sock.recv(65536):
                    self.reply += chunk

    def status_and_json(self) -> tuple[int, dict]:
        head, _, body = self.reply.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture(scope="module")
def served(fitted):
    """A real ``radar serve`` process with short body and header timeouts,
    two admission slots and a small pixel limit: its base URL."""
    _, model_dir = fitted
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RADAR_DEBUG", None)
    args = [sys.executable, "-m", "radar_ad", "serve", str(model_dir), "--port", "0", "--device", "cpu",
            "--body-timeout", str(BODY_TIMEOUT), "--header-timeout", str(HEADER_TIMEOUT),
            "--max-in-flight", str(MAX_IN_FLIGHT),
            "--max-pixels", str(MAX_PIXELS)]
    process = subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = first_output_line(process, timeout=60)
        if " at http://" not in line:
            process.kill()
            pytest.fail(f"radar serve did not start: {line!r} {process.communicate(timeout=10)[1]}")
        yield line.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)
        process.stdout.close()
        process.stderr.close()


def _address(url: str) -> tuple[str, int]:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    return host, port


def test_slow_uploaders_hold_no_slot_and_get_408(served, surfaces):
    data = good_png(surfaces)
    with httpx.Client(base_url=served, timeout=30) as http:
        warm = http.post("/predict", content=data, headers={"content-type": "image/png"})
        assert warm.status_code == 200, warm.text  # the first call also warms the model up
        slow = [SlowClient(_address(served), data) for _ in range(MAX_IN_FLIGHT + 2)]
        started = time.monotonic()
        for client in slow:
            client.start()
        while min(client.sent for client in slow) < 3 and time.monotonic() - started < 10:
            time.sleep(0.05)  # every slow client is mid-body: the old code had admitted them all
        asked = time.monotonic()
        answer = http.post("/predict", content=data, headers={"content-type": "image/png"})
        waited = time.monotonic() - asked
        assert answer.status_code == 200, answer.text
        assert waited < BODY_TIMEOUT, f"a normal client waited {waited:.1f} s behind slow ones"
        for client in slow:
            client.join(BODY_TIMEOUT + 15)
            assert not client.is_alive() and client.error is None, client.error
            status, body = client.status_and_json()
            assert status == 408 and set(body) == {"error"} and "3 s" in body["error"], body
            # a deadline on the whole body, not on silence: they never paused that long
            assert client.answered_after is not None and client.answered_after >= BODY_TIMEOUT * 0.9
        again = http.post("/predict", content=data, headers={"content-type": "image/png"})
        assert again.status_code == 200, again.text


def trickle_headers(address: tuple[str, int], before: bytes = b"", interval: float = 1.0,
                    limit: float = 15) -> tuple[bytes, float | None]:
    """A client on a raw socket that sends ``before`` (a whole request, whose
    answer it reads: the connection is then kept alive), then the headers of
    another one byte every ``interval`` seconds, never the end. Returns what
    the server sent after the first trickled byte, and when (seconds after
    that byte) it closed the connection (None: not within ``limit``)."""
    headers = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 64
    with socket.create_connection(address, timeout=limit) as sock:
        if before:
            sock.sendall(before)
            answer = json_reply(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        reply, started, sent = b"", time.monotonic(), 0
        while time.monotonic() - started < limit:
            if select.select([sock], [], [], 0 if sent == 0 else interval)[0]:
                with contextlib.suppress(OSError):
                    chunk = sock.recv(65536)
                    reply += chunk
                    if chunk:
                        continue
                return reply, time.monotonic() - started
            try:
                sock.sendall(headers[sent:sent + 1])
            except OSError:  # closed by the server: what came is the reply
                return reply, time.monotonic() - started
            sent += 1
    return reply, None


def test_clients_trickling_headers_are_cut_off_at_the_deadline(served):
    """A slowloris (one header byte a second), on a new or a kept-alive
    connection, is answered 408 and disconnected after --header-timeout; a
    connection that sends nothing is closed then too; a normal request on
    another connection is meanwhile answered at once."""
    address = _address(served)
    cases = {"new": b"", "kept alive": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"}
    results: dict[str, tuple[bytes, float | None]] = {}
    threads = [threading.Thread(target=lambda name, before: results.__setitem__(name, trickle_headers(address, before)),
                                args=item, daemon=True) for item in cases.items()]

    def silent() -> None:
        with socket.create_connection(address, timeout=15) as sock:
            started = time.monotonic()
            results["silent"] = (sock.recv(65536), time.monotonic() - started)

    threads.append(threading.Thread(target=silent, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # every slow client is mid-headers
    asked = time.monotonic()
    assert httpx.get(served + "health", timeout=10).json() == {"status": "ok"}
    assert time.monotonic() - asked < HEADER_TIMEOUT / 2
    for thread in threads:
        thread.join(20)
    for name in cases:
        reply, closed_after = results[name]
        assert closed_after is not None and HEADER_TIMEOUT * 0.9 <= closed_after <= HEADER_TIMEOUT + 1.5, results
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply
        assert json.loads(body) == {"error": f"request headers not received within {HEADER_TIMEOUT:g} s"}
    reply, closed_after = results["silent"]
    assert reply == b"" and HEADER_TIMEOUT * 0.9 <= closed_after <= HEADER_TIMEOUT + 1.5, results


def test_max_pixels_and_identity_through_the_cli(served, fitted, surfaces):
    radar, model_dir = fitted
    with httpx.Client(base_url=served, timeout=30) as http:
        big = png_bytes(np.full((80, 80), 128, np.uint8))
        assert_refused(http.post("/predict", content=big, headers={"content-type": "image/png"}), 413, "5000")
        model = http.get("/model")
        body = model.json()
    assert body["limits"]["max_pixels"] == MAX_PIXELS and body["limits"]["body_timeout"] == BODY_TIMEOUT
    assert body["limits"]["header_timeout"] == HEADER_TIMEOUT
    assert body["model_name"] == model_dir.name
    assert body["model_fingerprint"] == _directory_sha256(model_dir)[:16]
    assert "model_dir" not in body and str(model_dir) not in model.text and str(model_dir.parent) not in model.text


def _directory_sha256(model_dir: Path) -> str:
    names = ("radar.json", "unet.safetensors", "calibration.safetensors", "conformal.safetensors",
             "response.safetensors")
    return hashlib.sha256(b"".join((model_dir / name).read_bytes() for name in names)).hexdigest()


def test_fingerprint_of_a_file_is_its_sha256_and_ignores_backups(fitted, tmp_path):
    _, model_dir = fitted
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"not really onnx, only bytes")
    assert model_fingerprint(exported) == hashlib.sha256(exported.read_bytes()).hexdigest()[:16]
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in model_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    (copy / "conformal.20240101T000000Z.safetensors").write_bytes(b"an old backup")
    assert model_fingerprint(copy) == model_fingerprint(model_dir)
    (copy / "radar.json").write_text((copy / "radar.json").read_text() + " ")
    assert model_fingerprint(copy) != model_fingerprint(model_dir)


def test_uploads_beyond_max_uploads_get_503(fitted, surfaces):
    radar, _ = fitted
    data = good_png(surfaces)
    app = create_app(radar, max_uploads=1, body_timeout=20)
    with background_server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        with socket.create_connection(_address(base), timeout=20) as sock:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:10])
            for _ in range(1000):  # until the server is receiving that body
                if app.state.uploads.receiving == 1:
                    break
                time.sleep(0.01)
            assert app.state.uploads.receiving == 1
            busy = http.post("/predict", content=data, headers={"content-type": "image/png"})
            assert_refused(busy, 503, "uploads")
            assert busy.headers["retry-after"] == "1"
            assert app.state.admission.in_flight == 0  # receiving a body is not being admitted
            sock.sendall(data[10:])
            reply = json_reply(sock)
            assert reply.startswith(b"HTTP/1.1 200"), reply
        assert http.post("/predict", content=data, headers={"content-type": "image/png"}).status_code == 200
        assert app.state.uploads.receiving == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "99999"], "--port must be an integer from 0 to 65535, got 99999"),
    (["--port", "-1"], "--port must be an integer from 0 to 65535"),
    (["--max-pixels", "0"], "--max-pixels must be an integer from 1 to"),
    (["--max-pixels", "-5"], "--max-pixels must be"),
    (["--max-pixels", str(10**12)], "--max-pixels must be"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0 and at most 1024"),
    (["--max-upload-mb", "1e9"], "--max-upload-mb must be"),
    (["--max-upload-mb", "nan"], "--max-upload-mb must be"),
    (["--max-in-flight", "0"], "--max-in-flight must be"),
    (["--max-in-flight", "100000"], "--max-in-flight must be"),
    (["--body-timeout", "0"], "--body-timeout must be"),
    (["--body-timeout", "1e6"], "--body-timeout must be"),
    (["--body-timeout", "inf"], "--body-timeout must be"),
    (["--max-uploads", "0"], "--max-uploads must be"),
    (["--header-timeout", "0"], "--header-timeout must be a number of seconds > 0 and at most 600"),
    (["--header-timeout", "nan"], "--header-timeout must be"),
    (["--header-timeout", "1e6"], "--header-timeout must be"),
    (["--recent", "-1"], "--recent must be an integer from 0 to 500"),
])
def test_cli_refuses_nonsense_limits_in_one_line(fitted, monkeypatch, capsys, args, message):
    _, model_dir = fitted

    def never(*args, **kwargs):
        raise AssertionError("the setting should have been refused before the server ran")

    # a missed refusal fails instead of serving forever
    monkeypatch.setattr(runner, "uvicorn_server", never)
    monkeypatch.setattr(runner, "bind_socket", never)
    assert main(["serve", str(model_dir), *args]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"radar: error: {message}"), stderr


def test_create_app_refuses_nonsense_limits(fitted):
    radar, _ = fitted
    for name, value in (("max_pixels", 0), ("max_pixels", -1), ("max_pixels", 10**10), ("max_pixels", 1.5),
                        ("max_in_flight", 10**6), ("max_uploads", 0), ("max_upload_bytes", 2**40),
                        ("body_timeout", 0), ("body_timeout", float("nan")), ("body_timeout", True),
                        ("header_timeout", 0), ("header_timeout", 601), ("recent", 501)):
        with pytest.raises(ConfigError) as caught:
            create_app(radar, **{name: value})
        assert caught.value.setting == name and str(caught.value).startswith(name)


def test_cli_defaults_are_the_service_defaults():
    import typer

    from radar_ad.apps.cli import app

    options = {param.name: param.default for param in typer.main.get_command(app).commands["serve"].params}
    assert options["max_pixels"] == serve_module.DEFAULT_MAX_PIXELS
    assert options["max_in_flight"] == serve_module.DEFAULT_MAX_IN_FLIGHT
    assert options["max_uploads"] == serve_module.DEFAULT_MAX_UPLOADS
    assert options["body_timeout"] == serve_module.DEFAULT_BODY_TIMEOUT
    assert options["header_timeout"] == serve_module.DEFAULT_HEADER_TIMEOUT
    assert options["recent"] == serve_module.DEFAULT_RECENT
    assert options["max_upload_mb"] * 2**20 == serve_module.DEFAULT_MAX_UPLOAD_BYTES


class NonFiniteRadar:
    """A fitted radar whose image score comes out NaN: ``raises`` as the
    library does by default, else the verdict it keeps with
    ``decision.non_finite = "anomalous"``."""

    def __init__(self, radar, raises: bool) -> None:
        self._radar, self.raises = radar, raises

    def __getattr__(self, name):
        return getattr(self._radar, name)

    def predict(self, image):
        if self.raises:
            raise NonFiniteError("image score is not finite (nan): no verdict")
        prediction = self._radar.predict(image)
        anomaly_map = prediction.anomaly_map.copy()
        anomaly_map[0, 0] = np.nan
        return dataclasses.replace(prediction, score=float("nan"), is_anomalous=True, p_value=float("nan"),
                                   anomaly_map=anomaly_map)


def test_non_finite_score_is_422(fitted, surfaces):
    radar, _ = fitted
    data = good_png(surfaces)
    with background_server(create_app(NonFiniteRadar(radar, raises=True))) as base, \
            httpx.Client(base_url=base, timeout=30) as http:
        assert_refused(http.post("/predict", content=data, headers={"content-type": "image/png"}), 422, "finite")
        assert http.get("/health").status_code == 200


def test_non_finite_score_kept_as_anomalous_is_valid_json(fitted, surfaces):
    radar, _ = fitted
    data = good_png(surfaces)
    with background_server(create_app(NonFiniteRadar(radar, raises=False))) as base, \
            httpx.Client(base_url=base, timeout=30) as http:
        for query in ("", "?maps=1"):
            response = http.post(f"/predict{query}", content=data, headers={"content-type": "image/png"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["verdict"] == "anomalous" and body["is_anomalous"] is True
            assert body["score"] is None and body["p_value"] is None
