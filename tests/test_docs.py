"""The generated reference pages cannot drift from the code: each page's
generator (scripts/docs_*.py) runs here in process and must reproduce the
committed page byte for byte; ``--check`` says so in one line and an exit
code; and the committed figures are there and small."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
STALE = "is out of date with the code: run python scripts/docs_{}.py"


def script(name: str) -> ModuleType:
    """scripts/docs_NAME.py as a module (the scripts are not a package; they
    import their shared helper, scripts/docs_page.py, as a script would)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"docs_{name}", SCRIPTS / f"docs_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_current(name: str) -> None:
    module = script(name)
    assert module.PAGE.is_file(), f"{module.PAGE.relative_to(ROOT)} is missing: run python scripts/docs_{name}.py"
    assert module.render() == module.PAGE.read_text(encoding="utf-8"), \
        f"{module.PAGE.relative_to(ROOT)} {STALE.format(name)}"


def test_cli_reference_is_current():
    assert_current("cli")


def test_cli_reference_lists_every_command_and_option():
    from typer.main import get_command

    from radar_ad.apps.cli import app

    page = script("cli").PAGE.read_text(encoding="utf-8")
    group = get_command(app)
    for name, command in group.commands.items():
        if command.hidden:
            continue
        section = page.partition(f"## `radar {name}`\n")[2].partition("\n## ")[0]
        assert section and f"(#radar-{name})" in page, name
        for param in command.params:
            if not getattr(param, "hidden", False):
                assert all(flag in section for flag in param.opts), (name, param.opts)


def test_configuration_reference_is_current():
    assert_current("config")


def test_configuration_reference_states_every_setting_and_its_bounds():
    from radar_ad import RadarConfig
    from radar_ad.config import MAX_STEPS
    from radar_ad.registry import RESPONSES

    page = script("config").PAGE.read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`"): line for line in page.splitlines()
            if line.startswith("| `")}

    def keys(data: dict, prefix: str = "") -> list[str]:
        return [key for name, value in data.items()
                for key in (keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name])]

    assert sorted(rows) == sorted(keys(RadarConfig().to_dict()))
    assert f"an integer in [1, {MAX_STEPS}]" in rows["train.steps"]  # the validator's own words
    assert "or null (native size)" in rows["data.resize"]  # an optional check is stated too
    assert all(name in rows["inference.response"] for name in RESPONSES.names())  # the registry's names


def test_http_reference_is_current():
    pytest.importorskip("fastapi", reason="radar serve needs fastapi")
    assert_current("http")


def test_http_reference_documents_every_route():
    pytest.importorskip("fastapi", reason="radar serve needs fastapi")
    from radar_ad.apps.serve import create_app

    page = script("http").PAGE.read_text(encoding="utf-8")
    for path, item in create_app(None).openapi()["paths"].items():
        for method in item:
            assert f"## `{method.upper()} {path}`" in page


def test_check_fails_in_one_line_on_a_stale_page(tmp_path, capsys):
    cli = script("cli")
    page = tmp_path / "cli.md"
    page.write_text("# stale\n", encoding="utf-8")
    assert cli.main(["--check", "--output", str(page)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and STALE.format("cli") in error
    assert cli.main(["--output", str(page)]) == 0
    assert cli.main(["--check", "--output", str(page)]) == 0


@pytest.mark.parametrize("name", ["demo-overlay.png", "concepts.png", "roc-demo.png", "scores-demo.png"])
def test_figures_are_committed_and_small(name):
    figure = ROOT / "docs" / "img" / name
    assert figure.is_file(), f"docs/img/{name} is missing: run python scripts/docs_figures.py"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.stat().st_size < script("figures").MAX_BYTES


def test_api_reference_covers_the_public_names_and_the_plug_in_bases():
    import radar_ad

    page = (ROOT / "docs" / "reference" / "python-api.md").read_text(encoding="utf-8")
    for name in radar_ad.__all__:
        assert (f"::: radar_ad.{name}" in page) if name != "__version__" else ("radar_ad.__version__" in page), name
    for base in ("radar_ad.registry.Registry", "radar_ad.response.Response", "radar_ad.response.EvidenceResponse",
                 "radar_ad.decision.OneClassModel", "radar_ad.backend.NoiseBackend"):
        assert f"::: {base}" in page, base
