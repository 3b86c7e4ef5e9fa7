"""Peak memory of one prediction against image size.

    python benchmarks/memory.py [MODEL] [--sizes 256,512,1024,2000,3000,4000]
                                [--time-limit 2400] [--set KEY=JSON ...] [--json OUT]

MODEL is a model directory from `radar train`. Without one, the default
architecture is trained for a single step (seeded) on small generated
surfaces and calibrated: memory does not depend on the weights.

Each size runs in a fresh Python process: load the model, predict one small
image (warm-up), then `Radar.predict` one random grayscale SIZE x SIZE image
(a uint8 array). The growth is the process's peak resident memory during
that call (VmHWM, reset just before it through /proc/self/clear_refs; where
that is not allowed, ru_maxrss) less its resident memory before it. The
table gives that growth, per pixel, and the marginal bytes per pixel between
consecutive sizes (what an extra pixel costs once the constants are paid:
the network's batch of patches, one tile of the response). Sizes still to
run when --time-limit is spent are reported as skipped.

Run it against another checkout of the package with PYTHONPATH=OTHER/src
(the children inherit it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child(model: str, size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import gc
    import resource

    import numpy as np

    import radar_ad
    from radar_ad import Radar

    radar = Radar.load(model)
    if overrides:
        radar = radar.with_settings(overrides)
    radar.predict(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))  # warm-up
    image = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    before = _kib("VmRSS") or 0
    started = time.perf_counter()
    prediction = radar.predict(image)
    seconds = time.perf_counter() - started
    peak = _kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    growth = max(0, (peak or 0) - before)
    return {"size": size, "pixels": size * size, "rss_before_mb": before / 2**20,
            "growth_mb": growth / 2**20, "bytes_per_pixel": growth / size**2,
            "seconds": seconds, "score": prediction.score, "verdict": prediction.verdict, "method": method,
            "package": str(Path(radar_ad.__file__).parent), "version": radar_ad.__version__}


def untrained_model(out: Path, overrides: dict[str, Any]) -> Path:
    """The default architecture trained for one step on generated 64 px surfaces."""
    from radar_ad import Radar, RadarConfig
    from radar_ad.synthetic import SyntheticSpec, make_dataset

    data = make_dataset(out / "data", SyntheticSpec(size=64, n_train=40, n_test_good=1, n_test_per_defect=1))
    config = RadarConfig().updated({"train.steps": 1, "train.calibration_fraction": 0.3, "train.conformal_size": 10,
                                    "decision.false_alarm_rate": 0.1, **overrides})
    Radar(config).fit(data, progress=False).save(out / "model")
    return out / "model"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: untrained default model)")
    parser.add_argument("--sizes", default="256,512,1024,2000,3000,4000", help="comma-separated image sides (px)")
    parser.add_argument("--time-limit", type=float, default=2400.0, help="seconds for all sizes together")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a setting for the prediction, e.g. inference.batch_size=64 (the untrained model "
                             "is trained with it)")
    parser.add_argument("--json", type=Path, default=Path("memory.json"))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.set)}
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), overrides)))
        return 0

    began = time.monotonic()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="radar-memory-") as scratch:
        model = args.model or untrained_model(Path(scratch), overrides)
        for size in sizes:
            left = args.time_limit - (time.monotonic() - began)
            if left <= 1:
                rows.append({"size": size, "pixels": size * size, "skipped": "time limit"})
                continue
            command = [sys.executable, __file__, "--child", str(model), str(size),
                       *(f"--set={item}" for item in args.set)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                rows.append({"size": size, "pixels": size * size, "skipped": "time limit (killed)"})
                continue
            if done.returncode != 0:
                rows.append({"size": size, "pixels": size * size,
                             "skipped": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{size} x {size}: +{rows[-1]['growth_mb']:.0f} MB in {rows[-1]['seconds']:.1f} s",
                  file=sys.stderr, flush=True)

    measured = [r for r in rows if "skipped" not in r]
    for previous, row in zip(measured, measured[1:]):
        row["marginal_bytes_per_pixel"] = ((row["growth_mb"] - previous["growth_mb"]) * 2**20
                                           / (row["pixels"] - previous["pixels"]))
    print("| image | pixels | peak RSS growth (MB) | bytes / pixel | marginal bytes / pixel | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['size']} x {r['size']} | {r['pixels']:,} | skipped: {r['skipped']} | | | |")
            continue
        marginal = f"{r['marginal_bytes_per_pixel']:.1f}" if "marginal_bytes_per_pixel" in r else "-"
        print(f"| {r['size']} x {r['size']} | {r['pixels']:,} | {r['growth_mb']:.0f} | {r['bytes_per_pixel']:.1f} "
              f"| {marginal} | {r['seconds']:.1f} |")
    result = {"model": str(args.model or "untrained default"), "overrides": args.set,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": sys.version.split()[0]},
              "seconds": time.monotonic() - began, "rows": rows}
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
