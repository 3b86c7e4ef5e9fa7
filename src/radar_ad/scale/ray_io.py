"""Where ``radar detect --engine ray`` reads and writes: locations (local
paths or URIs, through ``pyarrow.fs``: no shared file system is assumed),
the listing of the inputs, an image's bytes, the Parquet results in
``OUT/results`` and the map PNGs in ``OUT/maps``.

The results are part files, ``OUT/results/part-<UTC time>-<n>.parquet``, each
complete or absent (written under a temporary name and renamed on a local
disk; an object store writes an object at once), one row per image and
attempt; every row carries the run's key (:func:`run_key`), so that a rerun
knows which images it may skip. :mod:`radar_ad.scale.ray_detect` runs the
job on these.

Importing this module needs neither Ray nor pyarrow (the ``ray`` extra):
they are imported where they are used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..data import IMAGE_SUFFIXES, list_images
from ..errors import DataError, first_line, require
from ..files import atomic_file
from ..persistence import model_fingerprint
from ..records import ERROR_VERDICT
from ..report import prediction_maps

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

    from ..outputs import Prediction

PURPOSE = "`radar detect --engine ray`"
RESULTS_DIR = "results"
MAPS_DIR = "maps"
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
# A part file is written every this many rows or seconds (and at the end):
# a killed run loses at most that much work, and a rerun redoes it.
PART_ROWS = 10_000
PART_SECONDS = 60.0
# The columns of a row that come from the image's record (radar_ad.records).
RECORD_COLUMNS = ("verdict", "score", "threshold", "p_value", "mask_fraction", "error")


def require_ray() -> ModuleType:
    """Ray (with Ray Data) and pyarrow, or a one-line error naming the extra."""
    ray = require("ray", "ray", PURPOSE)
    require("ray.data", "ray", PURPOSE, "ray[data]")
    require("pyarrow", "ray", PURPOSE)
    return ray


# ------------------------------------------------------------------ locations
def is_uri(location: str) -> bool:
    """``s3://bucket/key``, ``gs://...``, ``file:///...``: a location for pyarrow.fs, not a local path."""
    return "://" in location


def normalized(location: str | os.PathLike[str]) -> str:
    """How a results row names an image: a URI as given, a local path made
    absolute (the same name from any working folder, on any worker)."""
    text = os.fspath(location)
    return text if is_uri(text) else os.path.abspath(text)


def join(location: str, *names: str) -> str:
    return "/".join([location.rstrip("/"), *names])


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of a path or URI, and the path in it."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError) as exc:  # an unknown scheme, a bucket or credentials it cannot find
        raise DataError(f"cannot open {location}: {first_line(exc)}") from None


def read_path_list(path: str | os.PathLike[str]) -> list[str]:
    """The image paths or URIs named in a text file, one a line; blank lines
    and lines starting with ``#`` are left out (``--from-list``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"list file not found: {path}", setting="from_list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the list file {path}: {first_line(exc)}", setting="from_list") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def list_inputs(paths: Sequence[str | os.PathLike[str]], exclude: str | None = None) -> list[str]:
    """The images of ``paths`` (files and folders, searched recursively;
    local paths or URIs), normalized (:func:`normalized`). ``exclude``: a
    local output folder whose tree is left out, as ``radar detect`` does."""
    require_ray()
    from pyarrow.fs import FileSelector, FileType

    images: list[str] = []
    for path in [os.fspath(path) for path in paths]:
        if not is_uri(path):
            local_exclude = exclude if exclude is not None and not is_uri(exclude) else None
            images += [normalized(image) for image in list_images(path, exclude=local_exclude)]
            continue
        fs, where = filesystem(path)
        info = fs.get_file_info(where)
        if info.type == FileType.NotFound:
            raise DataError(f"path not found: {path}")
        if info.type == FileType.File:
            images.append(path)
            continue
        scheme = path.split("://", 1)[0]
        found = sorted(f"{scheme}://{entry.path}" for entry in fs.get_file_info(FileSelector(where, recursive=True))
                       if entry.type == FileType.File and entry.extension.lower() in
                       [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES] and not entry.base_name.startswith("."))
        if not found:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {path}")
        images += found
    return images


def read_bytes(location: str) -> bytes:
    """An image file's bytes, read through pyarrow.fs (a path or a URI)."""
    from pyarrow.fs import FileType

    fs, where = filesystem(location)
    try:
        with fs.open_input_file(where) as handle:
            content: bytes = handle.read()
    except OSError as exc:  # only now ask why: one request per image on an object store, not two
        kind = fs.get_file_info(where).type
        if kind == FileType.NotFound:
            raise DataError(f"image not found: {location}") from None
        if kind == FileType.Directory:
            raise DataError(f"expected an image file, got a folder: {location}") from None
        raise DataError(f"cannot read image {location}: {first_line(exc)}") from None
    return content


# ------------------------------------------------------------------- results
def result_schema() -> pa.Schema:
    """The Parquet schema of ``OUT/results``: one row per image and attempt;
    ``maps`` names its PNGs relative to ``OUT``; ``error`` is null unless
    ``verdict`` is ``"error"``."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("verdict", pa.string()), ("score", pa.float64()),
                      ("threshold", pa.float64()), ("p_value", pa.float64()), ("mask_fraction", pa.float64()),
                      ("maps", pa.list_(pa.string())), ("error", pa.string()), ("model", pa.string())])


def result_row(location: str, record: Mapping[str, Any], maps: Sequence[str] = ()) -> dict[str, Any]:
    """An image's row of :func:`result_schema` from its record
    (:func:`~radar_ad.records.result_record` or
    :func:`~radar_ad.records.error_record`); ``maps``: its PNGs. The driver
    fills in ``model``."""
    return {"path": location, **{name: record[name] for name in RECORD_COLUMNS}, "maps": list(maps)}


def run_key(model: Path, backend: str | None, settings: dict[str, Any] | None) -> str:
    """What the verdicts depend on besides the image: the model's
    fingerprint, the backend and the settings changed on loading (16 hex digits)."""
    what = {"model": model_fingerprint(model), "backend": backend, "settings": settings or {}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def part_files(out: str) -> list[str]:
    """The part files in ``OUT/results`` (paths in ``out``'s file system),
    oldest first (their names sort by time)."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = filesystem(out)
    entries = fs.get_file_info(FileSelector(join(root, RESULTS_DIR), allow_not_found=True))
    return sorted(entry.path for entry in entries if entry.type == FileType.File
                  and entry.base_name.startswith(PART_PREFIX) and entry.base_name.endswith(PART_SUFFIX))


def read_results(out: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Every image's latest row in ``OUT/results`` (a rerun's row replaces an
    earlier error row of the same image), in the order they were written;
    ``columns``: only these (``path`` is always read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = os.fspath(out)
    fs, _ = filesystem(out)
    schema = result_schema()
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in dict.fromkeys(["path", *columns])])
    tables = []
    for part in part_files(out):
        try:
            tables.append(pq.read_table(part, filesystem=fs, schema=schema, columns=schema.names))
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read the results part {part}: {first_line(exc)}") from None
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    latest = {path: row for row, path in enumerate(table.column("path").to_pylist())}
    return table.take(sorted(latest.values()))


def finished_images(out: str, key: str | None = None) -> set[str]:
    """The images with a verdict in ``OUT/results``: what a rerun skips.
    With ``key`` (:func:`run_key`), results of another model or other
    settings are refused in one line."""
    table = read_results(out, columns=["verdict", "model"])
    if key is not None:
        others = sorted({str(model) for model in table.column("model").to_pylist() if model != key})
        if others:
            raise DataError(f"{out} holds results of another model or other settings (key {', '.join(others)}; "
                            f"this run's is {key}): use another --out, or --redo to score every image again "
                            "with this model", setting="out")
    return {path for path, verdict in zip(table.column("path").to_pylist(), table.column("verdict").to_pylist())
            if verdict != ERROR_VERDICT}


class PartWriter:
    """Rows in, Parquet part files out: a new part every :data:`PART_ROWS`
    rows or :data:`PART_SECONDS` seconds, each written whole (a temporary
    name, then a rename, on a local disk) under a name no file has yet."""

    def __init__(self, out: str) -> None:
        self.fs, root = filesystem(out)
        self.local = not is_uri(out)
        self.scheme = "" if self.local else out.split("://", 1)[0]
        self.folder = join(root, RESULTS_DIR)
        self.stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.last = time.monotonic()
        self.written: list[str] = []

    def add(self, rows: pa.Table) -> None:
        self.pending.append(rows)
        self.rows += rows.num_rows
        if self.rows >= PART_ROWS or time.monotonic() - self.last >= PART_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyarrow.fs import FileType

        self.last = time.monotonic()
        if not self.rows:
            return
        table = pa.concat_tables(self.pending).cast(result_schema())
        name = ""
        for n in range(len(self.written), len(self.written) + 1000):
            name = join(self.folder, f"{PART_PREFIX}{self.stamp}-{n:05d}{PART_SUFFIX}")
            if self.fs.get_file_info(name).type == FileType.NotFound:
                break
        if self.local:
            with atomic_file(name) as tmp:
                pq.write_table(table, str(tmp))
        else:
            pq.write_table(table, name, filesystem=self.fs)
        self.written.append(f"{self.scheme}://{name}" if self.scheme else name)
        self.pending, self.rows = [], 0


# ---------------------------------------------------------------- the output
def prepare_output(out: str, maps: bool) -> None:
    """``out`` as a folder (made if missing) with ``results`` (and, with
    ``maps``, ``maps``) in it."""
    from pyarrow.fs import FileType

    fs, root = filesystem(out)
    try:
        if fs.get_file_info(root).type == FileType.File:
            raise DataError(f"out must be a folder, got a file: {out}", setting="out")
        for folder in (RESULTS_DIR, MAPS_DIR) if maps else (RESULTS_DIR,):
            fs.create_dir(join(root, folder), recursive=True)
    except OSError as exc:
        raise DataError(f"cannot write to {out}: {first_line(exc)}", setting="out") from None


def map_stem(location: str) -> str:
    """The map files' name stem of an image: its own stem and a digest of its
    full location (unique without coordination between actors, and the
    same on a rerun)."""
    stem = PurePosixPath(location.replace("\\", "/")).stem or "image"
    return f"{stem}-{hashlib.sha256(location.encode()).hexdigest()[:10]}"


class MapFiles:
    """The map PNGs of an image in ``out`` (a folder or a URI),
    ``maps/<stem>_<kind>.png``, each whole or absent, as the part files."""

    def __init__(self, out: str) -> None:
        self.local = not is_uri(out)
        self.fs, self.root = filesystem(out)

    def write(self, prediction: Prediction, stem: str) -> list[str]:
        """The anomaly map, mask and overlay of ``prediction``; their names relative to ``out``."""
        names = []
        for kind, array in prediction_maps(prediction).items():
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            name = f"{MAPS_DIR}/{stem}_{kind}.png"
            if self.local:
                with atomic_file(Path(self.root) / name) as tmp:
                    tmp.write_bytes(buffer.getvalue())
            else:
                with self.fs.open_output_stream(join(self.root, name)) as stream:
                    stream.write(buffer.getvalue())
            names.append(name)
        return names
