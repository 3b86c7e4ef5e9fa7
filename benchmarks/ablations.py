"""Ablations of the inference settings on a VALIDATION split, never the test split.

    python benchmarks/ablations.py MODEL_DIR DATASET [--groups response,timestep,...] [--set KEY=JSON] [--json OUT]

The network is not retrained: each variant changes inference or decision
settings and recalibrates (``Radar.calibrate``). Validation images:

- normal: the model's own held-out calibration images (re-derived from
  DATASET's ``train/good`` with the model's seed), split in two halves: the
  first half calibrates, the second half is scored; the model's conformal
  images stay its conformal images;
- defective: the seeded 20 % of each defect type that ``radar benchmark``
  sets aside (``benchmark.validation_split``) and never reports.

Prints one Markdown table per group and writes every row as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from radar_ad import Radar
from radar_ad.bench.splits import DEFAULT_VALIDATION_FRACTION, validation_split
from radar_ad.data import evaluation_images, load_mask, training_images
from radar_ad.metrics import image_metrics, pixel_metrics
from radar_ad.splits import three_way_split

# group -> variants (dotted-key overrides on top of the model's config)
GROUPS: dict[str, list[dict[str, Any]]] = {
    "response": [{"inference.response": "sobel"}, {"inference.response": "two_sided"}],
    "timestep": [{"inference.timestep": t} for t in (0, 5, 10, 25, 50, 100, 200)],
    "draws": [{"inference.draws": k} for k in (1, 4, 16)],
    "energy_window": [{"inference.energy_window": w} for w in (5, 9, 17)],
    "map_sigma": [{"inference.map_sigma": s} for s in (0.0, 4.0, 8.0, 12.0)],
    "window": [{"inference.window": w, "inference.window_stride": w} for w in (10, 20, 40)],
    "blur_sobel": [{"inference.blur_ksize": b, "inference.sobel_ksize": s} for b, s in ((3, 3), (5, 5), (7, 7))],
    "stride": [{"inference.stride": None}, {"inference.stride": 14}],
    "one_class": [{"decision.one_class_model": m, "decision.contamination": c}
                  for m in ("isolation_forest", "local_outlier_factor") for c in (0.01, 0.05, 0.1)],
    "calibration": [{"calibrate_on": "held_out"}, {"calibrate_on": "training"}],
    "paper_features": [{"inference.response": "sobel", "inference.feature_norm": n} for n in ("rms", "sum")],
}
COLUMNS = ("image_auroc", "f1", "precision", "recall", "pixel_auroc", "aupro", "seconds_per_image")


def with_variant(radar: Radar, base: dict[str, Any], overrides: dict[str, Any]) -> Radar:
    """``radar`` with the ``base`` settings plus the overrides (a new model
    sharing its network)."""
    return radar.with_settings({**base, **{k: v for k, v in overrides.items() if k != "calibrate_on"}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--json", type=Path, default=Path("ablations.json"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a base setting under every variant, e.g. inference.map_sigma=8")
    args = parser.parse_args()
    groups = args.groups.split(",")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; known: {', '.join(GROUPS)}")

    radar = Radar.load(args.model)
    base = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    normal = training_images(args.dataset)
    split = three_way_split(len(normal), radar.config)
    train_idx, held_out = split.train, split.calibration
    conformal = [normal[i] for i in split.conformal]  # only scored, as in the model
    half = len(held_out) // 2
    calibrate = [normal[i] for i in held_out[:half]]
    on_training = [normal[i] for i in np.random.default_rng(0).choice(train_idx, half, replace=False)]
    validation_normal = [normal[i] for i in held_out[half:]]
    defective, _ = validation_split(evaluation_images(args.dataset), DEFAULT_VALIDATION_FRACTION,
                                    radar.config.seed)
    paths = validation_normal + [item.path for item in defective]
    labels = np.r_[np.zeros(len(validation_normal)), np.ones(len(defective))].astype(int)
    print(f"{args.dataset.name}: calibrate on {len(calibrate)} held-out normal images; validate on "
          f"{len(validation_normal)} other held-out normal + {len(defective)} set-aside defective images",
          file=sys.stderr)

    rows = []
    for group in groups:
        for overrides in GROUPS[group]:
            model = with_variant(radar, base, overrides)
            model.refit_calibration(on_training if overrides.get("calibrate_on") == "training" else calibrate,
                                    conformal=conformal)
            began = time.perf_counter()
            predictions = model.predict_many(paths)
            seconds = (time.perf_counter() - began) / len(paths)
            metrics: dict[str, Any] = image_metrics(labels, np.array([p.score for p in predictions]),
                                                    np.array([p.is_anomalous for p in predictions]))
            masks = [np.zeros(p.anomaly_map.shape, bool) for p in predictions[:len(validation_normal)]]
            masks += [load_mask(item.mask_path, p.anomaly_map.shape)
                      for item, p in zip(defective, predictions[len(validation_normal):])]
            metrics.update(pixel_metrics(masks, [p.anomaly_map for p in predictions]))
            row = {"group": group, "variant": overrides, "seconds_per_image": seconds,
                   **{k: metrics[k] for k in COLUMNS if k in metrics}}
            rows.append(row)
            print(f"{group} {overrides}: " + " ".join(f"{k} {row[k]:.3f}" for k in COLUMNS), file=sys.stderr,
                  flush=True)

    for group in groups:
        print(f"\n{args.dataset.name}, {group}\n")
        print("| variant | " + " | ".join(COLUMNS) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        for row in (r for r in rows if r["group"] == group):
            variant = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in row["variant"].items())
            print(f"| {variant} | " + " | ".join(f"{row[k]:.3f}" for k in COLUMNS) + " |")
    args.json.write_text(json.dumps({
        "model": str(args.model), "dataset": str(args.dataset),
        "n_calibration": len(calibrate), "n_validation_normal": len(validation_normal),
        "n_validation_defective": len(defective), "rows": rows}, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
