"""Data-parallel training through Accelerate (``radar_ad.scale.distributed``):
one process gives `radar train`'s very weights; two CPU processes (gloo,
Accelerate's own launcher) write one model, reach the one-process loss, and
resume after every rank was killed to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import psutil
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from radar_ad import Radar
from radar_ad.errors import ConfigError
from radar_ad.network import build_scheduler, build_unet
from radar_ad.patches import PyramidSampler
from radar_ad.persistence import WEIGHTS_FILE
from radar_ad.training import _training_fingerprint, checkpoint_step, fingerprint_changes, rank_seed, train_unet

from conftest import tiny_config

pytest.importorskip("accelerate")
from accelerate.state import AcceleratorState  # noqa: E402

from radar_ad.scale.distributed import AccelerateStrategy  # noqa: E402

LAUNCH_SECONDS = 240


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps one process-wide state; each test makes its own."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _train(config, strategy):
    torch.manual_seed(0)
    unet = build_unet(config.network, 1, config.patch_size)
    images = [torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sampler = PyramidSampler(images, 28, config.network.scales)
    result = train_unet(unet, build_scheduler(config.network), sampler, config, strategy, progress=False)
    return unet, result


def test_one_process_through_accelerate_gives_the_plain_loops_weights(fresh_accelerate):
    config = tiny_config(**{"train.steps": 5, "train.batch_size": 4, "train.ema_decay": 0.9})
    plain, plain_result = _train(config, torch.device("cpu"))
    accelerated, result = _train(config, AccelerateStrategy(device="cpu"))
    assert result.loss_history == plain_result.loss_history
    for name, value in plain.state_dict().items():
        assert torch.equal(value, accelerated.state_dict()[name]), name


def test_bf16_mixed_precision_trains_and_leaves_a_float32_network(fresh_accelerate):
    config = tiny_config(**{"train.steps": 4, "train.batch_size": 4})
    strategy = AccelerateStrategy(mixed_precision="bf16", device="cpu")
    unet, result = _train(config, strategy)
    assert all(torch.isfinite(torch.tensor(result.loss_history)))
    # the autocast wrapper is gone: inference and calibration run in float32
    with torch.no_grad():
        out = unet(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long),
                   class_labels=torch.zeros(1, dtype=torch.long)).sample
    assert out.dtype == torch.float32 and not hasattr(unet, "_original_forward")


def test_fp16_without_cuda_and_an_uneven_global_batch_are_refused(fresh_accelerate):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs CUDA"):
            AccelerateStrategy(mixed_precision="fp16")
    strategy = AccelerateStrategy(device="cpu")
    strategy.world_size = 2  # as under a launcher of two
    with pytest.raises(ConfigError, match=r"train.batch_size \(5\) is the global batch"):
        strategy.local_batch(5)


def test_rank_seeds_are_the_config_seed_for_rank_0_and_distinct_otherwise():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)} | {rank_seed(8, r) for r in range(1, 8)}) == 15


def test_a_resume_on_another_number_of_processes_is_refused_naming_it():
    config = tiny_config()
    two, one = _training_fingerprint(config, 1, None, 2), _training_fingerprint(config, 1, None, 1)
    assert one == _training_fingerprint(config, 1, None)  # one process: the fingerprint of 0.5 checkpoints
    assert fingerprint_changes(two, one) == ["processes (2 then, 1 now)"]


def _env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RADAR_DEBUG", None)
    return env


def _launch_args(*args):
    """`accelerate launch` of two CPU processes (gloo) running `radar ARGS`."""
    launcher = shutil.which("accelerate") or pytest.skip("no accelerate launcher")
    with socket.socket() as probe:  # a free rendezvous port: two launches may run at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "radar_ad", *map(str, args)]


def _launch(*args):
    return subprocess.Popen(_launch_args(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_processes_write_one_model_reach_the_one_process_loss_and_resume_after_a_kill(surfaces, tmp_path):
    config = tiny_config(**{"train.steps": 60, "train.batch_size": 16, "train.checkpoint_every": 5})
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    whole, killed = tmp_path / "models" / "whole", tmp_path / "models" / "killed"
    # both runs at once (they overlap their imports); one is killed after its first checkpoint
    run = _launch("train", surfaces, "--out", whole, "--config", config_file, "-q")
    doomed = _launch("train", surfaces, "--out", killed, "--config", config_file, "-q")
    checkpoint = tmp_path / "models" / "killed.checkpoint"
    deadline = time.monotonic() + LAUNCH_SECONDS
    while not checkpoint_step(checkpoint) and doomed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # the launcher and every rank (torchrun starts each rank in its own session)
    for process in [*psutil.Process(doomed.pid).children(recursive=True), psutil.Process(doomed.pid)]:
        process.send_signal(signal.SIGKILL)
    doomed_err = doomed.communicate(timeout=60)[1]
    step = checkpoint_step(checkpoint)
    assert step is not None and 5 <= step < 60 and not killed.exists(), doomed_err
    with safe_open(str(checkpoint / "checkpoint.safetensors"), framework="pt") as handle:
        first_losses = json.loads(handle.metadata()["loss_history"])[:5]

    out, err = run.communicate(timeout=LAUNCH_SECONDS)
    assert run.returncode == 0, err
    assert out.count("model written to") == 1  # rank 0 alone reports
    assert sorted(p.name for p in whole.parent.iterdir()) == ["killed.checkpoint", "whole"]
    trained = Radar.load(whole)
    info = trained.training_
    assert info["processes"] == 2 and info["steps"] == 60
    assert info["final_loss"] < 0.8 * sum(first_losses) / len(first_losses)  # the loss fell

    resumed = _launch("train", surfaces, "--out", killed, "--config", config_file, "-q", "--resume")
    # meanwhile, the same global batch on one process: the same loss within 10 %
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = Radar(config).fit(surfaces, progress=False).training_["final_loss"]
    finally:
        torch.set_num_threads(torch_threads)
    assert abs(info["final_loss"] - alone) <= 0.1 * alone, (info["final_loss"], alone)

    assert resumed.wait(timeout=LAUNCH_SECONDS) == 0, resumed.communicate()[1]
    assert Radar.load(killed).training_["resumed_from"] == step and not checkpoint.exists()
    # every rank continued its own draws: the uninterrupted run's weights, bit for bit
    a, b = load_file(whole / WEIGHTS_FILE), load_file(killed / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
