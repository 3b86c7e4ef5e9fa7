"""README.md as a reader meets it: its Python example runs as written (on
demo data it makes itself, a few training steps), and it keeps exactly the
two copy-paste commands for a fresh machine, the demo's and the tests'."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    (example,) = blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {"__name__": "__main__"})  # in this process: no second import
    assert capsys.readouterr().out.strip()  # it shows the reader something


def test_two_commands_for_a_fresh_machine():
    commands = [line for block in blocks("bash") for line in block.splitlines() if "python3 -m venv .venv" in line]
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("pip install . && radar demo")
    assert tests.endswith('pip install -e ".[test]" && python -m pytest -q')
    assert all("pip install torch==2.13.0" in command for command in commands)
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200
