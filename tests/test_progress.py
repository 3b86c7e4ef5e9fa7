"""Progress: a bar on a terminal, plain paced lines in a pipe or a log."""

from __future__ import annotations

import io

from radar_ad.progress import LineProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_lines_every_tenth_at_most_every_min_seconds_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=500, desc="training", unit="step", file=out, clock=clock)
    for _ in range(500):
        clock.now += 0.3  # 150 s in all: a tenth every 15 s
        bar.update(1)
        if bar.n % 10 == 0:
            bar.set_postfix(loss="0.0123")
    bar.close()
    got = lines(out)
    assert got[0] == "training: 10% (50/500 steps), 15 s elapsed, loss=0.0123"
    assert got[3] == "training: 40% (200/500 steps), 1 min 00 s elapsed, loss=0.0123"
    assert got[-1] == "training: 100% (500/500 steps), 2 min 30 s elapsed, loss=0.0123"
    assert len(got) == 10 and "\r" not in out.getvalue()


def test_fast_stage_is_not_chatty_and_slow_stage_still_writes():
    out, clock = io.StringIO(), Clock()
    with LineProgress(total=50, desc="evaluating", unit="img", file=out, clock=clock) as bar:
        for _ in range(50):
            clock.now += 0.1  # 5 s in all: tenths come faster than one line per 5 s
            bar.update(1)
    assert lines(out) == ["evaluating: 100% (50/50 img), 5 s elapsed"]

    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=1000, desc="training", unit="step", file=out, clock=clock)
    for _ in range(3):
        clock.now += 31  # no new tenth, but a line at least every 30 s
        bar.update(1)
    assert lines(out) == [f"training: 0% ({n}/1000 steps), {m} elapsed" for n, m in
                          ((1, "31 s"), (2, "1 min 02 s"), (3, "1 min 33 s"))]


def test_iterating_and_leave_false():
    out, clock = io.StringIO(), Clock()
    assert list(LineProgress(range(4), desc="loading", file=out, clock=clock)) == [0, 1, 2, 3]
    assert lines(out) == ["loading: 100% (4/4 it), 0 s elapsed"]
    out = io.StringIO()
    with LineProgress(total=3, desc="scoring", leave=False, file=out, clock=clock) as bar:
        bar.update(3)
    assert out.getvalue() == ""  # a transient stage that wrote nothing stays silent
    with LineProgress([], desc="scoring conformal images", file=out, clock=clock):
        pass
    assert out.getvalue() == ""  # so does an empty one


def test_progress_bar_picks_lines_for_a_pipe_and_the_bar_for_a_terminal(monkeypatch, capsys):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    bar = progress_bar(total=2, desc="evaluating", unit="img")
    assert isinstance(bar, LineProgress)
    bar.update(2)
    bar.close()
    assert lines(pipe) == ["evaluating: 100% (2/2 img), 0 s elapsed"]

    quiet = progress_bar(total=2, enabled=False, desc="evaluating")
    quiet.update(2)
    quiet.close()
    assert lines(pipe) == ["evaluating: 100% (2/2 img), 0 s elapsed"]

    terminal = Tty()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress_bar(total=2, desc="evaluating", unit="img")
    assert not isinstance(bar, LineProgress)
    bar.update(2)
    bar.close()
    assert "\r" in terminal.getvalue()
