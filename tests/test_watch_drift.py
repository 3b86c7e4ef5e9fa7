"""`radar watch` feeds the drift monitor kept in its output folder: every
inspected image is offered, those judged normal are tested, the summary and
each line say where it stands, and the state survives a SIGKILL of the
watcher and a restart."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from radar_ad.apps.watch import watch
from radar_ad.drift import read_state


def _rows(out: Path) -> list[dict[str, str]]:
    path = out / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("error") is not None]


def _fill(inbox: Path, images: list[Path], start: int = 0) -> None:
    inbox.mkdir(exist_ok=True)
    for k, image in enumerate(images):
        shutil.copyfile(image, inbox / f"img{start + k:03d}.png")


def test_watch_feeds_the_monitor_in_its_output_folder(fitted, surfaces, tmp_path):
    radar, _ = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _fill(inbox, sorted((surfaces / "test").rglob("*.png"))[:6])
    summary = watch(radar, inbox, out, interval=0.05, settle=0.0, quiet=True, max_images=6)
    record = read_state(out)
    normal = sum(row["verdict"] == "normal" for row in _rows(out))
    assert record["images_seen"] == 6 and record["images_tested"] == normal
    assert summary.drift is not None and summary.drift.tested == normal
    assert str(summary).endswith(summary.drift.describe())


def test_state_survives_a_sigkill_of_the_watcher(fitted, surfaces, tmp_path):
    radar, model = fitted
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    images = sorted((surfaces / "test").rglob("*.png")) + sorted((surfaces / "train").rglob("*.png"))[:20]
    _fill(inbox, images)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RADAR_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "radar_ad", "watch", str(model), str(inbox), "--out", str(out),
                                "--interval", "0.05", "--settle", "0", "--maps-for", "none"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while len(_rows(out)) < 5 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(signal.SIGKILL)  # mid-stream: no chance to tidy up
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    rows = _rows(out)
    normal = sum(row["verdict"] == "normal" for row in rows)
    record = read_state(out)  # a whole record, whenever the kill came
    # each image is fed after its row is written: at most the one in flight is missing
    assert normal - 1 <= record["images_tested"] <= normal
    assert len(rows) - 1 <= record["images_seen"] <= len(rows)

    # a restart goes on from the state: every image gets a row, each fed once at most
    summary = watch(radar, inbox, out, interval=0.05, settle=0.0, quiet=True, max_images=len(images) - len(rows))
    rows = _rows(out)
    normal = sum(row["verdict"] == "normal" for row in rows)
    assert len({row["file"] for row in rows}) == len(images)
    assert summary.drift is not None and normal - 1 <= summary.drift.tested <= normal
    assert read_state(out)["images_tested"] == summary.drift.tested
