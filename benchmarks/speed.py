"""Inference speed of every registered backend (PyTorch, ONNX Runtime,
OpenVINO ...), in one process; where CUDA is present, also PyTorch on the
GPU (row ``torch-cuda``, float32), with its map parity against the CPU.

    python benchmarks/speed.py [MODEL] [--images DIR] [--size 256] [--strides 14,28]
                               [--backends torch,onnx,openvino] [--json OUT]

MODEL is a model directory from `radar train`. Without one, the default
architecture is trained for a single step (seeded, so effectively untrained)
on a few generated images and calibrated on its held-out ones: the time per
image does not depend on the weights, so this measures "the default model at
SIZE px" without an hour of training.

For each tiling stride, every backend scores the same images (warm-up first,
then --rounds timed passes; the median counts). The table gives images per
second, each backend's speed relative to PyTorch measured in the same run
(the figure that survives a noisy machine), and its parity with PyTorch:
largest anomaly map difference relative to the pixel threshold and the
number of differing verdicts. A stride other than a trained model's own
needs --calibration (normal images) to recalibrate at that stride.

The machine comes first: the CPU model, its vector extensions (AVX2,
AVX-512, VNNI, AMX: what int8 and bfloat16 can use) and a float32 matmul
peak (4096 x 4096, best of three) measured in the same run. The network's
cost is counted once (``torch.utils.flop_counter``, GFLOP per image at the
model's levels), so each row gives the GFLOP/s the network achieves inside
the pipeline, its share of the time per image (the backend's own calls,
timed in place), the response's share (its calls timed in place: a
learned head's included; the rest is the pyramid, tiling, stitching, the
features and the one-class score) and the latency of one image at a time
(p50, p99 over --latency-images calls).

A second table gives the network time of the pyramid: the one-step
evidence of the same images at the finest level alone and at every level
the model reads, per backend, and their ratio (the pyramid's cost in units
of one level's network time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radar_ad import Radar, RadarConfig
from radar_ad.backend import available_cores
from radar_ad.data import list_images
from radar_ad.errors import RadarError
from radar_ad.evidence_passes import EvidencePasses
from radar_ad.patches import grid_positions
from radar_ad.pyramid import level_size
from radar_ad.registry import BACKENDS
from radar_ad.synthetic import SyntheticSpec, make_dataset

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                "amx_bf16")


class Timed:
    """A stage (the backend, the response) that adds up the seconds of its
    own calls (its share of the time per image), otherwise the stage it
    wraps. ``synchronize`` (on a GPU: ``torch.cuda.synchronize``) waits for
    queued work before and after each call, so that asynchronous kernels
    count towards the stage that launched them."""

    def __init__(self, stage: Callable[..., Any], synchronize: Callable[[], None] | None = None) -> None:
        self.stage, self.synchronize, self.seconds = stage, synchronize, 0.0

    def __call__(self, *args: Any) -> Any:
        if self.synchronize:
            self.synchronize()
        start = time.perf_counter()
        try:
            return self.stage(*args)
        finally:
            if self.synchronize:
                self.synchronize()
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stage, name)


def cpu_description() -> dict[str, Any]:
    """The CPU model, the vector extensions it offers and the cores this process may use."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags],
            "cores": available_cores(), "torch_threads": torch.get_num_threads()}


def matmul_peak(size: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of a float32 ``size x size`` matmul in PyTorch on the CPU, best of ``repeats``."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(size, size, generator=generator), torch.rand(size, size, generator=generator)
    a @ b  # warm-up
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def network_gflop(radar: Radar, image: Path) -> float:
    """GFLOP of the network per image at the model's levels (PyTorch's count; the same graph runs everywhere)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch_model = radar.with_backend("torch")
    scales = tuple(radar.config.inference.scales or radar.config.network.scales)
    with FlopCounterMode(display=False) as counter:
        for _ in EvidencePasses(torch_model.backend_, torch_model.config).chunks([radar_array(radar, image)], scales):
            pass
    return counter.get_total_flops() / 1e9


def patches_per_image(height: int, width: int, patch: int, stride: int, scales: tuple[int, ...]) -> int:
    """Network evaluations per image: each level read, tiled (a level smaller than a patch is padded to one)."""
    total = 0
    for scale in scales:
        h, w = level_size(height, width, scale)
        total += len(grid_positions(max(h, patch), patch, stride)) * len(grid_positions(max(w, patch), patch, stride))
    return total


def latency_ms(radar: Radar, images: list[Path], count: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of one image per call, over ``count`` calls (cycling through ``images``)."""
    radar.predict_many(images[:1])
    seconds = [_seconds(partial(radar.predict_many, [images[i % len(images)]])) for i in range(count)]
    p50, p99 = np.percentile(seconds, [50, 99])
    return 1000 * float(p50), 1000 * float(p99)


def untrained_default(data: Path, size: int, overrides: dict | None = None) -> Radar:
    """The default configuration (plus ``overrides``) trained for one step on
    ``data``: seeded weights that are as good as random, calibrated."""
    config = RadarConfig().updated({"data.resize": size, "train.steps": 1, **(overrides or {})})
    return Radar(config).fit(data, progress=False)


def time_backend(radar: Radar, images: list[Path], batch: int,
                 rounds: int) -> tuple[float, float, float, list]:
    """Median seconds per image over ``rounds`` passes, the network's and
    the response's shares of them, and the last pass's predictions."""
    radar.predict_many(images[:batch])  # warm-up: allocations, ORT's first run
    synchronize = torch.cuda.synchronize if radar.backend_.device.type == "cuda" else None
    timed, calibration = Timed(radar.backend_, synchronize), radar.calibration_
    response = Timed(calibration.response, synchronize)
    # duck-typed: the pipeline only calls the backend, and calls or reads the response
    radar.backend_ = timed  # type: ignore[assignment]
    radar.calibration_ = dataclasses.replace(calibration, response=response)  # type: ignore[arg-type]
    per_image, predictions = [], []
    try:
        for _ in range(rounds):
            predictions = []
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                predictions += radar.predict_many(images[i:i + batch])
            per_image.append((time.perf_counter() - start) / len(images))
    finally:
        radar.backend_, radar.calibration_ = timed.stage, calibration
    total = sum(per_image) * len(images)
    return statistics.median(per_image), timed.seconds / total, response.seconds / total, predictions


def time_evidence(radar: Radar, images: list[Path], scales: tuple[int, ...], rounds: int) -> float:
    """Median seconds per image of the one-step evidence alone at ``scales``."""
    arrays = [radar_array(radar, image) for image in images]
    passes = EvidencePasses(radar.backend_, radar.config)
    for _ in passes.chunks(arrays[:2], scales):  # warm-up
        pass
    per_image = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in passes.chunks(arrays, scales):
            pass
        per_image.append((time.perf_counter() - start) / len(arrays))
    return statistics.median(per_image)


def radar_array(radar: Radar, image: Path) -> np.ndarray:
    from radar_ad.data import as_image_array

    return as_image_array(image, radar.config.data, radar.config.patch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: untrained default model)")
    parser.add_argument("--images", type=Path, help="folder of test images (default: generated surfaces)")
    parser.add_argument("--calibration", type=Path, help="normal images to recalibrate a trained model at "
                        "another stride")
    parser.add_argument("--size", type=int, default=256, help="image size for generated images / the untrained model")
    parser.add_argument("--count", type=int, default=16, help="images timed per pass")
    parser.add_argument("--batch", type=int, default=8, help="images per predict_many call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strides", default="", help="comma-separated strides (default: the model's)")
    parser.add_argument("--backends", default=",".join(BACKENDS.names()),
                        help="comma-separated backends (default: every registered one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a setting of the untrained model, e.g. network.attention=[false,true,true]")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA row where a GPU is present")
    parser.add_argument("--latency-images", type=int, default=40, help="one-image calls behind p50/p99 latency")
    parser.add_argument("--json", type=Path, default=Path("speed.json"))
    args = parser.parse_args()
    machine = {**cpu_description(), "matmul_peak_gflops": matmul_peak(), "platform": platform.platform(),
               "torch": torch.__version__}

    data = Path(".speed-data") / f"surfaces-{args.size}-{args.count}"
    if not data.is_dir() and not (args.model and args.images):  # generated once, reused by later runs
        make_dataset(data, SyntheticSpec(size=args.size, n_train=12, n_test_good=args.count // 2,
                                         n_test_per_defect=max(1, args.count // 12)))
    images = list_images(args.images) if args.images else sorted((data / "test").rglob("*.png"))
    images = images[:args.count]
    if args.set and args.model:
        parser.error("--set applies to the untrained model only; retrain to change a trained one")
    names = ["torch", *(name for name in args.backends.split(",") if name and name != "torch")]
    if args.model:
        model = Radar.load(args.model)
        calibration = list_images(args.calibration) if args.calibration else None
    else:
        overrides = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.set)}
        model = untrained_default(data, args.size, overrides)
        calibration = sorted((data / "train" / "good").glob("*.png"))
    strides = [int(s) for s in args.strides.split(",") if s] or [model.config.stride]

    rows = []
    for stride in strides:
        at_stride = model.with_settings({"inference.stride": None if stride == model.config.patch_size else stride})
        if at_stride.calibration_ is None:
            if calibration is None:
                parser.error(f"stride {stride} needs --calibration: normal images to recalibrate at it")
            at_stride.refit_calibration(calibration)
        gflop = network_gflop(at_stride, images[0])
        timings, shares, responses, latencies, predictions = {}, {}, {}, {}, {}
        for name in names:
            try:
                radar = at_stride.with_backend(name)
            except RadarError as exc:
                print(f"{name}: skipped ({exc})", file=sys.stderr)
                continue
            timings[name], shares[name], responses[name], predictions[name] = time_backend(
                radar, images, args.batch, args.rounds)
            latencies[name] = latency_ms(radar, images, args.latency_images)
        if torch.cuda.is_available() and not args.no_cuda:  # the same model on the GPU, in float32
            with tempfile.TemporaryDirectory() as folder:
                on_gpu = Radar.load(at_stride.save(Path(folder) / "model"), device="cuda")
            (timings["torch-cuda"], shares["torch-cuda"], responses["torch-cuda"],
             predictions["torch-cuda"]) = time_backend(on_gpu, images, args.batch, args.rounds)
            latencies["torch-cuda"] = latency_ms(on_gpu, images, args.latency_images)
        reference = predictions["torch"]
        height, width = reference[0].anomaly_map.shape
        patch = model.config.patch_size
        row = {"stride": stride, "image": f"{height}x{width}",
               "patches_per_image": patches_per_image(height, width, patch, stride,
                                                      model.config.inference.scales or (1,)),
               "network_gflop_per_image": gflop,
               "anomalous": sum(a.is_anomalous for a in reference), "backends": {}}
        for name, seconds in timings.items():
            got = predictions[name]
            row["backends"][name] = {
                "images_per_s": 1 / seconds, "vs_torch": timings["torch"] / seconds,
                "network_share": shares[name], "response_share": responses[name],
                "network_gflops": gflop / (seconds * shares[name]),
                "latency_p50_ms": latencies[name][0], "latency_p99_ms": latencies[name][1],
                "max_map_diff_rel": max(float(np.abs(a.anomaly_map - b.anomaly_map).max())
                                        for a, b in zip(reference, got)) / model.pixel_threshold_,
                "max_score_diff": max(abs(a.score - b.score) for a, b in zip(reference, got)),
                "verdicts_differing": sum(a.is_anomalous != b.is_anomalous for a, b in zip(reference, got)),
            }
        rows.append(row)
    pyramid = {}
    finest, levels = (model.config.network.scales[0],), tuple(model.config.inference.scales or ())
    for name in names:
        try:
            radar = model.with_backend(name)
        except RadarError:
            continue
        one, every = time_evidence(radar, images, finest, args.rounds), time_evidence(radar, images, levels,
                                                                                     args.rounds)
        pyramid[name] = {"finest_level_ms": 1000 * one, "pyramid_ms": 1000 * every, "ratio": every / one,
                         "scales": list(levels)}
    print(f"CPU: {machine['model']}, {machine['cores']} cores ({', '.join(machine['vector_extensions']) or 'no'} "
          f"vector extensions); float32 matmul peak {machine['matmul_peak_gflops']:.0f} GFLOP/s; "
          f"torch {machine['torch']}")
    print()
    print("| stride | image | patches | GFLOP/img | backend | img/s | vs torch | network share | response share "
          "| network GFLOP/s | latency p50 / p99 (ms) | map diff / pixel thr | score diff | verdicts differing |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name, b in r["backends"].items():
            print(f"| {r['stride']} | {r['image']} | {r['patches_per_image']} | {r['network_gflop_per_image']:.2f} "
                  f"| {name} | {b['images_per_s']:.2f} | {b['vs_torch']:.2f}x | {100 * b['network_share']:.0f} % "
                  f"| {100 * b['response_share']:.0f} % | {b['network_gflops']:.0f} "
                  f"| {b['latency_p50_ms']:.0f} / {b['latency_p99_ms']:.0f} "
                  f"| {b['max_map_diff_rel']:.1e} | {b['max_score_diff']:.1e} | {b['verdicts_differing']} of "
                  f"{len(images)} |")
    print()
    print("| backend | network time, finest level (ms/img) | all levels read (ms/img) | pyramid / one level |")
    print("|---|---|---|---|")
    for name, p in pyramid.items():
        print(f"| {name} | {p['finest_level_ms']:.1f} | {p['pyramid_ms']:.1f} ({'/'.join(map(str, p['scales']))}) | "
              f"{p['ratio']:.2f}x |")
    result = {"model": str(args.model or "untrained default"), "overrides": args.set,
              "pyramid": pyramid,
              "images": len(images), "batch": args.batch,
              "rounds": args.rounds, "latency_images": args.latency_images, "machine": machine,
              "rows": rows}
    # numpy scalars (counts, differences) as plain JSON numbers
    args.json.write_text(json.dumps(result, indent=2, default=lambda value: value.item()))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
