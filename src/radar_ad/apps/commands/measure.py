"""The verbs that measure the method: ``radar evaluate`` (a model on a
labelled dataset), ``radar benchmark`` (against the baselines), ``radar
demo`` (the whole method on the built-in data) and ``radar make-data``
(the built-in data alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import BACKEND_HELP, DEVICE_HELP, FALSE_ALARM_HELP, decision_settings, parse_set


def evaluate(
    model: Path = typer.Argument(..., help="Model directory from `radar train`, or an .onnx file."),
    dataset: Path = typer.Argument(..., help="MVTec-layout folder with test/ (and ground_truth/)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    pixel_resolution: str = typer.Option("model", help="Pixel metrics at the model's input size (model) or "
                                         "at each ground-truth mask's own size, maps upsampled bilinearly "
                                         "(native: the MVTec protocol)."),
    false_alarm_rate: Optional[float] = typer.Option(None, help=FALSE_ALARM_HELP),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Accuracy/precision/recall/F1 at the model's threshold, AUROC, F1-max, pixel AUROC, AUPRO."""
    from ...evaluation import evaluate as run_evaluation
    from ...pipeline import Radar

    radar = Radar.load(model, device=device, backend=backend, settings=decision_settings(false_alarm_rate))
    result = run_evaluation(radar, dataset, progress=not quiet and not as_json, pixel_resolution=pixel_resolution)
    if as_json:
        typer.echo(json.dumps(result.metrics))
        return
    for key, value in result.metrics.items():
        shown = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else value)
        typer.echo(f"{key:>20}  {shown}")


def demo(
    out: Path = typer.Option(Path("radar-demo"), "--out", "-o", help="Folder for data, model and report."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the demo's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Generate surfaces, train, evaluate and write an HTML report."""
    from ..demo import run_demo

    result = run_demo(out, steps=steps, progress=not quiet)
    m = result.metrics
    typer.echo(f"image AUROC {m['image_auroc']:.3f}  F1 {m['f1']:.3f}  "
               f"pixel AUROC {m['pixel_auroc']:.3f}  AUPRO {m['aupro']:.3f}  "
               f"{m['seconds_per_image'] * 1000:.0f} ms/image")
    typer.echo(f"metrics: {out / 'metrics.json'}")
    typer.echo(str(result.report))


def make_data(
    out: Path = typer.Argument(..., help="Folder to create (MVTec layout)."),
    size: int = typer.Option(128, help="Image size in pixels."),
    n_train: int = typer.Option(60, help="Normal training images."),
    n_test_good: int = typer.Option(20, help="Normal test images."),
    n_test_per_defect: int = typer.Option(5, help="Defective test images per defect type."),
    seed: int = typer.Option(0, help="Seed of the generator."),
) -> None:
    """Write the built-in synthetic surfaces (with defects and masks)."""
    from ...synthetic import SyntheticSpec, make_dataset

    path = make_dataset(out, SyntheticSpec(size=size, n_train=n_train, n_test_good=n_test_good,
                                           n_test_per_defect=n_test_per_defect, seed=seed))
    typer.echo(str(path))


def benchmark(
    datasets: Optional[list[str]] = typer.Argument(
        None, help="MVTec-layout folders, or `demo` for the built-in data (default: demo)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json, results.md and report.html."),
    quick: bool = typer.Option(False, "--quick", help="Tiny network, data and subset, one torch thread: "
                               "a smoke run on the demo data."),
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
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Compare RADAR with reconstruction and statistical baselines on the same network and images."""
    from ...bench.methods import method_names
    from ...bench.options import BenchmarkOptions
    from ...bench.runner import run_benchmark

    if list_methods:
        for key, name in method_names().items():
            typer.echo(f"{key:<22} {name}")
        return
    options = BenchmarkOptions(
        quick=quick, config_file=config_file, overrides=parse_set(set_), steps=steps, resize=resize,
        subset=subset, methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        cache=cache, validation_fraction=validation_fraction, calibration_limit=calibration_limit,
        backend=backend or "torch", device=device, progress=not quiet)
    result = run_benchmark(datasets, out, options, log=lambda message: typer.echo(message, err=True))
    typer.echo(result.markdown)
    typer.echo(f"written: {', '.join(str(path) for path in result.files.values())}")
