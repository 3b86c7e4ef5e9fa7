"""Generic synthetic defects pasted into normal images: the training data of
a response that learns what a defect does to the predicted noise.

No defect shape here is copied from a test set. Four kinds, each drawn from
a seeded :class:`numpy.random.Generator` with its exact mask:

- ``foreign``: an irregular region (the largest blob of thresholded
  Perlin-like fractal noise) filled, with a soft edge, with a crop of another
  normal image under a random gamma and brightness shift;
- ``pits``: one to three small dark (sometimes bright) ellipses, 3-14 px;
- ``crack``: a thin random-walk line, 1-3 px wide, 15-90 steps long, darkened;
- ``chip``: a bulge of dark background cut into one border, as a piece
  broken off the part.

The image is grayscale ``(H, W)`` float in [0, 1] (a colour image is
defected through its channel mean and the change applied to every channel).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("foreign", "pits", "crack", "chip")


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, cells: float) -> np.ndarray:
    """``(H, W)`` Perlin-like value noise: three octaves of random grids of
    ``cells``, 2 ``cells`` and 4 ``cells`` per side, cubic-upsampled and summed
    at halving amplitudes."""
    height, width = shape
    total = np.zeros(shape)
    amplitude = 1.0
    for octave in range(3):
        n = max(2, int(cells * 2**octave))
        grid = rng.standard_normal((n + 1, n + 1))
        total += amplitude * ndimage.zoom(grid, ((height + 1) / (n + 1), (width + 1) / (n + 1)),
                                          order=3)[:height, :width]
        amplitude /= 2
    return total


def irregular_region(shape: tuple[int, int], rng: np.random.Generator, smallest: float = 0.005,
                     largest: float = 0.08) -> np.ndarray:
    """A connected ``(H, W)`` bool region of about ``smallest`` to ``largest``
    of the image: the largest blob of thresholded fractal noise."""
    region = np.zeros(shape, bool)
    for _ in range(10):
        noise = fractal_noise(shape, rng, rng.uniform(2, 6))
        blobs, count = ndimage.label(noise > np.quantile(noise, rng.uniform(1 - largest, 1 - smallest)))
        if count:
            sizes = ndimage.sum(blobs > 0, blobs, range(1, count + 1))
            region = blobs == 1 + int(np.argmax(sizes))
            if region.sum() >= 6:
                break
    return region


def _blend(image: np.ndarray, fill: np.ndarray | float, mask: np.ndarray, edge: float,
           strength: float = 1.0) -> np.ndarray:
    soft = ndimage.gaussian_filter(mask.astype(np.float64), edge) * strength
    return np.clip(image * (1 - soft) + fill * soft, 0, 1)


def foreign(image: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreign texture (a crop of ``other``, at least as large as ``image``) in an irregular region."""
    height, width = image.shape
    top = rng.integers(0, other.shape[0] - height + 1)
    left = rng.integers(0, other.shape[1] - width + 1)
    texture = other[top:top + height, left:left + width]
    if rng.random() < 0.5:
        texture = texture[::-1, ::-1]
    texture = np.clip(texture ** rng.uniform(0.5, 2.0) + rng.uniform(-0.25, 0.25), 0, 1)
    mask = irregular_region(image.shape, rng)
    return _blend(image, texture, mask, 1.0, rng.uniform(0.4, 1.0)), mask


def pits(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One to three small ellipses, darkened (80 %) or brightened."""
    height, width = image.shape
    rows, cols = np.mgrid[:height, :width]
    mask = np.zeros(image.shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        dy, dx = rows - rng.uniform(0, height), cols - rng.uniform(0, width)
        angle = rng.uniform(0, np.pi)
        u = (dy * np.cos(angle) + dx * np.sin(angle)) / rng.uniform(1.5, 7)
        v = (dx * np.cos(angle) - dy * np.sin(angle)) / rng.uniform(1.5, 7)
        mask |= u * u + v * v <= 1
    factor = rng.uniform(0.25, 0.75) if rng.random() < 0.8 else rng.uniform(1.3, 1.8)
    return _blend(image, image * factor, mask, 0.8), mask


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin darkened random-walk line."""
    height, width = image.shape
    mask = np.zeros(image.shape, bool)
    y, x, angle = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, 2 * np.pi)
    half = int(rng.choice([0, 0, 1]))
    for _ in range(int(rng.integers(15, 90))):
        angle += rng.normal(0, 0.25)
        y, x = y + np.sin(angle), x + np.cos(angle)
        row, col = int(y), int(x)
        if not (0 <= row < height and 0 <= col < width):
            break
        mask[max(0, row - half):row + half + 1, max(0, col - half):col + half + 1] = True
    return _blend(image, image * rng.uniform(0.3, 0.75), mask, 0.6), mask


def chip(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off one border: a bulge of dark, slightly noisy background."""
    height, width = image.shape
    side = int(rng.integers(4))
    length = height if side < 2 else width
    along = np.arange(length)
    half = rng.uniform(5, 25)
    depth = rng.uniform(3, 16) * (1 - ((along - rng.uniform(0, length)) / half) ** 2)
    depth = np.clip(depth + 2 * fractal_noise((1, length), rng, rng.uniform(1, 4))[0], 0, None)
    across = np.arange(width if side < 2 else height)
    if side % 2:
        across = across[::-1]
    mask = across[None, :] < depth[:, None]  # (length, across)
    if side >= 2:
        mask = mask.T
    fill = rng.uniform(0.0, 0.2) + rng.normal(0, 0.02, image.shape)
    return _blend(image, fill, mask, 0.7), mask


def paste_defect(image: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                 kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(defective image, bool mask)`` of an ``(H, W)`` normal image in [0, 1]:
    a defect of ``kind`` (default: one of :data:`KINDS` at random); ``other``
    is another normal image, at least as large, for foreign texture."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind == "foreign":
        return foreign(image, other, rng)
    if kind == "pits":
        return pits(image, rng)
    if kind == "crack":
        return crack(image, rng)
    if kind == "chip":
        return chip(image, rng)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
