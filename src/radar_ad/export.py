"""ONNX export of a fitted model and the ONNX Runtime backend.

The exported graph is :class:`~radar_ad.noise_map.OneStepNoise`: patches in
[0, 1] and their grid positions in, predicted noise out, with the scaling,
the seeded noise bank, the one forward noising step and the timestep inside.
Tiling, stitching, the response map and the features stay in the same torch code
the PyTorch path runs (they depend on the image size and cost about a tenth
of the time of a 256 px image). The file's metadata carries everything else a loader needs: config,
thresholds, the two-sided response's normal statistics and the calibration
features the one-class model is refitted on, so one ``.onnx`` file is a
complete model.
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

from .errors import MissingDependencyError, ModelError, first_line
from .files import atomic_file
from .pipeline import Radar, check_metadata, noise_settings

OPSET = 17
METADATA_KEY = "radar_ad"
CALIBRATION_KEY = "calibration_features"
GRAPH_KEY = "graph"
# Largest |difference| allowed between the exported graph and PyTorch on the
# export's own check (float32 noise predictions are O(1)).
EXPORT_TOLERANCE = 1e-3


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(f"the ONNX backend needs {module}: "
                                     "pip install 'radar-ad[onnx]'") from None


def onnx_bytes(radar: Radar) -> bytes:
    """The model's one-step noise predictor as an ONNX graph with a dynamic
    batch dimension (traced on the CPU, whatever device the model is on)."""
    radar._check_fitted()
    if not hasattr(radar, "unet_"):
        raise ModelError("this model was loaded from ONNX; export its model directory instead")
    _require("onnx")
    radar._check_noise_settings()
    module = copy.deepcopy(radar.noise_).to("cpu").eval()
    patch = radar.config.patch_size
    example = (torch.rand(2, radar.channels_, patch, patch), torch.arange(2))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about diffusers' Python branches
        torch.onnx.export(module, example, buffer, input_names=["patches", "index"],
                          output_names=["noise"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"patches": {0: "n"}, "index": {0: "n"}, "noise": {0: "n"}})
    return buffer.getvalue()


def graph_description(radar: Radar) -> dict[str, Any]:
    """How to drive the graph without radar-ad: what goes in, what comes out,
    and how the patches are cut and stitched."""
    patch, stride = radar.config.patch_size, radar.config.stride
    return {
        "inputs": {
            "patches": f"(N, {radar.channels_}, {patch}, {patch}) float32 in [0, 1]",
            "index": "(N,) int64: the patch's position in its image's grid, row-major "
                     "(it selects the seeded noise)",
        },
        "outputs": {"noise": "(N, C, p, p) float32: predicted noise"},
        "grid": f"top-left offsets 0, {stride}, 2*{stride}, ... plus H-{patch} (and W-{patch}) "
                "so the far edges are covered",
        "stitch": f"weighted mean of overlapping patches; weight 1e-3 in the outer "
                  f"{patch // 7} px of each patch, 1 inside",
        "response": ("Gaussian blur then Sobel gradient magnitude (kernel sizes in config.inference); "
                     "for inference.response two_sided: S = that magnitude, E = log of the mean "
                     "squared noise in energy_window px windows (mirrored border); parts "
                     "max(0, (S - structure_mean) / structure_std) and "
                     "max(0, (energy_mean - E) / energy_std) from response_statistics; map = "
                     "Gaussian (map_sigma px) of the larger part over its scale"),
    }


def export_onnx(radar: Radar, out: str | Path, check: bool = True) -> Path:
    """Write the model as one self-contained ``.onnx`` file (atomically).

    With ``check``, the written graph is run through ONNX Runtime on a few
    batch sizes and compared with PyTorch before the file is put in place.
    """
    onnx = _require("onnx")
    model = onnx.load_from_string(onnx_bytes(radar))
    meta = {
        METADATA_KEY: json.dumps(radar.metadata()),
        CALIBRATION_KEY: json.dumps(radar.decision_.calibration_features_.tolist()),
        GRAPH_KEY: json.dumps(graph_description(radar)),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    if check:
        check_parity(radar, OnnxNoise(data))
    out = Path(out)
    with atomic_file(out) as tmp:
        tmp.write_bytes(data)
    return out


def check_parity(radar: Radar, onnx_noise: OnnxNoise) -> float:
    """Largest difference between the graph and PyTorch on random patches
    at batch sizes either side of 64 (diffusers takes a branch there that a
    tracer could bake in); raises if beyond :data:`EXPORT_TOLERANCE`."""
    generator = torch.Generator().manual_seed(0)
    patch, channels = radar.config.patch_size, radar.channels_
    worst = 0.0
    for n in (1, 5, 70):
        patches = torch.rand(n, channels, patch, patch, generator=generator)
        index = torch.randint(0, 5000, (n,), generator=generator)
        with torch.inference_mode():
            expected = radar.noise_(patches.to(radar.noise_device_), index.to(radar.noise_device_)).cpu()
        worst = max(worst, float((onnx_noise(patches, index) - expected).abs().max()))
    if worst > EXPORT_TOLERANCE:
        raise ModelError(f"the ONNX graph differs from PyTorch by {worst:.2e} "
                         f"(> {EXPORT_TOLERANCE:.0e}); not writing it")
    return worst


class OnnxNoise:
    """A :data:`~radar_ad.noise_map.PatchPredictor` running the exported graph
    in ONNX Runtime on the CPU."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unexported types
            raise ModelError(f"cannot read ONNX model: {first_line(exc)}") from None

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        feed = {"patches": patches.detach().cpu().float().numpy(),
                "index": index.detach().cpu().to(torch.int64).numpy()}
        return torch.from_numpy(self.session.run(["noise"], feed)[0])


def _switch_to(radar: Radar, onnx_noise: OnnxNoise) -> Radar:
    radar.noise_ = onnx_noise
    radar.noise_settings_ = noise_settings(radar.config)
    radar.noise_device_ = torch.device("cpu")
    radar.backend = "onnx"
    return radar


def use_onnx(radar: Radar) -> Radar:
    """Run ``radar``'s network through ONNX Runtime from now on (exported in
    memory and checked against PyTorch first)."""
    onnx_noise = OnnxNoise(onnx_bytes(radar))
    check_parity(radar, onnx_noise)
    return _switch_to(radar, onnx_noise)


def load_onnx(path: str | Path) -> Radar:
    """A fitted :class:`Radar` from an ``.onnx`` file written by
    :func:`export_onnx`; needs onnxruntime, not the model directory."""
    path = Path(path)
    onnx_noise = OnnxNoise(path)
    props = onnx_noise.metadata()
    if METADATA_KEY not in props or CALIBRATION_KEY not in props:
        raise ModelError(f"{path} is an ONNX file but not one written by `radar export`")
    try:
        meta = json.loads(props[METADATA_KEY])
        check_metadata(meta, str(path))
        radar = Radar.from_metadata(meta)
        calibration = np.asarray(json.loads(props[CALIBRATION_KEY]), dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    _switch_to(radar, onnx_noise)
    radar._calibrate_from(calibration, meta)
    return radar
