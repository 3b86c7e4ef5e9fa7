"""Every script in ``benchmarks/`` starts: its command line answers
``--help`` with its usage, so a script broken by a change elsewhere (an
import that moved, a parser that no longer builds) fails here rather than
when someone next measures. In the test process, not a subprocess per
script: the imports they share are paid once."""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_the_benchmarks_are_found():
    assert SCRIPTS, f"no scripts in {BENCHMARKS}"


def run_script(script: Path, arguments: list[str], monkeypatch) -> pytest.ExceptionInfo[SystemExit]:
    """Run ``script`` as `python benchmarks/NAME.py ARGUMENTS` does (its folder first on the path: siblings import
    each other) until it exits."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(script), *arguments])
    imported = set(sys.modules)
    try:
        with pytest.raises(SystemExit) as stopped:
            runpy.run_path(str(script), run_name="__main__")
    finally:  # a sibling it imported (load, speed) is no module of the other tests
        for name in set(sys.modules) - imported:
            if Path(getattr(sys.modules[name], "__file__", None) or "").parent == BENCHMARKS:
                del sys.modules[name]
    return stopped


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_a_benchmark_answers_help(script, monkeypatch, capsys):
    stopped = run_script(script, ["--help"], monkeypatch)
    out = capsys.readouterr().out
    assert stopped.value.code == 0, out
    assert out.startswith(f"usage: {script.name}"), out


@pytest.mark.parametrize("variants", [["torch", "onnx int9"], ["onnx"]], ids=["unknown", "torch not first"])
def test_network_speed_refuses_a_variant_before_it_reads_the_model(variants, tmp_path, monkeypatch, capsys):
    # The model folder does not exist: the usage error must come first, naming the variants there are.
    arguments = [str(tmp_path / "no-model")] + [part for name in variants for part in ("--variant", name)]
    stopped = run_script(BENCHMARKS / "network_speed.py", arguments, monkeypatch)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "--variant: torch first, then any of torch; torch channels-last;" in err
    assert "no-model" not in err


@pytest.mark.parametrize(("arguments", "said"), [
    (["--steps-factor", "0"], "--steps-factor: in (0, 100]"),
    (["--widths", "32,x"], "comma-separated positive integers"),
    (["--default-model", "{tmp}"], "--default-model: no model in"),
    (["--set", "train.steps=0"], "--set: train.steps"),
], ids=["steps factor", "widths", "default model", "setting"])
def test_capacity_refuses_bad_arguments_before_it_trains(arguments, said, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    arguments = [str(tmp_path), "--out", str(out)] + [part.format(tmp=tmp_path) for part in arguments]
    stopped = run_script(BENCHMARKS / "capacity.py", arguments, monkeypatch)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert said in err
    assert not out.exists()


@pytest.fixture
def speed(monkeypatch):
    """benchmarks/speed.py as a module (its folder first on the path, as when it runs), forgotten afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        yield importlib.import_module("speed")
    finally:
        sys.modules.pop("speed", None)


def test_speed_times_the_network_and_the_response_in_place_and_puts_them_back(speed, fitted, surfaces):
    from radar_ad import Radar

    radar = Radar.load(fitted[1])
    images = sorted((surfaces / "test").rglob("*.png"))[:3]
    backend, calibration = radar.backend_, radar.calibration_
    seconds, network, response, predictions = speed.time_backend(radar, images, 2, 1)
    assert radar.backend_ is backend and radar.calibration_ is calibration
    assert seconds > 0 and network > 0 and response > 0 and network + response < 1
    alone = radar.predict_many(images[:2]) + radar.predict_many(images[2:])  # the same batches of 2
    assert [p.score for p in predictions] == [p.score for p in alone]


def test_a_timed_stage_waits_for_queued_work_before_and_after_each_call(speed):
    events = []
    timed = speed.Timed(lambda x: events.append("call") or x + 1, lambda: events.append("wait"))
    assert timed(1) == 2 and timed(2) == 3
    assert events == ["wait", "call", "wait"] * 2 and timed.seconds > 0
