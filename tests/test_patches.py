import pytest
import torch

from radar_ad.patches import PatchSampler, grid_positions, stitch, tile


@pytest.mark.parametrize("length,patch,stride", [(28, 28, 14), (64, 28, 14), (65, 28, 7), (100, 32, 32)])
def test_grid_covers_both_edges(length, patch, stride):
    positions = grid_positions(length, patch, stride)
    assert positions[0] == 0 and positions[-1] == length - patch
    assert torch.all(positions[1:] - positions[:-1] <= stride)


@pytest.mark.parametrize("height,width,stride", [(28, 28, 14), (64, 50, 14), (61, 97, 5), (40, 40, 28)])
def test_tile_stitch_round_trip(height, width, stride):
    images = torch.rand(3, 2, height, width)
    patches = tile(images, 28, stride)
    assert patches.shape[1:] == (2, 28, 28)
    assert torch.allclose(stitch(patches, height, width, stride), images)


def test_tile_takes_the_right_pixels():
    image = torch.arange(40 * 30, dtype=torch.float32).reshape(1, 1, 40, 30)
    patches = tile(image, 28, 14)
    # positions: rows 0, 12 (last = 40 - 28); cols 0, 2
    assert torch.equal(patches[0, 0], image[0, 0, :28, :28])
    assert torch.equal(patches[1, 0], image[0, 0, :28, 2:30])
    assert torch.equal(patches[3, 0], image[0, 0, 12:40, 2:30])


def test_stitch_averages_overlaps():
    patches = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])  # two tiles on a 4x6 image
    out = stitch(patches, 4, 6, 2)
    assert torch.equal(out[0, 0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5, 1.0, 1.0]))


def test_sampler_draws_valid_patches_uniformly_and_reproducibly():
    small = torch.zeros(1, 30, 30)
    large = torch.ones(1, 60, 40)
    sampler = PatchSampler([small, large], 28)
    assert sampler.n_patches == 3 * 3 + 33 * 13
    a = sampler.sample(4000, torch.Generator().manual_seed(0))
    b = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.shape == (4000, 1, 28, 28)
    # each patch comes wholly from one image (no padding leaks in)
    means = a.mean(dim=(1, 2, 3))
    assert torch.all((means == 0) | (means == 1))
    share_small = (means == 0).float().mean().item()
    assert abs(share_small - 9 / 438) < 0.015


def test_sampler_reaches_every_position():
    image = (torch.arange(32 * 32) % 256).float().reshape(1, 32, 32) / 255
    sampler = PatchSampler([image], 28)
    corners = sampler.sample(2000, torch.Generator().manual_seed(1))[:, 0, 0, 0]
    assert len(torch.unique(corners)) == 25
