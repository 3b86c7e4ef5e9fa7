"""Progress for long work: a bar on an interactive terminal (or in a
notebook), plain lines in logs and pipes.

When standard error is not a terminal, a bar's carriage returns would be
noise, but silence is no better: a piped or logged ``radar demo`` would look
hung for minutes. There each stage writes one line at every tenth of its
work (at most one per :data:`MIN_SECONDS` seconds, and at least one per
:data:`MAX_SECONDS` while it runs) and one when it ends::

    training: 40% (200/500 steps), 35 s elapsed, loss=0.0123, patches_s=363
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

# Plain-line pacing: a tenth of the work, but not more often than MIN_SECONDS
# apart, and a line after MAX_SECONDS without one however slow the stage.
MIN_SECONDS = 5.0
MAX_SECONDS = 30.0


class LineProgress:
    """The part of tqdm's interface radar-ad uses (iterate, ``update``,
    ``set_postfix``, ``close``, context manager), written as plain lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None, initial: float = 0,
                 desc: str | None = None, unit: str = "it", leave: bool | None = True, file: IO[str] | None = None,
                 min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS,
                 clock: Callable[[], float] = time.monotonic, **_: Any) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.n = initial
        self.desc = desc or "working"
        self.unit = unit
        self.leave = leave is not False
        self.file = file
        self.min_seconds, self.max_seconds = min_seconds, max_seconds
        self.clock = clock
        self.began = clock()
        self.last_line: float | None = None
        self.last_tenth = self._tenth()
        self.postfix = ""
        self.closed = False

    def _tenth(self) -> int:
        return int(10 * self.n / self.total) if self.total else 0

    def line(self) -> str:
        elapsed = self.clock() - self.began
        minutes, seconds = divmod(int(round(elapsed)), 60)
        took = f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
        unit = self.unit
        if len(unit) > 3 and unit.isalpha() and not unit.endswith("s"):  # "steps", but "img" and "it" as they are
            unit += "s"
        count = f"{self.n:g}/{self.total:g} {unit}" if self.total else f"{self.n:g} {unit}"
        done = f"{int(100 * self.n / self.total)}% ({count})" if self.total else count
        return f"{self.desc}: {done}, {took} elapsed{self.postfix}"

    def _write(self) -> None:
        file = self.file if self.file is not None else sys.stderr
        print(self.line(), file=file, flush=True)
        self.last_line = self.clock()

    def update(self, n: float = 1) -> None:
        if self.closed:
            return
        self.n += n
        now, tenth = self.clock(), self._tenth()
        since = now - (self.last_line if self.last_line is not None else self.began)
        due = (tenth > self.last_tenth and since >= self.min_seconds) or since >= self.max_seconds
        if due and not (self.total and self.n >= self.total):  # the end gets its line from close()
            self._write()
            self.last_tenth = tenth

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = "".join(f", {key}={value}" for key, value in values.items())

    def close(self) -> None:
        """The stage's last line; an empty stage, and a ``leave=False`` one
        (a bar tqdm would erase) that never wrote a line, stay silent."""
        if self.closed:
            return
        self.closed = True
        if (self.leave or self.last_line is not None) and (self.n or self.total):
            self._write()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("a LineProgress made without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _notebook() -> bool:
    """Whether ``tqdm.auto`` chose its notebook widget (shown whatever stderr is)."""
    return any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm | LineProgress:
    """A tqdm bar on a terminal or in a notebook; :class:`LineProgress` when
    standard error is a pipe or a file; nothing shown when not ``enabled``."""
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if _notebook() or _is_terminal(sys.stderr):
        return tqdm(iterable, disable=None, dynamic_ncols=True, **kwargs)
    return LineProgress(iterable, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
