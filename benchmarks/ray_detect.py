"""Throughput of ``radar detect --engine ray`` on one machine, against the
same ``radar detect`` in one process, on the same images.

    python benchmarks/ray_detect.py [MODEL] [--size 256] [--images 32] [--workers 1,2]
                                    [--backend torch] [--maps] [--json OUT]

MODEL is a model directory or an exported file. Without one, the default
architecture is trained for a single step (seeded; the time per image does
not depend on the weights) on generated surfaces of --size px. The images
are generated surfaces too (normal and defective, --size px).

Every run is end to end, as a user meets it: model loading included, and for
Ray the scoring actors' start (a new process each, which imports radar-ad and
loads the model) and the driver's Parquet output; the local Ray instance is
started once beforehand (its start is reported on its own) and warmed up by
a run over two images, so that its pooled worker processes have imported
radar-ad. The local engine runs in this process with a thread per core; each
of N actors runs with cores // N threads. The table gives seconds, images
per second, Ray's overhead against the local run (seconds more, and speed
relative to it), and the largest score difference and the verdicts that
differ from the local run's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from radar_ad import Radar, RadarConfig
from radar_ad.apps.cli import main as radar_main
from radar_ad.backend import available_cores, threads_per_worker, use_threads
from radar_ad.scale.ray_detect import detect_on_ray, read_results
from radar_ad.synthetic import DEFECT_TYPES, SyntheticSpec, make_dataset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory or exported file "
                        "(default: the default architecture after one training step)")
    parser.add_argument("--size", type=int, default=256, help="generated image size in px (default 256)")
    parser.add_argument("--images", type=int, default=32, help="images scored per run (default 32)")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts (default 1,2)")
    parser.add_argument("--backend", default=None, help="backend of every run (default: the model's own)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--maps", action="store_true", help="also write the map PNGs (default: results only)")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the results here")
    args = parser.parse_args(argv)
    args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if args.images < 1 or args.size < 32 or not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--images must be >= 1, --size >= 32 and --workers a list of counts >= 1")
    return args


def generated_images(folder: Path, size: int, count: int) -> tuple[Path, list[Path]]:
    """Normal training surfaces and ``count`` test surfaces (about a third of
    them defective, when there are enough for every defect type)."""
    per_defect = count // (3 * len(DEFECT_TYPES))
    data = make_dataset(folder / "surfaces", SyntheticSpec(size=size, n_train=12, n_test_per_defect=per_defect,
                                                           n_test_good=count - per_defect * len(DEFECT_TYPES)))
    return data, sorted((data / "test").rglob("*.png"))


def untrained_default(data: Path, size: int, out: Path) -> Path:
    """The default configuration trained for one step on ``data``, saved to
    ``out``; with the contamination rule, as 12 normal images leave too few
    conformal ones for a false-alarm rate."""
    config = RadarConfig().updated({"data.resize": size, "train.steps": 1, "decision.false_alarm_rate": None})
    return Radar(config).fit(data, progress=False).save(out)


def run_local(model: Path, images: list[Path], out: Path, args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """``radar detect`` in this process: its seconds and its rows by file."""
    use_threads(available_cores())
    command = ["detect", str(model), *map(str, images), "--out", str(out), "-q",
               "--maps" if args.maps else "--no-maps", "--batch-size", str(args.batch_size)]
    if args.backend:
        command += ["--backend", args.backend]
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its summary line: the table says it
        code = radar_main(command)
    seconds = time.perf_counter() - began
    if code not in (0, 3):
        raise SystemExit(f"radar detect failed (exit {code})")
    with open(out / "results.csv", newline="") as handle:
        return seconds, {row["file"]: row for row in csv.DictReader(handle)}


def run_ray(model: Path, images: list[Path], out: Path, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    summary = detect_on_ray(model, images, out, backend=args.backend, workers=workers, maps=args.maps,
                            batch_size=args.batch_size, progress=False)
    rows = {row["path"]: row for row in read_results(out).to_pylist()}
    return {"seconds": summary.seconds, "images_per_s": summary.images_per_second, "scored": summary.scored,
            "failed": summary.failed, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, images = generated_images(folder, args.size, args.images)
        model = args.model or untrained_default(data, args.size, folder / "model")
        began = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        ray_start = time.perf_counter() - began
        try:
            detect_on_ray(model, images[:2], folder / "warm-up", backend=args.backend, workers=max(args.worker_counts),
                          maps=False, progress=False)
            local_seconds, local_rows = run_local(model, images, folder / "local", args)
            runs = {n: run_ray(model, images, folder / f"ray-{n}", n, args) for n in args.worker_counts}
        finally:
            ray.shutdown()

    local = {"seconds": local_seconds, "images_per_s": len(images) / local_seconds}
    rows = [{"engine": "local (this process)", "workers": 1, "threads_each": cores, **local,
             "overhead_s": 0.0, "vs_local": 1.0, "max_score_diff": 0.0, "verdicts_differing": 0}]
    for workers, run in runs.items():
        theirs = run.pop("rows")  # by absolute path, as the Ray results name images
        pairs = [(theirs[os.path.abspath(name)], row) for name, row in local_rows.items()]
        rows.append({"engine": "ray", "workers": workers, "threads_each": threads_per_worker(workers),
                     "seconds": run["seconds"], "images_per_s": run["images_per_s"],
                     "overhead_s": run["seconds"] - local_seconds, "vs_local": local_seconds / run["seconds"],
                     "max_score_diff": max((abs(a["score"] - float(b["score"])) for a, b in pairs
                                            if a["score"] is not None and b["score"]), default=0.0),
                     "verdicts_differing": sum(a["verdict"] != b["verdict"] for a, b in pairs)})

    print(f"{len(images)} images of {args.size} x {args.size} px, {cores} cores, Ray {ray.__version__}; "
          f"the local Ray instance started in {ray_start:.1f} s (not counted below)\n")
    print("| engine | workers | threads each | seconds | images/s | overhead vs local | speed vs local | "
          "max score difference | verdicts differing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['workers']} | {row['threads_each']} | {row['seconds']:.1f} | "
              f"{row['images_per_s']:.2f} | {row['overhead_s']:+.1f} s | {row['vs_local']:.2f}x | "
              f"{row['max_score_diff']:.1e} | {row['verdicts_differing']} of {len(images)} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "images": len(images), "size": args.size, "cores": cores, "backend": args.backend, "maps": args.maps,
            "model": str(args.model) if args.model else "default architecture, one training step",
            "ray_version": ray.__version__, "ray_start_s": ray_start, "python": platform.python_version(),
            "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
