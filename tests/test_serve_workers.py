"""``radar serve --workers N``: several worker processes behind one port,
each with its own model copy and its share of the cores, a readiness route
that says when every worker's model is loaded, and a clean stop of them all.

One real ``radar serve --workers 2`` process on a loopback port (its
workers found in /proc), plus the readiness route of the in-process app,
loading and loaded, alone and in a pool."""

from __future__ import annotations

import multiprocessing
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

from test_serve import first_output_line  # noqa: E402

from radar_ad.apps.cli import main  # noqa: E402
from radar_ad.apps.serve import background_server, create_app, model_identity, runner  # noqa: E402
from radar_ad.backend import threads_per_worker  # noqa: E402
from radar_ad.persistence import model_fingerprint  # noqa: E402

LINUX_PROC = Path("/proc/self/stat").exists()


def children(pid: int) -> dict[int, str]:
    """The living child processes of ``pid`` and their command lines, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie (an exited process whose parent has not reaped it)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pool(process: subprocess.Popen) -> tuple[str, str]:
    """SIGINT to ``radar serve --workers N``: it exits 0 after printing
    ``stopped``, with no traceback and no process of it left. Its output."""
    everyone = set(children(process.pid))
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stdout + stderr
    assert stdout.strip().splitlines()[-1] == "stopped" and "Traceback" not in stdout + stderr, stdout + stderr
    deadline = time.monotonic() + 10  # the resource tracker ends once its parent has
    while any(alive(pid) for pid in everyone) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in everyone if alive(pid)]
    return stdout, stderr


def ready_workers(url: str, expected: int, timeout: float) -> dict[int, dict]:
    """``GET /ready`` on a new connection each time (the kernel hands each
    to one worker) until ``expected`` different workers have answered 200:
    their answers by pid. Before that, a 503 says how many are ready."""
    ready: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(ready) < expected and time.monotonic() < deadline:
        response = httpx.get(url + "ready", timeout=30)
        if response.status_code == 200:
            ready[response.json()["worker"]] = response.json()
        else:
            body = response.json()
            assert response.status_code == 503 and body["ready"] is False, body
            assert not ready and body["workers"] == expected and body["workers_ready"] < expected, body
            time.sleep(0.1)
    return ready


def test_one_process_is_ready_once_it_listens(fitted):
    radar, model_dir = fitted
    app = create_app(radar, model_info=model_identity(model_dir))
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok"}
        body = http.get("/ready").json()
        assert body["ready"] is True and body["worker"] == os.getpid() and body["workers"] == 1
        assert body["model_fingerprint"] == model_fingerprint(model_dir) and body["threads"] >= 1


def test_a_loading_process_is_alive_but_not_ready(fitted, surfaces):
    """What a worker answers before its model is loaded: alive, not ready,
    and 503 with Retry-After for the model and predictions; then served."""
    radar, model_dir = fitted
    app = create_app(None, workers=2)
    path = sorted((surfaces / "test" / "good").glob("*.png"))[0]
    data = path.read_bytes()
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok"}
        response = http.get("/ready")
        assert (response.status_code, response.json()) == (503, {"ready": False})
        for response in (http.get("/model"),
                         http.post("/predict", content=data, headers={"content-type": "image/png"})):
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
            assert "loading" in response.json()["error"]
        assert http.get("/").status_code == 200  # the page itself waits for the model

        app.state.model.set(radar, model_identity(model_dir))
        body = http.get("/ready").json()
        assert body["ready"] is True and body["workers"] == 2
        assert http.get("/model").json()["model_fingerprint"] == model_fingerprint(model_dir)
        response = http.post("/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 200 and response.json()["score"] == pytest.approx(radar.predict(path).score)


def test_a_worker_is_ready_only_once_the_whole_pool_is(fitted):
    """In a pool, /ready is 503 with how many workers have loaded their model
    until all of them have (the count the supervisor shares with them)."""
    radar, model_dir = fitted
    loaded = multiprocessing.get_context("spawn").RawValue("i", 0)
    app = create_app(None, workers=3, workers_ready=loaded)
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        response = http.get("/ready")
        assert response.status_code == 503
        assert response.json() == {"ready": False, "workers": 3, "workers_ready": 0,
                                   "reason": "0 of 3 workers have loaded the model"}
        app.state.model.set(radar, model_identity(model_dir))
        loaded.value = 1  # this worker: the supervisor has its report
        response = http.get("/ready")
        body = response.json()
        assert response.status_code == 503 and body["ready"] is False and body["workers_ready"] == 1
        assert body["worker"] == os.getpid() and body["model_fingerprint"] == model_fingerprint(model_dir)
        assert body["reason"] == "1 of 3 workers have loaded the model"
        assert http.post("/predict", content=b"", headers={"content-type": "image/png"}).status_code == 400  # serves
        loaded.value = 3
        response = http.get("/ready")
        body = response.json()
        assert response.status_code == 200 and body["ready"] is True and body["workers_ready"] == 3
        assert "reason" not in body and body["workers"] == 3


@pytest.mark.parametrize("workers", ["0", "65", "-1"])
def test_workers_out_of_bounds_are_refused_in_one_line(fitted, monkeypatch, capsys, workers):
    _, model_dir = fitted

    def never(*args, **kwargs):
        raise AssertionError("the setting should have been refused before the server ran")

    monkeypatch.setattr(runner, "uvicorn_server", never)
    monkeypatch.setattr(runner, "bind_socket", never)
    assert main(["serve", str(model_dir), "--workers", workers]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr == f"radar: error: --workers must be an integer from 1 to 64, got {workers}", stderr


@pytest.mark.skipif(not LINUX_PROC, reason="finds the worker processes in /proc")
def test_two_workers_serve_one_port_and_stop_together(fitted, surfaces):
    radar, model_dir = fitted
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RADAR_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "radar_ad", "serve", str(model_dir), "--port", "0",
                                "--device", "cpu", "--workers", "2"],
                               env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = first_output_line(process, timeout=120)
        assert line.startswith(f"serving {model_dir} at http://127.0.0.1:") and "2 workers" in line, line
        url = line.split(" at ")[1].split()[0]
        assert httpx.get(url + "health", timeout=60).json() == {"status": "ok"}  # alive, loaded or not

        ready = ready_workers(url, expected=2, timeout=120)
        # The server's children: the two workers and multiprocessing's resource tracker.
        workers = {pid for pid, cmdline in children(process.pid).items() if "spawn_main" in cmdline}
        assert len(workers) == 2 and set(ready) == workers, (ready, children(process.pid))
        for answer in ready.values():
            assert answer["workers"] == 2 and answer["threads"] == threads_per_worker(2)
            assert answer["model_fingerprint"] == model_fingerprint(model_dir)

        for folder in ("good", "crack"):
            path = sorted((surfaces / "test" / folder).glob("*.png"))[0]
            expected = radar.predict(path)
            for _ in range(2):  # a new connection each: more than one worker answers
                body = httpx.post(url + "predict", content=path.read_bytes(), headers={"content-type": "image/png"},
                                  timeout=60).json()
                assert body["score"] == pytest.approx(expected.score, rel=1e-5), body
                assert body["is_anomalous"] == expected.is_anomalous

        stop_pool(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
