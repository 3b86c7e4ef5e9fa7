"""The GPU path: training with mixed precision through Accelerate and
inference on CUDA, with the CPU's verdicts and maps. Skipped where there is
no CUDA device; run wherever one is (`python -m pytest tests/test_gpu.py`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radar_ad import Radar
from radar_ad.network import build_scheduler, build_unet
from radar_ad.patches import PyramidSampler
from radar_ad.training import train_unet

from conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda_lowers_the_loss(precision):
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    from radar_ad.scale.distributed import AccelerateStrategy

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        config = tiny_config(**{"train.steps": 60, "train.batch_size": 16})
        unet = build_unet(config.network, 1, config.patch_size)
        images = [torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(i)) for i in range(4)]
        strategy = AccelerateStrategy(mixed_precision=precision)
        sampler = PyramidSampler(images, 28, config.network.scales)
        result = train_unet(unet, build_scheduler(config.network), sampler, config, strategy, progress=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert strategy.device.type == "cuda"
    losses = result.loss_history
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert next(unet.parameters()).dtype == torch.float32  # the weights stay float32


def test_cuda_inference_gives_the_cpu_verdicts_and_maps(fitted, surfaces):
    _, model_dir = fitted
    images = sorted((surfaces / "test").rglob("*.png"))[:12]
    on_cpu = Radar.load(model_dir, device="cpu").predict_many(images)
    on_gpu = Radar.load(model_dir, device="cuda").predict_many(images)
    threshold = Radar.load(model_dir).pixel_threshold_
    assert [p.verdict for p in on_gpu] == [p.verdict for p in on_cpu]
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert abs(cpu.score - gpu.score) <= 1e-3 * max(1.0, abs(cpu.score))
        assert np.abs(cpu.anomaly_map - gpu.anomaly_map).max() <= 1e-2 * threshold
