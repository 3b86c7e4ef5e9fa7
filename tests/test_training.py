import numpy as np
import pytest
import torch

from radar_ad.network import build_scheduler, build_unet
from radar_ad.patches import PyramidSampler
from radar_ad.training import DeviceStrategy, diffusion_loss, learning_rate, train_unet, with_synthetic_defects

from conftest import tiny_config


class InterruptedSampler(PyramidSampler):
    """Raises KeyboardInterrupt on draw number ``stop_at`` (as Ctrl-C would)."""

    def __init__(self, images, patch, scales, stop_at):
        super().__init__(images, patch, scales)
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
    scales = config.network.scales
    sampler = InterruptedSampler(images, 28, scales, stop_at) if stop_at else PyramidSampler(images, 28, scales)
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
                                 "train.ema_decay": 0.9, "network.scales": [1, 2, 4]})
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


def test_loss_step_is_the_epsilon_objective_with_the_schedulers_noising_plus_the_repair():
    config = tiny_config(**{"network.scales": [1, 2, 4]})
    torch.manual_seed(0)
    unet = build_unet(config.network, 1, config.patch_size).eval()
    scheduler = build_scheduler(config.network)
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(3, 1, 28, 28, generator=generator) * 2 - 1
    noise = torch.randn(clean.shape, generator=generator)
    repair = torch.zeros(clean.shape)
    repair[1, :, 3:9, 4:7] = 0.4  # the second patch carries a defect
    timesteps, levels = torch.tensor([0, 10, 999]), torch.tensor([0, 2, 1])
    abar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    with torch.no_grad():
        output = unet(abar.sqrt() * clean + (1 - abar).sqrt() * noise, timesteps, class_labels=levels).sample
        expected = torch.mean((output[:, :1] - noise) ** 2)
        assert torch.allclose(diffusion_loss(unet, scheduler, clean, timesteps, noise, levels), expected, atol=1e-6)
        # with a repair: the noise of the normal patches only, plus the repair of all, weighted by abar
        normal = torch.tensor([0, 2])
        expected = (torch.mean((output[normal, :1] - noise[normal]) ** 2)
                    + torch.mean((output[:, 1:] - repair) ** 2 * abar))
        assert torch.allclose(diffusion_loss(unet, scheduler, clean, timesteps, noise, levels, repair), expected,
                              atol=1e-6)


def test_patches_come_from_every_level_and_a_share_carries_a_defect_with_its_way_back():
    images = [torch.rand(1, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sampler = PyramidSampler(images, 28, (1, 2, 4))  # level 4 (16 x 20 px) is mirrored up to the patch
    generator = torch.Generator().manual_seed(0)
    patches, levels = sampler.sample(600, generator)
    assert patches.shape == (600, 1, 28, 28) and set(levels.tolist()) == {0, 1, 2}
    assert abs(float((levels == 2).float().mean()) - 1 / 3) < 0.08
    inputs, repair = with_synthetic_defects(patches, 0.5, torch.Generator().manual_seed(1))
    changed = (inputs != patches).flatten(1).any(1).float().mean()
    assert 0.3 < float(changed) <= 0.6
    torch.testing.assert_close(inputs + repair / 2, patches)  # the repair leads back to the clean patch
    assert np.isfinite(inputs.numpy()).all() and inputs.min() >= 0 and inputs.max() <= 1
    again, _ = with_synthetic_defects(patches, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(again, inputs)  # seeded
