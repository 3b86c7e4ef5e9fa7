"""The command line, bad inputs included, through ``main`` in this process
(:func:`radar`), the function the console script calls. What needs a process
of its own (a kill, a signal, workers, the imports at startup) runs the real
entry point in subprocesses in the test files of those jobs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, write_gray


def radar(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``radar ARGS`` in this process, through the same ``main`` the console
    script calls: its exit code and output, without paying the package's
    import again (about 7 s a command on 2 cores)."""
    from radar_ad.apps.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    before = Path.cwd()
    debug = os.environ.pop("RADAR_DEBUG", None)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([str(arg) for arg in args])
    finally:
        os.chdir(before)
        if debug is not None:
            os.environ["RADAR_DEBUG"] = debug
    return subprocess.CompletedProcess(["radar", *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("radar: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_version_and_help():
    version, result = radar("--version"), radar("--help")
    assert version.returncode == 0 and "radar-ad" in version.stdout
    assert result.returncode == 0
    for command in ("train", "detect", "evaluate", "demo", "make-data"):
        assert command in result.stdout


def test_train_detect_evaluate(surfaces, tmp_path):
    config = tmp_path / "config.json"
    # the default response ("auto": self-validation), with a briefly trained head
    prefix = "inference.responses.segmentation."
    brief = {key.removeprefix(prefix): value for key, value in TINY.items() if key.startswith(prefix)}
    assert brief, "the tiny config names the head's settings"
    config.write_text(json.dumps({"network": {"block_out_channels": TINY["network.block_out_channels"],
                                              "attention": TINY["network.attention"]},
                                  "train": {"batch_size": 16}, "inference": {"responses": {"segmentation": brief}}}))
    model = tmp_path / "model"
    result = radar("train", surfaces, "--out", model, "--config", config, "--steps", "4", "-q")
    assert result.returncode == 0, result.stderr
    assert (model / "radar.json").is_file() and not (tmp_path / "model.checkpoint").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    out = tmp_path / "detections"
    good = surfaces / "test" / "good"
    result = radar("detect", model, good / "000.png", surfaces / "test" / "blob", "--out", out, "-q")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 and {r["verdict"] for r in rows} <= {"normal", "anomalous"}
    assert all(float(r["score"]) == float(r["score"]) for r in rows)
    assert all(0 < float(r["p_value"]) <= 1 for r in rows)  # 10 conformal images of the 50
    for stem in ("000", "000-2", "001"):  # the two 000.png files get distinct names
        for kind in ("anomaly", "mask", "overlay"):
            assert (out / f"{stem}_{kind}.png").is_file()

    result = radar("evaluate", model, surfaces, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    for key in ("accuracy", "precision", "recall", "f1", "image_auroc", "image_f1max",
                "pixel_auroc", "aupro", "n_images", "seconds_per_image"):
        assert key in metrics
    assert metrics["n_images"] == 20


def test_resume_needs_a_checkpoint(surfaces, tmp_path):
    result = radar("train", surfaces, "--out", tmp_path / "m", "--resume", "--steps", "2")
    assert_one_line_error(result, "nothing to resume")


def test_make_data(tmp_path):
    out = tmp_path / "made"
    result = radar("make-data", out, "--size", "48", "--n-train", "3", "--n-test-good", "1",
                   "--n-test-per-defect", "1")
    assert result.returncode == 0, result.stderr
    assert len(list((out / "train" / "good").iterdir())) == 3
    assert_one_line_error(radar("make-data", out), "not empty")


@pytest.fixture()
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    paths["empty_dir"] = tmp_path / "empty"
    paths["empty_dir"].mkdir()
    paths["zero_byte"] = tmp_path / "zero.png"
    paths["zero_byte"].write_bytes(b"")
    good = write_gray(tmp_path / "good.png", 64)
    paths["truncated"] = tmp_path / "truncated.png"
    paths["truncated"].write_bytes(good.read_bytes()[:300])
    paths["not_image"] = tmp_path / "notes.png"
    paths["not_image"].write_text("this is text")
    paths["too_small"] = write_gray(tmp_path / "tiny.png", 12)
    return paths


BAD_FILES = {"zero_byte": "empty file", "truncated": "cannot read image", "not_image": "not an image",
             "too_small": "smaller than one 28x28 patch"}


def test_detect_keeps_going_past_bad_images(fitted, bad_inputs, surfaces, tmp_path):
    """Each file that cannot be scored is a row with its reason in the error
    column; the good ones are scored as usual; exit 3 says some failed."""
    _, model = fitted
    folder = tmp_path / "batch"
    folder.mkdir()
    for case in BAD_FILES:
        shutil.copy(bad_inputs[case], folder / f"{case}.png")
    for good in sorted((surfaces / "test" / "good").iterdir())[:2]:
        shutil.copy(good, folder / f"good_{good.name}")
    out = tmp_path / "out"
    result = radar("detect", model, folder, "--out", out, "-q")
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("radar: warning")]
    assert len(lines) == 1 and "4 of 6 images could not be scored" in lines[0] and "error" in lines[0], lines
    rows = {Path(row["file"]).stem: row for row in csv.DictReader((out / "results.csv").open())}
    assert len(rows) == 6
    for case, fragment in BAD_FILES.items():
        assert rows[case]["verdict"] == "error" and fragment in rows[case]["error"], rows[case]
        assert rows[case]["score"] == "" and not list(out.glob(f"{case}_*.png"))
    good = [row for name, row in rows.items() if name.startswith("good_")]
    assert len(good) == 2 and all(row["verdict"] in ("normal", "anomalous") and not row["error"] for row in good)
    assert len(list(out.glob("good_*_overlay.png"))) == 2


@pytest.mark.parametrize("case,fragment", [("missing", "not found"), ("empty_dir", "no images")])
def test_detect_with_nothing_to_score(fitted, bad_inputs, tmp_path, case, fragment):
    _, model = fitted
    target = bad_inputs.get(case, tmp_path / "missing.png")
    out = tmp_path / "out"
    result = radar("detect", model, target, "--out", out)
    assert_one_line_error(result, fragment)
    assert result.returncode == 2
    assert not (out / "results.csv").exists()
    assert not [p for p in out.glob(".*")] if out.exists() else True


def test_train_bad_data_writes_no_model(bad_inputs, tmp_path):
    model = tmp_path / "model"
    cases = [((bad_inputs["empty_dir"],), "no images"), ((tmp_path / "nope",), "not found"),
             ((bad_inputs["zero_byte"],), "empty file"),
             ((bad_inputs["empty_dir"], "--set", "train.stepz=3"), "unknown setting")]
    for (data, *rest), fragment in cases:
        assert_one_line_error(radar("train", data, "--out", model, *rest), fragment)
    assert not model.exists()


def test_bad_model_directories(fitted, surfaces, tmp_path):
    _, model = fitted
    image = surfaces / "test" / "good" / "000.png"
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "radar.json").write_text((model / "radar.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    meta = json.loads((model / "radar.json").read_text())
    meta["format_version"] = 3  # a model of radar-ad 0.7: one level, no repair
    (other / "radar.json").write_text(json.dumps(meta))
    for f in ("unet.safetensors", "calibration.safetensors"):
        (other / f).write_bytes((model / f).read_bytes())
    missing = radar("detect", tmp_path / "nomodel", image, "--out", tmp_path / "o")
    partial, old = radar("evaluate", incomplete, surfaces), radar("evaluate", other, surfaces)
    assert_one_line_error(missing, "model not found")
    assert_one_line_error(partial, "incomplete")
    assert_one_line_error(old, "format version 3")
    assert "train the model again" in old.stderr


def test_evaluate_needs_labelled_data(fitted, tmp_path):
    _, model = fitted
    write_gray(tmp_path / "a.png")
    assert_one_line_error(radar("evaluate", model, tmp_path), "no test/ folder")


def test_demo_writes_metrics_and_report(tmp_path, monkeypatch):
    import radar_ad.apps.demo as demo

    # the demo's own data and config, with TINY's brief segmentation head:
    # the self-validation that learns it is most of the demo's time, and is
    # tested in test_selection
    brief = {key: value for key, value in TINY.items() if key.startswith("inference.responses.segmentation.")}
    assert brief, "the tiny config names the head's settings"
    demo_config = demo.demo_config
    monkeypatch.setattr(demo, "demo_config", lambda steps=None: demo_config(steps).updated(brief))
    out = tmp_path / "demo"
    result = radar("demo", "--out", out, "--steps", "2", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out / "report.html")
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "image_auroc", "image_f1max",
                "pixel_auroc", "aupro", "n_images", "seconds_per_image"):
        assert key in metrics
    page = (out / "report.html").read_text()
    assert "image_auroc" in page and page.count("data:image/png;base64,") >= 4 * 4


def test_detect_reads_16bit_rgba_and_palette_images(fitted, surfaces, tmp_path):
    _, model = fitted
    import numpy as np
    from PIL import Image

    gray = np.asarray(Image.open(surfaces / "test" / "good" / "000.png"))
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "g16.png")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(gray).convert("P").save(folder / "pal.png")
    Image.fromarray(gray).save(folder / "plain.png")
    result = radar("detect", model, folder, "--out", tmp_path / "out", "--no-maps", "-q")
    assert result.returncode == 0, result.stderr
    scores = {Path(r["file"]).stem: float(r["score"])
              for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert len(scores) == 4
    for name in ("g16", "rgba"):
        assert scores[name] == pytest.approx(scores["plain"], abs=1e-6)


def test_calibrate_replaces_only_the_conformal_images(fitted, surfaces, tmp_path):
    from radar_ad import Radar
    from radar_ad.workflows import calibrate_false_alarms

    radar_model, model_dir = fitted
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    normal = surfaces / "test" / "good"  # 8 normal images the model never saw
    recalibrated, backup = calibrate_false_alarms(model, normal, progress=False)
    after = {p.name: p.read_bytes() for p in model.iterdir()}
    assert backup is not None and after[backup.name] == before["conformal.safetensors"]  # kept whole
    assert set(after) == set(before) | {backup.name}
    assert after["conformal.safetensors"] != before["conformal.safetensors"]
    assert all(after[name] == data for name, data in before.items() if name != "conformal.safetensors")
    loaded = Radar.load(model)
    assert loaded.decision_.n_conformal == 8 and loaded.false_alarms()["conformal_source"]["source"] == str(normal)
    # 8 images cannot reach a p-value of 0.1: the rule flags nothing, and says so
    assert loaded.decision_.threshold_ == float("inf") and "needs at least 9" in loaded.false_alarms()["warning"]
    path = sorted((surfaces / "test" / "blob").glob("*.png"))[0]
    new, old = loaded.predict(path), radar_model.predict(path)
    assert new.score == pytest.approx(old.score) and new.anomaly_map.tolist() == old.anomaly_map.tolist()
    assert new.p_value == pytest.approx((1 + np.sum(loaded.decision_.conformal_scores_ >= new.score)) / 9)

    # a second run keeps both earlier files
    _, second = calibrate_false_alarms(model, normal, progress=False)
    assert second is not None and second != backup and backup.is_file()


def _without_conformal_images(file: Path) -> None:
    """Rewrite a conformal file as a model trained with ``train.conformal_size 0`` has it: no rows."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from radar_ad.persistence import CONFORMAL_KEY

    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata()
        empty = handle.get_tensor(CONFORMAL_KEY)[:0]
    save_file({CONFORMAL_KEY: empty}, str(file), metadata=metadata)


def test_calibrate_a_model_without_conformal_images_from_the_command_line(fitted, surfaces, tmp_path):
    from radar_ad import Radar

    radar_model, model_dir = fitted
    model = tmp_path / "old"
    shutil.copytree(model_dir, model)
    _without_conformal_images(model / "conformal.safetensors")
    with pytest.warns(UserWarning, match="no image can be flagged"):
        old = Radar.load(model)
        old.warn_false_alarms()
    path = sorted((surfaces / "test" / "blob").glob("*.png"))[0]
    prediction = old.predict(path)
    assert prediction.p_value is None and not prediction.is_anomalous
    radar_json = (model / "radar.json").read_bytes()

    normal = tmp_path / "normal"
    normal.mkdir()
    for image in sorted((surfaces / "train" / "good").glob("*.png"))[:12]:  # (in real use: images it never saw)
        shutil.copy(image, normal / image.name)
    result = radar("calibrate-false-alarms", model, normal, "-q")
    assert result.returncode == 0, result.stderr
    assert "12 conformal images" in result.stdout and "previous conformal images kept as" in result.stdout
    assert "warning" not in result.stderr  # 12 images reach a p-value of 1/13 <= 0.1
    assert (model / "radar.json").read_bytes() == radar_json and (model / "conformal.safetensors").is_file()
    assert len(list(model.glob("conformal.*.safetensors"))) == 1  # the empty file it replaced, kept
    out = tmp_path / "out"
    result = radar("detect", model, path, "--out", out, "--false-alarm-rate", "0.5", "--no-maps", "-q")
    assert result.returncode == 0, result.stderr
    row = next(csv.DictReader((out / "results.csv").open()))
    assert 0 < float(row["p_value"]) <= 1 and row["verdict"] == ("anomalous" if float(row["p_value"]) <= 0.5
                                                                 else "normal")

    # the folder must hold images; an exported file is refused in one line
    assert_one_line_error(radar("calibrate-false-alarms", model, tmp_path / "nowhere"), "not found")
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert_one_line_error(radar("calibrate-false-alarms", tmp_path / "model.onnx", normal), "exported file")

    # the verb's old name still works for one release, hidden, after a one-line warning
    result = radar("calibrate", model, normal, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "radar: warning: `radar calibrate` is deprecated; use `radar calibrate-false-alarms`"]
    assert "12 conformal images" in result.stdout and len(list(model.glob("conformal.*.safetensors"))) == 2
    assert "calibrate " not in radar("--help").stdout
