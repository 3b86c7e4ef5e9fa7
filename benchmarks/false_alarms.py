"""The conformal false-alarm rule measured: validation first, the test split once.

    python benchmarks/false_alarms.py demo /path/to/dagm_class1 /path/to/magnetic_tile --out fa-results

Per dataset (``demo``: the built-in data with a quarter more normal images,
generated into ``OUT/demo``):

1. A seeded 20 % of ``train/good`` is set aside as NORMAL VALIDATION images;
   the model trains on the rest (``Radar.fit``: its own seeded three-way
   split into network training, calibration and conformal images), with the
   README's protocol (demo: its own config; real data: 256 px, 1000 steps).
   Models are cached in ``OUT/models``.
2. Validation (normal validation images + the seeded 20 % of each defect
   type that ``radar benchmark`` sets aside): which score ranks better (the
   one-class score or the largest standardised image feature, image AUROC),
   and F1 of the contamination rule against the false-alarm rule at 0.05.
3. Test (every other test image, once): for alpha in 0.01, 0.05, 0.10 the
   observed false-alarm rate on the normal test images with its 95 %
   Clopper-Pearson interval and the bound ``alpha + 1.96 sqrt(alpha (1 -
   alpha) / n)``, recall and F1 on the defective ones; the contamination
   rule beside them; pixel metrics at the model's input size and at the
   masks' own size.
4. The guarantee holds over the draw of the conformal images too: the
   pooled normal images nothing was fitted on (conformal + normal
   validation + normal test) are re-split 2000 times into n conformal
   images and the rest, and the false-alarm rates of the rule summarised.

Prints Markdown tables and writes ``OUT/false_alarms.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

from radar_ad import Radar, RadarConfig
from radar_ad.bench.splits import DEFAULT_VALIDATION_FRACTION, validation_split
from radar_ad.data import evaluation_images, training_images
from radar_ad.decision import conformal_threshold
from radar_ad.demo_data import DEMO_SPEC, demo_config
from radar_ad.evaluation import truth_and_map
from radar_ad.files import json_ready, write_json
from radar_ad.metrics import image_metrics, pixel_metrics
from radar_ad.synthetic import make_dataset

ALPHAS = (0.01, 0.05, 0.10)
NORMAL_VALIDATION_FRACTION = 0.2
RESPLITS = 2000


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided binomial interval for ``k`` successes in ``n``."""
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def f1(flagged: np.ndarray, labels: np.ndarray) -> float:
    tp = int((flagged & (labels == 1)).sum())
    fp = int((flagged & (labels == 0)).sum())
    fn = int((~flagged & (labels == 1)).sum())
    return 2 * tp / max(1, 2 * tp + fp + fn)


def trained(name: str, root: Path, config: RadarConfig, out: Path, seed: int) -> tuple[Radar, list[Path]]:
    """The model trained on ``train/good`` minus the normal validation
    images (cached), and those images."""
    normal = training_images(root)
    order = np.random.default_rng(seed).permutation(len(normal))
    n_val = round(NORMAL_VALIDATION_FRACTION * len(normal))
    validation = [normal[i] for i in sorted(order[:n_val])]
    fit_on = [normal[i] for i in sorted(order[n_val:])]
    model_dir = out / "models" / name
    if (model_dir / "radar.json").is_file():
        radar = Radar.load(model_dir)
        if radar.config == config:
            return radar, validation
    began = time.perf_counter()
    radar = Radar(config).fit(fit_on, progress=False)
    radar.save(model_dir)
    print(f"{name}: trained in {time.perf_counter() - began:.0f} s ({radar.training_['n_train']} training, "
          f"{radar.training_['n_calibration']} calibration, {radar.training_['n_conformal']} conformal images)",
          file=sys.stderr)
    return radar, validation


def measure(name: str, root: Path, config: RadarConfig, out: Path) -> dict[str, Any]:
    radar, normal_validation = trained(name, root, config, out, config.seed)
    decision = radar.decision_
    defective_validation, test_items = validation_split(evaluation_images(root), DEFAULT_VALIDATION_FRACTION,
                                                        config.seed)
    scaler = decision.scaler_

    def scores_of(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        predictions = [streamed.prediction for streamed in radar.predict_stream(paths)]
        features = np.stack([p.features for p in predictions])
        return (np.array([p.score for p in predictions]),
                scaler.transform(features).max(axis=1), predictions)

    # ---- validation: choose the score and the default
    val_paths = normal_validation + [item.path for item in defective_validation]
    val_labels = np.r_[np.zeros(len(normal_validation)), np.ones(len(defective_validation))].astype(int)
    val_one_class, val_max_feature, _ = scores_of(val_paths)
    conformal_one_class = decision.conformal_scores_
    conformal_max_feature = scaler.transform(decision.conformal_features_).max(axis=1)
    validation: dict[str, Any] = {
        "n_normal": len(normal_validation), "n_defective": len(defective_validation),
        "auroc_one_class": image_metrics(val_labels, val_one_class, val_one_class > 0)["image_auroc"],
        "auroc_max_feature": image_metrics(val_labels, val_max_feature, val_max_feature > 0)["image_auroc"],
        "f1_contamination": f1(val_one_class > decision.model_threshold_, val_labels),
        "far_contamination": float((val_one_class[val_labels == 0] > decision.model_threshold_).mean()),
    }
    for alpha in ALPHAS:
        for score_name, val_scores, reference in (("one_class", val_one_class, conformal_one_class),
                                                  ("max_feature", val_max_feature, conformal_max_feature)):
            threshold = conformal_threshold(reference, alpha)
            validation[f"f1_conformal_{alpha:g}_{score_name}"] = f1(val_scores > threshold, val_labels)
            validation[f"far_conformal_{alpha:g}_{score_name}"] = float(
                (val_scores[val_labels == 0] > threshold).mean())

    # ---- test, once
    test_paths = [item.path for item in test_items]
    labels = np.array([item.is_defective for item in test_items], dtype=int)
    one_class, _, predictions = scores_of(test_paths)
    n_normal = int((labels == 0).sum())
    rows = []
    rules = [("contamination", None, decision.model_threshold_)]
    rules += [(f"false_alarm_rate {alpha:g}", alpha, conformal_threshold(conformal_one_class, alpha))
              for alpha in ALPHAS]
    for rule, alpha, threshold in rules:
        flagged = one_class > threshold
        false_alarms = int((flagged & (labels == 0)).sum())
        low, high = clopper_pearson(false_alarms, n_normal)
        bound = None if alpha is None else alpha + 1.96 * np.sqrt(alpha * (1 - alpha) / n_normal)
        rows.append({
            "rule": rule, "alpha": alpha, "threshold": threshold, "false_alarms": false_alarms,
            "n_normal": n_normal, "observed_far": false_alarms / n_normal, "far_ci95": [low, high],
            "bound": bound, "within_bound": None if bound is None else false_alarms / n_normal <= bound,
            "recall": float(flagged[labels == 1].mean()), "f1": f1(flagged, labels),
        })
    # The guarantee is over the draw of the conformal images too: re-split the
    # pooled normal images nothing was fitted on (conformal + normal
    # validation + normal test) many times into n conformal and the rest,
    # and look at the false-alarm rates the rule gives.
    pooled = np.r_[conformal_one_class, val_one_class[val_labels == 0], one_class[labels == 0]]
    rng = np.random.default_rng(config.seed)
    resplits: dict[str, Any] = {"n_pooled": len(pooled), "n_conformal": len(conformal_one_class), "repeats": RESPLITS}
    for alpha in ALPHAS:
        rates = []
        for _ in range(RESPLITS):
            order = rng.permutation(len(pooled))
            reference, held = pooled[order[:len(conformal_one_class)]], pooled[order[len(conformal_one_class):]]
            rates.append(float(np.mean(held > conformal_threshold(reference, alpha))))
        resplits[f"{alpha:g}"] = {"mean": float(np.mean(rates)), "p95": float(np.quantile(rates, 0.95)),
                                  "share_above_alpha": float(np.mean(np.array(rates) > alpha))}
    # pixel metrics at both resolutions, on the same test images
    pixel: dict[str, Any] = {}
    if any(item.mask_path is not None for item in test_items):
        for resolution in ("model", "native"):
            pairs = [truth_and_map(item, p.anomaly_map, resolution) for item, p in zip(test_items, predictions)
                     if item.mask_path is not None or not item.is_defective]
            pixel[resolution] = pixel_metrics([t for t, _ in pairs], [m for _, m in pairs])
            pixel[resolution]["mask_shapes"] = sorted({str(t.shape) for t, _ in pairs})[:5]
    return json_ready({
        "dataset": name, "config": config.to_dict(), "training": radar.training_,
        "n_conformal": decision.n_conformal, "validation": validation,
        "image_auroc_test": image_metrics(labels, one_class, one_class > 0)["image_auroc"],
        "test": rows, "pixel": pixel, "n_test": len(test_items), "resplits": resplits,
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="`demo` or MVTec-layout folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000, help="training steps on real data (default 1000)")
    args = parser.parse_args()
    results = []
    for dataset in args.datasets:
        if dataset == "demo":
            root = args.out / "demo"
            if not (root / "train").is_dir():
                # a quarter more normal images than the demo's, so that after the
                # validation share the model splits 100 like `radar demo` does
                make_dataset(root, replace(DEMO_SPEC, n_train=DEMO_SPEC.n_train * 5 // 4))
            config, name = demo_config(), "demo"
        else:
            root = Path(dataset)
            config = RadarConfig().updated({"data.resize": 256, "train.steps": args.steps})
            name = root.name
        began = time.perf_counter()
        result = measure(name, root, config, args.out)
        result["seconds"] = time.perf_counter() - began
        results.append(result)
        write_json(args.out / "false_alarms.json", results)
        print_tables(result)
    return 0


def print_tables(result: dict[str, Any]) -> None:
    v = result["validation"]
    print(f"\n### {result['dataset']} ({result['n_conformal']} conformal images; validation "
          f"{v['n_normal']} normal + {v['n_defective']} defective)\n")
    print(f"validation image AUROC: one-class score {v['auroc_one_class']:.3f}, "
          f"largest standardised feature {v['auroc_max_feature']:.3f}")
    print(f"validation F1: contamination rule {v['f1_contamination']:.3f} (false alarms "
          f"{v['far_contamination']:.3f}); " + "; ".join(
              f"alpha {a:g}: {v[f'f1_conformal_{a:g}_one_class']:.3f} (false alarms "
              f"{v[f'far_conformal_{a:g}_one_class']:.3f})" for a in ALPHAS))
    print("\n| rule | false alarms on normal test images | 95 % interval | alpha + margin | recall | F1 |")
    print("|---|---|---|---|---|---|")
    for row in result["test"]:
        low, high = row["far_ci95"]
        bound = "" if row["bound"] is None else f"{row['bound']:.3f}"
        print(f"| {row['rule']} | {row['false_alarms']}/{row['n_normal']} = {row['observed_far']:.3f} | "
              f"{low:.3f}-{high:.3f} | {bound} | {row['recall']:.3f} | {row['f1']:.3f} |")
    r = result["resplits"]
    print(f"\n{r['repeats']} re-splits of {r['n_pooled']} held-out normal images into {r['n_conformal']} conformal "
          "and the rest: false-alarm rate mean / 95th percentile / share of splits above alpha: " + "; ".join(
              f"alpha {a:g}: {r[f'{a:g}']['mean']:.3f} / {r[f'{a:g}']['p95']:.3f} / "
              f"{r[f'{a:g}']['share_above_alpha']:.2f}" for a in ALPHAS))
    for resolution, metrics in result["pixel"].items():
        print(f"pixel ({resolution}): AUROC {metrics['pixel_auroc']:.3f}  AUPRO {metrics['aupro']:.3f}  "
              f"F1-max {metrics['pixel_f1max']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
