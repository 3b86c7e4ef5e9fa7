"""``radar detect``: score a batch of images into results.csv and map PNGs,
streamed a chunk at a time, here or on a Ray cluster."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import typer

from ...errors import ConfigError, DataError, PartialFailure
from .common import BACKEND_HELP, DEVICE_HELP, FALSE_ALARM_HELP, NON_FINITE_HELP, decision_settings


def _paths_or_list(ctx: typer.Context, paths: Optional[list[str]]) -> Optional[list[str]]:
    """`radar detect`'s PATHS, which --from-list may replace (a given option is
    read before a missing argument, so --from-list is known here)."""
    if not paths and ctx.params.get("from_list") is None and not ctx.resilient_parsing:
        ctx.fail("Missing argument 'PATHS...' (or --from-list FILE).")
    return paths


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
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    redo: bool = typer.Option(False, "--redo", help="--engine ray: score every image again, also where OUT holds "
                              "results of another model or other settings (refused without it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Score images: results.csv (file, score, threshold, p-value, verdict) plus map PNGs.

    Streams: at most --batch-size images and their maps are in memory at once,
    and each row is written as soon as its image is scored. --engine ray
    scores them on a Ray cluster into Parquet part files (OUT/results) instead.
    """
    from ...data import MAX_BATCH_IMAGES, list_images
    from ...files import atomic_file, unique_stem
    from ...pipeline import Radar
    from ...progress import progress_bar
    from ...records import DETECT_COLUMNS, csv_fields, error_record, result_record
    from ...report import save_prediction_maps
    from ...scale.ray_detect import MAX_WORKERS, is_uri, read_path_list

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
        from ...scale.ray_detect import detect_on_ray, list_inputs

        # the output tree is left out of the input folders, as below
        locations = list_inputs(paths or [], exclude=out) + listed
        summary = detect_on_ray(model, locations, out, backend=backend, device=device, workers=workers, address=address,
                                maps=maps, batch_size=batch_size,
                                settings=decision_settings(false_alarm_rate, non_finite), progress=not quiet, redo=redo)
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
    radar = Radar.load(model, device=device, backend=backend, settings=decision_settings(false_alarm_rate, non_finite))
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
                writer.writerow([str(path), *csv_fields(error_record(radar.decision_.threshold_, streamed.error or ""),
                                                        DETECT_COLUMNS[1:])])
            else:
                flagged += pred.is_anomalous
                if monitor is not None:
                    monitor.update(pred.score)
                if maps:
                    stem = unique_stem(path.stem, used.__contains__)
                    used.add(stem)
                    save_prediction_maps(pred, out_dir, stem)
                writer.writerow([str(path), *csv_fields(result_record(pred), DETECT_COLUMNS[1:])])
            bar.update(1)
    drift_line = "" if monitor is None else f"; {monitor.status().describe()}"
    typer.echo(f"{len(images)} images, {flagged} anomalous; results in {out_dir / 'results.csv'}{drift_line}")
    if failed:
        raise PartialFailure(f"{failed} of {len(images)} images could not be scored; their rows in "
                             f"{out_dir / 'results.csv'} say why (column error)")
