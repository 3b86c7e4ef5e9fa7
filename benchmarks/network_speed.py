"""Where the network's time goes, and which way of running it is fastest:
the per-patch network alone, run every way this machine offers, on the very
batches the pipeline feeds it.

    python benchmarks/network_speed.py MODEL_DIR [--images DIR] [--count 16]
                                       [--batches 64,256,1024] [--variant NAME ...]
                                       [--json network_speed.json]

The patches are recorded from the pipeline scoring ``--count`` images (a
folder, or generated 256 x 256 surfaces) at every level the model reads, so
each variant sees what production sees. Variants: PyTorch (as shipped, and
channels-last), ONNX Runtime (as shipped, and with its whole-graph
optimisation written out first), OpenVINO (LATENCY and THROUGHPUT hints),
``torch.compile``; and lower precision: bfloat16 (PyTorch autocast,
OpenVINO's precision hint) and int8, ONNX Runtime's static QDQ quantiser
(every operator, or convolutions and matrix products only with the first
and last convolution in float32) and, where ``nncf`` is installed, NNCF for
OpenVINO, calibrated on the patches of up to eight normal images
(``--normal``), apart from the timed ones. ``--variant`` runs a subset.

For each variant and batch size: milliseconds of network per image, the
GFLOP/s that achieves (PyTorch's FLOP count of the same patches), the
largest difference of the predicted noise from PyTorch float32 and their
correlation. A lower-precision variant is also run through the whole
pipeline on the timed images: verdicts differing from float32 and the
Spearman correlation of the image scores (the parity rule asked of a
lower precision: at most 1 % and >= 0.99).
The machine line gives the CPU, its vector extensions and a float32 matmul
peak from the same run. Prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from radar_ad import Radar
from radar_ad.backend import TorchBackend
from radar_ad.data import as_image_array, list_images
from radar_ad.evidence_passes import EvidencePasses
from radar_ad.registry import BACKENDS
from radar_ad.synthetic import SyntheticSpec, make_dataset

sys.path.insert(0, str(Path(__file__).parent))
from speed import cpu_description, matmul_peak  # noqa: E402  # the sibling benchmark's machine line

LOW_PRECISION = ("torch bfloat16", "openvino bfloat16", "onnx int8 (QDQ)", "onnx int8 (QDQ, float ends)",
                 "openvino int8 (NNCF)")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Runner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Recorder:
    """A backend that keeps every batch it is asked for (and answers it with the backend it wraps)."""

    def __init__(self, backend: Runner) -> None:
        self.backend, self.batches = backend, []  # type: list[Batch]

    def __call__(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        self.batches.append((patches.clone(), index.clone(), level.clone()))
        return self.backend(patches, index, level)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


class OnCpu:
    """A network run the pipeline can call: on the CPU."""

    device = torch.device("cpu")

    def __init__(self, run: Runner) -> None:
        self.run = run

    def __call__(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.run(patches, index, level)


def recorded_patches(radar: Radar, images: list[np.ndarray]) -> Batch:
    """Every patch the pipeline sends to the network for ``images``, concatenated."""
    twin = copy.copy(radar)
    recorder = Recorder(radar.backend_)
    twin.backend_ = recorder  # type: ignore[assignment]  # duck-typed: the pipeline only calls it
    scales = tuple(radar.config.inference.scales or radar.config.network.scales)
    for _ in EvidencePasses(twin.backend_, twin.config).chunks(images, scales):
        pass
    patches, index, level = zip(*recorder.batches)
    return torch.cat(patches), torch.cat(index), torch.cat(level)


def rebatched(patches: Batch, size: int) -> list[Batch]:
    return [(patches[0][i:i + size], patches[1][i:i + size], patches[2][i:i + size])
            for i in range(0, len(patches[0]), size)]


def time_runner(run: Runner, batches: list[Batch], rounds: int) -> tuple[float, torch.Tensor]:
    """Median seconds of one pass over ``batches``, and that pass's noise output."""
    for batch in {len(b[0]): b for b in batches}.values():  # warm-up: each batch shape once (a compiler's first call)
        run(*batch)
    seconds, outputs = [], []
    for _ in range(rounds):
        outputs = []
        start = time.perf_counter()
        for batch in batches:
            outputs.append(run(*batch))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), torch.cat(outputs)


def channels_last_runner(network: TorchBackend) -> Runner:
    module = copy.deepcopy(network.noise)
    module.unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def run(patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat(module(patches.contiguous(memory_format=torch.channels_last), index, level), 1)
    return run


def compiled_runner(network: TorchBackend, bfloat16: bool = False) -> Runner:
    """PyTorch with ``torch.compile`` (inductor), or in bfloat16 autocast (oneDNN)."""
    module = copy.deepcopy(network.noise)
    if not bfloat16:
        module = torch.compile(module, dynamic=True)  # type: ignore[assignment]

    def run(patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            return torch.cat(module(patches, index, level), 1).float()
    return run


def onnx_runner(graph: bytes, optimised: bool = False) -> Runner:
    """ONNX Runtime on ``graph``; ``optimised``: the fully optimised graph written out and run as is."""
    import onnxruntime as ort

    from radar_ad.backends.onnx import OnnxBackend

    if not optimised:
        return OnnxBackend(graph)
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return OnnxBackend(Path(folder, "optimised.onnx").read_bytes())


def openvino_runner(graph: Any, hint: str, precision: str = "f32") -> Runner:
    import openvino as ov

    from radar_ad.backend import process_threads
    properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if process_threads():
        properties["INFERENCE_NUM_THREADS"] = process_threads()
    compiled = ov.Core().compile_model(ov.Core().read_model(graph) if isinstance(graph, bytes) else graph,
                                       "CPU", properties)

    def run(patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        out = compiled({"patches": patches.numpy(), "index": index.numpy(), "level": level.numpy()})
        return torch.cat([torch.from_numpy(out[compiled.output(name)].copy()) for name in ("noise", "repair")], 1)
    return run


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.ravel().numpy(), b.ravel().numpy())[0, 1])


def feeds(batches: list[Batch]) -> list[dict[str, np.ndarray]]:
    return [{"patches": p.numpy(), "index": i.numpy().astype(np.int64), "level": v.numpy().astype(np.int64)}
            for p, i, v in batches]


def ort_int8(graph: bytes, calibration: list[Batch], float_ends: bool = False) -> bytes:
    """Static QDQ int8 (per-channel int8 weights, uint8 activations) calibrated on ``calibration``;
    ``float_ends``: only convolutions and matrix products quantised, the U-Net's first and last
    convolution left in float32 (the noising arithmetic in front of them stays float too)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    options: dict[str, Any] = {}
    if float_ends:
        ends = [n.name for n in onnx.load_from_string(graph).graph.node
                if n.name.endswith(("/conv_in/Conv", "/conv_out/Conv"))]
        if len(ends) != 2:
            raise ValueError(f"expected the U-Net's conv_in and conv_out in the graph, found {ends}")
        options = {"op_types_to_quantize": ["Conv", "MatMul", "Gemm"], "nodes_to_exclude": ends}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options)
        return target.read_bytes()


def nncf_int8(graph: bytes, calibration: list[Batch]) -> Any:
    import nncf
    import openvino as ov

    return nncf.quantize(ov.Core().read_model(graph), nncf.Dataset(feeds(calibration)))


#: What ``--variant`` may name, in the order they run; ``torch`` is the reference.
VARIANTS = (
    "torch",
    "torch channels-last",
    "torch compiled",
    "torch bfloat16",
    "onnx",
    "onnx, optimised graph saved",
    "openvino LATENCY",
    "openvino THROUGHPUT",
    "openvino bfloat16",
    "onnx int8 (QDQ)",
    "onnx int8 (QDQ, float ends)",
    "openvino int8 (NNCF)",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model directory from `radar train`")
    parser.add_argument("--images", type=Path, help="images to time (default: generated 256 x 256 surfaces)")
    parser.add_argument("--normal", type=Path, help="normal images whose patches calibrate the int8 quantisers "
                        "(default: the generated surfaces' normal training images; with --images, required)")
    parser.add_argument("--count", type=int, default=16, help="images timed")
    parser.add_argument("--batches", default="64,256,1024", help="patches per network call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", help="run this variant (repeat it; default: every one), "
                        "e.g. --variant torch --variant 'onnx int8 (QDQ, float ends)'; torch first: the reference")
    parser.add_argument("--json", type=Path, default=Path("network_speed.json"))
    args = parser.parse_args(argv)
    if args.variant and (args.variant[0] != "torch" or any(name not in VARIANTS for name in args.variant)):
        parser.error(f"--variant: torch first, then any of {'; '.join(VARIANTS)} (got {'; '.join(args.variant)})")
    radar = Radar.load(args.model)
    if radar.config.inference.precision != "float32":
        parser.error("MODEL must run in float32: every variant is compared with it")
    if args.images:
        if not args.normal:
            parser.error("--images needs --normal: normal images to calibrate the int8 quantisers on")
        files = list_images(args.images)
    else:
        data = Path(".speed-data") / f"surfaces-256-{args.count}"
        if not data.is_dir():
            make_dataset(data, SyntheticSpec(size=256, n_train=12, n_test_good=args.count // 2,
                                             n_test_per_defect=max(1, args.count // 12)))
        files = sorted((data / "test").rglob("*.png"))
    timed_files = files[:args.count]
    calibration_files = list_images(args.normal) if args.normal else sorted((data / "train").rglob("*.png"))
    read = [as_image_array(f, radar.config.data, radar.config.patch_size) for f in timed_files]
    patches = recorded_patches(radar, read)
    calibration = rebatched(recorded_patches(radar, [as_image_array(f, radar.config.data, radar.config.patch_size)
                                                     for f in calibration_files[:8]]), 64)
    machine = {**cpu_description(), "matmul_peak_gflops": matmul_peak()}
    network = radar.torch_backend_
    assert network is not None
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        for batch in rebatched(patches, 256):
            network(*batch)
    gflop_per_image = counter.get_total_flops() / 1e9 / len(read)

    from radar_ad.backends.onnx import onnx_bytes
    graph = onnx_bytes(network)
    variants: dict[str, Callable[[], Runner]] = {
        "torch": lambda: network,
        "torch channels-last": lambda: channels_last_runner(network),
        "torch compiled": lambda: compiled_runner(network),
        "torch bfloat16": lambda: compiled_runner(network, bfloat16=True),
        "onnx": lambda: onnx_runner(graph),
        "onnx, optimised graph saved": lambda: onnx_runner(graph, optimised=True),
        "openvino LATENCY": lambda: openvino_runner(graph, "LATENCY"),
        "openvino THROUGHPUT": lambda: openvino_runner(graph, "THROUGHPUT"),
        "openvino bfloat16": lambda: openvino_runner(graph, "LATENCY", "bf16"),
        "onnx int8 (QDQ)": lambda: onnx_runner(ort_int8(graph, calibration)),
        "onnx int8 (QDQ, float ends)": lambda: onnx_runner(ort_int8(graph, calibration, float_ends=True)),
        "openvino int8 (NNCF)": lambda: openvino_runner(nncf_int8(graph, calibration), "LATENCY"),
    }
    assert tuple(variants) == VARIANTS
    if args.variant:
        variants = {name: variants[name] for name in args.variant}
    reference: torch.Tensor | None = None
    rows, runners = [], {}
    for name, make in variants.items():
        try:
            runner = make()
            timed = [(size, *time_runner(runner, rebatched(patches, size), args.rounds))
                     for size in [int(b) for b in args.batches.split(",")]]
        except Exception as exc:  # an engine or compiler this machine lacks: the other variants still run
            print(f"{name}: skipped ({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})", file=sys.stderr)
            continue
        runners[name] = runner
        for size, seconds, output in timed:
            if reference is None:
                reference = output
            channels = radar.channels_
            noise, expected = output[:, :channels].float(), reference[:, :channels]
            rows.append({"variant": name, "batch": size, "ms_per_image": 1000 * seconds / len(read),
                         "network_gflops": gflop_per_image * len(read) / seconds,
                         "max_noise_diff": float((noise - expected).abs().max()),
                         "noise_correlation": correlation(noise, expected)})
    pipeline = {}
    fp32 = radar.predict_many(timed_files)
    for name in LOW_PRECISION:
        if name not in runners:
            continue
        twin = copy.copy(radar)
        twin.backend_ = OnCpu(runners[name])  # type: ignore[assignment]  # duck-typed: the pipeline only calls it
        got = twin.predict_many(timed_files)
        pipeline[name] = {"verdicts_differing": int(sum(a.is_anomalous != b.is_anomalous for a, b in zip(fp32, got))),
                          "images": len(got),
                          "score_spearman": float(spearmanr([a.score for a in fp32], [b.score for b in got])[0])}
    print(f"CPU: {machine['model']}, {machine['cores']} cores ({', '.join(machine['vector_extensions'])}); "
          f"float32 matmul peak {machine['matmul_peak_gflops']:.0f} GFLOP/s; network {gflop_per_image:.2f} GFLOP "
          f"per image at levels {'/'.join(map(str, radar.config.inference.scales or ()))}, "
          f"{len(patches[0]) / len(read):.0f} patches per image")
    print()
    print("| variant | patches per call | network ms/img | GFLOP/s | max noise diff | noise correlation |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['batch']} | {row['ms_per_image']:.1f} | {row['network_gflops']:.0f} | "
              f"{row['max_noise_diff']:.1e} | {row['noise_correlation']:.4f} |")
    if pipeline:
        print()
        print("| lower precision, whole pipeline | verdicts differing from float32 | image-score Spearman |")
        print("|---|---|---|")
        for name, result in pipeline.items():
            print(f"| {name} | {result['verdicts_differing']} of {result['images']} | {result['score_spearman']:.4f} |")
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "model": str(args.model), "machine": machine,
                                     "gflop_per_image": gflop_per_image, "images": len(read), "rows": rows,
                                     "int8_pipeline": pipeline, "backends": BACKENDS.names()}, indent=2,
                                    default=lambda value: value.item()))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
