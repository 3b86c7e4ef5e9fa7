"""The main job on built-in data: generate surfaces, train, evaluate, report.

Sized to finish within 3 minutes on a 2-core CPU (the settings and the
measurements behind them: :func:`radar_ad.demo_data.demo_config`), so anyone
can see the whole method work before pointing it at their own images. When
standard error is not a terminal, each stage writes plain progress lines
(:mod:`radar_ad.progress`), so a piped or logged run shows it is alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RadarConfig
from ..data import LabeledImage, load_mask
from ..demo_data import DEMO_SPEC, demo_config
from ..errors import ModelError
from ..evaluation import evaluate
from ..files import write_json, write_text
from ..outputs import Prediction
from ..persistence import CONFIG_FILE
from ..pipeline import Radar
from ..report import colorize, html_report, overlay, to_rgb
from ..synthetic import make_dataset
from ..workflows import train_model


@dataclass
class DemoResult:
    report: Path
    metrics: dict[str, Any]
    model_dir: Path


def run_demo(out: str | Path, *, steps: int | None = None, progress: bool = True) -> DemoResult:
    """Write ``out/data`` (surfaces), ``out/model``, ``out/metrics.json`` and
    ``out/report.html``; reuse existing data and a model trained with the
    same settings, so a second run only evaluates."""
    out = Path(out)
    data = out / "data"
    if not (data / "train").is_dir():
        make_dataset(data, DEMO_SPEC)
    config = demo_config(steps)
    model_dir = out / "model"
    radar = _reuse_model(model_dir, config)
    if radar is None:
        radar = train_model(config, data, model_dir, resume=True, progress=progress)

    # For the report: three normal images and the first image of each defect type.
    kept: dict[str, list[tuple[LabeledImage, Prediction]]] = {"good": [], "defective": []}

    def keep(item: LabeledImage, prediction: Prediction) -> None:
        if not item.is_defective:
            if len(kept["good"]) < 3:
                kept["good"].append((item, prediction))
        elif item.label not in {i.label for i, _ in kept["defective"]}:
            kept["defective"].append((item, prediction))

    evaluation = evaluate(radar, data, progress=progress, on_prediction=keep)
    metrics = dict(evaluation.metrics)
    metrics["training_seconds"] = radar.training_.get("seconds")
    write_json(out / "metrics.json", metrics)

    vmax = 2 * radar.pixel_threshold_
    examples = []
    for item, prediction in kept["good"] + kept["defective"]:
        image = prediction.image
        truth = load_mask(item.mask_path, prediction.anomaly_map.shape)
        examples.append({
            "name": f"{item.label}/{item.path.name}", "label": item.label,
            "score": prediction.score, "threshold": prediction.threshold, "p_value": prediction.p_value,
            "is_anomalous": prediction.is_anomalous, "image": to_rgb(image),
            "anomaly": colorize(prediction.anomaly_map, vmax),
            "mask": np.repeat(prediction.mask[..., None].astype(np.uint8) * 255, 3, axis=2),
            "overlay": overlay(image, prediction.anomaly_map, prediction.mask, vmax, truth),
        })
    notes = [f"Built-in synthetic 3D-printed raster surfaces ({DEMO_SPEC.size} px): "
             f"{radar.training_.get('n_train')} training, {radar.training_.get('n_calibration')} "
             f"held-out calibration and {radar.training_.get('n_conformal')} conformal images "
             f"(verdict: {radar.false_alarms()['rule']}); {radar.training_.get('steps')} training steps in "
             f"{radar.training_.get('seconds')} s on {radar.training_.get('device')}."]
    report = out / "report.html"
    write_text(report, html_report("radar-ad demo", metrics, examples, notes))
    return DemoResult(report=report, metrics=metrics, model_dir=model_dir)


def _reuse_model(model_dir: Path, config: RadarConfig) -> Radar | None:
    if not (model_dir / CONFIG_FILE).is_file():
        return None
    try:
        radar = Radar.load(model_dir)
    except ModelError:  # another format version: train afresh
        return None
    return radar if radar.config == config else None

