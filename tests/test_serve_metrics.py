"""``GET /metrics`` in Prometheus's text format: the counts of one process,
the same counts added up over a pool of workers (``radar serve --workers 2``
in a subprocess, whose ``/ready`` speaks for the whole pool), and a 501 that
says what to install when prometheus-client is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="radar serve needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("uvicorn", reason="radar serve needs uvicorn")
pytest.importorskip("multipart", reason="radar serve needs python-multipart")
httpx = pytest.importorskip("httpx", reason="the serve tests use httpx as the client")
pytest.importorskip("prometheus_client", reason="GET /metrics needs prometheus-client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from test_serve import first_output_line  # noqa: E402
from test_serve_drift import expected_drift, images, post  # noqa: E402
from test_serve_workers import LINUX_PROC, children, stop_pool  # noqa: E402

from radar_ad.apps.serve import background_server, create_app  # noqa: E402


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``, parsed: each sample's value by name and labels."""
    response = httpx.get(url + "metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain"), response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_one_process_counts_requests_verdicts_and_drift(fitted, surfaces):
    radar, _ = fitted
    with background_server(create_app(radar)) as url, httpx.Client(base_url=url, timeout=60) as http:
        answers = [post(http, path) for path in images(surfaces)[:3]]
        assert http.post("/predict", content=b"not an image", headers={"content-type": "image/png"}).status_code == 400
        assert http.post("/predict", content=b"text", headers={"content-type": "text/plain"}).status_code == 415
        assert http.get("/nowhere").status_code == 404
        drift = http.get("/drift").json()
        samples = scrape(url)
    assert value(samples, "radar_requests_total", endpoint="/predict", status="200") == 3
    assert value(samples, "radar_requests_total", endpoint="/predict", status="400") == 1
    assert value(samples, "radar_requests_total", endpoint="/predict", status="415") == 1
    assert value(samples, "radar_requests_total", endpoint="other", status="404") == 1  # whatever the path
    assert value(samples, "radar_request_duration_seconds_count", endpoint="/predict") == 5
    for verdict in ("normal", "anomalous"):
        assert value(samples, "radar_verdicts_total", verdict=verdict) == sum(a["verdict"] == verdict for a in answers)
    assert value(samples, "radar_verdicts_total", verdict="error") == 2
    assert value(samples, "radar_p_value_count") == 3
    assert value(samples, "radar_p_value_bucket", le="1.0") == 3
    assert value(samples, "radar_drift_martingale") == pytest.approx(drift["martingale"])
    assert value(samples, "radar_drift_alarm") == 0
    assert value(samples, "radar_requests_in_flight", endpoint="/metrics") == 1  # the scrape itself
    assert value(samples, "radar_requests_in_flight", endpoint="/predict") == 0


def test_without_prometheus_client_metrics_is_501_and_the_rest_works(fitted, surfaces, monkeypatch):
    radar, _ = fitted
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with background_server(create_app(radar)) as url, httpx.Client(base_url=url, timeout=60) as http:
        response = http.get("/metrics")
        assert response.status_code == 501
        error = response.json()["error"]
        assert "\n" not in error and "pip install 'radar-ad[metrics]'" in error
        post(http, images(surfaces)[0])
        assert http.get("/drift").json()["images_seen"] == 1


def ready_pool(url: str, timeout: float) -> list[dict]:
    """``GET /ready`` until it answers 200; the 503 answers before that."""
    waiting = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(url + "ready", timeout=30)
        if response.status_code == 200:
            return waiting
        assert response.status_code == 503 and response.json()["ready"] is False, response.text
        waiting.append(response.json())
        time.sleep(0.1)
    raise AssertionError(f"the pool was not ready within {timeout} s: {waiting[-1:]}")


def pool_pids(url: str, tries: int = 40, timeout: float = 180) -> set[int]:
    """The workers that answer ``GET /ready`` with 200 on new connections.
    A 503 is waited out: after a worker dies, the supervisor notices within
    a moment and the pool is not ready again until its replacement loads."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while tries and time.monotonic() < deadline:
        response = httpx.get(url + "ready", timeout=30)
        if response.status_code == 503:
            assert response.json()["workers_ready"] < 2, response.text
            time.sleep(0.1)
            continue
        assert response.status_code == 200 and response.json()["workers_ready"] == 2, response.text
        pids.add(response.json()["worker"])
        tries -= 1
        if len(pids) == 2:
            break
    return pids


@pytest.mark.skipif(not LINUX_PROC, reason="finds the worker processes in /proc")
def test_a_pool_adds_up_its_workers_metrics_and_shares_drift(fitted, surfaces, tmp_path):
    """Two workers and a state folder: /ready is 503 until both have loaded,
    the counts of /metrics add up over both (and keep a dead worker's), one
    drift monitor counts every image, and the metrics folder goes at exit."""
    radar, model_dir = fitted
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(temporary)}
    env.pop("RADAR_DEBUG", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "radar_ad", "serve", str(model_dir), "--port", "0",
                                "--device", "cpu", "--workers", "2", "--state", str(tmp_path / "state")],
                               env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = first_output_line(process, timeout=120)
        assert " at http://" in line, line
        url = line.split(" at ")[1].split()[0]
        for body in ready_pool(url, timeout=180):
            assert body["workers"] == 2 and body["workers_ready"] < 2 and "of 2 workers" in body["reason"], body
        assert len(pool_pids(url)) == 2
        assert len(list(temporary.glob("radar-metrics-*"))) == 1  # the pool's private folder

        answers, workers = [], set()
        for path in images(surfaces) * 2:  # a new connection each: until both workers have answered
            with httpx.Client(base_url=url, timeout=60) as http:
                answers.append(post(http, path))
            workers = {result["worker"] for result in httpx.get(url + "recent", timeout=30).json()["results"]}
            if len(workers) == 2 and len(answers) >= 4:
                break
        assert len(workers) == 2, workers
        n = len(answers)
        drift = httpx.get(url + "drift", timeout=30).json()
        assert drift["shared"] is True and drift["images_seen"] == n
        assert drift["martingale"] == pytest.approx(expected_drift(radar, answers).martingale)
        samples = scrape(url)
        assert value(samples, "radar_requests_total", endpoint="/predict", status="200") == n
        assert value(samples, "radar_request_duration_seconds_count", endpoint="/predict") == n
        assert sum(value(samples, "radar_verdicts_total", verdict=v) for v in ("normal", "anomalous")) == n
        assert value(samples, "radar_p_value_count") == n
        assert value(samples, "radar_drift_martingale") == pytest.approx(drift["martingale"])

        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)  # the supervisor replaces it; its counts stay
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pool = {pid for pid, cmdline in children(process.pid).items() if "spawn_main" in cmdline}
            if victim not in pool and len(pool) == 2:  # replaced
                break
            time.sleep(0.1)
        ready_pool(url, timeout=180)
        assert len(pool_pids(url)) == 2
        samples = scrape(url)
        assert value(samples, "radar_requests_total", endpoint="/predict", status="200") == n
        assert value(samples, "radar_requests_in_flight", endpoint="/predict") == 0

        stop_pool(process)
        assert not list(temporary.glob("radar-metrics-*"))  # removed at exit
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def test_cli_help_does_not_import_the_service_stack():
    """`radar serve --help` stays quick: no prometheus-client, torch or fastapi."""
    code = ("import sys; from radar_ad.apps.cli import main; rc = main(['serve', '--help']); "
            "print(sorted(m for m in ('prometheus_client', 'torch', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    assert "--state" in result.stdout and "--header-timeout" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
