"""The ONNX Runtime backend and the ``.onnx`` model file.

The exported graph is :class:`~radar_ad.noise_map.OneStepNoise`: patches in
[0, 1], their grid positions and pyramid levels in, predicted noise and
repair out, with the scaling, the
seeded noise bank, the one forward noising step and the timestep inside.
The pyramid, tiling, stitching, the response (a learned head included: its
weights travel in the metadata) and the image score stay in the torch code
every backend shares, so every backend gives the same verdicts.
The file's metadata carries everything else a loader needs: config,
thresholds, the response's normal statistics and the calibration features
the one-class model is refitted on, so one ``.onnx`` file is a complete model.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backend import BackendOutput, ModelFile, NoiseBackend, TorchBackend, process_threads
from ..config import RadarConfig
from ..errors import ModelError, first_line, require
from ..files import atomic_file
from ..persistence import Conformal, check_metadata
from ..registry import BACKENDS, RESPONSES

OPSET = 17
METADATA_KEY = "radar_ad"
CALIBRATION_KEY = "calibration_features"
CONFORMAL_KEY = "conformal"
GRAPH_KEY = "graph"
NOISE_OUTPUT = "noise"
REPAIR_OUTPUT = "repair"
INPUTS = ("patches", "index", "level")
# Largest |difference| allowed between a backend's graph and PyTorch on the
# parity check (float32 noise predictions are O(1)).
PARITY_TOLERANCE = 1e-3


def onnx_bytes(network: TorchBackend) -> bytes:
    """The network's one-step noise predictor as an ONNX graph with a
    dynamic batch dimension, traced on the CPU whatever device the network
    is on."""
    require("onnx", "onnx", "the ONNX export")
    module = copy.deepcopy(network.noise).to("cpu").eval()
    patch, channels = network.config.patch_size, network.channels
    example = (torch.rand(2, channels, patch, patch), torch.arange(2), torch.zeros(2, dtype=torch.int64))
    outputs = [NOISE_OUTPUT, REPAIR_OUTPUT]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about diffusers' Python branches
        torch.onnx.export(module, example, buffer,  # type: ignore[arg-type]  # a file object is accepted
                          input_names=list(INPUTS), output_names=outputs, opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "n"} for name in [*INPUTS, *outputs]})
    return buffer.getvalue()


def graph_description(config: dict[str, Any], channels: int) -> dict[str, Any]:
    """How to drive the graph without radar-ad: what goes in, what comes out,
    and how the patches are cut and stitched."""
    radar_config = RadarConfig.from_dict(config)
    patch, stride = radar_config.patch_size, radar_config.stride
    response = RESPONSES.get(radar_config.inference.response)
    return {
        "inputs": {
            "patches": f"(N, {channels}, {patch}, {patch}) float32 in [0, 1]",
            "index": "(N,) int64: the patch's position in its level's grid, row-major "
                     "(it selects the seeded noise)",
            "level": f"(N,) int64: the patch's pyramid level, an index into the scales "
                     f"{list(radar_config.network.scales)}",
        },
        "outputs": {NOISE_OUTPUT: "(N, C, p, p) float32: predicted noise",
                    REPAIR_OUTPUT: "(N, C, p, p) float32: the one-step repair x0_hat - x, in [-1, 1] units"},
        "pyramid": f"level s: the image area-averaged to round(H/s) x round(W/s), mirrored at the bottom and "
                   f"right up to {patch} px where smaller; the evidence uses the scales "
                   f"{list(radar_config.inference.scales or radar_config.network.scales)}",
        "grid": f"top-left offsets 0, {stride}, 2*{stride}, ... plus H-{patch} (and W-{patch}) "
                "so the far edges are covered",
        "stitch": f"weighted mean of overlapping patches; weight 1e-3 in the outer "
                  f"{patch // 7} px of each patch, 1 inside",
        "response": f"{response.name}: {' '.join(response.describe().split())}",
        "image_score": radar_config.inference.image_score,
    }


def float32_only(network: TorchBackend, label: str) -> None:
    """The exported graph is float32: a model calibrated in another precision would not match it."""
    precision = network.config.inference.precision
    if precision != "float32":
        raise ModelError(f"{label} runs the network in float32 but this model runs and was calibrated in "
                         f"{precision}: use the torch backend, or set inference.precision=float32 and recalibrate")


def check_parity(network: TorchBackend, other: NoiseBackend) -> float:
    """Largest difference between ``other`` and PyTorch on random patches at
    batch sizes either side of 64 (diffusers takes a branch there that a
    tracer could bake in), noise and repair; raises a ModelError beyond
    :data:`PARITY_TOLERANCE`."""
    generator = torch.Generator().manual_seed(0)
    patch, channels = network.config.patch_size, network.channels
    worst = 0.0
    for n in (1, 5, 70):
        patches = torch.rand(n, channels, patch, patch, generator=generator)
        index = torch.randint(0, 5000, (n,), generator=generator)
        level = torch.randint(0, len(network.config.network.scales), (n,), generator=generator)
        expected, got = network.predict(patches, index, level), other.predict(patches, index, level)
        pairs = [(expected.noise, got.noise), (expected.repair, got.repair)]
        worst = max(worst, *(float((b.cpu() - a.cpu()).abs().max()) for a, b in pairs))
    if worst > PARITY_TOLERANCE:
        raise ModelError(f"the {other.name} graph differs from PyTorch by {worst:.2e} "
                         f"(> {PARITY_TOLERANCE:.0e})")
    return worst


def read_metadata(props: dict[str, str], path: Path, backend: NoiseBackend) -> ModelFile:
    """The model an exported file's metadata properties describe (radar.json
    content, calibration and conformal features), run by ``backend``."""
    if METADATA_KEY not in props or CALIBRATION_KEY not in props:
        raise ModelError(f"{path} is an ONNX file but not one written by `radar export`")
    try:
        meta = check_metadata(json.loads(props[METADATA_KEY]), str(path))
        calibration = np.asarray(json.loads(props[CALIBRATION_KEY]), dtype=np.float64)
        conformal = None
        if CONFORMAL_KEY in props:
            stored = json.loads(props[CONFORMAL_KEY])
            conformal = Conformal(np.asarray(stored["features"], dtype=np.float64).reshape(-1, calibration.shape[1]),
                                  {str(k): str(v) for k, v in stored["info"].items()})
        else:
            raise ValueError(f"no {CONFORMAL_KEY} in the metadata")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelError(f"cannot load model from {path}: {first_line(exc)}") from None
    return ModelFile(meta, calibration, backend, conformal)


class GraphBackend(NoiseBackend):
    """Base of the backends that run the exported ONNX graph: built from a
    fitted PyTorch network by exporting it in memory, then checked against it."""

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        raise NotImplementedError

    @classmethod
    def from_network(cls, network: TorchBackend) -> GraphBackend:
        float32_only(network, cls.label)
        backend = cls(onnx_bytes(network))
        check_parity(network, backend)
        return backend


@BACKENDS.register("onnx")
class OnnxBackend(GraphBackend):
    """The exported graph run by ONNX Runtime on the CPU
    (``pip install 'radar-ad[onnx]'``)."""

    label = "ONNX Runtime"
    reads = (".onnx",)
    exports = ".onnx"

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        ort = require("onnxruntime", "onnx", "the ONNX backend")
        options = ort.SessionOptions()
        threads = threads or process_threads()
        if threads:
            options.intra_op_num_threads = threads
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unexported types
            raise ModelError(f"cannot read ONNX model: {first_line(exc)}") from None
        self.device = torch.device("cpu")

    def metadata_props(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        feed = {"patches": patches.detach().cpu().float().numpy(),
                "index": index.detach().cpu().to(torch.int64).numpy(),
                "level": level.detach().cpu().to(torch.int64).numpy()}
        noise, repair = (torch.from_numpy(a) for a in self.session.run([NOISE_OUTPUT, REPAIR_OUTPUT], feed))
        return BackendOutput(noise, repair)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "onnxruntime": require("onnxruntime", "onnx", "the ONNX backend").__version__}

    @classmethod
    def open_file(cls, path: Path) -> ModelFile:
        backend = cls(path)
        return read_metadata(backend.metadata_props(), path, backend)

    @classmethod
    def export(cls, network: TorchBackend, metadata: dict[str, Any], calibration_features: np.ndarray,
               conformal: Conformal, out: Path) -> Path:
        """Write one self-contained ``.onnx`` file (atomically), after running
        it through ONNX Runtime and comparing it with PyTorch."""
        onnx = require("onnx", "onnx", "the ONNX export")
        float32_only(network, "the ONNX export")
        model = onnx.load_from_string(onnx_bytes(network))
        props = {
            METADATA_KEY: json.dumps(metadata),
            CALIBRATION_KEY: json.dumps(np.asarray(calibration_features).tolist()),
            CONFORMAL_KEY: json.dumps({"features": np.asarray(conformal.features).tolist(), "info": conformal.info}),
            GRAPH_KEY: json.dumps(graph_description(metadata["config"], network.channels)),
        }
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        data = model.SerializeToString()
        check_parity(network, cls(data))
        with atomic_file(out) as tmp:
            tmp.write_bytes(data)
        return out
