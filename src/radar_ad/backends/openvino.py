"""The OpenVINO backend: Intel's inference engine, reading the exported ONNX
graph (``pip install 'radar-ad[openvino]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..backend import BackendOutput, ModelFile, process_threads
from ..errors import ModelError, first_line, require
from ..registry import BACKENDS
from .onnx import NOISE_OUTPUT, REPAIR_OUTPUT, GraphBackend, read_metadata


@BACKENDS.register("openvino")
class OpenVinoBackend(GraphBackend):
    """The graph of ``radar export`` (in memory, or an ``.onnx`` file)
    compiled by OpenVINO for the CPU, in float32 (OpenVINO would otherwise
    pick bfloat16 on CPUs that have it, and break parity with PyTorch)."""

    label = "OpenVINO"
    reads = (".onnx",)

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        ov = require("openvino", "openvino", "the OpenVINO backend")
        core = ov.Core()
        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        threads = threads or process_threads()
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        try:
            graph = core.read_model(str(model) if isinstance(model, Path) else model)
            self.compiled = core.compile_model(graph, "CPU", properties)
        except Exception as exc:  # OpenVINO raises its own unexported types
            raise ModelError(f"cannot read the model with OpenVINO: {first_line(exc)}") from None
        self.device = torch.device("cpu")
        self.version = ov.__version__

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        results = self.compiled({"patches": patches.detach().cpu().float().numpy(),
                                 "index": index.detach().cpu().to(torch.int64).numpy(),
                                 "level": level.detach().cpu().to(torch.int64).numpy()})
        noise, repair = (torch.from_numpy(results[self.compiled.output(name)].copy())
                         for name in (NOISE_OUTPUT, REPAIR_OUTPUT))
        return BackendOutput(noise, repair)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": self.version}

    @classmethod
    def open_file(cls, path: Path) -> ModelFile:
        onnx = require("onnx", "openvino", "the OpenVINO backend")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ModelError(f"cannot read ONNX model: {first_line(exc)}") from None
        props = {p.key: p.value for p in proto.metadata_props}
        return read_metadata(props, path, cls(path))
