"""What ``radar serve`` saw of the line: the drift monitor every prediction
feeds (``GET /drift``, and its summary in ``GET /model``), in memory or kept
in a state folder shared by several apps and across a restart, and the
bounded list of recent results (``GET /recent``)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="radar serve needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("uvicorn", reason="radar serve needs uvicorn")
pytest.importorskip("multipart", reason="radar serve needs python-multipart")
httpx = pytest.importorskip("httpx", reason="the serve tests use httpx as the client")

from radar_ad.apps.cli import main  # noqa: E402
from radar_ad.apps.serve import background_server, create_app, runner  # noqa: E402
from radar_ad.apps.serve.monitoring import THUMBNAIL_PX  # noqa: E402
from radar_ad.drift import read_state  # noqa: E402
from radar_ad.errors import ConfigError  # noqa: E402


def images(surfaces: Path) -> list[Path]:
    """Normal images and defects, interleaved."""
    good = sorted((surfaces / "test" / "good").glob("*.png"))
    defects = [path for path in sorted((surfaces / "test").glob("*/*.png")) if path.parent.name != "good"]
    return [path for pair in zip(good, defects) for path in pair]


def post(http: httpx.Client, path: Path) -> dict:
    response = http.post("/predict", content=path.read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def expected_drift(radar, answers: list[dict]):
    """What the model's own monitor says after the same scores, in order."""
    return radar.drift_monitor().update_many([answer["score"] for answer in answers])


def test_each_prediction_feeds_the_drift_monitor_in_memory(fitted, surfaces):
    radar, _ = fitted
    with background_server(create_app(radar)) as url, httpx.Client(base_url=url, timeout=60) as http:
        first = http.get("/drift").json()
        assert first["available"] is True and first["images_seen"] == 0 and first["martingale"] == pytest.approx(1)
        assert first["shared"] is False and first["state"] is None and "--state" in first["note"]
        answers = [post(http, path) for path in images(surfaces)[:5]]
        drift = http.get("/drift").json()
        expected = expected_drift(radar, answers)
        assert drift == {**expected.to_dict(), "martingale": pytest.approx(expected.martingale),
                         "log_martingale": pytest.approx(expected.log_martingale), "available": True,
                         "shared": False, "state": None, "note": first["note"], "summary": drift["summary"]}
        assert drift["images_seen"] == 5 and drift["drift"] is False
        assert drift["images_tested"] == sum(answer["verdict"] == "normal" for answer in answers)  # judged normal
        assert drift["summary"] == expected.describe()
        summary = http.get("/model").json()["drift"]
        assert summary["available"] is True and summary["images_seen"] == 5 and summary["shared"] is False
        assert summary["martingale"] == pytest.approx(expected.martingale)


def test_a_state_folder_is_shared_and_survives_a_restart(fitted, surfaces, tmp_path):
    """Two apps on one state folder (as two workers) feed one monitor and one
    list of recent results; a new app on the folder goes on from there."""
    radar, _ = fitted
    state = tmp_path / "line"
    paths = images(surfaces)[:6]
    answers = []
    with background_server(create_app(radar, state=state)) as first, \
            background_server(create_app(radar, state=state)) as second:
        for n, path in enumerate(paths[:4]):
            with httpx.Client(base_url=(first, second)[n % 2], timeout=60) as http:
                answers.append(post(http, path))
        for url in (first, second):
            drift = httpx.get(url + "drift", timeout=30).json()
            assert drift["images_seen"] == 4 and drift["shared"] is True and drift["state"] == "line"
            assert drift["martingale"] == pytest.approx(expected_drift(radar, answers).martingale)
            assert httpx.get(url + "model", timeout=30).json()["drift"]["shared"] is True
        stream = httpx.get(first + "recent", timeout=30).json()["stream"]
    with background_server(create_app(radar, state=state)) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/drift").json()["images_seen"] == 4  # restarted: the state is still there
        answers += [post(http, path) for path in paths[4:]]
        drift = http.get("/drift").json()
        recent = http.get("/recent").json()
    expected = expected_drift(radar, answers)
    assert drift["images_seen"] == 6 and drift["martingale"] == pytest.approx(expected.martingale)
    assert read_state(state)["images_seen"] == 6  # what `radar drift DIR` shows
    assert recent["stream"] == stream and recent["shared"] is True
    assert [result["id"] for result in recent["results"]] == [6, 5, 4, 3, 2, 1]  # newest first
    assert [result["score"] for result in recent["results"]] == [answer["score"] for answer in answers[::-1]]


def test_recent_results_are_bounded_with_small_thumbnails(fitted, surfaces):
    radar, _ = fitted
    paths = images(surfaces)[:5]
    with background_server(create_app(radar, recent=3)) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/recent").json()["results"] == []
        answers = [post(http, path) for path in paths]
        recent = http.get("/recent").json()
        assert recent["limit"] == 3 and recent["latest"] == 5
        assert [result["id"] for result in recent["results"]] == [5, 4, 3]
        for result, answer in zip(recent["results"], answers[::-1]):
            assert result["verdict"] == answer["verdict"] and result["p_value"] == pytest.approx(answer["p_value"])
            assert result["time"] and result["worker"] > 0
            header, data = result["thumbnail"].split(",", 1)
            assert header == "data:image/jpeg;base64"
            thumbnail = Image.open(io.BytesIO(base64.b64decode(data)))
            assert thumbnail.format == "JPEG" and max(thumbnail.size) <= THUMBNAIL_PX
        anomalous = sum(answer["verdict"] == "anomalous" for answer in answers[2:])
        assert recent["window"] == {"images": 3, "anomalous": anomalous, "anomaly_rate": pytest.approx(anomalous / 3)}
        assert recent["drift"]["images_seen"] == 5
        assert [result["id"] for result in http.get("/recent", params={"after": 4}).json()["results"]] == [5]
    with background_server(create_app(radar, recent=0)) as url, httpx.Client(base_url=url, timeout=60) as http:
        post(http, paths[0])
        recent = http.get("/recent").json()
        assert recent["limit"] == 0 and recent["results"] == [] and recent["drift"]["images_seen"] == 1


class WithoutConformal:
    """The fitted radar as a model without conformal images looks to the
    service: no drift monitor."""

    def __init__(self, radar) -> None:
        self._radar = radar

    def __getattr__(self, name):
        return getattr(self._radar, name)

    def drift_monitor(self):
        return None


def test_a_model_without_conformal_images_says_why_there_is_no_drift(fitted, surfaces):
    radar, _ = fitted
    with background_server(create_app(WithoutConformal(radar))) as url, \
            httpx.Client(base_url=url, timeout=60) as http:
        post(http, images(surfaces)[0])
        response = http.get("/drift")
        assert response.status_code == 200
        body = response.json()
        assert body["available"] is False and "conformal" in body["reason"] and "radar calibrate" in body["reason"]
        assert http.get("/model").json()["drift"] == body
        assert http.get("/recent").json()["drift"] == body


def test_a_loading_service_has_no_drift_yet(fitted):
    with background_server(create_app(None, workers=2)) as url, httpx.Client(base_url=url, timeout=60) as http:
        response = http.get("/drift")
        assert response.status_code == 503 and "loading" in response.json()["error"]
        assert http.get("/recent").json()["drift"] == {"available": False, "reason": "the model is still loading"}


def test_a_state_that_is_not_a_folder_is_refused_in_one_line(fitted, monkeypatch, capsys, tmp_path):
    radar, model_dir = fitted
    taken = tmp_path / "file"
    taken.write_text("not a folder")
    with pytest.raises(ConfigError) as caught:
        create_app(radar, state=taken)
    assert caught.value.setting == "state"

    def never(*args, **kwargs):
        raise AssertionError("the setting should have been refused before the server ran")

    monkeypatch.setattr(runner, "uvicorn_server", never)
    monkeypatch.setattr(runner, "bind_socket", never)
    for args, message in ((["--state", str(taken)], "--state must be a folder the service can write"),
                          (["--recent", "501"], "--recent must be an integer from 0 to 500")):
        assert main(["serve", str(model_dir), *args]) == 2
        stderr = capsys.readouterr().err.strip()
        assert len(stderr.splitlines()) == 1 and stderr.startswith(f"radar: error: {message}"), stderr
