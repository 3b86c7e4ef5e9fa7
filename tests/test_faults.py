"""Faults, bad input and hostile files, each against the real command.

Every case here was a defect of 0.2-0.4 reproduced on this kind of machine
(README "Reliability" lists them with their before and after). Most run the
``radar`` command in this process (:func:`radar_ad.apps.cli.main`, the very
entry point the console script calls); those that need a process boundary
(a kill, a signal, a file-size limit) run it as a subprocess. Every
subprocess has a time limit.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from radar_ad import Radar
from radar_ad.apps.cli import main
from radar_ad.apps.watch import Watcher
from radar_ad.config import RadarConfig
from radar_ad.data import as_image_array
from radar_ad.errors import ConfigError, DataError, ModelError, NonFiniteError
from radar_ad.files import TEMPORARY_MARKER, remove_stale_temporaries, remove_temporary_dir, temporary_dir
from radar_ad.patches import PatchSampler, PyramidSampler
from radar_ad.persistence import CONFIG_FILE, WEIGHTS_FILE
from radar_ad.pipeline import train_model

from conftest import tiny_config, write_gray

SUBPROCESS_SECONDS = 240


def radar(capsys, *args: object) -> tuple[int, str, str]:
    """``radar ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def errors(stderr: str) -> list[str]:
    """The stderr lines that are not warnings or progress."""
    return [line for line in stderr.strip().splitlines() if line.startswith("radar: ") and "warning" not in line]


def one_line(stderr: str, fragment: str) -> None:
    lines = errors(stderr)
    assert len(lines) == 1 and lines[0].startswith("radar: error: ") and fragment in lines[0], stderr
    assert "Traceback" not in stderr


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RADAR_DEBUG", None)
    return env


def start(*args: object, limit_bytes: int | None = None) -> subprocess.Popen:
    """``python -m radar_ad ARGS`` started in a subprocess (:func:`finish`
    awaits it), optionally under an ``RLIMIT_FSIZE`` of ``limit_bytes`` (a
    file write beyond it fails with EFBIG); independent runs overlap."""
    def limited() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.Popen([sys.executable, "-m", "radar_ad", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(), preexec_fn=limited)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=SUBPROCESS_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def copy_model(fitted, tmp_path: Path, name: str = "model") -> Path:
    _, model = fitted
    return Path(shutil.copytree(model, tmp_path / name))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_config_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(tiny_config(**{"train.steps": 4, "train.checkpoint_every": 2, **overrides}).to_json())
    return path


# ------------------------------------------------------- 1. folders we did not make
def test_demo_and_train_refuse_a_users_checkpoint_folder(surfaces, tmp_path, capsys):
    """`radar demo` (and `radar benchmark`, through the same train_model)
    refuses a user's folder where its checkpoint would go, before any work,
    and leaves it as it was."""
    demo = tmp_path / "demo"
    shutil.copytree(surfaces, demo / "data")
    users = demo / "model.checkpoint"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    code, _, err = radar(capsys, "demo", "--out", demo, "-q")
    assert code == 2
    one_line(err, "not made by radar-ad")
    assert tree(users) == {"notes.txt": b"mine"} and not (demo / "model").exists()
    with pytest.raises(DataError, match="not made by radar-ad"):  # before even reading the data
        train_model(tiny_config(), tmp_path / "no-such-data", demo / "model", progress=False)


# ------------------------------------------------------- 2. non-finite numbers
def test_a_diverging_loss_stops_training_and_keeps_the_last_checkpoint(surfaces, tmp_path, capsys, monkeypatch):
    import radar_ad.training as training

    calls = {"n": 0}
    real = training.diffusion_loss

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(training, "diffusion_loss", diverging)
    out = tmp_path / "model"
    code, _, err = radar(capsys, "train", surfaces, "--out", out, "--config", train_config_file(tmp_path), "-q")
    assert code == 2
    one_line(err, "training diverged: the loss became nan at step 4")
    assert "checkpoint (step 2)" in err and not out.exists()
    assert training.checkpoint_step(tmp_path / "model.checkpoint") == 2


def test_non_finite_weights_or_statistics_are_refused_on_loading(fitted, tmp_path, capsys):
    image = write_gray(tmp_path / "x.png")
    model = copy_model(fitted, tmp_path, "nan-weights")
    weights = load_file(model / WEIGHTS_FILE)
    weights["conv_in.weight"][0, 0, 0, 0] = float("nan")
    save_file(weights, str(model / WEIGHTS_FILE), metadata={"format": "radar-ad"})
    code, _, err = radar(capsys, "detect", model, image, "--out", tmp_path / "o1")
    assert code == 2
    one_line(err, "conv_in.weight holds NaN or infinite values")

    model = copy_model(fitted, tmp_path, "nan-statistics")
    meta = json.loads((model / CONFIG_FILE).read_text())
    meta["pixel_threshold"] = float("nan")
    (model / CONFIG_FILE).write_text(json.dumps(meta))
    code, _, err = radar(capsys, "serve", model, "--port", "0")
    assert code == 2
    one_line(err, "pixel_threshold is nan")


@pytest.fixture()
def overflowing(fitted, tmp_path) -> Path:
    """A model whose finite but huge first-layer weights overflow to inf,
    so every image scores NaN: it loads, and must never say "normal"."""
    model = copy_model(fitted, tmp_path, "overflowing")
    weights = load_file(model / WEIGHTS_FILE)
    weights["conv_in.weight"] *= 1e38
    save_file(weights, str(model / WEIGHTS_FILE), metadata={"format": "radar-ad"})
    return model


def test_a_nan_score_is_an_error_row_or_fail_safe_anomalous_never_normal(overflowing, fitted, surfaces,
                                                                        tmp_path, capsys):
    images = surfaces / "test" / "good"
    code, _, err = radar(capsys, "detect", overflowing, images, "--out", tmp_path / "o", "-q")
    assert code == 3
    rows = list(csv.DictReader((tmp_path / "o" / "results.csv").open()))
    assert rows and all(row["verdict"] == "error" and "not a number" in row["error"] for row in rows)
    code, _, _ = radar(capsys, "detect", overflowing, images, "--out", tmp_path / "safe", "-q",
                       "--non-finite", "anomalous")
    rows = list(csv.DictReader((tmp_path / "safe" / "results.csv").open()))
    assert code == 0 and rows and all(row["verdict"] == "anomalous" for row in rows)
    # the library: predict raises, and the watched folder gets an error row
    loaded = Radar.load(overflowing)
    with pytest.raises(NonFiniteError):
        loaded.predict(images / "000.png")
    inbox, out = tmp_path / "inbox", tmp_path / "watched"
    inbox.mkdir()
    shutil.copy(images / "000.png", inbox / "a.png")
    with Watcher(loaded, inbox, out, interval=0.01, settle=0.0, retries=0, quiet=True) as watcher:
        deadline = time.monotonic() + 30
        while watcher.summary.errors == 0 and time.monotonic() < deadline:
            watcher.poll()
            time.sleep(0.02)
    row = next(csv.DictReader((out / "results.csv").open()))
    assert row["verdict"] == "error" and "not a number" in row["error"]


# ------------------------------------------------------- 3. export never overwrites
def test_export_refuses_an_existing_file_and_the_models_own_files(fitted, tmp_path, capsys):
    model = copy_model(fitted, tmp_path)
    before = tree(model)
    for target in (model / CONFIG_FILE, model / WEIGHTS_FILE, model / "new.onnx"):
        code, _, err = radar(capsys, "export", model, "--out", target)
        assert code == 2
        one_line(err, "inside the model directory")
    assert tree(model) == before
    theirs = tmp_path / "theirs.onnx"
    theirs.write_bytes(b"someone's file")
    code, _, err = radar(capsys, "export", model, "--out", theirs)
    assert code == 2 and theirs.read_bytes() == b"someone's file"
    one_line(err, "--force replaces it")
    code, _, err = radar(capsys, "export", model, "--out", theirs, "--force")
    assert code == 0, err
    assert Radar.load(theirs).config == Radar.load(model).config


# ------------------------------------------------------- 5. output inside input
def test_detect_output_inside_its_input_is_not_read_back(fitted, surfaces, tmp_path, capsys):
    model = fitted[1]
    inbox = tmp_path / "inbox"
    shutil.copytree(surfaces / "test" / "good", inbox)
    n = len(list(inbox.iterdir()))
    for _ in range(2):
        code, _, err = radar(capsys, "detect", model, inbox, "--out", inbox / "results", "-q")
        assert code == 0, err
        assert len(list(csv.DictReader((inbox / "results" / "results.csv").open()))) == n


def test_watch_refuses_its_own_folder_as_output(fitted, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    code, _, err = radar(capsys, "watch", fitted[1], inbox, "--out", inbox)
    assert code == 2
    one_line(err, "must not be the watched folder itself")


# ------------------------------------------------------- 6. output location checked first
def test_train_checks_where_it_will_write_before_training(surfaces, tmp_path, capsys, monkeypatch):
    config = train_config_file(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    monkeypatch.chdir(tmp_path)
    began = time.monotonic()
    code, _, err = radar(capsys, "train", surfaces, "--out", ".", "--config", config)
    assert code == 2
    one_line(err, "exists and is not a radar model directory")
    code, _, err = radar(capsys, "train", surfaces, "--out", afile / "model", "--config", config)
    assert code == 2
    one_line(err, "is a file, not a folder")
    code, _, err = radar(capsys, "train", surfaces, "--out", "/proc/radar-ad/model", "--config", config)
    assert code == 2
    one_line(err, "cannot write the model")
    assert time.monotonic() - began < 10 and afile.read_text() == "mine"
    assert not list(tmp_path.glob("*.checkpoint"))


# ------------------------------------------------------- 7. resume with other data
def test_resume_with_other_images_or_settings_is_refused_naming_the_change(surfaces, tmp_path, capsys,
                                                                          monkeypatch):
    import radar_ad.training as training

    data = tmp_path / "data"
    shutil.copytree(surfaces / "train" / "good", data)
    n = len(list(data.iterdir()))
    out, config = tmp_path / "model", train_config_file(tmp_path, **{"train.steps": 8})
    checkpoint = tmp_path / "model.checkpoint"
    real = training._save_checkpoint

    def ctrl_c_after_the_first_checkpoint(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", ctrl_c_after_the_first_checkpoint)
    code, _, err = radar(capsys, "train", data, "--out", out, "--config", config, "-q")
    monkeypatch.setattr(training, "_save_checkpoint", real)
    assert code == 130 and training.checkpoint_step(checkpoint) == 2, err
    # Ctrl-C says where the checkpoint is and the exact command that continues
    line = errors(err)[0]
    assert f"checkpoint of step 2 is in {checkpoint}" in line, line
    assert line.endswith(f"radar train {data} --out {out} --config {config} -q --resume"), line
    write_gray(data / "zz-new.png", 64, seed=9)
    code, _, err = radar(capsys, "train", data, "--out", out, "--config", config, "-q", "--resume")
    assert code == 2
    one_line(err, f"the training images ({n} then, {n + 1} now)")
    (data / "zz-new.png").unlink()
    code, _, err = radar(capsys, "train", data, "--out", out, "--config", config, "-q", "--resume",
                         "--batch-size", "16")
    assert code == 2
    one_line(err, "train.batch_size (32 then, 16 now)")
    code, _, err = radar(capsys, "train", data, "--out", out, "--config", config, "-q", "--resume")
    assert code == 0, err
    assert Radar.load(out).training_["resumed_from"] == 2


# ------------------------------------------------------- 8. leftovers of a killed run
def test_temporaries_of_a_killed_writer_are_removed_on_the_next_write(fitted, tmp_path):
    target = tmp_path / "model"
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; from pathlib import Path; from radar_ad.files import temporary_dir; "
         "tmp = temporary_dir(Path(sys.argv[1])); (tmp / 'unet.safetensors').write_bytes(b'half'); "
         "os.kill(os.getpid(), 9)", str(target)], timeout=SUBPROCESS_SECONDS, env=subprocess_env())
    assert killed.returncode == -signal.SIGKILL
    [stale] = tmp_path.glob(".model.tmp-*")
    foreign = tmp_path / ".model.tmp-not-ours"
    foreign.mkdir()
    # our name pattern, this host, a dead process, but no marker inside: not ours either
    unmarked = tmp_path / f".model.tmp-{stale.name.split('-')[1]}-999999999-x"
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("mine")
    live = temporary_dir(target)  # this process is alive: its own temporary is never taken for stale
    assert remove_stale_temporaries(target) == []
    fitted[0].save(target)
    assert not stale.exists() and foreign.exists() and live.exists()
    assert (unmarked / "notes.txt").read_text() == "mine"
    assert not (target / TEMPORARY_MARKER).exists()  # the marker stays behind, not in the model


def test_only_a_folder_this_program_made_is_ever_removed(fitted, tmp_path, monkeypatch):
    """Removal needs the marker: a folder without it, or a link to one with
    it, stays; and a user's file that appears in a model directory after the
    check, while it is being replaced, is kept beside the new model."""
    unmarked = tmp_path / "unmarked"
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("mine")
    marked = temporary_dir(tmp_path / "x")
    link = tmp_path / "link"
    link.symlink_to(marked, target_is_directory=True)
    assert not remove_temporary_dir(unmarked) and not remove_temporary_dir(link)
    assert (unmarked / "notes.txt").exists() and marked.exists()
    assert remove_temporary_dir(marked) and not marked.exists()

    import radar_ad.persistence as persistence

    model = copy_model(fitted, tmp_path)
    checked = persistence.check_model_target

    def then_a_file_appears(path):
        checked(path)
        (path / "notes.txt").write_text("mine")

    monkeypatch.setattr(persistence, "check_model_target", then_a_file_appears)
    fitted[0].save(model)
    [kept] = [p for p in tmp_path.glob(".model.tmp-*") if (p / "model" / "notes.txt").exists()]
    assert (kept / "model" / "notes.txt").read_text() == "mine" and not (kept / TEMPORARY_MARKER).exists()
    assert remove_stale_temporaries(model) == [] and kept.exists()  # and no later write removes it
    assert (model / "radar.json").is_file() and not (model / "notes.txt").exists()


def test_a_model_directory_holding_a_users_files_is_not_replaced(fitted, tmp_path):
    """Saving over a model directory replaces it whole: only when every
    file in it is one radar-ad writes there (a calibrate backup included)."""
    model = copy_model(fitted, tmp_path)
    (model / "conformal.20261204T101500Z.safetensors").write_bytes((model / "conformal.safetensors").read_bytes())
    fitted[0].save(model)  # ours only: replaced
    assert not (model / "conformal.20261204T101500Z.safetensors").exists()
    (model / "notes.txt").write_text("mine")
    before = tree(model)
    with pytest.raises(DataError, match="holds files radar-ad did not write \\(notes.txt\\)"):
        fitted[0].save(model)
    assert tree(model) == before


# ------------------------------------------------------- 9. a full disk
def test_a_full_disk_leaves_the_previous_files_intact(fitted, surfaces, tmp_path):
    """Under a file-size limit (EFBIG, what a full disk looks like to a
    writer) training, detect and export fail with one line, the previous
    model and results stay byte for byte, and nothing half-written is left."""
    model, source = copy_model(fitted, tmp_path), copy_model(fitted, tmp_path, "source")
    before = tree(model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("the previous results\n")
    # three independent runs at once (each reads its own copy, writes its own target)
    training = start("train", surfaces, "--out", model, "--config", train_config_file(tmp_path), "-q",
                     limit_bytes=100_000)
    detecting = start("detect", source, surfaces / "test" / "good", "--out", out, "-q", "--no-maps",
                      limit_bytes=300)
    exporting = start("export", source, "--out", tmp_path / "m.onnx", limit_bytes=100_000)
    result = finish(training)
    assert result.returncode == 2
    one_line(result.stderr, "File too large")
    assert tree(model) == before
    result = finish(detecting)
    assert result.returncode == 2
    one_line(result.stderr, f"File too large: {out / 'results.csv'}")
    assert (out / "results.csv").read_text() == "the previous results\n"
    result = finish(exporting)
    assert result.returncode == 2 and not (tmp_path / "m.onnx").exists()
    one_line(result.stderr, "File too large")
    leftovers = [p for p in tmp_path.rglob(".*") if "tmp" in p.name]
    assert not leftovers, leftovers


# ------------------------------------------------------- 12, 13. bounds and one-line errors
@pytest.mark.parametrize("setting,value,fragment", [
    ("decision.one_class_models.isolation_forest.n_estimators", 10**9,
     "decision.one_class_models.isolation_forest.n_estimators must be an integer in [1, 10000]"),
    ("inference.responses.segmentation.examples", 10**9,
     "inference.responses.segmentation.examples must be an integer in [1, 20000]"),
    ("network.layers_per_block", 1000, "network.layers_per_block must be an integer in [1, 8]"),
    ("network.block_out_channels", [16, 32, 10**6], "network.block_out_channels must be a list"),
    ("network.norm_num_groups", 0, "network.norm_num_groups must be an integer in [1, 1024]"),
    ("network.num_train_timesteps", 10**8, "network.num_train_timesteps must be an integer in [2, 10000]"),
    ("inference.draws", 10**6, "inference.draws must be an integer in [1, 64]"),
    ("patch_size", 10**9, "patch_size must be an integer in [8, 512]"),
    ("patch_size", 1e9, "patch_size must be an integer, got 1000000000.0"),
    ("data.resize", 10**6, "data.resize must be an integer in [8, 16384]"),
    ("seed", 2**70, "seed must be an integer in [0, 4294967295]"),
    ("train.learning_rate", float("inf"), "train.learning_rate must be in (0, 1]"),
])
def test_a_tampered_radar_json_is_refused_in_one_line(fitted, tmp_path, capsys, setting, value, fragment):
    model = copy_model(fitted, tmp_path)
    meta = json.loads((model / CONFIG_FILE).read_text())
    *parents, leaf = setting.split(".")
    node = meta["config"]
    for part in parents:
        node = node[part]
    node[leaf] = value
    (model / CONFIG_FILE).write_text(json.dumps(meta))
    began = time.monotonic()
    code, _, err = radar(capsys, "detect", model, write_gray(tmp_path / "x.png"), "--out", tmp_path / "o")
    assert code == 2 and time.monotonic() - began < 10
    one_line(err, fragment)
    with pytest.raises(ConfigError, match=fragment.split(" must")[0]):
        RadarConfig().updated({setting: value})


def test_typos_and_usage_errors_are_one_line_with_exit_2(fitted, tmp_path, capsys):
    for args, fragment in ((["detect", fitted[1], tmp_path, "--out", tmp_path / "o", "--engin", "ray"],
                            "No such option: --engin"),
                           (["trian"], "No such command 'trian'"),
                           (["detect", fitted[1]], "Missing argument"),
                           (["detect", fitted[1], tmp_path, "--out", tmp_path / "o", "--batch-size", "0"],
                            "--batch-size must be in [1, 1024]")):
        code, _, err = radar(capsys, *args)
        assert code == 2, (args, err)
        one_line(err, fragment)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, _, err = radar(capsys, "detect", fitted[1], write_gray(tmp_path / "x.png"), "--out", afile)
    assert code == 2 and afile.read_text() == "mine"
    one_line(err, "must be a folder")


def test_an_exported_file_that_does_not_match_itself_is_refused(fitted, tmp_path, capsys):
    import onnx

    model = copy_model(fitted, tmp_path)
    exported = tmp_path / "m.onnx"
    assert radar(capsys, "export", model, "--out", exported)[0] == 0
    image = write_gray(tmp_path / "x.png")
    for key, edit, fragment in (
            ("radar_ad", lambda m: {**m, "channels": 3, "config": {**m["config"], "data": {
                **m["config"]["data"], "grayscale": False}}}, "its graph does not match its metadata"),
            ("calibration_features", lambda rows: [row[:1] for row in rows], "the calibration features have shape")):
        graph = onnx.load(str(exported))
        for prop in graph.metadata_props:
            if prop.key == key:
                prop.value = json.dumps(edit(json.loads(prop.value)))
        edited = tmp_path / f"edited-{key}.onnx"
        onnx.save(graph, str(edited))
        code, _, err = radar(capsys, "detect", edited, image, "--out", tmp_path / "o")
        assert code == 2
        one_line(err, fragment)


def test_onnx_files_with_custom_ops_or_external_data_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(graph, name: str) -> Path:
        path = tmp_path / name
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                          helper.make_opsetid("evil.ops", 1)]), str(path))
        return path

    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    custom = save(helper.make_graph([helper.make_node("RunShell", ["x"], ["y"], domain="evil.ops")], "g", *io),
                  "custom.onnx")
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        Radar.load(custom)
    weight = numpy_helper.from_array(np.ones(1, dtype=np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    weight.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", *io, initializer=[weight])
    external = tmp_path / "external.onnx"
    external.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        Radar.load(external)


# ------------------------------------------------------- 14. smaller ones
def test_float_arrays_outside_0_1_are_refused_not_clipped(fitted):
    config = fitted[0].config.data
    with pytest.raises(DataError, match="divide by 255"):
        as_image_array(np.full((64, 64), 200.0), config)
    assert as_image_array(np.full((64, 64), 0.5), config).max() == pytest.approx(128 / 255)


def test_a_truncated_image_opened_lazily_is_a_data_error(fitted, tmp_path):
    path = write_gray(tmp_path / "x.png", 64)
    path.write_bytes(path.read_bytes()[:200])
    with Image.open(path) as lazy, pytest.raises(DataError, match="truncated or corrupt"):
        fitted[0].predict(lazy)


def test_training_patches_cost_each_images_own_pixels():
    """Mixed aspect ratios: no padding to the largest height x width."""
    images = [torch.rand(1, 2000, 40), torch.rand(1, 40, 2000)]
    sampler = PatchSampler(images, 28)
    assert sampler.buffer.numel() == 2 * 2000 * 40  # padded: 2 x 2000 x 2000
    patches = sampler.sample(64, torch.Generator().manual_seed(0))
    assert patches.shape == (64, 1, 28, 28)
    # every pyramid level likewise (the coarse levels mirrored up to the patch where narrower)
    pyramid = PyramidSampler(images, 28, (1, 2, 4))
    assert [level.buffer.numel() for level in pyramid.levels] == [2 * 2000 * 40, 2 * 1000 * 28, 2 * 500 * 28]


def test_model_files_share_one_mode(fitted, tmp_path):
    fitted[0].save(tmp_path / "model")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()}
    assert len(set(modes.values())) == 1, modes


# ------------------------------------------------------- kills that were already survived, now kept tested
def wait_until(condition, what: str, timeout: float = SUBPROCESS_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_during_training_then_resume_gives_the_uninterrupted_weights(surfaces, tmp_path, capsys):
    import radar_ad.training as training

    config = train_config_file(tmp_path, **{"train.steps": 120, "train.batch_size": 4, "train.checkpoint_every": 5})
    killed, out = tmp_path / "killed", tmp_path / "whole"
    process = subprocess.Popen([sys.executable, "-m", "radar_ad", "train", str(surfaces), "--out", str(killed),
                                "--config", str(config), "-q"], env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: training.checkpoint_step(tmp_path / "killed.checkpoint") or process.poll() is not None,
                   "the first checkpoint")
        process.kill()
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and not killed.exists()
    step = training.checkpoint_step(tmp_path / "killed.checkpoint")
    assert step is not None and 5 <= step < 120
    # the killed run had one thread (subprocess_env); so do these: sums over
    # another number of threads round differently, and the test is bit-equality
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert radar(capsys, "train", surfaces, "--out", killed, "--config", config, "-q", "--resume")[0] == 0
        assert radar(capsys, "train", surfaces, "--out", out, "--config", config, "-q")[0] == 0
    finally:
        torch.set_num_threads(threads)
    assert Radar.load(killed).training_["resumed_from"] == step
    resumed, whole = load_file(killed / WEIGHTS_FILE), load_file(out / WEIGHTS_FILE)
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_repeated_sigkill_of_watch_loses_and_duplicates_nothing(fitted, surfaces, tmp_path):
    """Killed at random moments while it inspects a folder, restarted each
    time: in the end every image has exactly one row (``RADAR_WATCH_KILLS``
    kills, 2 in the suite; ``benchmarks/fuzz.py`` runs 10)."""
    kills = int(os.environ.get("RADAR_WATCH_KILLS", "2"))
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    for copy in range(max(1, kills // 2)):  # images enough for every kill to land mid-run
        shutil.copytree(surfaces / "test", inbox / f"copy{copy}")
    names = sorted(str(p) for p in inbox.rglob("*.png"))
    command = [sys.executable, "-m", "radar_ad", "watch", str(fitted[1]), str(inbox), "--out", str(out),
               "--interval", "0.05", "--settle", "0", "-q"]
    rng = np.random.default_rng(0)
    for kill in range(kills + 1):
        rows_before = len(read_rows(out))
        final = kill == kills or rows_before >= len(names)  # (all done: no image left to be killed over)
        process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            if not final:
                wait_until(lambda before=rows_before, running=process: len(read_rows(out)) > before
                           or running.poll() is not None,
                           "a new row")
                time.sleep(float(rng.uniform(0, 0.3)))
                process.kill()
            else:
                wait_until(lambda: len(read_rows(out)) >= len(names), "every row")
                process.send_signal(signal.SIGINT)
        finally:
            process.wait(timeout=60)
        if final:
            break
    files = [row["file"] for row in read_rows(out)]
    assert sorted(files) == names, "lost or duplicated rows"


def read_rows(out: Path) -> list[dict[str, str]]:
    path = out / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("file")]
