"""How fast the drift alarm fires, and how often it fires for nothing.

On the demo's renderer (its model: ``--model``, or the demo trained into
``--work``), fresh surfaces the model never saw are scored once each: a pool
of normal surfaces, a pool of defective ones (the demo's defect types), and
for every shift (brightness +3 / +10 / +30 %, Gaussian blur sigma 0.5 / 1 / 2
px) the same normal surfaces changed by it. Streams are then drawn from the
pools (seeded, without replacement within a stream): ``--before`` unshifted
images, then up to ``--after`` shifted ones, each image defective with
probability ``--defect-share`` (the ordinary share of defects on a line;
defects are not shifted). For each stream the delay is the number of images
after the shift until the alarm; a stream whose alarm fired before the shift
counts as a false alarm; one that never fired is censored.

Three monitors are compared: ``both`` (what the library does: the p-values
of images judged normal, and the share of images flagged against
``decision.drift_defect_share``), ``normal`` (the first question alone) and
``all`` (every image's p-value, defects included). The false-alarm rate is
measured on unshifted streams of ``--before + --after`` images with the same
share of defects.

    python benchmarks/drift.py --out drift.json
    python benchmarks/drift.py --model radar-demo/model --streams 50

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from radar_ad.apps.demo import run_demo
from radar_ad.bench.candidates import write_result
from radar_ad.demo_data import DEMO_SPEC
from radar_ad.drift import DriftMonitor
from radar_ad.pipeline import Radar
from radar_ad.progress import progress_bar
from radar_ad.synthetic import add_defect, render_surface

SHIFTS = (("brightness", 0.03), ("brightness", 0.10), ("brightness", 0.30), ("blur", 0.5), ("blur", 1.0),
          ("blur", 2.0))
FEEDS = ("both", "normal", "all")
SEED_OFFSET = 27_182  # apart from the demo's own surfaces


def shifted(image: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """A uint8 surface after the line changed: brighter by ``amount``, or blurred by sigma ``amount`` px."""
    values = image.astype(np.float32)
    values = values * (1 + amount) if kind == "brightness" else ndimage.gaussian_filter(values, amount)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def render_pools(n_normal: int, n_defective: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng([seed, SEED_OFFSET])
    normal = [render_surface(rng, DEMO_SPEC.size).to_uint8() for _ in range(n_normal)]
    defective = []
    for k in range(n_defective):
        kind = DEMO_SPEC.defect_types[k % len(DEMO_SPEC.defect_types)]
        image, _ = add_defect(render_surface(rng, DEMO_SPEC.size), kind, rng, float(rng.uniform(*DEMO_SPEC.severity)))
        defective.append(image)
    return normal, defective


def score(radar: Radar, images: list[np.ndarray], desc: str) -> np.ndarray:
    scores = []
    with progress_bar(total=len(images), desc=desc, unit="img") as bar:
        for start in range(0, len(images), 16):
            scores += [p.score for p in radar.predict_many(images[start:start + 16])]
            bar.update(len(images[start:start + 16]))
    return np.array(scores, dtype=np.float64)


def monitor(radar: Radar, feed: str) -> DriftMonitor:
    """The library's monitor (``both``), its first question alone (``normal``), or every image's p-value (``all``)."""
    decision, settings = radar.decision_, radar.config.decision
    threshold = math.inf if feed == "all" else decision.threshold_
    share = settings.drift_defect_share if feed == "both" else None
    return DriftMonitor(decision.conformal_scores_, threshold, settings.drift_delta, radar.config.seed, share)


def stream(rng: np.random.Generator, before: np.ndarray, after: np.ndarray, defects: np.ndarray,
           n_before: int, n_after: int, share: float) -> np.ndarray:
    """Scores of one stream: ``n_before`` from ``before`` then ``n_after`` from ``after``, each a defect with
    probability ``share`` (drawn without replacement within the stream)."""
    n = n_before + n_after
    is_defect = rng.random(n) < share
    normal_before = rng.permutation(before)[:n_before]
    normal_after = rng.permutation(after)[:n_after]
    picked = rng.choice(defects, size=int(is_defect.sum()), replace=len(defects) < is_defect.sum())
    values = np.concatenate([normal_before, normal_after])
    values[is_defect] = picked
    return values


def run_streams(radar: Radar, feed: str, before: np.ndarray, after: np.ndarray | None, defects: np.ndarray,
                args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Alarms and delays over ``args.streams`` streams (``after=None``: unshifted streams)."""
    delays, early, fired = [], 0, 0
    for k in range(args.streams):
        rng = np.random.default_rng([args.seed, seed, k])
        tail = before if after is None else after
        values = stream(rng, before, tail, defects, args.before, args.after, args.defect_share)
        watcher = monitor(radar, feed)
        alarm = None
        for i, value in enumerate(values):
            watcher.update(float(value))
            if watcher.alarm_at is not None:
                alarm = i
                break
        if alarm is None:
            delays.append(math.inf)
        elif alarm < args.before:
            early += 1
        else:
            fired += 1
            delays.append(alarm - args.before + 1)
    finite = [d for d in delays if math.isfinite(d)]
    return {"streams": args.streams, "false_alarms": early, "false_alarm_rate": early / args.streams,
            "fired": fired, "median_delay": float(np.median(delays)) if delays and np.isfinite(np.median(delays))
            else None,
            "delays": [None if not math.isfinite(d) else int(d) for d in delays],
            "mean_delay_when_fired": float(np.mean(finite)) if finite else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="A demo model directory (default: train the demo in --work).")
    parser.add_argument("--work", type=Path, default=Path("radar-drift-bench"), help="Where the demo is trained.")
    parser.add_argument("--streams", type=int, default=30, help="Streams per condition.")
    parser.add_argument("--before", type=int, default=100, help="Unshifted images before the shift.")
    parser.add_argument("--after", type=int, default=300, help="Shifted images at most.")
    parser.add_argument("--defect-share", type=float, default=0.05, help="Share of defective images in a stream.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("drift.json"))
    args = parser.parse_args()
    began = time.perf_counter()
    model = args.model or run_demo(args.work).model_dir
    radar = Radar.load(model, device="cpu")
    n_normal = args.before + args.after
    normal, defective = render_pools(n_normal, max(20, math.ceil(3 * args.defect_share * n_normal)), args.seed)
    pools = {"normal": score(radar, normal, "normal surfaces"), "defective": score(radar, defective, "defects")}
    for kind, amount in SHIFTS:
        pools[f"{kind} {amount:g}"] = score(radar, [shifted(image, kind, amount) for image in normal[:args.after]],
                                            f"{kind} {amount:g}")
    rows = []
    for feed in FEEDS:
        row = {"feed": feed, "unshifted": run_streams(radar, feed, pools["normal"], None, pools["defective"], args, 0)}
        for j, (kind, amount) in enumerate(SHIFTS, start=1):
            row[f"{kind} {amount:g}"] = run_streams(radar, feed, pools["normal"], pools[f"{kind} {amount:g}"],
                                                    pools["defective"], args, j)
        rows.append(row)
    names = ["unshifted"] + [f"{kind} {amount:g}" for kind, amount in SHIFTS]
    print(f"drift alarm on the demo's renderer: delta {radar.config.decision.drift_delta:g}, defect share "
          f"{radar.config.decision.drift_defect_share:g}, "
          f"{args.streams} streams per condition, {args.before} images before the shift, at most {args.after} "
          f"after, {args.defect_share:.0%} defects; {radar.decision_.n_conformal} conformal images")
    print(f"{'feed':<8}{'false alarms':>14}" + "".join(f"{name:>16}" for name in names[1:]))
    for row in rows:
        cells = [f"{row['unshifted']['false_alarm_rate']:.3f}"]
        for name in names[1:]:
            result = row[name]
            median = result["median_delay"]
            shown = f">{args.after}" if median is None or not math.isfinite(median) else f"{median:.0f}"
            cells.append(f"{shown} ({result['fired']}/{result['streams']})")
        print(f"{row['feed']:<8}{cells[0]:>14}" + "".join(f"{cell:>16}" for cell in cells[1:]))
    print("cells: median delay in images after the shift (streams where the alarm fired after the shift / all); "
          "false alarms: share of unshifted streams that alarmed")
    mean_normal = {name: float(np.mean(pools[name] > radar.decision_.threshold_)) for name in pools}
    write_result(args.out, {"command": "python benchmarks/drift.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "model": str(model), "delta": radar.config.decision.drift_delta,
        "n_conformal": radar.decision_.n_conformal, "flagged_share": mean_normal,
        "pool_mean_score": {name: float(np.mean(values)) for name, values in pools.items()},
        "rows": rows, "seconds": time.perf_counter() - began})


if __name__ == "__main__":
    main()
