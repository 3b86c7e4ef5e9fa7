"""Every script in ``benchmarks/`` starts: its command line answers
``--help`` with its usage, so a script broken by a change elsewhere (an
import that moved, a parser that no longer builds) fails here rather than
when someone next measures. In the test process, not a subprocess per
script: the imports they share are paid once."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_the_benchmarks_are_found():
    assert SCRIPTS, f"no scripts in {BENCHMARKS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_a_benchmark_answers_help(script, monkeypatch, capsys):
    # As `python benchmarks/NAME.py --help` runs it: its folder first on the path (siblings import each other).
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    imported = set(sys.modules)
    try:
        with pytest.raises(SystemExit) as stopped:
            runpy.run_path(str(script), run_name="__main__")
    finally:  # a sibling it imported (load, speed) is no module of the other tests
        for name in set(sys.modules) - imported:
            if Path(getattr(sys.modules[name], "__file__", None) or "").parent == BENCHMARKS:
                del sys.modules[name]
    out = capsys.readouterr().out
    assert stopped.value.code == 0, out
    assert out.startswith(f"usage: {script.name}"), out
