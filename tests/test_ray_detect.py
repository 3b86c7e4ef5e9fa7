"""`radar detect --engine ray` on a local Ray instance (started once for the
module): the same verdicts and scores as the local engine, a broken file as
an error row (exit 3), and a rerun that skips what is finished."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

from radar_ad.apps.cli import main

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from radar_ad.scale.ray_detect import detect_on_ray, part_files, read_results  # noqa: E402


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch(surfaces, tmp_path_factory) -> Path:
    """Five test surfaces (normal and defective) and one file that is not an image."""
    folder = tmp_path_factory.mktemp("ray") / "batch"
    folder.mkdir()
    test = surfaces / "test"
    for image in [*sorted((test / "good").iterdir())[:2], *sorted(test.glob("[!g]*/000.png"))[:3]]:
        shutil.copy(image, folder / f"{image.parent.name}_{image.name}")
    (folder / "corrupt.png").write_bytes(b"not a png at all")
    return folder


@pytest.fixture(scope="module")
def first_run(ray_instance, fitted, batch, tmp_path_factory) -> Path:
    """The CLI, in-process, with 2 workers, on one image named on the command
    line and the rest in a list file; exit 3 for the broken file."""
    folder = tmp_path_factory.mktemp("ray")
    first, *rest = sorted(batch.iterdir())
    listing = folder / "images.txt"
    listing.write_text("# the batch\n\n" + "".join(f"  {image}\n" for image in rest))
    out = folder / "out"
    code = main(["detect", str(fitted[1]), str(first), "--from-list", str(listing), "--out", str(out),
                 "--engine", "ray", "--workers", "2", "-q"])
    assert code == 3
    return out


def test_results_equal_the_local_engine(first_run, fitted, batch, tmp_path, capsys):
    assert main(["detect", str(fitted[1]), str(batch), "--out", str(tmp_path / "local"), "-q", "--no-maps"]) == 3
    local = {Path(row["file"]).name: row for row in csv.DictReader((tmp_path / "local" / "results.csv").open())}
    rows = {Path(row["path"]).name: row for row in read_results(first_run).to_pylist()}
    assert sorted(rows) == sorted(local) and len(rows) == 6
    for name, row in rows.items():
        assert row["verdict"] == local[name]["verdict"], name
        if name == "corrupt.png":
            assert row["score"] is None and row["maps"] == [] and "not an image file" in row["error"]
            continue
        assert row["score"] == pytest.approx(float(local[name]["score"]), abs=1e-5)
        assert row["error"] is None and len(row["maps"]) == 3
        assert all((first_run / map_name).is_file() for map_name in row["maps"])
    assert {row["verdict"] for row in rows.values()} >= {"normal", "anomalous", "error"}


def test_a_rerun_skips_finished_images_and_retries_errors(first_run, fitted, batch, tmp_path, surfaces):
    """Through URIs (file://, read and written by pyarrow.fs as an object
    store would be): only the new image and the broken one are scored again."""
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = {Path(part).name: Path(part).read_bytes() for part in part_files(str(out))}
    new = shutil.copy(surfaces / "test" / "good" / "005.png", tmp_path / "new.png")
    summary = detect_on_ray(fitted[1], [*sorted(batch.iterdir()), new.as_uri()], out.as_uri(), workers=1,
                            progress=False)
    assert (summary.images, summary.skipped, summary.scored, summary.failed) == (7, 5, 1, 1)
    after = part_files(str(out))
    assert len(after) == len(before) + 1 and summary.parts == [f"file://{after[-1]}"]
    assert all((out / "results" / name).read_bytes() == content for name, content in before.items())
    results = read_results(out).to_pylist()
    assert len(results) == 7
    retried = {Path(row["path"]).name: row for row in results[-2:]}
    assert retried.keys() == {"corrupt.png", "new.png"} and retried["corrupt.png"]["verdict"] == "error"
    assert retried["new.png"]["path"] == new.as_uri()
    assert all((out / name).is_file() for name in retried["new.png"]["maps"])


def test_engine_options_fail_in_one_line(fitted, batch, tmp_path, capsys, monkeypatch):
    args = ["detect", str(fitted[1]), str(batch), "--out", str(tmp_path / "o"), "-q"]
    assert main([*args, "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == "radar: error: --workers needs --engine ray"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main([*args, "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["radar: error: `radar detect --engine ray` needs ray: pip install 'radar-ad[ray]'"]
    assert not (tmp_path / "o").exists()


def test_a_rerun_with_another_model_is_refused_unless_redo(first_run, fitted, batch, tmp_path, capsys):
    """Rows carry the run's key: other settings (a verdict rule) or another
    model on the same OUT are refused in one line; --redo scores all again."""
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    keys = set(read_results(out, columns=["model"]).column("model").to_pylist())
    assert len(keys) == 1 and None not in keys
    args = ["detect", str(fitted[1]), str(batch), "--out", str(out), "--engine", "ray", "--workers", "1", "-q",
            "--false-alarm-rate", "0.2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds results of another model or other settings" in err[0] and "--redo" in err[0]
    assert main([*args, "--redo"]) == 3  # every image again (the broken file is still an error row)
    rows = read_results(out).to_pylist()
    assert len(rows) == 6 and len({row["model"] for row in rows}) == 1 and rows[0]["model"] not in keys
    capsys.readouterr()
    assert main(args) == 3  # a rerun with the same key: only the broken file is tried again
    assert "5 skipped" in capsys.readouterr().out
    assert main(["detect", str(fitted[1]), str(batch), "--out", str(tmp_path / "l"), "--redo"]) == 2
    assert capsys.readouterr().err.strip().endswith("--redo needs --engine ray")
