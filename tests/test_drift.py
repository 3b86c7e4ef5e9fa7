"""The drift monitor: on exchangeable normal streams (the conformal set
redrawn every run, a fixed stream length) it alarms at most at rate delta,
also with the ordinary share of defects in the stream; feeding every image
to the p-values instead, or more defects than the stated share, sets it off
(the check can fail); after a shift it fires, also when every image is now
flagged; its state, shared by processes through a folder, replays exactly,
drops a torn tail, refuses a damaged file in one line and starts afresh for
other conformal images. And the cgroup CPU quota bounds the cores."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from radar_ad.backend import cgroup_cpu_limit
from radar_ad.decision import conformal_threshold
from radar_ad.drift import SCORES_FILE, STATE_FILE, DriftMonitor, DriftStore, read_state, reset_state
from radar_ad.errors import DataError

from test_cli import radar as run_radar

DELTA = 0.1  # large enough that a few hundred runs measure the alarm rate
RUNS, LENGTH, N_CONFORMAL = 300, 300, 60


def _alarm_rate(defect_share: float, feed_all: bool, seed: int, stated_share: float = 0.1) -> float:
    alarms = 0
    for run in range(RUNS):
        rng = np.random.default_rng([seed, run])
        conformal = rng.standard_t(4, size=N_CONFORMAL)  # redrawn every run; heavy tails, no shape assumed
        threshold = math.inf if feed_all else conformal_threshold(conformal, 0.05)
        monitor = DriftMonitor(conformal, threshold, DELTA, seed=run, defect_share=stated_share)
        stream = rng.standard_t(4, size=LENGTH)
        defective = rng.random(LENGTH) < defect_share
        stream[defective] += 6.0  # defects: far above every normal score
        alarms += monitor.update_many(stream).alarm
    return alarms / RUNS


def _margin(rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / RUNS)


def test_exchangeable_normal_streams_alarm_at_most_at_rate_delta():
    # Ville: at most delta, with no slack added for the runs' own noise
    assert _alarm_rate(0.0, feed_all=False, seed=1) <= DELTA


def test_the_ordinary_share_of_defects_does_not_set_it_off():
    assert _alarm_rate(0.1, feed_all=False, seed=2) <= DELTA  # defects are flagged, not tested as normal


def test_feeding_every_image_is_set_off_by_defects():
    # the same check fails when defects feed the p-values: the choice matters
    assert _alarm_rate(0.1, feed_all=True, seed=3) > DELTA + _margin(DELTA)


def test_more_defects_than_stated_set_it_off():
    # and it fails when a line has more defects than decision.drift_defect_share says
    assert _alarm_rate(0.3, feed_all=False, seed=4, stated_share=0.05) > DELTA + _margin(DELTA)


def test_a_change_that_flags_every_image_fires_the_alarm():
    rng = np.random.default_rng(8)
    conformal = rng.normal(size=60)
    threshold = conformal_threshold(conformal, 0.05)
    monitor = DriftMonitor(conformal, threshold, 0.01, seed=0)
    monitor.update_many(rng.normal(size=200))
    status = monitor.update_many(rng.normal(size=40) + 10)  # nothing is judged normal any more
    assert status.alarm and status.alarm_at <= 220 and "more images flagged" in status.describe()
    without = DriftMonitor(conformal, threshold, 0.01, seed=0, defect_share=None)  # the p-values alone miss it
    assert not without.update_many(np.r_[rng.normal(size=200), rng.normal(size=40) + 10]).alarm


@pytest.mark.parametrize("shift", [0.5, 1.5])
def test_a_shift_fires_the_alarm(shift):
    rng = np.random.default_rng(4)
    conformal = rng.normal(size=100)
    monitor = DriftMonitor(conformal, conformal_threshold(conformal, 0.05), 0.01, seed=0)
    assert not monitor.update_many(rng.normal(size=300)).alarm
    status = monitor.update_many(rng.normal(size=3000) + shift)
    assert status.alarm and status.alarm_at > 300 and status.martingale >= 100
    assert "DRIFT" in status.describe()


def test_nonfinite_scores_count_for_nothing_and_flagged_ones_are_not_tested():
    monitor = DriftMonitor(np.arange(50.0), 45.0, 0.01)
    assert not monitor.update(math.nan) and not monitor.update(math.inf)  # errors count for nothing
    assert monitor.update(46.0) and monitor.update(3.0)  # one flagged, one tested as normal
    status = monitor.status()
    assert (status.seen, status.tested, status.flagged) == (4, 1, 1)
    with pytest.raises(DataError, match="conformal"):
        DriftMonitor([], 1.0, 0.01)


def test_processes_sharing_a_folder_see_one_monitor(tmp_path):
    rng = np.random.default_rng(5)
    conformal = rng.normal(size=80)
    threshold = conformal_threshold(conformal, 0.05)
    first = DriftStore(tmp_path, DriftMonitor(conformal, threshold, 0.01, seed=3))
    second = DriftStore(tmp_path, DriftMonitor(conformal, threshold, 0.01, seed=3))
    batches = [rng.normal(size=7) + 0.8 * k for k in range(6)]
    for k, batch in enumerate(batches):
        status = (first if k % 2 else second).observe(batch)
    alone = DriftMonitor(conformal, threshold, 0.01, seed=3).update_many(np.concatenate(batches))
    assert status == alone == first.status() == second.status()
    record = read_state(tmp_path)
    assert record["images_tested"] == alone.tested and record["images_seen"] == 42
    assert os.path.getsize(tmp_path / SCORES_FILE) == 8 * 42

    # a process killed after appending but before its record: the tail is ignored, then overwritten
    with open(tmp_path / SCORES_FILE, "ab") as handle:
        handle.write(b"\x00" * 13)
    third = DriftStore(tmp_path, DriftMonitor(conformal, threshold, 0.01, seed=3))
    assert third.status() == alone
    third.observe([0.0])
    assert os.path.getsize(tmp_path / SCORES_FILE) == 8 * 43

    # a reset (here without the model, as `radar drift DIR --reset` does) reaches every process
    reset_state(tmp_path)
    assert first.status().seen == 0 and first.status().martingale == 1.0
    assert first.observe([0.1]).seen == 1 and second.status().seen == 1


def test_damaged_state_is_one_line_and_other_conformal_images_start_afresh(tmp_path):
    conformal = np.random.default_rng(6).normal(size=50)
    store = DriftStore(tmp_path, DriftMonitor(conformal, 10.0, 0.01))
    store.observe([0.0, 0.1, 0.2])
    with open(tmp_path / SCORES_FILE, "r+b") as handle:
        handle.truncate(8)
    with pytest.raises(DataError, match="damaged") as error:
        DriftStore(tmp_path, DriftMonitor(conformal, 10.0, 0.01))
    assert "\n" not in str(error.value) and "--reset" in str(error.value)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(DataError, match="cannot be read"):
        DriftStore(tmp_path, DriftMonitor(conformal, 10.0, 0.01))
    (tmp_path / STATE_FILE).unlink()
    DriftStore(tmp_path, DriftMonitor(conformal, 10.0, 0.01)).observe([0.3])
    other = DriftStore(tmp_path, DriftMonitor(conformal + 1.0, 10.0, 0.01))  # recalibrated: new conformal images
    assert other.note and other.status().seen == 0


def test_radar_drift_command_shows_and_resets(tmp_path):
    conformal = np.random.default_rng(7).normal(size=50)
    DriftStore(tmp_path, DriftMonitor(conformal, 10.0, 0.01)).observe([0.0, 0.5])
    shown = run_radar("drift", tmp_path)
    assert shown.returncode == 0 and "no drift" in shown.stdout and "2 of 2 images tested" in shown.stdout
    reset = run_radar("drift", tmp_path, "--reset")
    assert reset.returncode == 0 and "reset" in reset.stdout and read_state(tmp_path)["images_tested"] == 0
    missing = run_radar("drift", tmp_path / "none")
    assert missing.returncode == 2 and missing.stderr.startswith("radar: error: no drift state")


def test_cgroup_quota_bounds_the_cores(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
