"""Ablation: the paper's two features against the added energy-deficit
feature, with either one-class model, on one trained model.

    python benchmarks/energy_deficit.py MODEL_DIR DATASET [--backend onnx] [--json OUT]

The network is not retrained: for each variant the one-class model and the
pixel threshold are refitted (``Radar.calibrate``) on the model's own held-out
calibration images, re-derived from DATASET's ``train/good`` with the model's
seed, so no test image influences any setting. Prints a Markdown table of the
test-split metrics and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radar_ad import Radar
from radar_ad.data import training_images
from radar_ad.evaluation import evaluate
from radar_ad.pipeline import calibration_split

COLUMNS = ("accuracy", "precision", "recall", "f1", "image_auroc", "image_f1max", "pixel_auroc", "aupro")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--backend", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--json", type=Path, default=Path("energy_deficit.json"))
    args = parser.parse_args()

    radar = Radar.load(args.model, backend=args.backend)
    normal = training_images(args.dataset)
    _, held_out = calibration_split(len(normal), radar.config)
    if radar.config.train.calibrate_on_training:
        print("note: this model was calibrated on its training images; so is every variant here")
    calibration = [normal[i] for i in held_out]

    rows = []
    for deficit in (False, True):
        for model in ("isolation_forest", "local_outlier_factor"):
            radar.config.inference.energy_deficit = deficit
            radar.config.decision.one_class_model = model
            radar.calibrate(calibration)
            metrics = evaluate(radar, args.dataset).metrics
            rows.append({"features": "paper + energy deficit" if deficit else "paper (2)",
                         "one_class_model": model, **{k: metrics[k] for k in COLUMNS}})
            print(f"done: {rows[-1]['features']}, {model}", file=sys.stderr)
    print(f"{args.dataset.name}: {len(calibration)} calibration images, backend {args.backend}\n")
    print("| features | one-class model | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for row in rows:
        values = " | ".join("n/a" if row[k] is None else f"{row[k]:.3f}" for k in COLUMNS)
        print(f"| {row['features']} | {row['one_class_model']} | {values} |")
    args.json.write_text(json.dumps({"model": str(args.model), "dataset": str(args.dataset),
                                     "n_calibration": len(calibration), "rows": rows}, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
