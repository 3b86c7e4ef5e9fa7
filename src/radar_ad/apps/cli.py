"""The ``radar`` command line: a thin layer over the Python API.

Every user-fixable failure surfaces as one ``radar: error: ...`` line on
stderr and exit code 2; nothing half-written is left behind. The library's
errors name the argument at fault in the library's terms; :func:`main` says
it as this command's flag (``maps_for`` -> ``--maps-for``).
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from .. import __version__
from ..config import RadarConfig
from ..errors import ConfigError, DataError, Interrupted, PartialFailure, RadarError, first_line, require
from ..registry import BACKENDS, choices

# The arguments of this run (what an interrupted `radar train` is resumed with).
_INVOCATION: list[str] = []
# Images a `radar detect` batch may hold in memory at once.
MAX_BATCH_IMAGES = 1024

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="RADAR: one-step diffusion anomaly detection and segmentation.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"radar-ad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """RADAR: reconstruction-free anomaly detection with diffusion models."""


def _parse_set(pairs: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.steps=500), got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


@app.command()
def train(
    data: Path = typer.Argument(..., help="Folder of normal images, or an MVTec-layout category."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="JSON config file."),
    steps: Optional[int] = typer.Option(None, help="Training steps."),
    batch_size: Optional[int] = typer.Option(None, help="Patches per training step."),
    patch_size: Optional[int] = typer.Option(None, help="Patch size in pixels."),
    resize: Optional[int] = typer.Option(None, help="Scale the longer image side to this many px."),
    rgb: bool = typer.Option(False, "--rgb", help="Use colour (default: grayscale)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random draw."),
    false_alarm_rate: Optional[float] = typer.Option(
        None, help="Flag an image when its p-value is at most this: at most this share of normal images "
        "flagged (default 0.05; --set decision.false_alarm_rate=null: the contamination rule)."),
    conformal_size: Optional[int] = typer.Option(None, help="Normal images held out from everything for the "
                                                 "p-values (default: train.conformal_fraction, 20 %)."),
    set_: list[str] = typer.Option([], "--set", help="Any setting, e.g. --set inference.stride=7."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint."),
    mixed_precision: Optional[str] = typer.Option(
        None, help="no, bf16 or fp16 (CUDA only): train in mixed precision through Accelerate "
        "(default: the launcher's --mixed_precision, else no)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train on normal images and write a model directory.

    Under a launcher (`accelerate launch -m radar_ad train ...`, `torchrun ...`)
    it trains data-parallel on every process: --batch-size is the global batch."""
    from ..persistence import checkpoint_dir
    from ..pipeline import train_model
    from ..training import CHECKPOINT_FILE

    config = RadarConfig.from_file(config_file) if config_file else RadarConfig()
    overrides = {k: v for k, v in {"train.steps": steps, "train.batch_size": batch_size,
                                   "patch_size": patch_size, "data.resize": resize, "seed": seed,
                                   "decision.false_alarm_rate": false_alarm_rate,
                                   "train.conformal_size": conformal_size}.items() if v is not None}
    if rgb:
        overrides["data.grayscale"] = False
    overrides.update(_parse_set(set_))
    config = config.updated(overrides)
    checkpoint = checkpoint_dir(Path(os.path.abspath(out)))  # "." names the working folder
    if resume and not (checkpoint / CHECKPOINT_FILE).is_file():
        raise DataError(f"nothing to resume: no checkpoint at {checkpoint}")
    if not resume and (checkpoint / CHECKPOINT_FILE).is_file() and os.environ.get("RANK", "0") == "0":
        typer.echo(f"note: starting afresh; the checkpoint in {checkpoint} will be replaced "
                   "(--resume continues it)", err=True)
    strategy = _distributed_strategy(mixed_precision, device)
    try:
        radar = train_model(config, data, out, resume=resume, device=device, progress=not quiet, strategy=strategy)
    except KeyboardInterrupt:
        raise Interrupted(_how_to_resume(checkpoint, config.train.checkpoint_every)
                          if strategy is None or strategy.is_main else "interrupted") from None
    if strategy is not None and not strategy.is_main:
        return  # rank 0 reports
    info = radar.training_
    typer.echo(f"model written to {out} ({info['n_train']} training + {info['n_calibration']} "
               f"calibration + {info['n_conformal']} conformal images, {info['steps']} steps in "
               f"{info['seconds']:.0f} s, final loss {info['final_loss']:.4f}); {radar.false_alarms()['rule']}")
    typer.echo(_selection_line(radar))


def _selection_line(radar: Any) -> str:
    """What the model reads an image with, and, when calibration chose it, its synthetic-defect AUROC."""
    from ..selection import describe_record

    inference = radar.config.inference
    record = radar.selection()
    if record is None:
        return (f"response {inference.response} on scales {'/'.join(map(str, inference.scales))}, image score "
                f"{inference.image_score} (as configured)")
    return describe_record(record)


def _distributed_strategy(mixed_precision: str | None, device: str | None) -> Any:
    """Accelerate's data-parallel strategy when launched on several processes
    or asked for mixed precision; ``None`` (plain ``radar train``) otherwise."""
    from ..scale.distributed import AccelerateStrategy, launched, wanted_mixed_precision

    if not launched() and wanted_mixed_precision(mixed_precision) == "no":
        return None
    return AccelerateStrategy(mixed_precision, device)


def _how_to_resume(checkpoint: Path, every: int) -> str:
    """What an interrupted `radar train` left, and the command that continues it."""
    from ..training import checkpoint_step

    step = checkpoint_step(checkpoint)
    if step is None:
        return (f"interrupted before the first checkpoint (one every {every} steps); nothing to resume, "
                "run the same command again")
    command = ["radar", *(_INVOCATION or ["train", "DATA", "--out", "OUT"])]
    if "--resume" not in command:
        command.append("--resume")
    return f"interrupted; the checkpoint of step {step} is in {checkpoint}; continue with: {shlex.join(command)}"


@app.command()
def calibrate(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`."),
    normal_dir: Path = typer.Argument(..., help="Folder of new normal images that the model never saw."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Replace the conformal images (p-values, false-alarm threshold) by new normal images.

    Keeps the network, the response, the one-class model and the pixel
    threshold; the previous conformal file stays beside the new one as a backup."""
    from ..pipeline import calibrate_false_alarms

    radar, backup = calibrate_false_alarms(model_dir, normal_dir, device=device, progress=not quiet)
    facts = radar.false_alarms()
    threshold = radar.decision_.threshold_
    typer.echo(f"{model_dir}: {facts['n_conformal']} conformal images from {normal_dir}; smallest p-value "
               f"{facts['smallest_p_value']:.4f}; image threshold "
               + (f"{threshold:.6f}" if threshold != float("inf") else "none (nothing can be flagged)")
               + f"; {facts['rule']}")
    typer.echo(f"previous conformal images kept as {backup}" if backup else
               "the model had no conformal images before; radar.json is unchanged")
    typer.echo("drift monitors of this model (radar watch, radar serve --state) start afresh on their next image")


@app.command()
def drift(
    state_dir: Path = typer.Argument(..., help="A `radar watch` output folder or a `radar serve --state` folder."),
    reset: bool = typer.Option(False, "--reset", help="Start the monitor afresh (after recalibrating, or once "
                               "the change is understood)."),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON."),
) -> None:
    """Show (or reset) the drift monitor kept in a folder: whether normal
    images still look like the model's conformal ones."""
    from ..drift import DriftStatus, read_state, reset_state

    record = reset_state(state_dir) if reset else read_state(state_dir)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    status = DriftStatus.from_record(record)
    typer.echo(f"{state_dir}: {'reset; ' if reset else ''}{status.describe()}")


NON_FINITE_HELP = ("An image whose score is not a number (a broken image or model): error (an error row, "
                   "the default) or anomalous (fail-safe). Never normal.")
FALSE_ALARM_HELP = ("Flag an image when its p-value is at most this: at most this share of normal images "
                    "flagged (default: the model's decision.false_alarm_rate).")
# The help lists the plug-ins without importing them (radar --help must not wait for PyTorch).
BACKEND_HELP = (f"{choices(BACKENDS.declared()).capitalize()} (default: torch for a model directory, the file's own "
                "for an exported file; onnx and openvino run on the CPU, faster there).")


def _paths_or_list(ctx: typer.Context, paths: Optional[list[str]]) -> Optional[list[str]]:
    """`radar detect`'s PATHS, which --from-list may replace (a given option is
    read before a missing argument, so --from-list is known here)."""
    if not paths and ctx.params.get("from_list") is None and not ctx.resilient_parsing:
        ctx.fail("Missing argument 'PATHS...' (or --from-list FILE).")
    return paths


@app.command()
def detect(
    model: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file from `radar export`."),
    paths: Optional[list[str]] = typer.Argument(None, callback=_paths_or_list, help="Images or folders of images "
                                                "(with --engine ray also URIs, e.g. s3://bucket/images/)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for results.csv and maps (--engine ray: results/ of "
                            "Parquet part files and maps/, in a folder or at a URI)."),
    from_list: Optional[Path] = typer.Option(None, "--from-list", help="A text file naming one image (path or URI) "
                                             "a line, besides PATHS; blank lines and # comments are left out."),
    engine: str = typer.Option("local", help="local: this process; ray: a Ray cluster (pip install "
                               "'radar-ad[ray]'), with reruns skipping the images already scored."),
    address: Optional[str] = typer.Option(None, help="--engine ray: the cluster's address (default: start a local "
                                          "instance on this machine's cores)."),
    workers: Optional[int] = typer.Option(None, help="--engine ray: scoring processes, each loading the model once "
                                          "(1 to 1024; default: one per CPU of the cluster)."),
    batch_size: int = typer.Option(16, help="Images read and analysed at a time (bounds memory)."),
    maps: bool = typer.Option(True, "--maps/--no-maps", help="Write anomaly map, mask and overlay PNGs."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    non_finite: Optional[str] = typer.Option(None, help=NON_FINITE_HELP),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    redo: bool = typer.Option(False, "--redo", help="--engine ray: score every image again, also where OUT holds "
                              "results of another model or other settings (refused without it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Score images: results.csv (file, score, threshold, p-value, verdict) plus map PNGs.

    Streams: at most --batch-size images and their maps are in memory at once,
    and each row is written as soon as its image is scored. --engine ray
    scores them on a Ray cluster into Parquet part files (OUT/results) instead.
    """
    from ..data import list_images
    from ..files import atomic_file, unique_stem
    from ..pipeline import Radar
    from ..progress import progress_bar
    from ..report import DETECT_COLUMNS, error_fields, result_fields, save_prediction_maps
    from ..scale.ray_detect import MAX_WORKERS, is_uri, read_path_list

    if engine not in ("local", "ray"):
        raise ConfigError(f"engine must be local or ray, got {engine!r}", setting="engine")
    if not 1 <= batch_size <= MAX_BATCH_IMAGES:
        raise ConfigError(f"batch_size must be in [1, {MAX_BATCH_IMAGES}], got {batch_size}", setting="batch_size")
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be in [1, {MAX_WORKERS}], got {workers}", setting="workers")
    listed = read_path_list(from_list) if from_list is not None else []
    if not paths and not listed:
        raise DataError(f"no images: {from_list} names none", setting="from_list")
    if engine == "ray":
        from ..scale.ray_detect import detect_on_ray, list_inputs

        # the output tree is left out of the input folders, as below
        locations = list_inputs(paths or [], exclude=out) + listed
        summary = detect_on_ray(model, locations, out, backend=backend, device=device, workers=workers, address=address,
                                maps=maps, batch_size=batch_size, settings=_decision(false_alarm_rate, non_finite),
                                progress=not quiet, redo=redo)
        typer.echo(str(summary))
        if summary.failed:
            raise PartialFailure(f"{summary.failed} of {summary.scored + summary.failed} images could not be "
                                 f"scored; their rows in {summary.out}/results say why (column error); a rerun "
                                 "tries them again")
        return
    for name, value in (("address", address), ("workers", workers), ("redo", redo or None)):
        if value is not None:
            raise ConfigError(f"{name} needs --engine ray", setting=name)
    if is_uri(out):
        raise ConfigError(f"out is a URI ({out}); the local engine writes to a folder (--engine ray writes to URIs)",
                          setting="out")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"out must be a folder, got a file: {out}", setting="out")
    radar = Radar.load(model, device=device, backend=backend, settings=_decision(false_alarm_rate, non_finite))
    radar.warn_false_alarms()
    # the output folder may sit inside an input folder: its maps are not inputs
    images = [image for path in paths or [] for image in list_images(path, exclude=out_dir)] + list(map(Path, listed))
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    flagged = failed = 0
    monitor = radar.drift_monitor()  # this batch, in the order listed
    with (atomic_file(out_dir / "results.csv") as tmp, open(tmp, "w", newline="") as handle,
          progress_bar(total=len(images), enabled=not quiet, desc="detecting", unit="img") as bar):
        writer = csv.writer(handle)
        writer.writerow(DETECT_COLUMNS)
        # a file that cannot be scored is an error row; the batch goes on
        for streamed in radar.predict_stream(images, chunk_size=batch_size, keep_going=True):
            path, pred = streamed.item, streamed.prediction
            if pred is None:
                failed += 1
                writer.writerow([str(path), *error_fields(radar.decision_.threshold_), streamed.error])
            else:
                flagged += pred.is_anomalous
                if monitor is not None:
                    monitor.update(pred.score)
                if maps:
                    stem = unique_stem(path.stem, used.__contains__)
                    used.add(stem)
                    save_prediction_maps(pred, out_dir, stem)
                writer.writerow([str(path), *result_fields(pred), ""])
            bar.update(1)
    drift_line = "" if monitor is None else f"; {monitor.status().describe()}"
    typer.echo(f"{len(images)} images, {flagged} anomalous; results in {out_dir / 'results.csv'}{drift_line}")
    if failed:
        raise PartialFailure(f"{failed} of {len(images)} images could not be scored; their rows in "
                             f"{out_dir / 'results.csv'} say why (column error)")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file."),
    dataset: Path = typer.Argument(..., help="MVTec-layout folder with test/ (and ground_truth/)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    pixel_resolution: str = typer.Option("model", help="Pixel metrics at the model's input size (model) or "
                                         "at each ground-truth mask's own size, maps upsampled bilinearly "
                                         "(native: the MVTec protocol)."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Accuracy/precision/recall/F1 at the model's threshold, AUROC, F1-max, pixel AUROC, AUPRO."""
    from ..evaluation import evaluate as run_evaluation
    from ..pipeline import Radar

    radar = Radar.load(model, device=device, backend=backend, settings=_decision(false_alarm_rate))
    result = run_evaluation(radar, dataset, progress=not quiet and not as_json, pixel_resolution=pixel_resolution)
    if as_json:
        typer.echo(json.dumps(result.metrics))
        return
    for key, value in result.metrics.items():
        shown = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else value)
        typer.echo(f"{key:>20}  {shown}")


EXPORT_FORMATS = tuple(name for name, declared in BACKENDS.declared().items() if declared.get("exports"))


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`."),
    out: Path = typer.Option(..., "--out", "-o", help="File to write, e.g. model.onnx."),
    format_: str = typer.Option(EXPORT_FORMATS[0], "--format", help=f"Export format: {choices(EXPORT_FORMATS)}."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file at --out (never a model's own)."),
) -> None:
    """Write the model as one self-contained file (network, noising step,
    thresholds and calibration in its metadata), checked against PyTorch."""
    from ..pipeline import Radar

    formats = tuple(name for name, backend in BACKENDS.items() if backend.exports)
    if format_ not in formats:
        raise ConfigError(f"format must be {choices(formats)}, got {format_!r}", setting="format")
    if out.is_dir():
        raise DataError(f"{out} is a folder; give a file name such as model{BACKENDS.get(format_).exports}")
    if Path(os.path.abspath(out)).is_relative_to(Path(os.path.abspath(model_dir))) or (
            model_dir.is_dir() and out.resolve().is_relative_to(model_dir.resolve())):
        raise DataError(f"{out} is inside the model directory {model_dir}; write the export beside it")
    if out.exists() and not force:
        raise DataError(f"{out} exists; refusing to replace it (--force replaces it)")
    Radar.load(model_dir, device="cpu").export(out, format_)
    typer.echo(f"{format_} model written to {out} ({out.stat().st_size / 2**20:.1f} MiB); "
               f"use it with `radar detect {out} IMAGES --out DIR`")


@app.command()
def demo(
    out: Path = typer.Option(Path("radar-demo"), "--out", "-o", help="Folder for data, model and report."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the demo's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Generate surfaces, train, evaluate and write an HTML report."""
    from .demo import run_demo

    result = run_demo(out, steps=steps, progress=not quiet)
    m = result.metrics
    typer.echo(f"image AUROC {m['image_auroc']:.3f}  F1 {m['f1']:.3f}  "
               f"pixel AUROC {m['pixel_auroc']:.3f}  AUPRO {m['aupro']:.3f}  "
               f"{m['seconds_per_image'] * 1000:.0f} ms/image")
    typer.echo(f"metrics: {out / 'metrics.json'}")
    typer.echo(str(result.report))


@app.command("make-data")
def make_data(
    out: Path = typer.Argument(..., help="Folder to create (MVTec layout)."),
    size: int = typer.Option(128, help="Image size in pixels."),
    n_train: int = typer.Option(60, help="Normal training images."),
    n_test_good: int = typer.Option(20, help="Normal test images."),
    n_test_per_defect: int = typer.Option(5, help="Defective test images per defect type."),
    seed: int = typer.Option(0, help="Seed of the generator."),
) -> None:
    """Write the built-in synthetic surfaces (with defects and masks)."""
    from ..synthetic import SyntheticSpec, make_dataset

    path = make_dataset(out, SyntheticSpec(size=size, n_train=n_train, n_test_good=n_test_good,
                                           n_test_per_defect=n_test_per_defect, seed=seed))
    typer.echo(str(path))


@app.command()
def serve(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on, 0 to 65535 (0: any free port)."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, in MiB (at most 1024)."),
    max_in_flight: int = typer.Option(8, help="Requests admitted at once (running + waiting) per worker; more "
                                      "get 503 (at most 1024)."),
    max_pixels: int = typer.Option(
        16_000_000, help="Largest accepted image, in pixels (width x height; at most 100000000). A request "
        "of 4000 x 4000 (the default) peaks at about 1.1 GB and takes about 70 s on 2 CPU cores (measured); "
        "lower it for a quick answer, raise it on a bigger machine."),
    body_timeout: float = typer.Option(
        20.0, help="Seconds a client has to send its whole upload, else 408 (at most 600); the upload is "
        "received before the request is admitted, so slow clients hold no slot."),
    max_uploads: int = typer.Option(32, help="Uploads received at once, before admission; more get 503. "
                                    "Bounds their memory to about this x 2 x --max-upload-mb (at most 4096)."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    non_finite: Optional[str] = typer.Option(None, help=NON_FINITE_HELP.replace("an error row", "HTTP 422")),
    workers: int = typer.Option(
        1, help="Worker processes on the one port (1 to 64), each with its own copy of the model and an equal "
        "share of the CPU cores. Every limit above applies per worker (N workers admit N x --max-in-flight "
        "requests and may use N times the memory); GET /ready says when every worker's model is loaded."),
    header_timeout: float = typer.Option(
        10.0, help="Seconds a client has to send a request's headers, else its connection is closed (at most "
        "600): a client trickling its headers holds a connection no longer."),
    state: Optional[Path] = typer.Option(
        None, help="Folder for the drift monitor and the recent results, shared by every worker and kept "
        "across restarts (`radar drift DIR` reads it). Without it each worker keeps its own in memory."),
    recent: int = typer.Option(50, help="Recent results GET /recent and the page keep, each with a small "
                               "thumbnail of its overlay (0 to 500; 0: none)."),
) -> None:
    """Serve a model over HTTP: POST /predict, GET /model, GET /health, GET /ready, GET /drift, GET /recent,
    GET /metrics and a web page at /."""
    for module in ("fastapi", "uvicorn", "multipart"):
        require(module, "serve", "`radar serve`", "python-multipart" if module == "multipart" else None)
    from contextlib import suppress

    from .runner import serve as run_server

    def announce(url: str) -> None:
        several = f"{workers} workers; " if workers > 1 else ""
        typer.echo(f"serving {model_dir} at {url} ({several}Ctrl+C to stop)")

    # It returns once stopped by Ctrl-C or SIGTERM; a Ctrl-C while the model loads raises.
    with suppress(KeyboardInterrupt):
        run_server(model_dir, host=host, port=port, backend=backend, device=device, max_upload_mb=max_upload_mb,
                   max_in_flight=max_in_flight, max_pixels=max_pixels, body_timeout=body_timeout,
                   max_uploads=max_uploads, on_start=announce,
                   settings=_decision(false_alarm_rate, non_finite), workers=workers,
                   header_timeout=header_timeout, state=state, recent=recent)
    typer.echo("stopped")


@app.command()
def watch(
    model_dir: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file."),
    input_dir: Path = typer.Argument(..., help="Folder to watch for new images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.csv and maps."),
    interval: float = typer.Option(0.5, help="Seconds between looks at the folder."),
    settle: float = typer.Option(0.5, help="Seconds a file must stay unchanged before it is read."),
    retries: int = typer.Option(5, help="Further tries at an unreadable file before an error row."),
    existing: bool = typer.Option(True, "--existing/--no-existing",
                                  help="Also inspect images already in the folder at start."),
    maps_for: str = typer.Option("anomalous", help="Write map PNGs for: all, anomalous or none."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    non_finite: Optional[str] = typer.Option(None, help=NON_FINITE_HELP),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per image."),
) -> None:
    """Inspect each new image as it lands in a folder, until Ctrl-C."""
    from .watch import watch_folder

    summary = watch_folder(model_dir, input_dir, out, interval=interval, settle=settle, retries=retries,
                           existing=existing, maps_for=maps_for, quiet=quiet, backend=backend, device=device,
                           settings=_decision(false_alarm_rate, non_finite))
    typer.echo(str(summary))


@app.command()
def benchmark(
    datasets: Optional[list[str]] = typer.Argument(
        None, help="MVTec-layout folders, or `demo` for the built-in data (default: demo)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json, results.md and report.html."),
    quick: bool = typer.Option(False, "--quick", help="Tiny network, data and subset, one torch thread: "
                               "a smoke run of under a minute on the demo data."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="JSON config file (default: the "
                                               "default config; the demo's own for the demo data)."),
    set_: list[str] = typer.Option([], "--set", help="Any setting, e.g. --set train.steps=500."),
    steps: Optional[int] = typer.Option(None, help="Training steps."),
    resize: Optional[int] = typer.Option(None, help="Longer image side in px (default: 256 for real "
                                         "datasets, native for the demo data)."),
    subset: Optional[int] = typer.Option(None, help="Normal and defective test images each in the subset "
                                         "every method runs on (default 30)."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default: all; "
                                          "`radar benchmark --list-methods` names them)."),
    list_methods: bool = typer.Option(False, "--list-methods", help="Print the methods and exit."),
    cache: Optional[Path] = typer.Option(None, help="Folder of trained models, reused across runs "
                                         "(default: OUT/models)."),
    validation_fraction: float = typer.Option(0.2, help="Share of each defect type's test images set "
                                              "aside for choosing settings (0: none)."),
    calibration_limit: Optional[int] = typer.Option(None, help="Calibration images the slow baselines "
                                                    "are fitted on (default 20)."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Compare RADAR with reconstruction and statistical baselines on the same network and images."""
    from ..bench.methods import method_names
    from ..bench.options import BenchmarkOptions
    from ..bench.runner import run_benchmark

    if list_methods:
        for key, name in method_names().items():
            typer.echo(f"{key:<22} {name}")
        return
    options = BenchmarkOptions(
        quick=quick, config_file=config_file, overrides=_parse_set(set_), steps=steps, resize=resize,
        subset=subset, methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        cache=cache, validation_fraction=validation_fraction, calibration_limit=calibration_limit,
        backend=backend or "torch", device=device, progress=not quiet)
    result = run_benchmark(datasets, out, options, log=lambda message: typer.echo(message, err=True))
    typer.echo(result.markdown)
    typer.echo(f"written: {', '.join(str(path) for path in result.files.values())}")


def _decision(false_alarm_rate: float | None, non_finite: str | None = None) -> dict[str, Any] | None:
    """The settings a command's --false-alarm-rate and --non-finite change on the loaded model."""
    settings = {key: value for key, value in (("decision.false_alarm_rate", false_alarm_rate),
                                              ("decision.non_finite", non_finite)) if value is not None}
    return settings or None


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    typer.echo(f"radar: warning: {str(message).strip().splitlines()[0]}", err=True)


def _in_flags(exc: RadarError, argv: list[str]) -> str:
    """The error's message with the argument it names said as the invoked
    command's flag, when it has one (``maps_for`` -> ``--maps-for``)."""
    message = str(exc)
    if not exc.setting or not argv:
        return message
    # typer may carry its own copy of click: look at the commands' shapes, not their types
    sub = getattr(typer.main.get_command(app), "commands", {}).get(str(argv[0]))
    for param in getattr(sub, "params", ()):
        if getattr(param, "param_type_name", "") == "option" and param.name in (exc.setting, exc.setting + "_"):
            flag = max(param.opts, key=len)
            return message.replace(exc.setting, flag, 1) if message.startswith(exc.setting) else message
    return message


def _click_errors() -> tuple[type[Exception], ...]:
    """The usage-error base class of the click that typer runs on (its own
    copy since typer 0.20, the click package before)."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_USAGE_ERRORS = _click_errors()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every failure into one line and an
    exit code with one meaning each (README "Errors"): 0 done; 2 a usage,
    configuration, input or file-system error; 3 a batch finished but some
    items failed; 130 interrupted; 1 only for a bug."""
    args = list(sys.argv[1:] if argv is None else argv)
    _INVOCATION[:] = args
    warnings.showwarning = _show_warning
    try:
        result = app(args=args, prog_name="radar", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except RadarError as exc:
        typer.echo(f"radar: error: {_in_flags(exc, args)}", err=True)
        return int(getattr(exc, "exit_code", 2))
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0))
    except SystemExit as exc:  # shell completion (--show-completion, _RADAR_COMPLETE) exits on its own
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("radar: interrupted", err=True)
        return 130
    except _USAGE_ERRORS as exc:  # a typo in a command or an option, a missing argument
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "radar"
        message = str(getattr(exc, "format_message", exc.__str__)()).strip()
        if message:  # (none when the help was asked for by giving no arguments, and shown)
            typer.echo(f"radar: error: {message.splitlines()[0]} (see `{command} --help`)", err=True)
        return 2
    except OSError as exc:  # the file system said no: a full disk, a file-size limit, no permission
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"radar: error: {exc.strerror or first_line(exc)}{where}", err=True)
        return 2
    except Exception as exc:  # a bug, not bad input: still one line, with a way to see more
        if os.environ.get("RADAR_DEBUG"):
            raise
        typer.echo(f"radar: internal error: {type(exc).__name__}: {first_line(exc)} "
                   "(set RADAR_DEBUG=1 for a traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
