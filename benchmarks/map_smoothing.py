"""Probe of the two_sided map's smoothing on VALIDATION images: one
Gaussian of each of several widths, against the largest of several
smoothings each in units of its normal high quantile
(``inference.map_sigmas``), on any MVTec-layout folder.

    python benchmarks/map_smoothing.py DATASET MODEL_DIR [--out map_smoothing.json]

The model's network and levels are kept; its map is recomputed unsmoothed
as two_sided (calibrated on the model's calibration images), then smoothed
each way with the library's own filters. Each set of smoothings is divided
by its quantiles (``decision.pixel_quantile``) on the calibration images'
maps (calibration learns them per level, before the levels are fused: the
same where the map reads one level). Per row: pixel AUROC, AUPRO and the
best pixel F1 over every validation image with a mask (a normal image's is
empty), as ``probes.py`` scores them; and on the defective images, the
share of defect pixels and of the other pixels over the mask threshold
(that quantile of the calibration images' maps, as calibration sets it).
Image scores are ``probes.py``'s. Prints a table and writes JSON.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from radar_ad import Radar
from radar_ad.bench.candidates import num, open_probe, probe_parser, write_result
from radar_ad.filters import gaussian_smooth, scale_space_max
from radar_ad.metrics import pixel_metrics

SINGLE = (0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 32.0)
SEVERAL = ((1.0, 2.0, 4.0), (1.0, 2.0, 4.0, 8.0), (1.0, 2.0, 4.0, 8.0, 16.0), (2.0, 4.0, 8.0, 16.0),
           (1.0, 2.0, 4.0, 8.0, 16.0, 32.0))


def as_inputs(images: list[np.ndarray]) -> list[np.ndarray]:
    """``(C, H, W)`` arrays as :meth:`Radar.predict_many` takes them: ``(H, W)`` or ``(H, W, C)``."""
    return [image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0) for image in images]


def unsmoothed(radar: Radar, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Each image's ``(1, 1, H, W)`` two_sided map before any smoothing."""
    return [torch.from_numpy(p.anomaly_map.astype(np.float64))[None, None]
            for p in radar.predict_many(as_inputs(images))]


def row(name: str, smooth: Any, normal: list[torch.Tensor], maps: list[torch.Tensor], masks: list[np.ndarray],
        quantile: float) -> dict[str, Any]:
    normal_maps = np.concatenate([smooth(m).flatten().numpy() for m in normal])
    threshold = float(np.quantile(normal_maps, quantile))
    smoothed = [smooth(m)[0, 0].numpy() for m in maps]
    metrics = pixel_metrics(masks, smoothed)
    inside = np.mean([(s > threshold)[t].mean() for s, t in zip(smoothed, masks) if t.any()])
    outside = np.mean([(s > threshold)[~t].mean() for s, t in zip(smoothed, masks) if t.any()])
    return {"map": name, "pixel_auroc": metrics["pixel_auroc"], "aupro": metrics["aupro"],
            "pixel_f1max": metrics["pixel_f1max"], "mask_in_defects": float(inside),
            "mask_off_defects": float(outside)}


def main(argv: list[str] | None = None) -> int:
    parser = probe_parser(__doc__, "map_smoothing.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    model, splits = open_probe(args)
    radar = model.with_settings({"inference.response": "two_sided", "inference.map_sigma": 0.0,
                                 "inference.map_sigmas": []})
    radar.refit_calibration(as_inputs(splits.calibration))
    validation = splits.validation
    keep = [i for i, mask in enumerate(validation.masks) if mask is not None]
    masks = [validation.masks[i] for i in keep]
    normal = unsmoothed(radar, splits.calibration)
    maps = unsmoothed(radar, [validation.images[i] for i in keep])
    quantile = radar.config.decision.pixel_quantile
    rows = [row(f"one smoothing, {sigma:g} px", lambda m, s=sigma: gaussian_smooth(m, s), normal, maps, masks,
                quantile) for sigma in SINGLE]
    for sigmas in SEVERAL:
        stacked = torch.cat([torch.cat([gaussian_smooth(m, s) for s in sigmas], 1).flatten(1) for m in normal], 1)
        quantiles = [float(q) for q in np.quantile(stacked.numpy(), quantile, axis=1)]
        rows.append(row(f"largest of {'/'.join(f'{s:g}' for s in sigmas)} px",
                        lambda m, s=sigmas, q=quantiles: scale_space_max(m, s, q), normal, maps, masks, quantile))
    print(f"{args.dataset.name}: {len(keep)} validation images with masks (the normal ones empty), two_sided on levels "
          f"{'/'.join(map(str, radar.config.inference.map_scales or radar.config.inference.scales))}")
    print(f"{'map':34} {'pixel AUROC':>11} {'AUPRO':>6} {'F1 max':>6} {'mask in':>8} {'mask off':>8}")
    for r in rows:
        print(f"{r['map']:34} {num(r['pixel_auroc']):>11} {num(r['aupro']):>6} {num(r['pixel_f1max']):>6} "
              f"{r['mask_in_defects']:>8.3f} {r['mask_off_defects']:>8.4f}")
    write_result(args.out, {"dataset": str(args.dataset), "model": str(args.model), "rows": rows,
                            "seconds": time.perf_counter() - began})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
