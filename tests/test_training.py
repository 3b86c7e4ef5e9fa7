import pytest
import torch

from radar_ad.network import build_scheduler, build_unet
from radar_ad.patches import PatchSampler
from radar_ad.training import DeviceStrategy, diffusion_loss, learning_rate, train_unet

from conftest import tiny_config


class InterruptedSampler(PatchSampler):
    """Raises KeyboardInterrupt on draw number ``stop_at`` (as Ctrl-C would)."""

    def __init__(self, images, patch, stop_at):
        super().__init__(images, patch)
        self.calls, self.stop_at = 0, stop_at

    def sample(self, count, generator):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().sample(count, generator)


def _run(config, checkpoint_dir=None, resume=False, stop_at=None, device=None):
    torch.manual_seed(0)
    unet = build_unet(config.network, 1, config.patch_size)
    images = [torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sampler = InterruptedSampler(images, 28, stop_at) if stop_at else PatchSampler(images, 28)
    result = train_unet(unet, build_scheduler(config.network), sampler, config,
                        device or torch.device("cpu"), checkpoint_dir=checkpoint_dir, resume=resume,
                        progress=False)
    return unet, result


class CountingStrategy(DeviceStrategy):
    """A stand-in for a distributed launcher's strategy: counts what the loop asks of it."""

    def __init__(self, rank=0):
        super().__init__("cpu")
        self.rank = rank
        self.backwards = self.waits = 0

    def backward(self, loss):
        self.backwards += 1
        super().backward(loss)

    def wait(self):
        self.waits += 1


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full_config = tiny_config(**{"train.steps": 6, "train.batch_size": 4, "train.checkpoint_every": 3,
                                 "train.ema_decay": 0.9})
    full, _ = _run(full_config)
    with pytest.raises(KeyboardInterrupt):  # interrupted in step 5, after the step-3 checkpoint
        _run(full_config, tmp_path, stop_at=5)
    resumed, result = _run(full_config, tmp_path, resume=True)
    assert result.resumed_from == 3
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_loss_goes_down():
    _, result = _run(tiny_config(**{"train.steps": 60, "train.batch_size": 16}))
    first, last = result.loss_history[:10], result.loss_history[-10:]
    assert sum(last) / 10 < sum(first) / 10


def test_learning_rate_warms_up_and_decays():
    config = tiny_config(**{"train.steps": 1000, "train.warmup_steps": 100})
    base = config.train.learning_rate
    assert learning_rate(0, config) < learning_rate(99, config) == base
    assert learning_rate(999, config) < 0.2 * base


def test_a_device_strategy_drives_the_loop_without_changing_it(tmp_path):
    config = tiny_config(**{"train.steps": 4, "train.batch_size": 4, "train.checkpoint_every": 2})
    plain, _ = _run(config)
    main = CountingStrategy()
    strategized, _ = _run(config, tmp_path / "main", device=main)
    assert main.backwards == 4 and main.waits == 2 and (tmp_path / "main").is_dir()
    for (name, a), (_, b) in zip(plain.state_dict().items(), strategized.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    other = CountingStrategy(rank=1)  # not the main process: waits at checkpoints, writes none
    _run(config, tmp_path / "other", device=other)
    assert other.waits == 2 and not (tmp_path / "other").exists()


def test_loss_step_is_the_epsilon_objective_with_the_schedulers_noising():
    config = tiny_config()
    torch.manual_seed(0)
    unet = build_unet(config.network, 1, config.patch_size).eval()
    scheduler = build_scheduler(config.network)
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(3, 1, 28, 28, generator=generator) * 2 - 1
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.tensor([0, 10, 999])
    abar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    with torch.no_grad():
        expected = torch.mean((unet(abar.sqrt() * clean + (1 - abar).sqrt() * noise, timesteps).sample - noise) ** 2)
        assert torch.allclose(diffusion_loss(unet, scheduler, clean, timesteps, noise), expected, atol=1e-6)
