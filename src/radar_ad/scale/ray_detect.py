"""Batch inspection on Ray: ``radar detect MODEL PATHS... --out DIR --engine ray``.

The same verdicts as ``radar detect`` on one machine, for archives too large
for one: the images flow one way through four stages.

1. The driver lists the images (paths, folders, URIs, ``--from-list``) and
   leaves out those that already have a verdict in ``OUT/results`` (a rerun
   finishes an interrupted run; error rows are tried again). Every row
   carries the run's key (:func:`run_key`: the model's fingerprint, the
   backend and the settings given): a rerun with another model or other
   settings is refused, unless ``redo`` scores every image again.
2. Ray Data tasks read each image's bytes through ``pyarrow.fs`` (a local
   path or a URI: no shared file system is assumed) and decode it as the
   model reads it (colour mode, resize), into uint8 pixels.
3. A pool of scoring actors, each with the model loaded once: the driver
   reads the model's files into bytes and ``ray.put``\\ s them; each actor
   writes them to a temporary folder of its own, sets its thread count
   (:func:`~radar_ad.backend.use_threads`, so that N actors share the cores
   instead of oversubscribing them) and loads them. An actor scores a batch,
   writes its map PNGs to ``OUT/maps`` through ``pyarrow.fs`` and returns one
   small row per image; an image that cannot be scored is a row with verdict
   ``error`` and the reason, never a failed job.
4. The driver writes the rows as Parquet part files in ``OUT/results``.

Where the images, the results and the maps live, and how they are read and
written, is :mod:`radar_ad.scale.ray_io`; its names are importable from here
too.

Importing this module needs neither Ray nor pyarrow (the ``ray`` extra):
they are imported where they are used.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import errors
from ..backend import available_cores, threads_per_worker, use_threads
from ..config import DataConfig
from ..data import MAX_BATCH_IMAGES, load_image_bytes
from ..errors import ConfigError, ModelError, RadarError, first_line
from ..files import TEMPORARY_MARKER, remove_temporary_dir
from ..persistence import CONFIG_FILE, MODEL_FILES
from ..progress import progress_bar
from ..records import ERROR_VERDICT, error_record, result_record
from .ray_io import (
    MAPS_DIR,
    PART_PREFIX,
    PART_ROWS,
    PART_SECONDS,
    PART_SUFFIX,
    PURPOSE,
    RESULTS_DIR,
    MapFiles,
    PartWriter,
    filesystem,
    finished_images,
    is_uri,
    join,
    list_inputs,
    map_stem,
    normalized,
    part_files,
    prepare_output,
    read_bytes,
    read_path_list,
    read_results,
    require_ray,
    result_row,
    result_schema,
    run_key,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from ..outputs import Prediction

__all__ = [
    "DECODE_CPUS", "ERROR_VERDICT", "MAPS_DIR", "MAX_BATCH_IMAGES", "MAX_BLOCKS", "MAX_WORKERS", "PART_PREFIX",
    "PART_ROWS", "PART_SECONDS", "PART_SUFFIX", "PURPOSE", "RAY_LOG_LEVEL", "RESULTS_DIR", "SCORING_SHARE",
    "RayDetectSummary", "Scorer", "decode_batch", "decode_image", "detect_on_ray", "filesystem", "finished_images",
    "is_uri", "join", "list_inputs", "map_stem", "model_files", "normalized", "part_files", "read_image",
    "read_path_list", "read_results", "require_ray", "result_schema", "run_key",
]

MAX_WORKERS = 1024
# Blocks of image paths handed to the decoding tasks (a million images in blocks of 100, not 62,500 of 16).
MAX_BLOCKS = 10_000
# Logical CPUs: the scoring actors together reserve this share of the
# cluster's, the rest is left to the decoding tasks that feed them (actors
# that reserved every CPU would leave the decoding no room, and the job
# would wait forever); each decoding task reserves DECODE_CPUS.
SCORING_SHARE = 0.75
DECODE_CPUS = 0.25
RAY_LOG_LEVEL = "RAY_BACKEND_LOG_LEVEL"


@dataclass
class RayDetectSummary:
    """What one ``detect_on_ray`` run did: ``images`` asked for (duplicates
    counted once); ``scored`` got a verdict in this run, ``anomalous`` of
    them flagged; ``failed`` got an error row; ``skipped`` already had a
    verdict in ``out`` from an earlier run. ``seconds``: the whole run, model
    loading and actor start included; ``parts``: the part files written."""

    out: str
    images: int
    scored: int
    anomalous: int
    failed: int
    skipped: int
    seconds: float
    workers: int
    parts: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Images scored or failed in this run per second of it."""
        return (self.scored + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        done = (f"{self.images} images: {self.scored} scored ({self.anomalous} anomalous), {self.failed} failed, "
                f"{self.skipped} skipped (scored by an earlier run)")
        pace = (f"{self.images_per_second:.1f} images/s on {self.workers} workers; "
                if self.scored + self.failed else "")
        return f"{done}; {pace}results in {join(self.out, RESULTS_DIR)} ({len(self.parts)} new part files)"


# ------------------------------------------------------------------- decoding
def decode_image(content: bytes, name: str, data: DataConfig, min_size: int) -> np.ndarray:
    """An image file's bytes as the model reads it
    (:func:`~radar_ad.data.load_image_bytes`: its colour mode and resize), as
    uint8 ``(H, W)`` or ``(H, W, C)``, the exact pixels the model would see
    (``(H, W[, C])`` uint8 is what ``as_image_array`` reads back without
    loss). A :class:`DataError` naming ``name`` for anything that is not a
    usable image."""
    array = load_image_bytes(content, name, data, min_size)
    pixels = (array * 255 + 0.5).astype(np.uint8)  # exact: the array is uint8 / 255
    return pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0))


def read_image(location: str, data: DataConfig, min_size: int) -> np.ndarray:
    """:func:`decode_image` of a file read through pyarrow.fs (a path or a URI)."""
    return decode_image(read_bytes(location), location, data, min_size)


def decode_batch(batch: pa.Table, data: DataConfig, min_size: int) -> pa.Table:
    """Ray Data stage 2: ``path`` -> ``pixels`` (the raw uint8 bytes), ``shape``
    and ``error`` (null, or why the image cannot be used: its row then has
    no pixels)."""
    import pyarrow as pa

    pixels: list[bytes] = []
    shapes: list[list[int]] = []
    errors: list[str | None] = []
    for location in batch.column("path").to_pylist():
        try:
            image = read_image(location, data, min_size)
        except RadarError as exc:
            pixels.append(b"")
            shapes.append([])
            errors.append(first_line(exc))
            continue
        pixels.append(image.tobytes())
        shapes.append(list(image.shape))
        errors.append(None)
    return pa.table({"path": batch.column("path"), "pixels": pa.array(pixels, pa.large_binary()),
                     "shape": pa.array(shapes, pa.list_(pa.int32())), "error": pa.array(errors, pa.string())})


# -------------------------------------------------------------------- scoring
def model_files(model: Path) -> tuple[str, dict[str, bytes]]:
    """What a worker needs to load ``model`` without a shared file system:
    the name to load (``""``: the folder itself) and the files' bytes by name."""
    if model.is_file():
        return model.name, {model.name: model.read_bytes()}
    if not (model / CONFIG_FILE).is_file():
        raise ModelError(f"{model} is not a radar model directory (no {CONFIG_FILE})")
    names = [name for name in MODEL_FILES if (model / name).is_file()]
    return "", {name: (model / name).read_bytes() for name in names}


class Scorer:
    """Ray Data stage 3, one per actor: loads the model once, then scores
    batches of decoded images into result rows (:func:`result_schema`).

    ``shipped``: a one-item list holding the ``ObjectRef`` of
    :func:`model_files`' output (in a list, so that Ray hands it over
    unresolved and the actor fetches it itself). ``workers_per_node``: the
    actors that share this actor's machine, whose cores they split."""

    def __init__(self, shipped: list[Any], name: str, *, backend: str | None, device: str | None,
                 settings: dict[str, Any] | None, workers_per_node: int, out: str, maps: bool) -> None:
        import ray

        from ..pipeline import Radar

        use_threads(threads_per_worker(workers_per_node))  # before the model: its engine reads the count
        files: dict[str, bytes] = ray.get(shipped[0])
        folder = Path(tempfile.mkdtemp(prefix="radar-ad-model-"))
        (folder / TEMPORARY_MARKER).touch()  # what remove_temporary_dir removes, and nothing else
        # A failure here is kept and raised by the first batch: an actor that dies while it starts is
        # retried by Ray, with a traceback on the driver's terminal; a batch's error ends the run in one line.
        self.failure: str | None = None
        try:
            for file_name, content in files.items():
                (folder / file_name).write_bytes(content)
            self.radar = Radar.load(folder / name if name else folder, device=device, backend=backend,
                                    settings=settings)
        except RadarError as exc:
            self.failure = first_line(exc)
        except Exception as exc:  # an engine's own error (no CUDA on this machine, a missing library)
            self.failure = f"{type(exc).__name__}: {first_line(exc)}"
        finally:  # every engine holds the model in memory once loaded
            remove_temporary_dir(folder)
        self.map_files = MapFiles(out) if maps else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        if self.failure is not None:
            raise ModelError(f"a Ray worker could not load the model: {self.failure}")
        threshold = float(self.radar.decision_.threshold_)
        locations = batch.column("path").to_pylist()
        errors: list[str | None] = batch.column("error").to_pylist()
        usable = [i for i, error in enumerate(errors) if error is None]
        pixels, shapes = batch.column("pixels"), batch.column("shape")
        arrays = [np.frombuffer(pixels[i].as_py(), dtype=np.uint8).reshape(shapes[i].as_py()) for i in usable]
        rows: list[dict[str, Any]] = [result_row(location, error_record(threshold, error or ""))
                                      for location, error in zip(locations, errors)]
        for streamed in self.radar.predict_stream(arrays, chunk_size=max(1, len(arrays)), keep_going=True):
            i = usable[streamed.index]
            if streamed.prediction is None:
                rows[i] = result_row(locations[i], error_record(threshold, streamed.error or "cannot be scored"))
            else:
                rows[i] = self._row(locations[i], streamed.prediction)
        return pa.Table.from_pylist(rows, schema=result_schema())

    def _row(self, location: str, prediction: Prediction) -> dict[str, Any]:
        record = result_record(prediction)
        if self.map_files is None:
            return result_row(location, record)
        try:
            maps = self.map_files.write(prediction, map_stem(location))
        except OSError as exc:  # the output refused a file: this image's row says so, the next may work
            return result_row(location, error_record(record["threshold"], "cannot write its maps: "
                                                     f"{exc.strerror or first_line(exc)}"))
        return result_row(location, record, maps)


# ------------------------------------------------------------------ the run
@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """No Ray Data progress bars, log lines or warnings on the driver while it
    runs (the driver shows its own bar, and a failure becomes one line of
    ours), restored afterwards."""
    from ray.data import DataContext

    context = DataContext.get_current()
    switches = [name for name in ("enable_progress_bars", "print_on_execution_start") if hasattr(context, name)]
    saved = [getattr(context, name) for name in switches]
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in loggers]
    for name in switches:
        setattr(context, name, False)
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"ray(\.|$)")  # advice on tuning a pool, for Ray's own users
            yield
    finally:
        for name, value in zip(switches, saved):
            setattr(context, name, value)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def _native_stderr_dropped(unless: bool = False) -> Iterator[None]:
    """Drop what native code writes straight to file descriptor 2 meanwhile
    (Python's own errors still raise; ``unless``: keep it)."""
    if unless:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local instance on this
    machine's cores (an instance this process already runs is used as it
    is). True when this call started or joined one (and should leave it)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": address} if address else {"address": "local", "num_cpus": available_cores()}
    # Ray's C++ parts log to this process's stderr (e.g. an error-level note on every actor pool Ray Data
    # starts, ray-project/ray#53727) and to the processes a local instance starts: fatal only, unless the
    # user asked for more; this process's environment is left as it was
    saved = os.environ.get(RAY_LOG_LEVEL)
    os.environ.setdefault(RAY_LOG_LEVEL, "fatal")
    try:
        with _native_stderr_dropped(unless=saved is not None):  # where Ray says, at info level, that it read it
            ray.init(**options, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                     logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise ConfigError(f"address: cannot reach a Ray cluster {where}: {first_line(exc)}",
                          setting="address") from None
    finally:
        if saved is None:
            os.environ.pop(RAY_LOG_LEVEL, None)
    return True


def _cluster(ray: ModuleType) -> tuple[float, int]:
    """The cluster's logical CPUs and the number of its machines that have any."""
    nodes = [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
    return float(ray.cluster_resources().get("CPU", 1.0)), max(1, len(nodes))


def _worker_error(exc: BaseException) -> RadarError:
    """A failure inside Ray (a worker that could not load the model, a batch
    that raised) as one line: the radar error it carries, else the last
    error its remote traceback names. Ray hands the worker's exception over
    as the text of that traceback, not as the object."""
    text = str(exc)
    ours = re.findall(r"^radar_ad\.errors\.(\w+): (.+)$", text, flags=re.MULTILINE)
    if ours:
        kind, message = ours[-1]
        error_type = getattr(errors, kind, None)
        if isinstance(error_type, type) and issubclass(error_type, RadarError):
            return error_type(message)
    named = [line for line in re.findall(r"^([\w.]*(?:Error|Exception): .+)$", text, flags=re.MULTILINE)
             if not line.startswith("ray.")]
    return ModelError(f"a Ray worker failed: {named[-1] if named else first_line(exc)}")


def detect_on_ray(model: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]],
                  out: str | os.PathLike[str], *, backend: str | None = None, device: str | None = None,
                  workers: int | None = None, address: str | None = None, maps: bool = True,
                  batch_size: int = 16, settings: dict[str, Any] | None = None,
                  progress: bool = True, redo: bool = False) -> RayDetectSummary:
    """Score ``images`` (paths or URIs of image files) on a Ray cluster and
    write their rows to ``out`` (a folder path or a URI): Parquet parts in
    ``out/results`` (:func:`read_results` reads them) and, with ``maps``,
    the anomaly map, mask and overlay PNGs in ``out/maps``.

    ``model``: a model directory or an exported file on this machine, read
    here and shipped to the workers; ``backend``, ``device``, ``settings``:
    as :meth:`Radar.load`. ``address``: the cluster (default: a local
    instance on this machine's cores; a running instance of this process is
    used as it is). ``workers``: scoring actors, 1 to 1024 (default: one per
    logical CPU of the cluster), each loading the model once and running on
    its share of its machine's cores. ``batch_size``: images per batch read,
    decoded and scored together.

    Images that already have a verdict in ``out`` are skipped (a rerun
    finishes a run); an image that cannot be scored is an error row (tried
    again on a rerun), never a failed run: ``summary.failed`` counts them.
    A rerun with another model, backend or settings is refused; ``redo``
    scores every image again instead (its rows replace the earlier ones).
    """
    from ..pipeline import Radar

    ray = require_ray()
    if not 1 <= batch_size <= MAX_BATCH_IMAGES:
        raise ConfigError(f"batch_size must be in [1, {MAX_BATCH_IMAGES}], got {batch_size}", setting="batch_size")
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be in [1, {MAX_WORKERS}], got {workers}", setting="workers")
    began = time.perf_counter()
    model, out = Path(model), normalized(out)
    # loaded here once so that a bad model, backend or setting is one line now, not an error in every actor
    radar = Radar.load(model, device="cpu", backend=backend, settings=settings)
    radar.warn_false_alarms()
    name, files = model_files(model)
    prepare_output(out, maps)
    wanted = list(dict.fromkeys(normalized(image) for image in images))
    key = run_key(model, backend, settings)
    finished = set() if redo else finished_images(out, key)
    todo = [image for image in wanted if image not in finished]
    summary = RayDetectSummary(out, len(wanted), 0, 0, 0, len(wanted) - len(todo), 0.0, 0)
    if todo:
        leave = _connect(ray, address)
        try:
            _run(ray, radar, todo, name, files, out, summary, key, workers=workers, backend=backend, device=device,
                 settings=settings, maps=maps, batch_size=batch_size, progress=progress)
        finally:
            if leave:
                ray.shutdown()
    summary.seconds = time.perf_counter() - began
    return summary


def _run(ray: ModuleType, radar: Any, todo: list[str], name: str, files: dict[str, bytes], out: str,
         summary: RayDetectSummary, key: str, *, workers: int | None, backend: str | None, device: str | None,
         settings: dict[str, Any] | None, maps: bool, batch_size: int, progress: bool) -> None:
    """Stages 2 to 4 on a connected cluster, counting into ``summary``;
    every row carries ``key``."""
    import pyarrow as pa

    cpus, machines = _cluster(ray)
    workers = workers or max(1, min(MAX_WORKERS, int(cpus)))
    # blocks: what the decoding tasks take one at a time, at least one per actor; no more actors than blocks
    blocks = min(len(todo), max(workers, min(math.ceil(len(todo) / batch_size), MAX_BLOCKS)))
    actors = summary.workers = min(workers, blocks)
    # --device cuda: each actor asks Ray for its share of the cluster's GPUs (Ray then gives it its own)
    gpus = float(ray.cluster_resources().get("GPU", 0)) if device and device.startswith("cuda") else 0.0
    if device and device.startswith("cuda") and not gpus:
        raise ConfigError(f"device {device}: the Ray cluster has no GPU", setting="device")
    gpu_share = {"num_gpus": min(1.0, gpus / actors)} if gpus else {}
    shipped = [ray.put(files)]
    parts = PartWriter(out)
    try:
        with _quiet_ray_data():
            dataset = ray.data.from_items([{"path": image} for image in todo], override_num_blocks=blocks)
            dataset = dataset.map_batches(decode_batch, batch_format="pyarrow", batch_size=batch_size,
                                          fn_kwargs={"data": radar.config.data, "min_size": radar.config.patch_size},
                                          num_cpus=DECODE_CPUS)
            dataset = dataset.map_batches(
                Scorer, batch_format="pyarrow", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=SCORING_SHARE * cpus / actors, **gpu_share, fn_constructor_args=(shipped, name),
                fn_constructor_kwargs={"backend": backend, "device": device, "settings": settings,
                                       "workers_per_node": math.ceil(actors / machines), "out": out, "maps": maps})
            with progress_bar(total=len(todo), enabled=progress, desc="detecting", unit="img") as bar:
                for rows in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    rows = rows.set_column(rows.schema.get_field_index("model"), "model",
                                           pa.array([key] * rows.num_rows, pa.string()))
                    parts.add(rows)
                    verdicts = rows.column("verdict").to_pylist()
                    failed = verdicts.count(ERROR_VERDICT)
                    summary.failed += failed
                    summary.scored += len(verdicts) - failed
                    summary.anomalous += verdicts.count("anomalous")
                    bar.update(len(verdicts))
    except RadarError:
        raise
    except ray.exceptions.RayError as exc:
        raise _worker_error(exc) from None
    finally:  # what was scored is kept, also when the run stops (Ctrl-C, a worker's failure)
        parts.flush()
        summary.parts = parts.written
