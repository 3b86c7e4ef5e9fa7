"""Drift: an alarm, with a guarantee, when new normal images stop looking
like the conformal ones.

The per-image p-values keep false alarms at the rate the user set only while
normal images are exchangeable with the conformal images. This module turns
the stream of image scores into test martingales (Vovk, Nouretdinov and
Gammerman, "Testing exchangeability on-line", ICML 2003; Volkhonskiy et al.,
"Inductive conformal martingales for change-point detection", 2017). A line
has defects, so two questions are asked, each by a martingale that the
ordinary share of defects does not set off:

1. **Do the images judged normal still look like the conformal ones?** (a
   subtle drift: lighting ages a little). Only images judged normal feed it
   (score at most the model's threshold). Each gets a smoothed p-value
   against a reference that grows: the conformal images' scores below the
   threshold plus every normal score before it, ``(#{r > s} + theta (#{r = s}
   + 1)) / (n + 1)`` with ``theta`` uniform (seeded). While the line is
   unchanged, conditionally on the threshold these scores are draws of one
   distribution, so the p-values are independent and uniform. A power bet
   ``eps p^(eps - 1)`` (``eps`` on a grid in (0, 1)) has expectation 1 on
   them and grows when they run small.
2. **Are more images flagged than defects and false alarms explain?** (a
   strong drift: every image now looks anomalous, and feeds no p-value
   above). Every finite score counts as flagged or not. While the line is
   unchanged, an image is flagged with probability at most ``q``: the share
   of defects on an ordinary day (``decision.drift_defect_share``) plus the
   false-alarm rate of this model's threshold, bounded from the conformal
   images (Clopper-Pearson, at ``delta / 4``). A bet ``1 + lambda (x - q)``
   (``lambda`` on a grid in (0, 1/q), ``x`` 1 when flagged) has expectation
   at most 1 then, and grows when more are flagged.

Each question's martingale is the mean over its grid of bets, and over the
time ``k`` the betting starts, weighted ``w_k = k^-1.1 / zeta(1.1)`` (the
weights sum to 1; a bet that has not started yet stands at 1): a mixture of
test supermartingales that start at 1 is one, and a change long after the
start is found almost as fast as at the start (the bets started before it,
which lost meanwhile, do not hold it back).

**The alarm** watches ``M = (S + R) / 2``, a test supermartingale that
starts at 1, and fires the first time ``M >= 4 / (3 delta)``
(``decision.drift_delta``); it stays until the monitor is reset. There is
no restart: by Ville's inequality, while the line is unchanged (normal
images exchangeable with the conformal ones, defects at most the stated
share) the chance that the alarm EVER fires is at most ``3 delta / 4`` plus
the ``delta / 4`` of a conformal draw that understates the false-alarm
rate: ``delta``, however long the stream. ``benchmarks/drift.py`` measures
each question alone and both, and feeding every image to the p-values
instead.

A reset (``radar drift DIR --reset``, or new conformal images: a monitor
belongs to one model fingerprint and starts afresh for another) forgets the
stream and sets both martingales back to 1.

:class:`DriftStore` keeps a monitor in a folder, shared by processes through
a lock: ``drift.json`` (the commit record, written atomically) and
``drift-scores.f64`` (the finite scores offered, appended). A process killed
between the two leaves at most scores the record does not count, which are
ignored.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import betaincinv, zeta

from .errors import DataError
from .files import locked, write_json

# the mixtures' grids: betting exponents in (0, 1), and bets in (0, 1/q) in units of 1/q
GRID = 100
EPSILONS = (np.arange(GRID) + 0.5) / GRID
BETS = (np.arange(GRID) + 0.5) / GRID
# the weights of the time a bet starts: w_k = k^-START_POWER / zeta(START_POWER), k = 1, 2, ...
START_POWER = 1.1
_LOG_ZETA = math.log(float(zeta(START_POWER)))
SEED_OFFSET = 314_159  # the smoothing draws, apart from every other use of the seed
# The most scores a monitor keeps before it asks for a reset (8 bytes each in
# memory and on disk): memory stays bounded on a line that never stops.
MAX_SCORES = 2_000_000
STATE_FILE = "drift.json"
SCORES_FILE = "drift-scores.f64"
LOCK_FILE = "drift.lock"
STATE_FORMAT = 1


def monitor_fingerprint(conformal_scores: np.ndarray, threshold: float, delta: float, defect_share: float) -> str:
    """A short digest of what a monitor's statistics depend on: the
    conformal scores, the threshold and the two settings (new conformal
    images give a new one)."""
    digest = hashlib.sha256(np.asarray(conformal_scores, dtype=np.float64).tobytes())
    digest.update(repr((float(threshold), float(delta), float(defect_share))).encode())
    return digest.hexdigest()[:16]


def flag_rate_bound(conformal_scores: np.ndarray, threshold: float, delta: float) -> float:
    """An upper bound, holding with probability ``1 - delta`` over the
    conformal draw, on the share of normal images scored above
    ``threshold``: Clopper-Pearson from how many of the ``n`` conformal
    scores lie above it (for the conformal threshold, the Beta quantile of
    its order statistic)."""
    scores = np.asarray(conformal_scores, dtype=np.float64)
    n, above = len(scores), int(np.sum(scores > threshold))
    return 1.0 if above >= n else float(betaincinv(above + 1, n - above, 1 - delta))


def _log_start_weight(k: int) -> float:
    """``log w_k``, the weight of bets that start at the ``k``-th observation."""
    return -START_POWER * math.log(k) - _LOG_ZETA


def _log_not_started(n: int) -> float:
    """``log sum_{k > n} w_k``: the weight of bets not started after ``n`` observations."""
    if n == 0:
        return 0.0  # all of it, exactly
    return math.log(float(zeta(START_POWER, n + 1))) - _LOG_ZETA


class _Bets:
    """A mixture of bets over a grid and over the time they start (module
    docstring): ``value`` is the mixture's wealth, 1 before the first
    observation."""

    def __init__(self) -> None:
        self.n = 0
        self._log = np.full(GRID, -np.inf)  # per grid point: sum over started k of w_k * prod of its factors

    def add(self, log_factors: np.ndarray) -> None:
        """One observation, with each grid point's ``log`` factor."""
        self.n += 1
        self._log = log_factors + np.logaddexp(self._log, _log_start_weight(self.n))

    @property
    def log_value(self) -> float:
        top = float(self._log.max())
        started = -np.inf if top == -np.inf else top + math.log(float(np.exp(self._log - top).mean()))
        return float(np.logaddexp(started, _log_not_started(self.n)))


@dataclass(frozen=True)
class DriftStatus:
    """Where a monitor stands: ``seen`` scores offered, ``tested`` of them
    judged normal (fed to the first martingale), ``flagged`` above the
    threshold; the two martingales and the one the alarm watches,
    ``martingale = (S + R) / 2`` (and its natural log); the alarm ``level``
    ``4 / (3 delta)`` and the offered image at which the martingale first
    reached it (``None``: no alarm); ``limit``: the share flagged the second
    martingale tests against."""

    seen: int
    tested: int
    flagged: int
    martingale: float
    log_martingale: float
    normal_martingale: float
    flag_martingale: float
    limit: float
    level: float
    delta: float
    alarm_at: int | None
    full: bool

    @property
    def alarm(self) -> bool:
        return self.alarm_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.alarm, "martingale": self.martingale, "log_martingale": self.log_martingale,
                "normal_martingale": self.normal_martingale, "flag_martingale": self.flag_martingale,
                "flag_limit": self.limit, "alarm_level": self.level, "delta": self.delta,
                "alarm_at": self.alarm_at, "images_seen": self.seen, "images_tested": self.tested,
                "images_flagged": self.flagged, "full": self.full}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DriftStatus:
        """The status a committed record (:meth:`to_dict` and more) states."""
        alarm_at = record["alarm_at"]
        return cls(seen=int(record["images_seen"]), tested=int(record["images_tested"]),
                   flagged=int(record["images_flagged"]), martingale=float(record["martingale"]),
                   log_martingale=float(record["log_martingale"]),
                   normal_martingale=float(record["normal_martingale"]),
                   flag_martingale=float(record["flag_martingale"]), limit=float(record["flag_limit"]),
                   level=float(record["alarm_level"]), delta=float(record["delta"]),
                   alarm_at=None if alarm_at is None else int(alarm_at), full=bool(record["full"]))

    def describe(self) -> str:
        """One line for people."""
        if self.alarm:
            why = ("images judged normal no longer look like the conformal ones"
                   if self.normal_martingale >= self.flag_martingale
                   else f"more images flagged ({self.flagged} of {self.seen}) than defects and false alarms explain")
            return (f"DRIFT: {why} (martingale {self.martingale:.3g} reached {self.level:.4g} at image "
                    f"{self.alarm_at}; recalibrate with `radar calibrate-false-alarms` if the change is the new "
                    "normal, then reset)")
        full = "; full, reset to go on testing" if self.full else ""
        return (f"no drift (martingale {self.martingale:.3g}, alarm at {self.level:.4g}; "
                f"{self.tested} of {self.seen} images tested as normal, {self.flagged} flagged{full})")


class DriftMonitor:
    """The drift martingales of one model (module docstring).

    ``conformal_scores``: the model's conformal image scores; ``threshold``:
    its verdict threshold (a score above it is flagged); ``delta``: the
    alarm's false-alarm probability; ``defect_share``: the largest share of
    defective images on an ordinary day (``None``: the second martingale is
    off); ``seed``: the smoothing draws (one per tested score, by its index,
    so a replay is exact)."""

    def __init__(self, conformal_scores: Sequence[float] | np.ndarray, threshold: float, delta: float,
                 seed: int = 0, defect_share: float | None = 0.1) -> None:
        conformal = np.asarray(conformal_scores, dtype=np.float64).ravel()
        conformal = conformal[np.isfinite(conformal)]
        if len(conformal) == 0:
            raise DataError("the drift monitor needs a model with conformal images (`radar calibrate-false-alarms`)")
        if not 0 < delta < 1:
            raise DataError(f"drift delta must be in (0, 1), got {delta!r}")
        self.threshold = float(threshold)
        self.delta = float(delta)
        self.seed = int(seed)
        share = -1.0 if defect_share is None else float(defect_share)
        self.fingerprint = monitor_fingerprint(np.sort(conformal), self.threshold, self.delta, share)
        self._base = np.sort(conformal[conformal < self.threshold])
        # the flagged share the second martingale tests; at 1 or more it can never fire and is off
        self.limit = 1.0 if defect_share is None else min(
            1.0, flag_rate_bound(conformal, self.threshold, self.delta / 4) + share)
        self._bets = BETS / self.limit
        self.reset()

    @classmethod
    def for_decision(cls, decision: Any, delta: float, defect_share: float | None,
                     seed: int = 0) -> DriftMonitor | None:
        """The monitor of a fitted :class:`~radar_ad.decision.ImageDecision`
        (its conformal scores and verdict threshold), or ``None`` for a
        model without conformal images."""
        if not decision.n_conformal:
            return None
        return cls(decision.conformal_scores_, decision.threshold_, delta, seed, defect_share)

    def reset(self) -> None:
        """Forget the stream: the reference is the conformal part again, both martingales 1."""
        self._scores: list[float] = []
        self._reference: list[float] = self._base.tolist()  # sorted
        self._normal = _Bets()
        self._flag = _Bets()
        self.seen = self.tested = self.flagged = 0
        self.alarm_at: int | None = None

    def p_value(self, score: float) -> float:
        """The next tested score's smoothed p-value against the reference."""
        below = bisect.bisect_left(self._reference, score)
        not_above = bisect.bisect_right(self._reference, score)
        theta = np.random.default_rng([self.seed, SEED_OFFSET, self.tested]).random()
        n = len(self._reference)
        return float((n - not_above + theta * (not_above - below + 1)) / (n + 1))

    def update(self, score: float) -> bool:
        """Offer one image's score; returns whether it counted (finite, and
        the monitor not full)."""
        self.seen += 1
        score = float(score)
        if not math.isfinite(score) or len(self._scores) >= MAX_SCORES:
            return False
        self._scores.append(score)
        flagged = score > self.threshold
        if self.limit < 1:
            self._flag.add(np.log1p(self._bets * (float(flagged) - self.limit)))
        if flagged:
            self.flagged += 1
        else:
            p = max(self.p_value(score), 1e-300)
            self._normal.add(np.log(EPSILONS) + (EPSILONS - 1.0) * math.log(p))
            self.tested += 1
            bisect.insort(self._reference, score)
        if self.alarm_at is None and self.log_martingale >= math.log(self.level):
            self.alarm_at = self.seen
        return True

    def update_many(self, scores: Sequence[float] | np.ndarray) -> DriftStatus:
        for score in np.asarray(scores, dtype=np.float64).ravel():
            self.update(float(score))
        return self.status()

    @property
    def level(self) -> float:
        """The alarm level of ``M``: ``4 / (3 delta)``."""
        return 4.0 / (3.0 * self.delta)

    @property
    def log_martingale(self) -> float:
        """``log M = log((S + R) / 2)``."""
        return float(np.logaddexp(self._normal.log_value, self._flag.log_value) - math.log(2.0))

    @property
    def n_scores(self) -> int:
        return len(self._scores)

    def scores_since(self, start: int) -> list[float]:
        """The finite scores offered from the ``start``-th on, in order."""
        return self._scores[start:]

    def status(self) -> DriftStatus:
        log_m = self.log_martingale
        return DriftStatus(seen=self.seen, tested=self.tested, flagged=self.flagged,
                           martingale=math.exp(min(log_m, 700.0)), log_martingale=log_m,
                           normal_martingale=math.exp(min(self._normal.log_value, 700.0)),
                           flag_martingale=math.exp(min(self._flag.log_value, 700.0)), limit=self.limit,
                           level=self.level, delta=self.delta, alarm_at=self.alarm_at,
                           full=len(self._scores) >= MAX_SCORES)

    def replay(self, scores: Sequence[float] | np.ndarray, seen: int, alarm_at: int | None) -> DriftMonitor:
        """Rebuild the state after the finite ``scores`` among ``seen`` offered
        (the alarm where the record put it: skipped non-finite scores move it)."""
        self.reset()
        for score in np.asarray(scores, dtype=np.float64).ravel():
            self.update(float(score))
        self.seen = max(int(seen), len(self._scores))
        if alarm_at is not None:
            self.alarm_at = int(alarm_at)
        return self


class DriftStore:
    """A :class:`DriftMonitor` kept in ``folder`` and shared by the
    processes that use the same folder (module docstring). Each
    :meth:`observe` takes the lock, catches up with what other processes
    offered, offers its scores, appends them and commits the record. A reset starts a
    new generation, so a process that held the old one replays the new."""

    def __init__(self, folder: str | Path, monitor: DriftMonitor) -> None:
        self.folder = Path(folder)
        self.monitor = monitor
        self.generation = -1  # the stored generation the monitor holds (none yet)
        self.note = ""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._load()

    def _locked(self) -> Any:
        return locked(self.folder / LOCK_FILE)

    def _record(self) -> dict[str, Any] | None:
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"the drift state {path} cannot be read ({exc}); `radar drift "
                            f"{self.folder} --reset` starts it afresh") from None
        if not isinstance(record, dict):
            raise DataError(f"the drift state {path} is not a radar-ad drift record; `radar drift "
                            f"{self.folder} --reset` starts it afresh")
        return record

    def _scores(self, start: int, stop: int) -> np.ndarray:
        """The stored scores ``start`` to ``stop`` (refused when fewer are stored)."""
        path = self.folder / SCORES_FILE
        with open(path, "rb") if path.is_file() else open(os.devnull, "rb") as handle:
            handle.seek(start * 8)
            scores = np.fromfile(handle, dtype="<f8", count=max(stop - start, 0))
        if len(scores) < stop - start:
            raise DataError(f"the drift state in {self.folder} is damaged (fewer scores than its record "
                            f"counts); `radar drift {self.folder} --reset` starts it afresh")
        return scores

    def _load(self) -> None:
        record = self._record()
        monitor = self.monitor
        if record is None or record.get("fingerprint") != monitor.fingerprint \
                or record.get("format") != STATE_FORMAT:
            if record is not None:
                self.note = "the drift state belonged to other conformal images or settings: started afresh"
            monitor.reset()
            self.generation = int(record.get("generation", 0)) + 1 if record is not None else 0
            self._commit(truncate=True)
            return
        try:
            stored, seen, generation = int(record["scores"]), int(record["images_seen"]), int(record["generation"])
            alarm_at = None if record["alarm_at"] is None else int(record["alarm_at"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"the drift state in {self.folder} is damaged; `radar drift {self.folder} --reset` "
                            "starts it afresh") from None
        if generation == self.generation and monitor.n_scores <= stored:
            for score in self._scores(monitor.n_scores, stored):  # what other processes offered since
                monitor.update(float(score))
            monitor.seen = max(seen, monitor.seen)
        else:
            monitor.replay(self._scores(0, stored), seen, alarm_at)
            self.generation = generation
        if alarm_at is not None and monitor.alarm_at is None:
            monitor.alarm_at = alarm_at

    def _commit(self, truncate: bool = False, stored: int = 0) -> None:
        """Append the scores after the ``stored`` ones (all of them with
        ``truncate``), then write the record that counts them."""
        path = self.folder / SCORES_FILE
        start = 0 if truncate else stored
        with open(path, "r+b" if path.exists() else "wb") as handle:
            handle.seek(start * 8)  # past what the record counts: a torn tail is dropped
            handle.truncate()
            np.asarray(self.monitor.scores_since(start), dtype="<f8").tofile(handle)
            handle.flush()
            os.fsync(handle.fileno())
        status = self.monitor.status()
        write_json(self.folder / STATE_FILE, {"format": STATE_FORMAT, "fingerprint": self.monitor.fingerprint,
                                              "generation": self.generation, "scores": self.monitor.n_scores,
                                              **status.to_dict()})

    def observe(self, scores: Sequence[float] | np.ndarray) -> DriftStatus:
        """Offer image scores in arrival order; the status afterwards."""
        with self._locked():
            self._load()
            stored = self.monitor.n_scores
            self.monitor.update_many(scores)
            self._commit(stored=stored)
            return self.monitor.status()

    def status(self) -> DriftStatus:
        with self._locked():
            self._load()
            return self.monitor.status()

    def reset(self) -> DriftStatus:
        """Start afresh (:func:`reset_state`); every process using the folder follows."""
        reset_state(self.folder)
        return self.status()


def read_state(folder: str | Path) -> dict[str, Any]:
    """The committed drift record in ``folder`` (what ``radar drift`` shows)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise DataError(f"no drift state in {folder} (a `radar watch` output folder or a `radar serve --state` "
                        "folder holds one)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"the drift state {path} cannot be read ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise DataError(f"{path} is not a radar-ad drift record of format {STATE_FORMAT}")
    try:
        DriftStatus.from_record(record)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path} is a damaged drift record; `radar drift {folder} --reset` starts it afresh") \
            from None
    return record


def reset_state(folder: str | Path) -> dict[str, Any]:
    """Reset the monitor kept in ``folder`` without its model: a new
    generation with nothing offered and ``M = 1``; processes using the
    folder start over from it. Returns the new record."""
    folder = Path(folder)
    read_state(folder)  # refused before the lock file is made
    with locked(folder / LOCK_FILE):
        record = read_state(folder)
        with open(folder / SCORES_FILE, "wb"):
            pass
        fresh = DriftStatus(seen=0, tested=0, flagged=0, martingale=1.0, log_martingale=0.0, normal_martingale=1.0,
                            flag_martingale=1.0, limit=float(record["flag_limit"]), level=float(record["alarm_level"]),
                            delta=float(record["delta"]), alarm_at=None, full=False)  # what a reset monitor states
        record = {"format": STATE_FORMAT, "fingerprint": record["fingerprint"],
                  "generation": int(record.get("generation", 0)) + 1, "scores": 0, **fresh.to_dict()}
        write_json(folder / STATE_FILE, record)
    return record
