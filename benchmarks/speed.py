"""Inference speed of the PyTorch and ONNX Runtime backends, in one process.

    python benchmarks/speed.py [MODEL] [--images DIR] [--size 256] [--strides 14,28] [--json OUT]

MODEL is a model directory from `radar train`. Without one, the default
architecture is built with seeded, untrained weights and calibrated on a few
generated images: the time per image does not depend on the weights, so this
measures "the default model at SIZE px" without an hour of training.

For each tiling stride, both backends score the same images (warm-up first,
then --rounds timed passes; the median counts). The table gives images per
second, the ONNX/PyTorch speed ratio measured in the same run (the figure
that survives a noisy machine), and the parity of the two: largest anomaly
map difference relative to the pixel threshold, largest score difference and
the number of differing verdicts. (The untrained model is recalibrated for
each stride; a trained model keeps its own calibration, so at another stride
its verdicts mean little, while the parity figures still hold.)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from radar_ad import Radar, RadarConfig
from radar_ad.data import list_images
from radar_ad.export import use_onnx
from radar_ad.network import build_unet
from radar_ad.patches import grid_positions
from radar_ad.synthetic import SyntheticSpec, make_dataset


def untrained_default(size: int, calibration: list[Path], overrides: dict | None = None) -> Radar:
    """The default configuration (plus ``overrides``) with seeded random
    weights, calibrated."""
    config = RadarConfig().updated({"data.resize": size, **(overrides or {})})
    radar = Radar(config)
    radar.channels_ = 1
    radar.training_ = {"note": "untrained: speed only"}
    torch.manual_seed(config.seed)
    radar._use_unet(build_unet(config.network, 1, config.patch_size))
    return radar.calibrate(calibration)


def time_backend(radar: Radar, images: list[Path], batch: int, rounds: int) -> tuple[float, list]:
    """Median seconds per image over ``rounds`` passes, and the last pass's predictions."""
    radar.predict_many(images[:batch])  # warm-up: allocations, ORT's first run
    per_image, predictions = [], []
    for _ in range(rounds):
        predictions = []
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            predictions += radar.predict_many(images[i:i + batch])
        per_image.append((time.perf_counter() - start) / len(images))
    return statistics.median(per_image), predictions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: untrained default model)")
    parser.add_argument("--images", type=Path, help="folder of test images (default: generated surfaces)")
    parser.add_argument("--size", type=int, default=256, help="image size for generated images / the untrained model")
    parser.add_argument("--count", type=int, default=16, help="images timed per pass")
    parser.add_argument("--batch", type=int, default=8, help="images per predict_many call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strides", default="", help="comma-separated strides (default: the model's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a setting of the untrained model, e.g. network.attention=[false,true,true]")
    parser.add_argument("--json", type=Path, default=Path("speed.json"))
    args = parser.parse_args()

    data = Path(".speed-data") / f"surfaces-{args.size}-{args.count}"
    if not data.is_dir() and not (args.model and args.images):  # generated once, reused by later runs
        make_dataset(data, SyntheticSpec(size=args.size, n_train=12, n_test_good=args.count // 2,
                                         n_test_per_defect=max(1, args.count // 12)))
    images = list_images(args.images) if args.images else sorted((data / "test").rglob("*.png"))
    images = images[:args.count]
    if args.set and args.model:
        parser.error("--set applies to the untrained model only; retrain to change a trained one")
    if args.model:
        torch_radar = Radar.load(args.model)
        onnx_radar = Radar.load(args.model, backend="onnx")
        calibration = None
    else:
        calibration = sorted((data / "train" / "good").glob("*.png"))
        overrides = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.set)}
        torch_radar = untrained_default(args.size, calibration, overrides)
        onnx_radar = use_onnx(untrained_default(args.size, calibration, overrides))
    strides = [int(s) for s in args.strides.split(",") if s] or [torch_radar.config.stride]

    rows = []
    for stride in strides:
        for radar in (torch_radar, onnx_radar):
            radar.config.inference.stride = stride
            if calibration is not None:
                radar.calibrate(calibration)
        t_torch, p_torch = time_backend(torch_radar, images, args.batch, args.rounds)
        t_onnx, p_onnx = time_backend(onnx_radar, images, args.batch, args.rounds)
        height, width = p_torch[0].anomaly_map.shape
        patch = torch_radar.config.patch_size
        rows.append({
            "stride": stride, "image": f"{height}x{width}",
            "patches_per_image": len(grid_positions(height, patch, stride)) * len(grid_positions(width, patch, stride)),
            "torch_images_per_s": 1 / t_torch, "onnx_images_per_s": 1 / t_onnx,
            "onnx_vs_torch": t_torch / t_onnx,
            "max_map_diff_rel": max(float(np.abs(a.anomaly_map - b.anomaly_map).max())
                                    for a, b in zip(p_torch, p_onnx)) / torch_radar.pixel_threshold_,
            "max_score_diff": max(abs(a.score - b.score) for a, b in zip(p_torch, p_onnx)),
            "verdicts_differing": sum(a.is_anomalous != b.is_anomalous for a, b in zip(p_torch, p_onnx)),
            "anomalous": sum(a.is_anomalous for a in p_torch),
        })
    print("| stride | image | patches | torch img/s | onnx img/s | onnx/torch | map diff / pixel thr | "
          "score diff | verdicts differing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stride']} | {r['image']} | {r['patches_per_image']} | {r['torch_images_per_s']:.2f} | "
              f"{r['onnx_images_per_s']:.2f} | "
              f"{r['onnx_vs_torch']:.2f}x | {r['max_map_diff_rel']:.1e} | {r['max_score_diff']:.1e} | "
              f"{r['verdicts_differing']} of {len(images)} |")
    result = {"model": str(args.model or "untrained default"), "overrides": args.set,
              "images": len(images), "batch": args.batch,
              "rounds": args.rounds, "machine": {"cpu_threads": torch.get_num_threads(),
                                                 "platform": platform.platform(), "torch": torch.__version__},
              "rows": rows}
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
