"""``radar benchmark``: RADAR against reconstruction and statistical baselines.

Every method of a dataset runs on the same trained network, is fitted on the
same held-out normal calibration images and is scored on the same test
images, so the tables compare methods and nothing else:

    train once (cached by config + data) -> split the test images (a seeded
    share of each defect type set aside for choosing settings, never
    reported) -> per method: fit the one-class model on the calibration
    images, score (1) a fixed seeded subset of the test split (every method)
    and (2) the whole test split (fast methods) -> metrics, network
    evaluations, seconds per image and memory, measured in one process.

This module runs that plan. Its parts live beside it: the methods
(:mod:`~radar_ad.bench.methods`), the run's options
(:mod:`~radar_ad.bench.options`), the images and their splits
(:mod:`~radar_ad.bench.datasets`, :mod:`~radar_ad.bench.splits`), the
trained models (:mod:`~radar_ad.bench.model_cache`) and the machine
(:mod:`~radar_ad.bench.environment`). It is a client of the public API
(:class:`Radar`, :func:`train_model`, :func:`stream_predictions`, the
registries); :mod:`radar_ad.bench.report` turns the result
(:mod:`radar_ad.bench.results`) into ``results.md`` and ``report.html``.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RadarConfig
from ..data import load_mask, training_images
from ..demo_data import DEMO_SPEC
from ..errors import DataError, require
from ..files import json_ready
from ..metrics import image_metrics, pixel_metrics
from ..network import pick_device
from ..outputs import IMAGES_PER_PASS, Prediction, stream_predictions
from ..progress import progress_bar
from ..splits import three_way_split
from ..synthetic import make_dataset
from .baselines import StatisticalBaseline
from .datasets import DatasetSource, HeldOut, TestSet, dataset_sources, load_held_out, load_test_set, relative_name
from .environment import environment, peak_rss_mib
from .methods import MethodSpec, Predictor, method_specs, reference_method, selected_methods
from .model_cache import radar_variant, setting_value, trained_model
from .options import (
    DEFAULT_CALIBRATION_LIMIT,
    DEFAULT_SUBSET,
    QUICK_DEMO_SPEC,
    BenchmarkOptions,
    command_line,
    dataset_config,
)
from .report import write_reports
from .results import BenchmarkResult, DatasetResult, Example, MethodRun
from .splits import example_items

MAP_METRICS = ("pixel_auroc", "aupro", "pixel_f1max")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _score(predictor: Predictor, images: list[np.ndarray], progress: bool, desc: str,
           on_prediction: Callable[[int, Prediction], None]) -> list[float]:
    """Run ``predictor`` :data:`IMAGES_PER_PASS` images at a time
    (:func:`stream_predictions`); each image's seconds are its chunk's time
    over the chunk size. ``on_prediction`` sees (index, prediction) so maps
    are used and dropped, not collected."""
    seconds: list[float] = []
    with progress_bar(total=len(images), enabled=progress, desc=desc, unit="img", leave=False) as bar:
        for streamed in stream_predictions(predictor.predict, images, IMAGES_PER_PASS):
            assert streamed.prediction is not None  # without keep_going a failure raises
            on_prediction(streamed.index, streamed.prediction)
            seconds.append(streamed.seconds)
            bar.update(1)
    return seconds


def _metrics(test: TestSet, indices: list[int], records: dict[int, dict[str, Any]],
             maps: dict[int, np.ndarray], per_position: int) -> dict[str, Any]:
    """Image metrics, pixel metrics where masks exist, network evaluations
    and median seconds per image over the test images ``indices``."""
    rows = [records[i] for i in indices]
    labels = np.array([r["label"] != "good" for r in rows], dtype=int)
    metrics: dict[str, Any] = dict(image_metrics(labels, np.array([r["score"] for r in rows]),
                                                 np.array([r["is_anomalous"] for r in rows])))
    truths = {i: truth for i in indices if (truth := test.truths[i]) is not None}
    if any(truth.any() for truth in truths.values()):
        metrics.update(pixel_metrics(list(truths.values()), [maps[i] for i in truths]))
    else:
        metrics.update({key: None for key in MAP_METRICS})
    metrics.update({
        "n_images": len(rows), "n_normal": int((labels == 0).sum()), "n_defective": int(labels.sum()),
        "network_evaluations_per_image": float(np.mean([test.positions[i] for i in indices])) * per_position,
        "median_seconds_per_image": float(np.median([r["seconds"] for r in rows])),
    })
    return json_ready(metrics)


def run_method(spec: MethodSpec, held_out: HeldOut, test: TestSet,
               examples: dict[int, Example], device: torch.device, progress: bool = True,
               desc: str = "") -> MethodRun:
    """Fit ``spec`` on ``held_out``, score its test images (the subset
    when it is slow, else the whole split) and measure it. Maps are kept only
    as long as the pixel metrics need them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    predictor = spec.fit(held_out)
    fit_seconds = time.perf_counter() - began
    calibration = held_out.calibration
    if not spec.slow:
        # One untimed image, so the first method does not pay the network's
        # first-call costs for all of them (the slow ones warmed up in fit).
        predictor.predict(calibration[:1])
    run_index = test.subset if spec.slow else list(range(len(test.items)))
    maps: dict[int, np.ndarray] = {}
    records: dict[int, dict[str, Any]] = {}
    in_subset = set(test.subset)

    def keep(position: int, prediction: Prediction) -> None:
        i = run_index[position]
        anomaly_map = np.asarray(prediction.anomaly_map, dtype=np.float32)
        if anomaly_map.shape != test.images[i].shape[1:]:
            raise ValueError(f"{spec.key} returned a {anomaly_map.shape} map for a "
                             f"{test.images[i].shape[1:]} image")
        if test.truths[i] is not None:
            maps[i] = anomaly_map
        records[i] = {"file": relative_name(test.items[i].path, test.root), "label": test.items[i].label,
                      "score": float(prediction.score), "is_anomalous": bool(prediction.is_anomalous),
                      "p_value": prediction.p_value,
                      "in_subset": i in in_subset}
        if i in examples:
            examples[i].maps[spec.key] = anomaly_map
            examples[i].scores[spec.key] = float(prediction.score)
            examples[i].verdicts[spec.key] = bool(prediction.is_anomalous)

    seconds = _score(predictor, [test.images[i] for i in run_index], progress, desc, keep)
    for position, i in enumerate(run_index):
        records[i]["seconds"] = seconds[position]
    tables = ["subset"] if spec.slow else ["subset", "test"]
    info: dict[str, Any] = {
        "name": spec.name, "slow": spec.slow, "tables": tables,
        "network_evaluations_per_position": spec.network_evaluations,
        "n_calibration": len(calibration), "fit_seconds": round(fit_seconds, 3),
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                          if device.type == "cuda" else None),
    }
    metrics = {table: _metrics(test, test.subset if table == "subset" else run_index, records, maps,
                               spec.network_evaluations) for table in tables}
    return MethodRun(info, records, metrics)


def benchmark_dataset(source: DatasetSource, config: RadarConfig, options: BenchmarkOptions,
                      cache: Path, log: Callable[[str], None] = _stderr) -> DatasetResult:
    """Train (or reuse) the dataset's model and run every selected method:
    the subset table (all methods) and the test-split table (fast ones)."""
    if source.builtin and not (source.path / "train").is_dir():
        log(f"{source.name}: generating the built-in demo data into {source.path}")
        make_dataset(source.path, QUICK_DEMO_SPEC if options.quick else DEMO_SPEC)
    radar, model_dir, reused = trained_model(source, config, cache, log, options.device, options.progress)
    root = source.path

    # the model's own held-out normal images: never trained on, never tested on
    normal_files = training_images(root)
    split = three_way_split(len(normal_files), config)
    calibration_files = [normal_files[i] for i in split.calibration]
    conformal_files = [normal_files[i] for i in split.conformal]
    held_out = load_held_out(calibration_files, conformal_files, config, options.progress)
    calibration = held_out.calibration
    if radar.requested_config() != config:
        # a cached network trained with the same settings: other inference
        # or decision settings only need a new calibration or one-class model
        changes = {key: setting_value(config, key) for key in radar.requested_config().changes(config)}
        radar, recalibrated = radar_variant(radar, changes, held_out)
        log(f"{source.name}: " + ("recalibrating the cached model for this run's inference settings" if recalibrated
                                  else "refitting the cached model's one-class model for this run's settings"))
    if options.backend != radar.backend_name:
        radar = radar.with_backend(options.backend)
    limit = min(options.calibration_limit or DEFAULT_CALIBRATION_LIMIT, len(calibration))
    rng = np.random.default_rng(config.seed)
    limited = sorted(rng.choice(len(calibration), limit, replace=False).tolist())
    conformal_limited = sorted(rng.choice(len(held_out.conformal), min(limit, len(held_out.conformal)),
                                          replace=False).tolist())
    # the slow baselines: a seeded share of each (the same images for every one of them)
    limited_held_out = HeldOut([calibration[i] for i in limited], [held_out.conformal[i] for i in conformal_limited])

    log(f"{source.name}: loading the test images")
    test = load_test_set(root, config, options.validation_fraction, options.subset or DEFAULT_SUBSET,
                         options.progress)
    examples: dict[int, Example] = {}
    for item in example_items([test.items[i] for i in test.subset], config.seed):
        i = test.items.index(item)
        examples[i] = Example(relative_name(item.path, root), item.label, test.images[i],
                              load_mask(item.mask_path, test.images[i].shape[1:]))

    # the baselines run the torch U-Net even when RADAR's runs in ONNX Runtime
    device = next(radar.unet.parameters()).device
    reference = reference_method(config)
    methods: dict[str, Any] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    tables: dict[str, list[dict[str, Any]]] = {"subset": [], "test": []}
    for spec in method_specs(radar, selected_methods(config, options.methods)):
        fitted_on = limited_held_out if spec.limit_calibration else held_out
        log(f"{source.name}: {spec.key}: fitting on {len(fitted_on.calibration)} calibration images "
            f"({len(fitted_on.conformal)} conformal), then scoring")
        run = run_method(spec, fitted_on, test, examples, device, options.progress, f"{source.name}: {spec.key}")
        run.info["training_seconds"] = radar.training_.get("seconds") if spec.uses_network else 0.0
        run.info["backend"] = spec.backend
        methods[spec.key] = run.info
        records[spec.key] = [run.records[i] for i in sorted(run.records)]
        for table, metrics in run.metrics.items():
            tables[table].append({"method": spec.key, "name": spec.name, **metrics, **{
                k: run.info[k] for k in ("n_calibration", "training_seconds", "peak_rss_mib", "peak_cuda_mib")}})
    for rows in tables.values():
        reference_time = next((r["median_seconds_per_image"] for r in rows if r["method"] == reference), None)
        for row in rows:
            row["relative_time"] = row["median_seconds_per_image"] / reference_time if reference_time else None

    subset_items = [test.items[i] for i in test.subset]
    summary = {
        "name": source.name, "path": str(root), "builtin": source.builtin,
        "config": config.to_dict(), "model_dir": str(model_dir), "model_reused": reused,
        "training_seconds": radar.training_.get("seconds"), "training": radar.training_,
        "backend": radar.backend_name, "reference_method": reference,
        "splits": {
            "seed": config.seed,
            "n_train": len(split.train),
            "n_calibration": len(calibration_files),
            "n_conformal": len(conformal_files),
            "conformal_files": [relative_name(p, root) for p in conformal_files],
            "calibration_files": [relative_name(p, root) for p in calibration_files],
            "calibration_limit": limit,
            "calibration_limited_files": [relative_name(calibration_files[i], root) for i in limited],
            "validation_fraction": options.validation_fraction,
            "validation_files": [relative_name(item.path, root) for item in test.validation],
            "n_test": len(test.items),
            "n_test_normal": sum(not item.is_defective for item in test.items),
            "n_test_defective": sum(item.is_defective for item in test.items),
            "subset_size": options.subset,
            "subset_files": test.files(test.subset),
            "n_subset_normal": sum(not item.is_defective for item in subset_items),
            "n_subset_defective": sum(item.is_defective for item in subset_items),
        },
        "have_masks": any(t is not None for t in test.truths),
        "patches_per_image": float(np.mean(test.positions)),
        "methods": methods, "tables": tables, "images": records,
        "examples": [example.file for example in examples.values()],
    }
    return DatasetResult(summary, list(examples.values()))


def require_bench(methods: Sequence[str]) -> None:
    """Refuse early, before any training, when the report cannot be drawn or
    the statistical baseline cannot run."""
    require("matplotlib", "bench", "the benchmark report")
    if StatisticalBaseline.key in methods:
        require("skimage", "bench", "the statistical baseline", package="scikit-image")


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (None: leave as is), then restore.
    --quick uses one: its tiny network gains little from more, and on a busy
    shared machine torch's spinning worker threads made the quick run several
    times slower."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_benchmark(datasets: Sequence[str] | None, out: str | Path, options: BenchmarkOptions | None = None,
                  log: Callable[[str], None] = _stderr) -> BenchmarkResult:
    """Benchmark every method on every dataset (none given: the built-in
    demo data) and write ``results.json``, ``results.md`` and ``report.html``
    into ``out``. Every input is checked (datasets, configs, options,
    optional dependencies) before the first model is trained."""
    began = time.perf_counter()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    raw_options = options or BenchmarkOptions()
    options = raw_options.resolved()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"out must be a folder, got a file: {out}", setting="out")
    cache = Path(options.cache) if options.cache is not None else out / "models"
    sources = dataset_sources(datasets, cache, options.quick)
    configs = [dataset_config(source, options) for source in sources]
    selected = [selected_methods(config, options.methods) for config in configs]
    require_bench([key for keys in selected for key in keys])
    with _torch_threads(1 if options.quick else None):
        results = [benchmark_dataset(source, config, options, cache, log)
                   for source, config in zip(sources, configs)]
        environment_now = environment(pick_device(options.device))
    summary = {
        "command": command_line(datasets, out, raw_options),
        "started": started,
        "options": {"quick": options.quick, "subset": options.subset,
                    "methods": list(dict.fromkeys(key for keys in selected for key in keys)),
                    "validation_fraction": options.validation_fraction,
                    "calibration_limit": options.calibration_limit, "backend": options.backend,
                    "cache": str(cache)},
        "environment": environment_now,
        "datasets": [r.summary for r in results],
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    result = BenchmarkResult(summary, {r.summary["name"]: r.examples for r in results})
    write_reports(result, out)
    return result
