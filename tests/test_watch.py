"""`radar watch`: images dropped into a folder one by one, as a line camera
drops them, are inspected once each, with the same result as `predict`."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from radar_ad.apps.watch import COLUMNS, Watcher, watch, watch_folder
from radar_ad.errors import ConfigError, DataError, ModelError

from test_cli import radar as run_radar

FAST = {"interval": 0.05, "settle": 0.1}


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rows(out: Path) -> list[dict[str, str]]:
    path = out / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def drop(source: Path, folder: Path, name: str) -> Path:
    """Write under a temporary name, then rename into place, as cameras do."""
    target = folder / name
    shutil.copyfile(source, folder / f"{name}.part")
    os.replace(folder / f"{name}.part", target)
    return target


class Loop:
    """A watcher's loop in a background thread, stopped through its Event."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = self.watcher.run(self.stop)
        except BaseException as exc:  # surfaced in the test thread by __exit__
            self.error = exc

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(60)
        self.watcher.close()
        assert not self.thread.is_alive(), "the loop did not stop"
        if self.error is not None:
            raise self.error


def watch_at_most(*args, **kwargs):
    """`watch` in this thread with ``max_images``, stopped after a minute at
    the latest so that a bug cannot hang the test run."""
    stop = threading.Event()
    safety = threading.Timer(60, stop.set)
    safety.start()
    try:
        return watch(*args, stop=stop, quiet=True, **kwargs)
    finally:
        safety.cancel()


@pytest.fixture(scope="module")
def expected(fitted, surfaces) -> dict[str, dict]:
    """`predict` on every test image, keyed by a unique name; computed up front,
    not alongside the loop's own predictions."""
    radar, _ = fitted
    paths = sorted((surfaces / "test").rglob("*.png"))
    return {f"{p.parent.name}_{p.name}": {"path": p, "prediction": pred}
            for p, pred in zip(paths, radar.predict_many(paths))}


def pick(expected: dict[str, dict], anomalous: bool, n: int = 1) -> list[str]:
    names = [name for name, e in expected.items() if e["prediction"].is_anomalous == anomalous]
    assert len(names) >= n, "the tiny model gave too few images of this verdict for the test"
    return names[:n]


def assert_row_matches(row: dict[str, str], prediction) -> None:
    assert row["verdict"] == ("anomalous" if prediction.is_anomalous else "normal")
    # written with 6 decimals; one image at a time and a batch of them sum
    # their float32 patches in another order (a few units in the 7th digit)
    assert float(row["score"]) == pytest.approx(prediction.score, rel=2e-6, abs=1e-6)
    assert float(row["threshold"]) == pytest.approx(prediction.threshold, abs=1e-6)
    assert float(row["p_value"]) == pytest.approx(prediction.p_value, abs=1e-6)
    assert float(row["mask_fraction"]) == pytest.approx(prediction.mask.mean(), abs=1e-6)
    assert datetime.fromisoformat(row["time"]).tzinfo is not None
    assert row["error"] == ""


def test_each_dropped_image_is_inspected_once_like_predict(fitted, expected, tmp_path, capsys):
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    names = pick(expected, anomalous=False, n=2) + pick(expected, anomalous=True)
    with Loop(Watcher(radar, inbox, out, **FAST)) as loop:
        for i, name in enumerate(names):
            drop(expected[name]["path"], inbox, name)
            wait_for(lambda count=i + 1: len(rows(out)) == count, f"the row of {name}")
        # The same name with other content (size/mtime change) is a new image.
        replaced = pick(expected, anomalous=True)[0]
        drop(expected[replaced]["path"], inbox, names[0])
        wait_for(lambda: len(rows(out)) == 4, "the row of the replaced file")
        polls = loop.watcher.polls
        wait_for(lambda: loop.watcher.polls >= polls + 5, "more polls")  # nothing is inspected twice
    assert loop.summary.inspected == 4 and loop.summary.anomalous == 2 and loop.summary.errors == 0

    found = rows(out)
    assert [r["file"] for r in found] == [str(inbox / n) for n in names + names[:1]]
    for row, name in zip(found, names + [replaced]):
        assert_row_matches(row, expected[name]["prediction"])
    # Maps only for anomalous images by default, named like `radar detect` names them.
    for name in names[1:]:
        stem = Path(name).stem
        written = all((out / f"{stem}_{kind}.png").is_file() for kind in ("anomaly", "mask", "overlay"))
        assert written == expected[name]["prediction"].is_anomalous
    assert (out / f"{Path(names[0]).stem}_overlay.png").is_file()  # its anomalous replacement
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and names[2] in lines[2] and "anomalous" in lines[2]
    assert re.search(r" \d+ ms  drift \d[\d.e+-]*$", lines[2]), lines[2]  # the time, then the drift martingale


def test_half_written_file_is_inspected_once_complete(fitted, expected, tmp_path):
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    name = pick(expected, anomalous=False)[0]
    data = expected[name]["path"].read_bytes()
    target = inbox / name
    with Loop(Watcher(radar, inbox, out, retries=1000, **FAST)) as loop:
        target.write_bytes(data[:len(data) // 2])  # the writer stalls longer than --settle
        wait_for(lambda: target in loop.watcher.retrying, "a failed read of the half-written file")
        with target.open("ab") as handle:
            handle.write(data[len(data) // 2:])
        wait_for(lambda: rows(out), "the row of the completed file")
    (row,) = rows(out)
    assert row["file"] == str(target)
    assert_row_matches(row, expected[name]["prediction"])


def test_file_that_stays_broken_becomes_an_error_row(fitted, expected, tmp_path, capsys):
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    good = pick(expected, anomalous=False)[0]
    data = expected[good]["path"].read_bytes()
    with Loop(Watcher(radar, inbox, out, retries=2, **FAST)) as loop:
        (inbox / "broken.png").write_bytes(data[:len(data) // 2])
        wait_for(lambda: rows(out), "the error row")
        drop(expected[good]["path"], inbox, good)  # the loop goes on
        wait_for(lambda: len(rows(out)) == 2, "the row of the next image")
    assert loop.summary.errors == 1 and loop.summary.inspected == 1
    error, ok = rows(out)
    assert error["file"] == str(inbox / "broken.png") and error["verdict"] == "error"
    assert error["score"] == "" and "cannot read image" in error["error"]
    assert "\n" not in error["error"]
    assert_row_matches(ok, expected[good]["prediction"])
    stderr = capsys.readouterr().err
    assert "broken.png" in stderr and "3 attempts" in stderr


def test_restart_appends_and_skips_listed_files(fitted, expected, tmp_path):
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    first, second, third = pick(expected, anomalous=False, n=3)
    for name in (first, second):
        drop(expected[name]["path"], inbox, name)
    assert watch_at_most(radar, inbox, out, max_images=2, **FAST).inspected == 2
    drop(expected[third]["path"], inbox, third)
    # Listed files would come first (they are older) if they were inspected again.
    assert watch_at_most(radar, inbox, out, max_images=1, **FAST).inspected == 1
    found = rows(out)
    assert [r["file"] for r in found] == [str(inbox / n) for n in (first, second, third)]
    assert_row_matches(found[2], expected[third]["prediction"])
    assert (out / "results.csv").read_text().count("file,score") == 1  # one header


def test_restart_reads_back_a_results_csv_whose_last_column_is_message(fitted, expected, tmp_path):
    """A results.csv that names its error column ``message`` is read back
    and appended to, in the same columns."""
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    first, second = pick(expected, anomalous=False, n=2)
    drop(expected[first]["path"], inbox, first)
    assert watch_at_most(radar, inbox, out, max_images=1, **FAST).inspected == 1
    results = out / "results.csv"
    header = b"file,score,threshold,p_value,verdict,mask_fraction,time,"
    assert results.read_bytes().startswith(header + b"error\r\n")
    results.write_bytes(results.read_bytes().replace(header + b"error", header + b"message", 1))
    drop(expected[second]["path"], inbox, second)
    assert watch_at_most(radar, inbox, out, max_images=1, **FAST).inspected == 1
    found = rows(out)
    assert [r["file"] for r in found] == [str(inbox / n) for n in (first, second)]
    assert found[1]["message"] == "" and found[1]["verdict"] == "normal"


def test_no_existing_skips_images_already_there(fitted, expected, tmp_path):
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    old, new = pick(expected, anomalous=False, n=2)
    drop(expected[old]["path"], inbox, old)
    with Loop(Watcher(radar, inbox, out, existing=False, maps_for="all", **FAST)) as loop:
        wait_for(lambda: loop.watcher.polls >= 3, "the first polls")
        drop(expected[new]["path"], inbox, new)
        wait_for(lambda: rows(out), "the row of the new image")
    assert [r["file"] for r in rows(out)] == [str(inbox / new)]
    assert (out / f"{Path(new).stem}_anomaly.png").is_file()  # --maps-for all


def test_subfolders_and_an_output_folder_inside_the_inbox(fitted, expected, tmp_path):
    radar, _ = fitted
    inbox = tmp_path / "inbox"
    out = inbox / "results"  # its map PNGs must not be taken for new images
    for line in ("line1", "line2"):
        (inbox / line).mkdir(parents=True)
    first, second = pick(expected, anomalous=False, n=2)
    with Loop(Watcher(radar, inbox, out, maps_for="all", **FAST)) as loop:
        drop(expected[first]["path"], inbox / "line1", "part.png")
        drop(expected[second]["path"], inbox / "line2", "part.png")
        wait_for(lambda: len(rows(out)) == 2, "rows of both images")
        polls = loop.watcher.polls
        wait_for(lambda: loop.watcher.polls >= polls + 5, "more polls")
    found = {r["file"]: r for r in rows(out)}
    assert len(rows(out)) == 2
    assert_row_matches(found[str(inbox / "line1" / "part.png")], expected[first]["prediction"])
    assert_row_matches(found[str(inbox / "line2" / "part.png")], expected[second]["prediction"])
    for stem in ("part", "part-2"):  # same stem, distinct map names
        assert all((out / f"{stem}_{kind}.png").is_file() for kind in ("anomaly", "mask", "overlay"))


def test_mistakes_are_one_error_before_the_loop(fitted, tmp_path):
    radar, model = fitted
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with pytest.raises(DataError, match="not found"):
        watch_folder(model, tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ModelError):
        watch_folder(tmp_path / "no-model", inbox, tmp_path / "out")
    with pytest.raises(ConfigError, match="maps_for"):
        Watcher(radar, inbox, tmp_path / "out", maps_for="some")
    with pytest.raises(ConfigError, match="backend must be one of"):
        watch_folder(model, inbox, tmp_path / "out", backend="tensorrt")
    other = tmp_path / "other"
    other.mkdir()
    # another program's file, or radar-ad 0.3's (no p_value column): refused, never appended to
    (other / "results.csv").write_text("file,score,threshold,verdict,mask_fraction,time,message\r\n")
    with pytest.raises(DataError, match="not written by `radar watch`"):
        Watcher(radar, inbox, other)
    assert ",".join(COLUMNS).startswith("file,score,threshold,p_value,verdict,mask_fraction")


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RADAR_DEBUG", None)
    return env


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_watches_until_stopped(fitted, expected, tmp_path, stop_signal):
    _, model = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    name = pick(expected, anomalous=True)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "radar_ad", "watch", str(model), str(inbox), "--out", str(out),
         "--interval", "0.05", "--settle", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        drop(expected[name]["path"], inbox, name)
        wait_for(lambda: rows(out) or process.poll() is not None, "the row from `radar watch`", timeout=180)
        assert process.poll() is None, process.communicate()
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr
    lines = stdout.strip().splitlines()
    assert name in lines[0] and "anomalous" in lines[0]
    assert lines[-1].startswith(f"1 image inspected, 1 anomalous, 0 errors; results in {out / 'results.csv'}; "
                                "no drift (martingale ")
    assert lines[-1].endswith("alarm at 133.3; 0 of 1 images tested as normal, 1 flagged)")
    assert_row_matches(rows(out)[0], expected[name]["prediction"])


def never_watch(*args, **kwargs):
    raise AssertionError("the arguments should have been refused before the watching began")


def test_cli_missing_input_folder(fitted, tmp_path, monkeypatch):
    _, model = fitted
    monkeypatch.setattr("radar_ad.apps.watch.watch", never_watch)  # in this process: a failure, never a hang
    result = run_radar("watch", model, tmp_path / "nope", "--out", tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radar: error:") and "not found" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_names_the_flag_the_library_error_names(fitted, tmp_path, monkeypatch):
    """The library says ``maps_for``; the command line says ``--maps-for``."""
    _, model = fitted
    monkeypatch.setattr("radar_ad.apps.watch.watch", never_watch)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    result = run_radar("watch", model, inbox, "--out", tmp_path / "out", "--maps-for", "some")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radar: error: --maps-for must be one of"), result.stderr
