"""Guard against tuning to seen defects: leave one defect type out.

    python benchmarks/leave_one_type_out.py DATASET MODEL_DIR [--out loto.json] [--validation-fraction 0.2]
        [--also RESPONSE]

``DATASET`` is any MVTec-layout folder, ``MODEL_DIR`` a model trained on it
(``radar train DATASET --out MODEL_DIR``). For each defect type T in turn:

- the candidates the default chooses among (response x pyramid levels x
  image score; :mod:`radar_ad.selection`) are scored on the validation
  images (the seeded share of each type set aside as ``radar benchmark``
  does, and a seeded half of the model's conformal normal images), and the
  one with the best validation image AUROC on the OTHER types is chosen
  (``--also repair``: the candidates of a response chosen only by name
  compete too);
- that choice is reported on the test images of T against the normal test
  images (image AUROC, pixel AUROC, AUPRO at the model's input size).

The mean over types estimates what a check on defect types nobody looked at
will find. Before it, every candidate's validation image AUROC, pixel
AUROC and AUPRO (all types) beside its synthetic-defect AUROC from the
model's self-validation. Beside the left-out rows, the model as trained:
its default chose its settings by self-validation on synthetic defects,
without any label, so its figure per type is already a left-out figure. The test split is scored once.
Prints a table and writes JSON.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from radar_ad import Radar
from radar_ad.bench.candidates import candidate_options, metrics, open_probe, probe_parser, score_sets, write_result


def model_scores(radar: Radar, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The trained model's own scores and maps (its default, as calibrated)."""
    scores, maps = [], []
    for streamed in radar.predict_stream([image.transpose(1, 2, 0) for image in images]):
        scores.append(streamed.prediction.score)
        maps.append(streamed.prediction.anomaly_map)
    return np.array(scores), maps


def main(argv: list[str] | None = None) -> int:
    parser = probe_parser(__doc__, "leave_one_type_out.json", also=True)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    radar, splits = open_probe(args)
    config, options = candidate_options(radar, also=args.also)
    validation, test = score_sets(radar, config, options, splits.calibration, [splits.validation, splits.test])
    own_scores, own_maps = model_scores(radar, splits.test.images)
    types = splits.test.types
    rows: list[dict[str, Any]] = []
    for left_out in [*types, None]:
        seen = [t for t in splits.validation.types if t != left_out]
        ranked = sorted(options, key=lambda o: -(metrics(splits.validation, validation.scores[o], None, seen)
                                                 ["image_auroc"] or 0.0))
        chosen = ranked[0]
        reported = [left_out] if left_out else types
        chosen_val = metrics(splits.validation, validation.scores[chosen], None, seen)
        chosen_test = metrics(splits.test, test.scores[chosen], test.maps[(chosen.response, chosen.scales)],
                              reported)
        own_test = metrics(splits.test, own_scores, own_maps, reported)
        rows.append({"left_out": left_out or "none (all types)", "chosen": chosen.settings(),
                     "validation_image_auroc": chosen_val["image_auroc"], "test": chosen_test,
                     "default_test": own_test})
    # every candidate on the validation images of every type (what the
    # choices above were made from), beside its synthetic-defect AUROC
    synthetic = {(row["inference.response"], tuple(row["inference.scales"]), row["inference.image_score"]):
                 row["image_auroc"] for row in (radar.selection() or {}).get("candidates", [])}
    candidates = [{**option.settings(), "synthetic_image_auroc": synthetic.get(
                       (option.response, option.scales, option.image_score)),
                   "validation": metrics(splits.validation, validation.scores[option],
                                         validation.maps[(option.response, option.scales)])}
                  for option in options]
    print(f"{'candidate':<44} | synthetic | validation image / pixel / AUPRO")
    for row in candidates:
        what = (f"{row['inference.response']} {'/'.join(map(str, row['inference.scales']))} "
                f"{row['inference.image_score']}")
        val = row["validation"]
        print(f"{what:<44} |     {_f(row['synthetic_image_auroc'])} | {_f(val['image_auroc'])} / "
              f"{_f(val['pixel_auroc'])} / {_f(val['aupro'])}")
    per_type = rows[:-1]
    summary = {name: float(np.mean([row[key][metric] for row in per_type if row[key][metric] is not None]))
               if per_type else None
               for name, key, metric in [("mean_image_auroc", "test", "image_auroc"),
                                         ("mean_pixel_auroc", "test", "pixel_auroc"),
                                         ("default_mean_image_auroc", "default_test", "image_auroc"),
                                         ("default_mean_pixel_auroc", "default_test", "pixel_auroc")]}
    print(f"{'left out':>18} | {'chosen on the other types (validation)':<52} | {'val':>5} | test image / pixel "
          "/ AUPRO | default (self-validated) image / pixel / AUPRO")
    for row in rows:
        chosen, test_row, own = row["chosen"], row["test"], row["default_test"]
        what = (f"{chosen['inference.response']} {'/'.join(map(str, chosen['inference.scales']))} "
                f"{chosen['inference.image_score']}")
        print(f"{row['left_out']:>18} | {what:<52} | {_f(row['validation_image_auroc'])} | "
              f"{_f(test_row['image_auroc'])} / {_f(test_row['pixel_auroc'])} / {_f(test_row['aupro'])} | "
              f"{_f(own['image_auroc'])} / {_f(own['pixel_auroc'])} / {_f(own['aupro'])}")
    print(f"mean over left-out types: chosen {_f(summary['mean_image_auroc'])} / {_f(summary['mean_pixel_auroc'])}"
          f"; default {_f(summary['default_mean_image_auroc'])} / {_f(summary['default_mean_pixel_auroc'])}")
    result = {"command": " ".join(sys.argv), "dataset": str(args.dataset), "model": str(args.model),
              "model_config": radar.config.to_dict(), "selection": radar.selection(),
              "splits": {"validation": _counts(splits.validation.labels), "test": _counts(splits.test.labels),
                         "calibration": len(splits.calibration)},
              "candidates": candidates, "rows": rows, "summary": summary,
              "seconds": round(time.perf_counter() - began, 1)}
    write_result(args.out, result)
    return 0


def _counts(labels: list[str]) -> dict[str, int]:
    return {label: labels.count(label) for label in sorted(set(labels))}


def _f(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
