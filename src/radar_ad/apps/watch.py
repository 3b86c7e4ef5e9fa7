"""``radar watch``: inspect each new image as it lands in a folder, the way a
line camera drops files.

The folder is polled rather than watched through OS file events: polling needs
no extra dependency, behaves the same on every platform and works on network
shares, where change events are unreliable or missing. A file is read only
after its size and modification time have stayed unchanged for ``settle``
seconds, since a camera may still be writing it. A file that still cannot be
read is tried again on later polls; after ``retries`` more failures it becomes
an ``error`` row, and the loop goes on. Each result is appended to
``results.csv`` and flushed at once, so another program can tail the file; a
restarted watcher reads the file back and skips the images it lists.

Drift: each image's score feeds the model's drift monitor (:mod:`radar_ad.drift`),
kept in the output folder beside results.csv, so it survives a restart. Each
image's line shows the martingale; the first time it reaches the alarm level
one ``radar: DRIFT: ...`` line says so (also with ``quiet``).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from ..data import IMAGE_SUFFIXES
from ..drift import DriftStatus, DriftStore
from ..errors import ConfigError, DataError, RadarError, first_line
from ..files import unique_stem
from ..pipeline import Radar
from ..records import RESULT_COLUMNS, csv_fields, error_record, result_record
from ..report import MAP_KINDS, save_prediction_maps

RESULTS_FILE = "results.csv"
# `radar detect`'s columns, then when the row was written and, for an error row, why.
COLUMNS = (*RESULT_COLUMNS, "time", "error")
# The header of a results.csv whose last column is named "message", which a restarted watcher reads back too.
MESSAGE_COLUMNS = (*RESULT_COLUMNS, "time", "message")
MAPS_FOR = ("all", "anomalous", "none")
# Longest an idle loop takes to notice a stop requested by a signal.
_WAKE_EVERY = 0.1
# The encoding of results.csv; surrogateescape round-trips file names that are not UTF-8.
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

Signature = tuple[int, int]  # (size in bytes, mtime in ns): a file whose signature changes is a new file


@dataclass
class _FileState:
    """What the watcher knows about one file in the folder."""

    signature: Signature
    since: float  # monotonic time the current signature was first seen
    failures: int = 0  # failed reads of the current signature
    done: Signature | None = None  # the signature that has a row in results.csv
    stem: str | None = None  # name stem of its map PNGs, once written


@dataclass
class WatchSummary:
    """Counts of this session: ``inspected`` images got a verdict, ``errors``
    could not be read; ``results`` is the CSV they were written to."""

    inspected: int
    anomalous: int
    errors: int
    results: Path
    drift: DriftStatus | None = None

    def __str__(self) -> str:
        drift = "" if self.drift is None else f"; {self.drift.describe()}"
        return (f"{_count(self.inspected, 'image')} inspected, {self.anomalous} anomalous, "
                f"{_count(self.errors, 'error')}; results in {self.results}{drift}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# Upper bounds of the loop's options: an hour between looks, a thousand tries.
MAX_SECONDS = 3600.0
MAX_RETRIES = 1000


def check_options(interval: float, settle: float, retries: int, maps_for: str) -> None:
    """Refuse values the loop cannot work with before anything is loaded."""
    if not 0 < interval <= MAX_SECONDS:
        raise ConfigError(f"interval must be in (0, {MAX_SECONDS}] seconds, got {interval}", setting="interval")
    if not 0 <= settle <= MAX_SECONDS:
        raise ConfigError(f"settle must be in [0, {MAX_SECONDS}] seconds, got {settle}", setting="settle")
    if not 0 <= retries <= MAX_RETRIES:
        raise ConfigError(f"retries must be in [0, {MAX_RETRIES}], got {retries}", setting="retries")
    if maps_for not in MAPS_FOR:
        raise ConfigError(f"maps_for must be one of {', '.join(MAPS_FOR)}, got {maps_for!r}", setting="maps_for")


def check_input_dir(input_dir: Path) -> None:
    if not input_dir.exists():
        raise DataError(f"input folder not found: {input_dir}")
    if not input_dir.is_dir():
        raise DataError(f"expected a folder to watch, got a file: {input_dir}")


class Watcher:
    """Polls one folder and inspects each image once it has settled.

    :meth:`poll` is one look at the folder (the testable core); :meth:`run`
    repeats it until stopped. A context manager: it keeps results.csv open.
    """

    def __init__(self, radar: Radar, input_dir: str | Path, out: str | Path, *, interval: float = 0.5,
                 settle: float = 0.5, retries: int = 5, existing: bool = True, maps_for: str = "anomalous",
                 quiet: bool = False) -> None:
        check_options(interval, settle, retries, maps_for)
        self.radar = radar
        self.input_dir = Path(input_dir)
        check_input_dir(self.input_dir)
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"out must be a folder, got a file: {self.out}", setting="out")
        if self.out.resolve() == self.input_dir.resolve():
            # its own maps would be new images to inspect, for ever (a folder inside it is left out)
            raise DataError(f"out must not be the watched folder itself ({self.input_dir}); use a folder "
                            "beside it or inside it", setting="out")
        self.interval, self.settle, self.retries = interval, settle, retries
        self.existing, self.maps_for, self.quiet = existing, maps_for, quiet
        self.results = self.out / RESULTS_FILE
        self.polls = 0
        self._files: dict[Path, _FileState] = {}
        # Absolute path -> POSIX time of its latest row in an existing results.csv; used by the first scan only.
        self._listed: dict[str, float] = {}
        self._counts = {"inspected": 0, "anomalous": 0, "errors": 0}
        self._first_scan = True
        self._unreadable_folder = False
        self._stop = threading.Event()
        self._signalled = False
        self.out.mkdir(parents=True, exist_ok=True)
        self._out_id = _dir_id(self.out)
        self._read_back()
        self._handle = self._open_results()
        monitor = radar.drift_monitor() if hasattr(radar, "drift_monitor") else None
        self.drift = DriftStore(self.out, monitor) if monitor is not None else None
        if self.drift is not None and self.drift.note:
            print(f"radar: note: {self.drift.note}", file=sys.stderr, flush=True)
        self._drift_told = False
        self._drift_status = self.drift.status() if self.drift is not None else None

    # ------------------------------------------------------------ results.csv
    def _read_back(self) -> None:
        """Learn from an existing results.csv which images were inspected
        when, so a restart does not inspect them again."""
        if not self.results.is_file() or self.results.stat().st_size == 0:
            return
        try:
            with open(self.results, newline="", encoding=_ENCODING, errors=_ERRORS) as handle:
                reader = csv.reader(handle)
                if next(reader, None) not in (list(COLUMNS), list(MESSAGE_COLUMNS)):
                    raise DataError(f"{self.results} was not written by `radar watch` (its columns are "
                                    f"not {', '.join(COLUMNS)}); choose another output folder")
                for row in reader:
                    if len(row) != len(COLUMNS) or not row[0]:
                        continue  # a row cut short when a previous run was killed
                    record = dict(zip(COLUMNS, row))
                    self._listed[_identity(Path(record["file"]))] = _posix_time(record["time"])
        except (OSError, csv.Error) as exc:
            raise DataError(f"cannot read {self.results}: {exc}") from None

    def _open_results(self) -> io.TextIOWrapper:
        fresh = not self.results.is_file() or self.results.stat().st_size == 0
        cut_short = not fresh and not _ends_with_newline(self.results)
        handle = open(self.results, "a", newline="", encoding=_ENCODING, errors=_ERRORS)  # noqa: SIM115 (kept open: closed by close())
        if fresh:
            handle.write(_csv_line(COLUMNS))
        elif cut_short:
            handle.write("\r\n")  # end a row a killed run left unfinished; the next row starts clean
        handle.flush()
        return handle

    def _write_row(self, path: Path, record: dict[str, Any]) -> None:
        """One image's record (:mod:`radar_ad.records`) as one whole line in
        one write, flushed, so a reader tailing the file never sees half a row."""
        stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
        self._handle.write(_csv_line((str(path), *csv_fields({**record, "time": stamp}, COLUMNS[1:]))))
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def summary(self) -> WatchSummary:
        return WatchSummary(results=self.results, drift=self._drift_status, **self._counts)

    def _observe_drift(self, score: float) -> str:
        """Feed the drift monitor (after the row is written: a restart never
        feeds an image twice); the martingale for the image's line."""
        if self.drift is None:
            return ""
        status = self._drift_status = self.drift.observe([score])
        if status.alarm and not self._drift_told:
            self._drift_told = True
            print(f"radar: {status.describe()}", file=sys.stderr, flush=True)
        return f"  drift {status.martingale:.3g}"

    @property
    def retrying(self) -> list[Path]:
        """Files that could not be read yet and will be tried again."""
        files = list(self._files.items())  # one step, as the loop may be changing the dict in another thread
        return sorted(p for p, s in files if s.failures and s.done != s.signature)

    # --------------------------------------------------------------- polling
    def _scan(self) -> dict[Path, Signature]:
        """Every image file under the folder (recursively, like ``radar
        detect``) with its signature; hidden files and folders, and the
        output folder, are left out."""
        found: dict[Path, Signature] = {}
        folders = [self.input_dir]
        while folders:
            folder = folders.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                if folder == self.input_dir:
                    raise
                continue  # a subfolder removed or unreadable: not worth stopping for
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if _dir_id(Path(entry.path)) != self._out_id:
                            folders.append(Path(entry.path))
                    elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                        stat = entry.stat()
                        found[Path(entry.path)] = (stat.st_size, stat.st_mtime_ns)
                except OSError:
                    continue  # gone between listing and stat
        return found

    def _listed_before(self, path: Path, signature: Signature) -> bool:
        """True when an earlier run's results.csv has a row for this path
        written after the file was last modified, so a file replaced while no
        watcher ran is inspected again. (This compares the file server's clock
        with this machine's: a server clock far ahead means a listed file is
        inspected once more, never that a new one is missed.)"""
        written = self._listed.get(_identity(path))
        return written is not None and signature[1] / 1e9 <= written

    def poll(self, limit: int | None = None) -> int:
        """One look at the folder: inspect, oldest first, each image that has
        settled and has no row yet (at most ``limit``). Returns the number of
        rows written."""
        self.polls += 1
        now = time.monotonic()
        try:
            found = self._scan()
        except OSError as exc:  # e.g. a network share gone for a moment: say so once, keep polling
            if not self._unreadable_folder:
                print(f"radar: warning: cannot list {self.input_dir} ({exc}); still trying",
                      file=sys.stderr, flush=True)
            self._unreadable_folder = True
            return 0
        self._unreadable_folder = False
        for path in [p for p in self._files if p not in found]:
            # Taken away: forget it, so memory stays bounded; if it comes back, it is a new drop.
            del self._files[path]
        ready = []
        for path, signature in found.items():
            state = self._files.get(path)
            if state is None:
                state = self._files[path] = _FileState(signature, now)
                if self._first_scan and (not self.existing or self._listed_before(path, signature)):
                    state.done = signature
            elif state.signature != signature:
                state.signature, state.since, state.failures = signature, now, 0
            if state.done != state.signature and now - state.since >= self.settle:
                ready.append(path)
        self._first_scan = False
        self._listed.clear()
        ready.sort(key=lambda p: (self._files[p].signature[1], str(p)))
        written = 0
        for path in ready:
            if (limit is not None and written >= limit) or self._stopping():
                break
            written += self._inspect(path)
        return written

    def _inspect(self, path: Path) -> int:
        """Predict one image and write its row and maps; returns 1 for a row
        written, 0 when a failed read is left for a later poll."""
        state = self._files[path]
        started = time.perf_counter()
        try:
            prediction = self.radar.predict(path)
        except (RadarError, OSError) as exc:
            state.failures += 1
            if state.failures <= self.retries:
                return 0  # perhaps still being written: try again on a later poll
            message = first_line(exc)
            self._write_row(path, error_record(_image_threshold(self.radar), message))
            self._counts["errors"] += 1
            state.done = state.signature
            print(f"radar: {path}: gave up after {state.failures} attempts: {message}",
                  file=sys.stderr, flush=True)
            return 1
        milliseconds = (time.perf_counter() - started) * 1000
        if self.maps_for == "all" or (self.maps_for == "anomalous" and prediction.is_anomalous):
            save_prediction_maps(prediction, self.out, self._stem_for(path))
        self._write_row(path, result_record(prediction))
        self._counts["inspected"] += 1
        self._counts["anomalous"] += prediction.is_anomalous
        state.done = state.signature
        drift = self._observe_drift(prediction.score)
        if not self.quiet:
            p_value = "" if prediction.p_value is None else f"  p {prediction.p_value:.4f}"
            print(f"{path}  {prediction.verdict}  score {prediction.score:.4f}{p_value}  {milliseconds:.0f} ms"
                  f"{drift}", flush=True)
        return 1

    def _stem_for(self, path: Path) -> str:
        """The name stem of a file's map PNGs: its own stem, or with ``-2``,
        ``-3`` ... when another image already has maps of that name (as
        ``radar detect`` names them), so no earlier evidence is overwritten.
        A file inspected again while it stays in the folder keeps its stem."""
        state = self._files[path]
        if state.stem is None:
            taken = {s.stem for s in self._files.values()}
            state.stem = unique_stem(path.stem, lambda stem: stem in taken or any(
                (self.out / f"{stem}_{kind}.png").exists() for kind in MAP_KINDS))
        return state.stem

    # ------------------------------------------------------------------ loop
    def _stopping(self) -> bool:
        return self._signalled or self._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        """Wait, waking at once for ``stop`` and within a moment for a signal
        (the signal handler only sets a flag: taking a lock there can deadlock)."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, _WAKE_EVERY))

    @contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """In the main thread, SIGINT and SIGTERM ask the loop to stop after
        the current image; a second one abandons that image."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._signalled:
                raise KeyboardInterrupt
            self._signalled = True

        previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, old in previous.items():
                signal.signal(number, old if old is not None else signal.SIG_DFL)

    def run(self, stop: threading.Event | None = None, max_images: int | None = None) -> WatchSummary:
        """Poll every ``interval`` seconds until ``stop`` is set, ``max_images``
        rows have been written, or (in the main thread) SIGINT or SIGTERM."""
        if stop is not None:
            self._stop = stop
        self._signalled = False
        written = 0
        with self._signals_stop():
            try:
                while not self._stopping() and (max_images is None or written < max_images):
                    started = time.monotonic()
                    written += self.poll(None if max_images is None else max_images - written)
                    if max_images is None or written < max_images:
                        self._sleep(self.interval - (time.monotonic() - started))
            except KeyboardInterrupt:
                pass  # a second signal: the current image is abandoned, its row never written
        return self.summary


def watch(radar: Radar, input_dir: str | Path, out: str | Path, *, interval: float = 0.5, settle: float = 0.5,
          retries: int = 5, existing: bool = True, maps_for: str = "anomalous", quiet: bool = False,
          stop: threading.Event | None = None, max_images: int | None = None) -> WatchSummary:
    """Inspect images as they land in ``input_dir`` until stopped (see
    :meth:`Watcher.run`); results go to ``out/results.csv`` and map PNGs."""
    with Watcher(radar, input_dir, out, interval=interval, settle=settle, retries=retries,
                 existing=existing, maps_for=maps_for, quiet=quiet) as watcher:
        return watcher.run(stop, max_images)


def watch_folder(model_dir: str | Path, input_dir: str | Path, out: str | Path, *, interval: float = 0.5,
                 settle: float = 0.5, retries: int = 5, existing: bool = True, maps_for: str = "anomalous",
                 quiet: bool = False, backend: str | None = None, device: str | None = None,
                 settings: dict[str, Any] | None = None) -> WatchSummary:
    """``radar watch``: check the arguments and load the model first, so each
    mistake is one error before the loop starts, then :func:`watch`."""
    check_options(interval, settle, retries, maps_for)
    check_input_dir(Path(input_dir))
    radar = Radar.load(model_dir, device=device, backend=backend, settings=settings)
    radar.warn_false_alarms()
    return watch(radar, input_dir, out, interval=interval, settle=settle, retries=retries, existing=existing,
                 maps_for=maps_for, quiet=quiet)


def _image_threshold(radar: Radar) -> float | None:
    """The image threshold for an error row (which has no prediction to take
    it from); None for a model object that does not expose it."""
    try:
        return float(radar.decision_.threshold_)
    except (AttributeError, RadarError):
        return None


def _csv_line(values: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _identity(path: Path) -> str:
    """One name per file whether the folder was given relative or absolute
    (string work only: a long results.csv is read back without a system call per row)."""
    return os.path.abspath(path)


def _dir_id(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _posix_time(stamp: str) -> float:
    """A row's ISO time as POSIX seconds; an unreadable one counts as "now",
    so its file is taken as inspected rather than inspected twice."""
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return time.time()
