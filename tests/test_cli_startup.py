"""The command line answers at once: ``--help``, ``--version``, a verb's
help, a usage error and shell completion import neither PyTorch nor any
plug-in, boolean flags show no value, and the plug-in names the help lists
without importing them are the registered ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from radar_ad.registry import BACKENDS, ONE_CLASS_MODELS, RESPONSES, Registry

from test_cli import radar

VERBS = ("train", "calibrate-false-alarms", "calibrate", "drift", "detect", "evaluate", "export", "demo", "make-data",
         "serve", "watch", "benchmark")

# Runs every quick command through the real entry point's main in one fresh
# interpreter, then reports which heavy modules that imported.
PROBE = """
import contextlib, io, json, sys
from radar_ad.apps.cli import main
codes = {}
for args in [["--help"], ["--version"], ["detect"], ["no-such-verb"], ["train", "--steps", "x", "d"]] + [
        [verb, "--help"] for verb in sys.argv[1:]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes[" ".join(args)] = main(args)
heavy = sorted(name for name in ("torch", "diffusers", "numpy", "sklearn", "onnxruntime", "openvino", "fastapi")
               if name in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_version_and_usage_errors_import_no_torch():
    result = subprocess.run([sys.executable, "-c", PROBE, *VERBS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    codes = report["codes"]
    assert codes["--help"] == 0 and codes["--version"] == 0
    assert all(codes[f"{verb} --help"] == 0 for verb in VERBS)
    assert codes["detect"] == 2 and codes["no-such-verb"] == 2 and codes["train --steps x d"] == 2


def test_boolean_flags_show_no_value():
    for verb in ("demo", "train", "detect", "serve"):
        result = radar(verb, "--help")
        assert result.returncode == 0
        assert "<bool>" not in result.stdout
    flags = radar("demo", "--help").stdout
    assert "-q, --quiet " in flags and "--steps <int>" in flags  # a flag bare, a value with its type


def test_shell_completion_answers_without_torch():
    env = {**os.environ, "_RADAR_COMPLETE": "complete_bash", "COMP_WORDS": "radar de", "COMP_CWORD": "1"}
    probe = ("import sys\nfrom radar_ad.apps.cli import main\ncode = main([])\n"
             "print(code, 'torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.split() == ["detect", "demo"]
    assert result.stderr.strip().splitlines()[-1] == "0 False"
    script = radar("--show-completion", "bash")
    assert script.returncode == 0 and "_RADAR_COMPLETE=complete_bash" in script.stdout


@pytest.mark.parametrize("registry", [RESPONSES, ONE_CLASS_MODELS, BACKENDS], ids=lambda r: r.kind)
def test_plug_ins_declared_in_source_are_the_registered_ones(registry):
    fresh = Registry(registry.kind, registry.setting, symbol=registry.symbol, plugins=registry.plugins,
                     modules=registry.modules)
    declared = fresh.declared()  # read from the source: nothing imported by it
    assert not fresh._discovered
    assert tuple(declared) == registry.names()
    for name, entry in registry.items():  # the literal class attributes the source states are the class's
        for key, value in declared[name].items():
            assert getattr(entry, key) == value, (name, key)
    assert {name for name, attrs in BACKENDS.declared().items() if attrs.get("exports")} == {
        name for name, entry in BACKENDS.items() if entry.exports}
