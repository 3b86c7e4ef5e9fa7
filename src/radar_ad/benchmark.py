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

The pieces are plain functions (:func:`validation_split`,
:func:`fixed_subset`, :func:`dataset_config`, :func:`run_benchmark`) so scripts
in ``benchmarks/`` can reuse them; :mod:`radar_ad.benchmark_report` turns the
result into ``results.md`` and ``report.html``.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import __version__
from .config import RadarConfig
from .data import LabeledImage, as_image_array, evaluation_images, load_mask, training_images
from .decision import MIN_CALIBRATION_IMAGES
from .errors import ConfigError, DataError, MissingDependencyError
from .evaluation import finite_or_none
from .files import write_text
from .metrics import image_metrics, pixel_metrics
from .network import pick_device
from .patches import grid_positions
from .pipeline import BACKENDS, CONFIG_FILE, IMAGES_PER_PASS, Radar, calibration_split
from .progress import progress_bar
from .synthetic import SyntheticSpec, make_dataset

RADAR_METHODS = {"radar_if": "RADAR (IsolationForest)", "radar_lof": "RADAR (LocalOutlierFactor)"}
BASELINE_METHODS = ("ddpm250", "ddpm25", "ddim10", "onestep", "statistical")
METHOD_KEYS = (*RADAR_METHODS, *BASELINE_METHODS)
REFERENCE_METHOD = "radar_if"  # speed ratios are relative to it

DEMO = "demo"  # on the command line: the built-in generated data
SHARED_DATASETS = Path("..") / "shared" / "datasets"
DEFAULT_RESIZE = 256
DEFAULT_SUBSET = 30
DEFAULT_CALIBRATION_LIMIT = 20
DEFAULT_VALIDATION_FRACTION = 0.2
EXAMPLES_DEFECTIVE = 3  # plus one normal image: the maps shown in the report

# --quick: a tiny network, tiny data and a tiny subset: a smoke run of every
# method, not a measurement (measured on two shared CPU cores: about 40 s on
# the demo data, 2.3 min with both ../shared/datasets at 64 px).
QUICK_SETTINGS: dict[str, Any] = {
    "patch_size": 16,
    "network.block_out_channels": [8, 16],
    "network.attention": [False, False],
    "train.steps": 300,
    "train.batch_size": 32,
    "train.warmup_steps": 10,
    "train.calibration_fraction": 0.3,
}
QUICK_RESIZE = 64
QUICK_SUBSET = 4
QUICK_CALIBRATION_LIMIT = 8
QUICK_DEMO_SPEC = SyntheticSpec(size=64, n_train=40, n_test_good=8, n_test_per_defect=2, seed=0)

MAP_METRICS = ("pixel_auroc", "aupro", "pixel_f1max")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options
@dataclass
class BenchmarkOptions:
    """One run's settings (the CLI's options). ``None`` means the default,
    which ``quick`` makes tiny."""

    quick: bool = False
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    resize: int | None = None
    subset: int | None = None
    methods: Sequence[str] | None = None
    cache: Path | None = None
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    calibration_limit: int | None = None
    backend: str = "torch"
    device: str | None = None
    progress: bool = True

    def resolved(self) -> BenchmarkOptions:
        """A validated copy with every default filled in."""
        methods = tuple(dict.fromkeys(self.methods)) if self.methods else METHOD_KEYS
        unknown = [m for m in methods if m not in METHOD_KEYS]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r} in --methods; known: {', '.join(METHOD_KEYS)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        subset = self.subset if self.subset is not None else (QUICK_SUBSET if self.quick else DEFAULT_SUBSET)
        if subset < 1:
            raise ConfigError(f"--subset must be >= 1, got {subset}")
        limit = self.calibration_limit if self.calibration_limit is not None else (
            QUICK_CALIBRATION_LIMIT if self.quick else DEFAULT_CALIBRATION_LIMIT)
        if limit < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"--calibration-limit must be >= {MIN_CALIBRATION_IMAGES}, got {limit}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        return replace(self, methods=methods, subset=subset, calibration_limit=limit)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset to benchmark: an MVTec-layout folder, or the built-in
    demo data (generated into ``path`` on first use)."""

    name: str
    path: Path
    builtin: bool = False


def shared_datasets(root: Path = SHARED_DATASETS) -> list[Path]:
    """MVTec-layout folders under ``root`` (none when it is absent)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())


def dataset_sources(arguments: Sequence[str] | None, cache: Path, quick: bool = False,
                    log: Callable[[str], None] = _stderr) -> list[DatasetSource]:
    """The datasets of a run, checked before anything is trained: the word
    ``demo`` is the built-in data, anything else a folder; none given means
    ``demo`` plus every dataset in ``../shared/datasets``."""
    if not arguments:
        found = shared_datasets()
        if not found:
            log(f"no datasets in {SHARED_DATASETS} (relative to {Path.cwd()}); "
                "benchmarking the demo data only")
        arguments = [DEMO, *map(str, found)]
    sources: list[DatasetSource] = []
    used: set[str] = set()
    for argument in arguments:
        if argument == DEMO:
            name = "demo-quick" if quick else DEMO
            source = DatasetSource(name, cache / "data" / name, builtin=True)
        else:
            path = Path(argument)
            if not path.exists():
                raise DataError(f"dataset not found: {path}")
            if not path.is_dir():
                raise DataError(f"a dataset must be an MVTec-layout folder, got a file: {path}")
            training_images(path)  # raises a one-line DataError for unusable layouts
            if {item.is_defective for item in evaluation_images(path)} != {False, True}:
                raise DataError(f"{path}: test/ needs both normal (test/good) and defective images")
            name = path.resolve().name
            source = DatasetSource(name, path)
        name, n = source.name, 1
        while name in used:
            n += 1
            name = f"{source.name}-{n}"
        used.add(name)
        sources.append(replace(source, name=name))
    return sources


def dataset_config(source: DatasetSource, options: BenchmarkOptions) -> RadarConfig:
    """The config a dataset is trained with: ``--config`` (else the demo's own
    for the demo data, else the default), the quick settings, ``data.resize``
    (``--resize``; by default 256 px for real data, native for the demo
    unless the config file sets one), ``--steps``, then every ``--set``."""
    from .demo import demo_config

    if options.config_file is not None:
        base = RadarConfig.from_file(options.config_file)
    else:
        base = demo_config() if source.builtin else RadarConfig()
    overrides: dict[str, Any] = dict(QUICK_SETTINGS) if options.quick else {}
    if options.resize is not None:
        overrides["data.resize"] = options.resize
    elif not source.builtin and base.data.resize is None:
        overrides["data.resize"] = QUICK_RESIZE if options.quick else DEFAULT_RESIZE
    if options.steps is not None:
        overrides["train.steps"] = options.steps
    overrides.update(options.overrides)
    return base.updated(overrides)


def command_line(datasets: Sequence[str] | None, out: Path, options: BenchmarkOptions) -> str:
    """A ``radar benchmark`` command equivalent to this run, for the report."""
    args = ["radar", "benchmark", *(datasets or []), "--out", str(out)]
    flags: list[tuple[str, Any]] = [
        ("--config", options.config_file), ("--steps", options.steps), ("--resize", options.resize),
        ("--subset", options.subset), ("--cache", options.cache),
        ("--calibration-limit", options.calibration_limit), ("--device", options.device)]
    if options.quick:
        args.append("--quick")
    args += [part for flag, value in flags if value is not None for part in (flag, str(value))]
    if options.methods and tuple(options.methods) != METHOD_KEYS:
        args += ["--methods", ",".join(options.methods)]
    if options.validation_fraction != DEFAULT_VALIDATION_FRACTION:
        args += ["--validation-fraction", str(options.validation_fraction)]
    if options.backend != "torch":
        args += ["--backend", options.backend]
    for key, value in options.overrides.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return shlex.join(args)


# ----------------------------------------------------------------- splits
def validation_split(items: list[LabeledImage], fraction: float, seed: int,
                     ) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """``(validation_defective, test_items)``: a seeded ``fraction`` of each
    defect type's test images (at least one when ``fraction > 0``) is set
    aside for choosing settings, so no reported number was tuned on its own
    test images. Normal images all stay in the test split. A defect type with
    a single image keeps it in the test split (else it would vanish from the
    tables). One generator draws for the types in sorted order, each type's
    images sorted by path. ``fraction == 0`` sets nothing aside."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    aside: set[Path] = set()
    for label in sorted({item.label for item in items if item.is_defective}):
        group = sorted((item for item in items if item.label == label), key=lambda item: str(item.path))
        if fraction == 0 or len(group) < 2:
            continue
        take = min(max(1, round(fraction * len(group))), len(group) - 1)
        aside.update(group[j].path for j in rng.permutation(len(group))[:take])
    return ([item for item in items if item.path in aside],
            [item for item in items if item.path not in aside])


def fixed_subset(items: list[LabeledImage], n: int, seed: int) -> list[LabeledImage]:
    """A fixed seeded subset: ``n`` normal and ``n`` defective images (all of
    a class when it has fewer), in the input order. The slow methods run on
    it, and every method is compared on it."""
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for defective in (False, True):
        indices = [i for i, item in enumerate(items) if item.is_defective == defective]
        if len(indices) > n:
            indices = [indices[j] for j in rng.choice(len(indices), size=n, replace=False)]
        keep.update(indices)
    return [item for i, item in enumerate(items) if i in keep]


def example_items(subset: list[LabeledImage], seed: int) -> list[LabeledImage]:
    """One normal and up to three defective images (distinct defect types
    first) whose maps the report shows for every method."""
    rng = np.random.default_rng(seed)
    normal = [item for item in subset if not item.is_defective]
    defective = [item for item in subset if item.is_defective]
    chosen = [normal[int(rng.integers(len(normal)))]] if normal else []
    order = [defective[j] for j in rng.permutation(len(defective))]
    labels_seen: set[str] = set()
    picked: list[LabeledImage] = []
    for item in order:  # one per defect type, then any
        if item.label not in labels_seen and len(picked) < EXAMPLES_DEFECTIVE:
            picked.append(item)
            labels_seen.add(item.label)
    picked += [item for item in order if item not in picked][:EXAMPLES_DEFECTIVE - len(picked)]
    return chosen + picked


# ------------------------------------------------------------- the model
def model_key(config: RadarConfig, dataset: Path) -> str:
    """The training cache key: the settings training depends on (not the
    inference or decision ones, which only need a recalibration), the
    dataset's path and the names and sizes of its training files (a changed
    file retrains)."""
    dataset = Path(dataset)
    listing = [f"{p.relative_to(dataset).as_posix()}:{p.stat().st_size}" for p in training_images(dataset)]
    settings = {k: v for k, v in config.to_dict().items() if k not in ("inference", "decision")}
    payload = json.dumps({"config": settings, "dataset": str(dataset.resolve()), "files": listing},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def trained_model(source: DatasetSource, config: RadarConfig, cache: Path, options: BenchmarkOptions,
                  log: Callable[[str], None] = _stderr) -> tuple[Radar, Path, bool]:
    """The dataset's model, trained once and kept under ``cache``:
    ``(radar, model_dir, reused)``. Loaded from disk either way, so a first
    and a second run score with the very same object."""
    model_dir = cache / f"{source.name}-{model_key(config, source.path)}"
    reused = (model_dir / CONFIG_FILE).is_file()
    if reused:
        log(f"{source.name}: reusing the model in {model_dir} (same training settings and files)")
    else:
        log(f"{source.name}: training a model ({config.train.steps} steps) into {model_dir}")
        checkpoint = model_dir.with_name(model_dir.name + ".checkpoint")
        Radar(config, device=options.device).fit(source.path, progress=options.progress,
                                                 checkpoint_dir=checkpoint, resume=True).save(model_dir)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return Radar.load(model_dir, device=options.device, backend=options.backend), model_dir, reused


# --------------------------------------------------------------- methods
class Predictor(Protocol):
    def predict(self, images: list[np.ndarray]) -> list[Any]:
        """Objects with ``score``, ``is_anomalous`` and ``anomaly_map``."""


class _RadarPredictor:
    """A :class:`Radar` behind the same ``predict(arrays)`` as the baselines."""

    def __init__(self, radar: Radar) -> None:
        self.radar = radar

    def predict(self, images: list[np.ndarray]) -> list[Any]:
        # Radar reads (H, W[, C]) arrays; the harness holds (C, H, W) ones
        # (exact round trip: both came from 8-bit files, resize is a no-op).
        return self.radar.predict_many([image.transpose(1, 2, 0) for image in images])


@dataclass
class MethodSpec:
    """A method as the harness runs it. ``slow``: scored on the subset only
    (a baseline marked slow, or one costing more network evaluations per
    patch position than RADAR). ``fit`` gets the calibration images: all of
    them, or a seeded limited share when ``limit_calibration``."""

    key: str
    name: str
    slow: bool
    network_evaluations: int  # U-Net evaluations per patch position
    uses_network: bool
    limit_calibration: bool
    fit: Callable[[list[np.ndarray]], Predictor]


def method_specs(radar: Radar, methods: Sequence[str]) -> list[MethodSpec]:
    """The selected methods in table order, all on ``radar``'s network."""
    config = radar.config
    draws = config.inference.draws
    specs = [
        MethodSpec("radar_if", RADAR_METHODS["radar_if"], False, draws, True, False,
                   lambda calibration: _RadarPredictor(radar)),
        MethodSpec("radar_lof", RADAR_METHODS["radar_lof"], False, draws, True, False,
                   lambda calibration: _RadarPredictor(lof_copy(radar, calibration))),
    ]
    if any(key in BASELINE_METHODS for key in methods):
        try:
            from .baselines import OneClassMethod, reconstruction_baselines, statistical_baseline
        except ImportError as exc:
            raise MissingDependencyError(f"the baselines need {exc.name}: "
                                         "pip install 'radar-ad[bench]'") from None
        baselines = [*reconstruction_baselines(radar), statistical_baseline(config)]
        for baseline in baselines:
            def fit(calibration: list[np.ndarray], baseline: Any = baseline) -> Predictor:
                return OneClassMethod(baseline, copy.deepcopy(config)).fit(calibration)

            # Costlier per patch than RADAR (a reverse chain): the subset only,
            # and a limited calibration set; the whole split would take them
            # 10 to 250 times RADAR's network time.
            slow = bool(baseline.slow) or baseline.network_evaluations > draws
            specs.append(MethodSpec(baseline.key, baseline.name, slow, int(baseline.network_evaluations),
                                    baseline.network_evaluations > 0, slow, fit))
    return [spec for spec in specs if spec.key in methods]


def lof_copy(radar: Radar, calibration: list[np.ndarray]) -> Radar:
    """``radar`` with a LocalOutlierFactor verdict, re-calibrated on the same
    images; the network (and its backend) is shared, not copied."""
    twin = copy.copy(radar)
    twin.config = copy.deepcopy(radar.config)
    twin.config.decision.one_class_model = "local_outlier_factor"
    return twin.calibrate([image.transpose(1, 2, 0) for image in calibration])


def patches_per_image(height: int, width: int, config: RadarConfig) -> int:
    """Patch positions on the inference tiling grid of an image."""
    p, s = config.patch_size, config.stride
    return len(grid_positions(height, p, s)) * len(grid_positions(width, p, s))


# --------------------------------------------------------------- results
@dataclass
class Example:
    """One test image of the report's map gallery, with every method's map."""

    file: str
    label: str
    image: np.ndarray  # (C, H, W) in [0, 1], as the model saw it
    truth: np.ndarray  # (H, W) bool
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method key -> (H, W)
    scores: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)


@dataclass
class DatasetResult:
    summary: dict[str, Any]  # this dataset's part of results.json
    examples: list[Example]


@dataclass
class BenchmarkResult:
    """``summary`` is what ``results.json`` holds; ``examples`` (per dataset
    name) the arrays only the HTML report shows; ``files`` what was written."""

    summary: dict[str, Any]
    examples: dict[str, list[Example]]
    files: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers were measured."""
    import sklearn

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {
        "cpu_count": os.cpu_count(), "cpus_available": available, "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "numpy": np.__version__, "scikit_learn": sklearn.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "radar_ad": __version__, "device": str(device),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
    return env


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _score(predictor: Predictor, images: list[np.ndarray], progress: bool, desc: str,
           on_prediction: Callable[[int, Any], None]) -> list[float]:
    """Run ``predictor`` in batches of :data:`IMAGES_PER_PASS`; each image's
    seconds are its batch's time over the batch size. ``on_prediction``
    sees (index, prediction) so maps are used and dropped, not collected."""
    seconds: list[float] = []
    with progress_bar(total=len(images), enabled=progress, desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), IMAGES_PER_PASS):
            chunk = images[start:start + IMAGES_PER_PASS]
            began = time.perf_counter()
            predictions = predictor.predict(chunk)
            elapsed = time.perf_counter() - began
            seconds += [elapsed / len(chunk)] * len(chunk)
            for i, prediction in enumerate(predictions):
                on_prediction(start + i, prediction)
            bar.update(len(chunk))
    return seconds


@dataclass
class TestSet:
    """A dataset's test images as every method sees them."""

    root: Path
    items: list[LabeledImage]  # the test split: validation images set aside
    images: list[np.ndarray]  # (C, H, W) in [0, 1], resized as the model sees them
    truths: list[np.ndarray | None]  # (H, W) masks; None where no mask applies
    positions: list[int]  # patch positions per image on the tiling grid
    subset: list[int]  # indices into items: the fixed subset every method runs on
    validation: list[LabeledImage]

    def files(self, indices: Sequence[int]) -> list[str]:
        return [_relative(self.items[i].path, self.root) for i in indices]


def load_test_set(root: Path, config: RadarConfig, options: BenchmarkOptions) -> TestSet:
    """Split ``root``'s test images and load them (and their masks at the
    size the model sees the image)."""
    validation, items = validation_split(evaluation_images(root), options.validation_fraction, config.seed)
    chosen = {item.path for item in fixed_subset(items, options.subset or DEFAULT_SUBSET, config.seed)}
    images = [as_image_array(item.path, config.data, config.patch_size)
              for item in progress_bar(items, enabled=options.progress, desc="loading", leave=False)]
    have_masks = any(item.mask_path is not None for item in items if item.is_defective)
    truths = [load_mask(item.mask_path, image.shape[1:])
              if have_masks and (item.mask_path is not None or not item.is_defective) else None
              for item, image in zip(items, images)]
    return TestSet(root, items, images, truths,
                   [patches_per_image(image.shape[1], image.shape[2], config) for image in images],
                   [i for i, item in enumerate(items) if item.path in chosen], validation)


def _metrics(test: TestSet, indices: list[int], records: dict[int, dict[str, Any]],
             maps: dict[int, np.ndarray], per_position: int) -> dict[str, Any]:
    """Image metrics, pixel metrics where masks exist, network evaluations
    and median seconds per image over the test images ``indices``."""
    rows = [records[i] for i in indices]
    labels = np.array([r["label"] != "good" for r in rows], dtype=int)
    metrics: dict[str, Any] = dict(image_metrics(labels, np.array([r["score"] for r in rows]),
                                                 np.array([r["is_anomalous"] for r in rows])))
    with_mask = [i for i in indices if test.truths[i] is not None]
    if any(test.truths[i].any() for i in with_mask):
        metrics.update(pixel_metrics([test.truths[i] for i in with_mask], [maps[i] for i in with_mask]))
    else:
        metrics.update({key: None for key in MAP_METRICS})
    metrics.update({
        "n_images": len(rows), "n_normal": int((labels == 0).sum()), "n_defective": int(labels.sum()),
        "network_evaluations_per_image": float(np.mean([test.positions[i] for i in indices])) * per_position,
        "median_seconds_per_image": float(np.median([r["seconds"] for r in rows])),
    })
    return {k: finite_or_none(v) for k, v in metrics.items()}


@dataclass
class MethodRun:
    """One method on one dataset: what it was fitted on, its per-image
    results (``records`` by test index) and its metrics per table."""

    info: dict[str, Any]
    records: dict[int, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]


def run_method(spec: MethodSpec, calibration: list[np.ndarray], test: TestSet,
               examples: dict[int, Example], device: torch.device, progress: bool = True,
               desc: str = "") -> MethodRun:
    """Fit ``spec`` on ``calibration``, score its test images (the subset
    when it is slow, else the whole split) and measure it. Maps are kept only
    as long as the pixel metrics need them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    predictor = spec.fit(calibration)
    fit_seconds = time.perf_counter() - began
    if not spec.slow:
        # One untimed image, so the first method does not pay the network's
        # first-call costs for all of them (the slow ones warmed up in fit).
        predictor.predict(calibration[:1])
    run_index = test.subset if spec.slow else list(range(len(test.items)))
    maps: dict[int, np.ndarray] = {}
    records: dict[int, dict[str, Any]] = {}
    in_subset = set(test.subset)

    def keep(position: int, prediction: Any) -> None:
        i = run_index[position]
        anomaly_map = np.asarray(prediction.anomaly_map, dtype=np.float32)
        if anomaly_map.shape != test.images[i].shape[1:]:
            raise ValueError(f"{spec.key} returned a {anomaly_map.shape} map for a "
                             f"{test.images[i].shape[1:]} image")
        if test.truths[i] is not None:
            maps[i] = anomaly_map
        records[i] = {"file": _relative(test.items[i].path, test.root), "label": test.items[i].label,
                      "score": float(prediction.score), "is_anomalous": bool(prediction.is_anomalous),
                      "in_subset": i in in_subset}
        if i in examples:
            examples[i].maps[spec.key] = anomaly_map
            examples[i].scores[spec.key] = float(prediction.score)
            examples[i].verdicts[spec.key] = bool(prediction.is_anomalous)

    seconds = _score(predictor, [test.images[i] for i in run_index], progress, desc, keep)
    for position, i in enumerate(run_index):
        records[i]["seconds"] = seconds[position]
    info = {
        "name": spec.name, "slow": spec.slow, "tables": ["subset"] if spec.slow else ["subset", "test"],
        "network_evaluations_per_position": spec.network_evaluations,
        "n_calibration": len(calibration), "fit_seconds": round(fit_seconds, 3),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_cuda_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                          if device.type == "cuda" else None),
    }
    metrics = {table: _metrics(test, test.subset if table == "subset" else run_index, records, maps,
                               spec.network_evaluations) for table in info["tables"]}
    return MethodRun(info, records, metrics)


def benchmark_dataset(source: DatasetSource, config: RadarConfig, options: BenchmarkOptions,
                      cache: Path, log: Callable[[str], None] = _stderr) -> DatasetResult:
    """Train (or reuse) the dataset's model and run every selected method:
    the subset table (all methods) and the test-split table (fast ones)."""
    if source.builtin and not (source.path / "train").is_dir():
        from .demo import DEMO_SPEC

        log(f"{source.name}: generating the built-in demo data into {source.path}")
        make_dataset(source.path, QUICK_DEMO_SPEC if options.quick else DEMO_SPEC)
    radar, model_dir, reused = trained_model(source, config, cache, options, log)
    root = source.path

    # the model's own held-out normal images: never trained on, never tested on
    normal_files = training_images(root)
    _, calibration_indices = calibration_split(len(normal_files), config)
    calibration_files = [normal_files[i] for i in calibration_indices]
    calibration = [as_image_array(p, config.data, config.patch_size)
                   for p in progress_bar(calibration_files, enabled=options.progress, desc="loading", leave=False)]
    if radar.config != config:
        # a cached network trained with the same settings; other inference or
        # decision settings only need the one-class model refitted
        log(f"{source.name}: recalibrating the cached model for this run's inference settings")
        radar.config = config
        radar.calibrate([image.transpose(1, 2, 0) for image in calibration])
    limit = min(options.calibration_limit or DEFAULT_CALIBRATION_LIMIT, len(calibration))
    limited = sorted(np.random.default_rng(config.seed).choice(len(calibration), limit, replace=False).tolist())

    log(f"{source.name}: loading the test images")
    test = load_test_set(root, config, options)
    examples: dict[int, Example] = {}
    for item in example_items([test.items[i] for i in test.subset], config.seed):
        i = test.items.index(item)
        examples[i] = Example(_relative(item.path, root), item.label, test.images[i],
                              load_mask(item.mask_path, test.images[i].shape[1:]))

    # the baselines run the torch U-Net even when RADAR's runs in ONNX Runtime
    device = next(radar.unet_.parameters()).device
    methods: dict[str, Any] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    tables: dict[str, list[dict[str, Any]]] = {"subset": [], "test": []}
    for spec in method_specs(radar, options.methods or METHOD_KEYS):
        fitted_on = [calibration[i] for i in limited] if spec.limit_calibration else calibration
        log(f"{source.name}: {spec.key}: fitting on {len(fitted_on)} calibration images, then scoring")
        run = run_method(spec, fitted_on, test, examples, device, options.progress, f"{source.name}: {spec.key}")
        run.info["training_seconds"] = radar.training_.get("seconds") if spec.uses_network else 0.0
        run.info["backend"] = radar.backend if spec.key in RADAR_METHODS else "torch"
        methods[spec.key] = run.info
        records[spec.key] = [run.records[i] for i in sorted(run.records)]
        for table, metrics in run.metrics.items():
            tables[table].append({"method": spec.key, "name": spec.name, **metrics, **{
                k: run.info[k] for k in ("n_calibration", "training_seconds", "peak_rss_mib", "peak_cuda_mib")}})
    for rows in tables.values():
        reference = next((r["median_seconds_per_image"] for r in rows if r["method"] == REFERENCE_METHOD), None)
        for row in rows:
            row["relative_time"] = row["median_seconds_per_image"] / reference if reference else None

    subset_items = [test.items[i] for i in test.subset]
    summary = {
        "name": source.name, "path": str(root), "builtin": source.builtin,
        "config": config.to_dict(), "model_dir": str(model_dir), "model_reused": reused,
        "training_seconds": radar.training_.get("seconds"), "training": radar.training_,
        "backend": radar.backend,
        "splits": {
            "seed": config.seed,
            "n_train": len(normal_files) - len(calibration_files),
            "n_calibration": len(calibration_files),
            "calibration_files": [_relative(p, root) for p in calibration_files],
            "calibration_limit": limit,
            "calibration_limited_files": [_relative(calibration_files[i], root) for i in limited],
            "validation_fraction": options.validation_fraction,
            "validation_files": [_relative(item.path, root) for item in test.validation],
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
    needed = {"matplotlib": "its report"}
    if "statistical" in methods:
        needed["skimage"] = "the statistical baseline"
    for module, purpose in needed.items():
        try:
            __import__(module)
        except ImportError:
            package = "scikit-image" if module == "skimage" else module
            raise MissingDependencyError(f"`radar benchmark` needs {package} for {purpose}: "
                                         "pip install 'radar-ad[bench]'") from None


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (None: leave as is), then restore.
    --quick uses one: its tiny network gains little from more, and on a
    busy shared machine torch's spinning workers made the quick demo run six
    times slower (243 s against 39 s on two cores)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_benchmark(datasets: Sequence[str] | None, out: str | Path, options: BenchmarkOptions | None = None,
                  log: Callable[[str], None] = _stderr) -> BenchmarkResult:
    """Benchmark every method on every dataset and write ``results.json``,
    ``results.md`` and ``report.html`` into ``out``. Every input is checked
    (datasets, configs, options) before the first model is trained."""
    from .benchmark_report import write_reports

    began = time.perf_counter()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    raw_options = options or BenchmarkOptions()
    options = raw_options.resolved()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out must be a folder, got a file: {out}")
    require_bench(options.methods or METHOD_KEYS)
    cache = Path(options.cache) if options.cache is not None else out / "models"
    sources = dataset_sources(datasets, cache, options.quick, log)
    configs = [dataset_config(source, options) for source in sources]
    with _torch_threads(1 if options.quick else None):
        results = [benchmark_dataset(source, config, options, cache, log)
                   for source, config in zip(sources, configs)]
        environment_now = environment(pick_device(options.device))
    summary = {
        "command": command_line(datasets, out, raw_options),
        "started": started,
        "options": {"quick": options.quick, "subset": options.subset, "methods": list(options.methods or ()),
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


def json_ready(data: Any) -> Any:
    """``data`` with numpy scalars as Python numbers and NaN/inf as None, so
    ``results.json`` is strict JSON."""
    if isinstance(data, dict):
        return {str(k): json_ready(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_ready(v) for v in data]
    if isinstance(data, (float, np.floating)):
        return float(data) if math.isfinite(float(data)) else None
    if isinstance(data, (np.integer, np.bool_)):
        return data.item()
    if isinstance(data, Path):
        return str(data)
    return data


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (NaN as null), written atomically."""
    write_text(path, json.dumps(json_ready(data), indent=2, allow_nan=False))
