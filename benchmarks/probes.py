"""Probes of a trained model on VALIDATION images: every candidate the
default chooses among (response x pyramid levels x image score), at one or
more timesteps, on any MVTec-layout folder (``--also repair``: and every
candidate of a response chosen only by name).

    python benchmarks/probes.py DATASET MODEL_DIR [--timesteps 0,200] [--out probes.json] [--also RESPONSE]

The validation split is ``radar benchmark``'s (a seeded share of each
defect type set aside, plus a seeded half of the model's conformal normal
images); the test split is never read. The candidates learn and fit on the
model's calibration images as its self-validation does. Per candidate:
image AUROC over all types and per type, pixel AUROC and AUPRO (at the
model's input size). Rows by scale show what each pyramid level adds, rows
by image score how the map becomes one number, rows by timestep where the
single step is best. A last row ranks the images by their size alone (a
bias of the data that no feature may read; it shows how much of a ranking
a dataset would give away). Prints a table and writes JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from radar_ad.bench.candidates import (
    candidate_options,
    metrics,
    num,
    open_probe,
    probe_parser,
    score_sets,
    write_result,
)
from radar_ad.data import image_size


def main(argv: list[str] | None = None) -> int:
    parser = probe_parser(__doc__, "probes.json", also=True)
    parser.add_argument("--timesteps", default=None, help="comma-separated (default: the model's)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    radar, splits = open_probe(args)
    validation = splits.validation
    types = validation.types
    timesteps = ([int(t) for t in args.timesteps.split(",")] if args.timesteps
                 else [radar.config.inference.timestep])
    rows: list[dict[str, Any]] = []
    for timestep in timesteps:
        model = radar if timestep == radar.config.inference.timestep else radar.with_settings(
            {"inference.timestep": timestep})
        config, options = candidate_options(model, also=args.also)
        (scored,) = score_sets(model, config, options, splits.calibration, [validation])
        for option in options:
            maps = scored.maps[(option.response, option.scales)]
            overall = metrics(validation, scored.scores[option], maps)
            rows.append({"timestep": timestep, **option.settings(), **overall,
                         "per_type": {t: metrics(validation, scored.scores[option], None, [t])["image_auroc"]
                                      for t in types}})
    sizes = -np.array([np.prod(image_size(Path(file))) for file in validation.files], dtype=np.float64)
    size_row = {"probe": "image size alone (smaller = defective)",
                **metrics(validation, sizes, None),
                "per_type": {t: metrics(validation, sizes, None, [t])["image_auroc"] for t in types}}
    header = f"{'t':>4} {'response':>13} {'scales':>7} {'image score':>11} | image AUROC  pixel AUROC  AUPRO | " + \
        " ".join(f"{t[:9]:>9}" for t in types)
    print(header)
    for row in rows:
        print(f"{row['timestep']:>4} {row['inference.response']:>13} {'/'.join(map(str, row['inference.scales'])):>7} "
              f"{row['inference.image_score']:>11} | {num(row['image_auroc']):>11}  {num(row['pixel_auroc']):>11}  "
              f"{num(row['aupro']):>5} | " + " ".join(f"{num(row['per_type'][t]):>9}" for t in types))
    print(f"{'image size alone':>38} | {num(size_row['image_auroc']):>11}  {'':>11}  {'':>5} | "
          + " ".join(f"{num(size_row['per_type'][t]):>9}" for t in types))
    result = {"command": " ".join(sys.argv), "dataset": str(args.dataset), "model": str(args.model),
              "model_config": radar.config.to_dict(), "selection": radar.selection(),
              "validation": {label: validation.labels.count(label) for label in sorted(set(validation.labels))},
              "rows": rows, "size_probe": size_row, "seconds": round(time.perf_counter() - began, 1)}
    write_result(args.out, result)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
