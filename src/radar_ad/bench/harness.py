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

The RADAR rows come from the registries: one per registered one-class model
(``radar_<abbreviation>``) on the config's response, and one per other
registered response (``radar_<name>``) with the config's one-class model, so
a new plug-in shows up here with no change to this module. Each is the
trained model with its settings changed (:meth:`Radar.with_settings`).

This module is a client of the public API (:class:`Radar`,
:func:`train_model`, :func:`stream_predictions`, the registries). The pieces
are plain functions (:func:`validation_split`, :func:`fixed_subset`,
:func:`dataset_config`, :func:`run_benchmark`) so scripts in ``benchmarks/``
can reuse them; :mod:`radar_ad.bench.report` turns the result
(:mod:`radar_ad.bench.results`) into ``results.md`` and ``report.html``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from .. import __version__
from ..config import RadarConfig
from ..data import LabeledImage, as_image_array, evaluation_images, load_mask, training_images
from ..decision import MIN_CALIBRATION_IMAGES
from ..demo_data import DEMO_SPEC, demo_config
from ..errors import ConfigError, DataError, NotCalibratedError, require
from ..files import json_ready, unique_stem
from ..metrics import image_metrics, pixel_metrics
from ..network import pick_device
from ..patches import grid_positions
from ..persistence import CONFIG_FILE
from ..pipeline import IMAGES_PER_PASS, Radar, calibration_split, stream_predictions, train_model
from ..progress import progress_bar
from ..registry import BACKENDS, ONE_CLASS_MODELS, RESPONSES
from ..synthetic import SyntheticSpec, make_dataset
from .baselines import OneClassMethod, StatisticalBaseline, baseline_names, reconstruction_baselines
from .report import write_reports
from .results import BenchmarkResult, DatasetResult, Example, MethodRun

BASELINE_METHODS = tuple(baseline_names())

DEMO = "demo"  # on the command line: the built-in generated data
DEFAULT_RESIZE = 256
DEFAULT_SUBSET = 30
DEFAULT_CALIBRATION_LIMIT = 20
DEFAULT_VALIDATION_FRACTION = 0.2
EXAMPLES_DEFECTIVE = 3  # plus one normal image: the maps shown in the report

# --quick: a tiny network, tiny data and a tiny subset: a smoke run of every
# method, not a measurement.
QUICK_SETTINGS: dict[str, Any] = {
    "patch_size": 16,
    "network.block_out_channels": [8, 16],
    "network.attention": [False, False],
    "train.steps": 300,
    "train.batch_size": 32,
    "train.warmup_steps": 10,
    "train.calibration_fraction": 0.3,
    "inference.segmentation_examples": 32,
    "inference.segmentation_steps": 20,
    "inference.segmentation_crop": 32,
}
QUICK_RESIZE = 64
QUICK_SUBSET = 4
QUICK_CALIBRATION_LIMIT = 8
QUICK_DEMO_SPEC = SyntheticSpec(size=64, n_train=40, n_test_good=8, n_test_per_defect=2, seed=0)

MAP_METRICS = ("pixel_auroc", "aupro", "pixel_f1max")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------ the methods
@dataclass(frozen=True)
class RadarRow:
    """A RADAR row of the tables: the trained model with ``settings``
    (dotted keys) changed; no settings: the config's own model."""

    key: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)


def one_class_label(model: type) -> str:
    """How a table names a one-class model: its class name without the
    ``Model`` suffix (``IsolationForestModel`` -> ``IsolationForest``)."""
    return model.__name__.removesuffix("Model")


def radar_rows(config: RadarConfig | None = None) -> list[RadarRow]:
    """The RADAR rows for ``config`` (default: the default config), from the
    registries: the config's own first (the reference of the time ratios),
    then one per other registered one-class model on the config's response,
    then one per other registered response with the config's one-class model."""
    config = config or RadarConfig()
    own_model, own_response = config.decision.one_class_model, config.inference.response
    rows = [RadarRow(f"radar_{model.abbreviation or name}", f"RADAR ({one_class_label(model)})",
                     {} if name == own_model else {"decision.one_class_model": name})
            for name, model in ONE_CLASS_MODELS.items()]
    rows.sort(key=lambda row: bool(row.settings))  # stable: the config's own first
    rows += [RadarRow(f"radar_{name}", f"RADAR ({name} response)", {"inference.response": name})
             for name in RESPONSES.names() if name != own_response]
    return rows


def method_names(config: RadarConfig | None = None) -> dict[str, str]:
    """Key -> display name of every method a run on ``config`` (default: the
    default config) has, in table order: the RADAR rows, then the baselines."""
    names: dict[str, str] = {}
    for key, name in [*((row.key, row.name) for row in radar_rows(config)), *baseline_names().items()]:
        if key in names:
            raise ValueError(f"two benchmark methods have the key {key!r} ({names[key]} and {name}); "
                             "rename one of the plug-ins")
        names[key] = name
    return names


def reference_method(config: RadarConfig | None = None) -> str:
    """The key of the config's own RADAR row, which the time ratios are
    relative to (``radar_if`` for the default config)."""
    return radar_rows(config)[0].key


REFERENCE_METHOD = reference_method()


def known_methods() -> tuple[str, ...]:
    """Every method key some config has: those of the default config, plus
    a row for each registered response (a config has one for every response
    but its own)."""
    keys = dict.fromkeys(row.key for row in radar_rows())
    keys.update(dict.fromkeys(f"radar_{name}" for name in RESPONSES.names()))
    keys.update(dict.fromkeys(method_names()))
    return tuple(keys)


def selected_methods(config: RadarConfig, methods: Sequence[str] | None) -> tuple[str, ...]:
    """The keys of ``methods`` (None: all) a run on ``config`` has, in table
    order, or a :class:`ConfigError` for one it does not have."""
    available = method_names(config)
    for key in methods or ():
        if key not in available:
            raise ConfigError(f"methods: {key!r} has no row of its own when inference.response is "
                              f"{config.inference.response!r}: every RADAR one-class row runs that response; "
                              f"available: {', '.join(available)}", setting="methods")
    return tuple(key for key in available if methods is None or key in methods)


# ---------------------------------------------------------------- options
@dataclass
class BenchmarkOptions:
    """One run's settings (the CLI's options). ``None`` means the default,
    which ``quick`` makes tiny; ``methods`` None: every method."""

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
        methods = tuple(dict.fromkeys(self.methods)) if self.methods else None
        known = known_methods()
        unknown = [m for m in methods or () if m not in known]
        if unknown:
            raise ConfigError(f"methods: unknown method {unknown[0]!r}; known: {', '.join(known)}",
                              setting="methods")
        BACKENDS.check(self.backend, "backend")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}",
                              setting="validation_fraction")
        subset = self.subset if self.subset is not None else (QUICK_SUBSET if self.quick else DEFAULT_SUBSET)
        if subset < 1:
            raise ConfigError(f"subset must be >= 1, got {subset}", setting="subset")
        limit = self.calibration_limit if self.calibration_limit is not None else (
            QUICK_CALIBRATION_LIMIT if self.quick else DEFAULT_CALIBRATION_LIMIT)
        if limit < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"calibration_limit must be >= {MIN_CALIBRATION_IMAGES}, got {limit}",
                              setting="calibration_limit")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}", setting="steps")
        return replace(self, methods=methods, subset=subset, calibration_limit=limit)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset to benchmark: an MVTec-layout folder, or the built-in
    demo data (generated into ``path`` on first use)."""

    name: str
    path: Path
    builtin: bool = False


def dataset_sources(arguments: Sequence[str] | None, cache: Path, quick: bool = False) -> list[DatasetSource]:
    """The datasets of a run, checked before anything is trained: the word
    ``demo`` is the built-in data, anything else a folder; none given means
    the built-in ``demo`` data only. Datasets of the same name are told
    apart as ``name-2``, ``name-3`` ..."""
    sources: list[DatasetSource] = []
    used: set[str] = set()
    for argument in arguments or [DEMO]:
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
            source = DatasetSource(path.resolve().name, path)
        name = unique_stem(source.name, used.__contains__)
        used.add(name)
        sources.append(replace(source, name=name))
    return sources


def dataset_config(source: DatasetSource, options: BenchmarkOptions) -> RadarConfig:
    """The config a dataset is trained with: ``config_file`` (else the demo's
    own for the demo data, else the default), the quick settings,
    ``data.resize`` (``resize``; by default 256 px for real data, native for
    the demo unless the config file sets one), ``steps``, then every override."""
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
    if options.methods:
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
        raise ConfigError(f"fraction must be in [0, 1), got {fraction}", setting="fraction")
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
    """The dataset's model, trained once (:func:`train_model`: resumable,
    checkpoint removed once written) and kept under ``cache``:
    ``(radar, model_dir, reused)``. Loaded from disk either way, so a first
    and a second run score with the very same object."""
    model_dir = cache / f"{source.name}-{model_key(config, source.path)}"
    reused = (model_dir / CONFIG_FILE).is_file()
    if reused:
        log(f"{source.name}: reusing the model in {model_dir} (same training settings and files)")
    else:
        log(f"{source.name}: training a model ({config.train.steps} steps) into {model_dir}")
        train_model(config, source.path, model_dir, resume=True, device=options.device, progress=options.progress)
    return Radar.load(model_dir, device=options.device), model_dir, reused


def _setting(config: RadarConfig, key: str) -> Any:
    """The value of the dotted setting ``key`` of ``config``."""
    value: Any = config.to_dict()
    for part in key.split("."):
        value = value[part]
    return value


def _as_radar_images(images: list[np.ndarray]) -> list[np.ndarray]:
    # Radar reads (H, W[, C]) arrays; the harness holds (C, H, W) ones
    # (exact round trip: both came from 8-bit files, resize is a no-op).
    return [image.transpose(1, 2, 0) for image in images]


def radar_variant(radar: Radar, settings: dict[str, Any], held_out: HeldOut) -> tuple[Radar, bool]:
    """``(model, recalibrated)``: ``radar`` with ``settings`` changed,
    sharing its network (:meth:`Radar.with_settings`). A new one-class model
    is refitted on the stored calibration features; a setting that shapes
    the maps (a response, say) is calibrated on ``held_out`` ((C, H, W)
    normal images, the same ones the model was calibrated and conformally
    scored on)."""
    if not settings:
        return radar, False
    twin = radar.with_settings(settings)
    try:
        twin.check_fitted()
    except NotCalibratedError:
        return twin.calibrate(_as_radar_images(held_out.calibration),
                              conformal=_as_radar_images(held_out.conformal)), True
    return twin, False


class HeldOut(NamedTuple):
    """A model's held-out normal images, ``(C, H, W)`` arrays: those its
    decision was fitted on, and the conformal ones only scored."""

    calibration: list[np.ndarray]
    conformal: list[np.ndarray]


class Predictor(Protocol):
    def predict(self, images: list[np.ndarray]) -> list[Any]:
        """Objects with ``score``, ``is_anomalous`` and ``anomaly_map``."""


class _RadarPredictor:
    """A :class:`Radar` behind the same ``predict(arrays)`` as the baselines."""

    def __init__(self, radar: Radar) -> None:
        self.radar = radar

    def predict(self, images: list[np.ndarray]) -> list[Any]:
        return self.radar.predict_many(_as_radar_images(images))


@dataclass
class MethodSpec:
    """A method as the harness runs it. ``slow``: scored on the subset only
    (a baseline marked slow, or one costing more network evaluations per
    patch position than RADAR). ``fit`` gets the calibration images: all of
    them, or a seeded limited share when ``limit_calibration``. ``backend``:
    the engine that runs its network."""

    key: str
    name: str
    slow: bool
    network_evaluations: int  # U-Net evaluations per patch position
    uses_network: bool
    limit_calibration: bool
    backend: str
    fit: Callable[[HeldOut], Predictor]


def method_specs(radar: Radar, methods: Sequence[str]) -> list[MethodSpec]:
    """The selected methods in table order, all on ``radar``'s network."""
    config, requested = radar.config, radar.requested_config()
    draws = config.inference.draws
    specs = []
    for row in radar_rows(requested):
        # a row that names a response changes what was asked for (its scales
        # and image score stay "auto" where they were), not what calibration
        # resolved them to; another one-class model keeps the resolved maps
        names_response = any(key.startswith("inference.") for key in row.settings)
        target = (requested if names_response else config).updated(row.settings)
        changes = {key: _setting(target, key) for key in config.changes(target)} if row.settings else {}

        def fit_radar(held_out: HeldOut, settings: dict[str, Any] = changes) -> Predictor:
            return _RadarPredictor(radar_variant(radar, settings, held_out)[0])

        specs.append(MethodSpec(row.key, row.name, False, draws, True, False, radar.backend, fit_radar))
    baselines = ([baseline for baseline in reconstruction_baselines(radar) if baseline.key in methods]
                 if any(key in methods for key in BASELINE_METHODS if key != StatisticalBaseline.key) else [])
    if StatisticalBaseline.key in methods:
        baselines.append(StatisticalBaseline(config))
    for baseline in baselines:
        def fit_baseline(held_out: HeldOut, baseline: Any = baseline) -> Predictor:
            return OneClassMethod(baseline, config).fit(held_out.calibration, held_out.conformal)

        # Costlier per patch than RADAR (a reverse chain): the subset only,
        # and a limited calibration set; the whole split would take them
        # many times RADAR's network time.
        slow = bool(baseline.slow) or baseline.network_evaluations > draws
        specs.append(MethodSpec(baseline.key, baseline.name, slow, int(baseline.network_evaluations),
                                baseline.network_evaluations > 0, slow, "torch", fit_baseline))
    return [spec for spec in specs if spec.key in methods]


def patches_per_image(height: int, width: int, config: RadarConfig) -> int:
    """Patch positions on the inference tiling grid of an image."""
    p, s = config.patch_size, config.stride
    return len(grid_positions(height, p, s)) * len(grid_positions(width, p, s))


# ------------------------------------------------------------ measuring
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
    """Run ``predictor`` :data:`IMAGES_PER_PASS` images at a time
    (:func:`stream_predictions`); each image's seconds are its chunk's time
    over the chunk size. ``on_prediction`` sees (index, prediction) so maps
    are used and dropped, not collected."""
    seconds: list[float] = []
    with progress_bar(total=len(images), enabled=progress, desc=desc, unit="img", leave=False) as bar:
        for streamed in stream_predictions(predictor.predict, images, IMAGES_PER_PASS):
            on_prediction(streamed.index, streamed.prediction)
            seconds.append(streamed.seconds)
            bar.update(1)
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
                      "p_value": getattr(prediction, "p_value", None),
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
        "peak_rss_mib": _peak_rss_mib(),
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
    radar, model_dir, reused = trained_model(source, config, cache, options, log)
    root = source.path

    # the model's own held-out normal images: never trained on, never tested on
    normal_files = training_images(root)
    split = calibration_split(len(normal_files), config)
    calibration_files = [normal_files[i] for i in split.calibration]
    conformal_files = [normal_files[i] for i in split.conformal]
    loaded = [as_image_array(p, config.data, config.patch_size)
              for p in progress_bar(calibration_files + conformal_files, enabled=options.progress, desc="loading",
                                    leave=False)]
    held_out = HeldOut(loaded[:len(calibration_files)], loaded[len(calibration_files):])
    calibration = held_out.calibration
    if radar.requested_config() != config:
        # a cached network trained with the same settings: other inference
        # or decision settings only need a new calibration or one-class model
        changes = {key: _setting(config, key) for key in radar.requested_config().changes(config)}
        radar, recalibrated = radar_variant(radar, changes, held_out)
        log(f"{source.name}: " + ("recalibrating the cached model for this run's inference settings" if recalibrated
                                  else "refitting the cached model's one-class model for this run's settings"))
    if options.backend != radar.backend:
        radar = radar.with_backend(options.backend)
    limit = min(options.calibration_limit or DEFAULT_CALIBRATION_LIMIT, len(calibration))
    rng = np.random.default_rng(config.seed)
    limited = sorted(rng.choice(len(calibration), limit, replace=False).tolist())
    conformal_limited = sorted(rng.choice(len(held_out.conformal), min(limit, len(held_out.conformal)),
                                          replace=False).tolist())
    # the slow baselines: a seeded share of each (the same images for every one of them)
    limited_held_out = HeldOut([calibration[i] for i in limited], [held_out.conformal[i] for i in conformal_limited])

    log(f"{source.name}: loading the test images")
    test = load_test_set(root, config, options)
    examples: dict[int, Example] = {}
    for item in example_items([test.items[i] for i in test.subset], config.seed):
        i = test.items.index(item)
        examples[i] = Example(_relative(item.path, root), item.label, test.images[i],
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
        "backend": radar.backend, "reference_method": reference,
        "splits": {
            "seed": config.seed,
            "n_train": len(split.train),
            "n_calibration": len(calibration_files),
            "n_conformal": len(conformal_files),
            "conformal_files": [_relative(p, root) for p in conformal_files],
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
