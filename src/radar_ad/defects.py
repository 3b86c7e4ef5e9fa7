"""Generic synthetic defects pasted into normal images, each with its exact mask.

What the defect-aware network (its repair output) and the segmentation
head learn from, and what the self-validation of the default
(:mod:`radar_ad.selection`) scores candidates on. Nothing here is shaped
after a test set's defects: every defect is a change of one generic kind
inside an irregular region, and every property is drawn from a wide stated
range, so what is learned is "unlike its surroundings" rather than the look
of one defect type.

The region: cut from Perlin-like fractal noise inside a box whose extent is
log-uniform from :data:`SMALLEST` px to a third of the image's shorter side
(``largest``), aspect 1:3 to 3:1: a blob (the noise above a threshold), or,
in :data:`RIDGE_SHARE` of the draws, a ridge (the noise near its zero
level: a thin curving line), so defects run from a few pixels to large
patches, round to elongated to line-like. The edge: crisp, or blurred by
a Gaussian of up to a sixth of the extent. The opacity: uniform in
:data:`OPACITY`. The change inside, by kind:

- ``brightness``: a shift of 0.03 to 0.5 (darker or brighter);
- ``contrast``: the local contrast scaled by 0 to 0.5 (a smudge, a polished
  spot) or 1.5 to 3 (a rough spot), around a 3 px Gaussian local mean;
- ``blur``: a Gaussian blur of 1 to 4 px (a loss of fine texture);
- ``texture``: a crop of another normal image, flipped at random, gamma
  0.6 to 1.6 and a shift of up to 0.2 (foreign material, another finish).

The defective image is ``image + weight * (changed - image)`` (clipped to
[0, 1]) with ``weight = opacity * edge profile``; the mask is exactly where
the weight is at least half the opacity (where the defect dominates), and
where the weight is 0 the image is unchanged to the bit. Images are
grayscale ``(H, W)`` float in [0, 1]; a colour image is changed through its
channel mean (:func:`paste_into`).

A faint change of a textured surface can be no change at all to an eye
(a blur of a smooth spot, a small shift under strong grain). With
``visible`` > 0 a draw is made again (up to :data:`ATTEMPTS` times) until
the change inside the mask, on average, is at least ``visible`` times the
image's own fine-texture spread (:func:`visibility`): a defect is then
faint or strong relative to its surface, never invisible, so a head
learning from it and a score measured on it are about defects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

KINDS = ("brightness", "contrast", "blur", "texture")
SMALLEST = 3.0  # px: the smallest extent of a defect's box
LARGEST_FRACTION = 1 / 3  # of the shorter image side: the largest extent
ASPECT = 3.0  # the box's sides differ by at most this factor
RIDGE_SHARE = 1 / 3
RIDGE_WIDTH = (0.03, 0.15)  # of the noise's standard deviation: how thin a ridge is
OPACITY = (0.2, 1.0)
EDGE_FRACTION = 1 / 6  # of the extent: the softest edge's Gaussian sigma
CRISP = 0.35  # px: an edge sigma below this is no blur at all
BRIGHTNESS = (0.03, 0.5)
FLATTER = (0.0, 0.5)
ROUGHER = (1.5, 3.0)
BLUR = (1.0, 4.0)
GAMMA = (0.6, 1.6)
TEXTURE_SHIFT = 0.2
ATTEMPTS = 20
VISIBLE = 1.0  # what the learning and the self-validation use: at least the texture's own spread


@dataclass(frozen=True)
class Defect:
    """A pasted defect: ``image`` the defective ``(H, W)`` image, ``mask``
    the bool ``(H, W)`` pixels it dominates, ``weight`` the ``(H, W)``
    blend weight of the change; the draws behind it."""

    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    kind: str
    extent: float
    opacity: float
    edge: float


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, cells: float) -> np.ndarray:
    """``(H, W)`` Perlin-like value noise: three octaves of random grids of
    ``cells``, 2 ``cells`` and 4 ``cells`` per side, cubic-upsampled and
    summed at halving amplitudes."""
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


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(max(low, high)))))


def defect_region(shape: tuple[int, int], rng: np.random.Generator, smallest: float = SMALLEST,
                  largest: float | None = None) -> tuple[np.ndarray, float]:
    """``(bool (H, W) region, extent)``: the largest connected piece of a
    blob (thresholded fractal noise pulled to the middle of its box) or a
    ridge (the noise near zero) in a box of extent log-uniform in
    [``smallest``, ``largest``] px (default: a third of the shorter side),
    placed at random inside the image."""
    height, width = shape
    largest = max(smallest, LARGEST_FRACTION * min(height, width)) if largest is None else largest
    extent = _log_uniform(rng, smallest, largest)
    stretch = np.log(ASPECT) / 2
    box_h = int(np.clip(round(extent * np.exp(rng.uniform(-stretch, stretch))), 1, height))
    box_w = int(np.clip(round(extent * np.exp(rng.uniform(-stretch, stretch))), 1, width))
    rows, cols = np.mgrid[:box_h, :box_w]
    bowl = ((rows - (box_h - 1) / 2) / (box_h / 2)) ** 2 + ((cols - (box_w - 1) / 2) / (box_w / 2)) ** 2
    noise = fractal_noise((box_h, box_w), rng, rng.uniform(1.0, 3.0))
    noise = noise / (noise.std() + 1e-9)
    if rng.random() < RIDGE_SHARE:
        blob = np.abs(noise) < rng.uniform(*RIDGE_WIDTH)
    else:
        blob = noise - 2.5 * bowl > np.quantile(noise - 2.5 * bowl, rng.uniform(0.3, 0.75))
    labels, count = ndimage.label(blob)
    if count:
        sizes = ndimage.sum(blob, labels, range(1, count + 1))
        blob = labels == 1 + int(np.argmax(sizes))
    else:  # a flat field: the ellipse inscribed in the box
        blob = bowl <= 1
    region = np.zeros(shape, bool)
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    region[top:top + box_h, left:left + box_w] = blob
    return region, extent


def _changed(image: np.ndarray, other: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The whole image changed by ``kind`` (the region decides where it shows)."""
    if kind == "brightness":
        return image + (1 if rng.random() < 0.5 else -1) * rng.uniform(*BRIGHTNESS)
    if kind == "contrast":
        local = ndimage.gaussian_filter(image, 3.0)
        return local + (image - local) * rng.uniform(*(FLATTER if rng.random() < 0.5 else ROUGHER))
    if kind == "blur":
        return ndimage.gaussian_filter(image, rng.uniform(*BLUR))
    if kind == "texture":
        height, width = image.shape
        source = other[::-1] if rng.random() < 0.5 else other
        source = source[:, ::-1] if rng.random() < 0.5 else source
        source = np.pad(source, ((0, max(0, height - source.shape[0])), (0, max(0, width - source.shape[1]))),
                        mode="symmetric")
        top = int(rng.integers(0, source.shape[0] - height + 1))
        left = int(rng.integers(0, source.shape[1] - width + 1))
        crop = np.clip(source[top:top + height, left:left + width], 0, 1)
        return crop ** rng.uniform(*GAMMA) + rng.uniform(-TEXTURE_SHIFT, TEXTURE_SHIFT)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def texture_spread(image: np.ndarray) -> float:
    """The spread of an ``(H, W)`` image's fine texture: 1.4826 times the
    median absolute value of its difference from a 2 px Gaussian blur (a
    robust standard deviation of the high-pass), at least 1/255."""
    detail = np.asarray(image, dtype=np.float64) - ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), 2.0)
    return max(1.4826 * float(np.median(np.abs(detail - np.median(detail)))), 1 / 255)


def visibility(defect: Defect, image: np.ndarray, spread: float | None = None) -> float:
    """The mean absolute change inside the defect's mask, in units of the
    image's :func:`texture_spread`."""
    change = np.abs(defect.image - np.asarray(image, dtype=np.float64))[defect.mask]
    return float(change.mean()) / (spread or texture_spread(image)) if change.size else 0.0


def paste_defect(image: np.ndarray, other: np.ndarray, rng: np.random.Generator, kind: str | None = None,
                 smallest: float = SMALLEST, largest: float | None = None, visible: float = 0.0) -> Defect:
    """A defect of ``kind`` (default: one of :data:`KINDS` at random) in the
    ``(H, W)`` image in [0, 1]; ``other`` is another normal image (any size)
    for the ``texture`` kind; ``smallest``/``largest`` bound the extent
    (:func:`defect_region`); ``visible``: drawn again until at least that
    :func:`visibility` (the last draw is kept after :data:`ATTEMPTS`)."""
    spread = texture_spread(image) if visible > 0 else 1.0
    for _ in range(ATTEMPTS if visible > 0 else 1):
        defect = _draw(image, other, rng, kind, smallest, largest)
        if visible <= 0 or visibility(defect, image, spread) >= visible:
            break
    return defect


def _draw(image: np.ndarray, other: np.ndarray, rng: np.random.Generator, kind: str | None, smallest: float,
          largest: float | None) -> Defect:
    kind = KINDS[int(rng.integers(len(KINDS)))] if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    image = np.asarray(image, dtype=np.float64)
    region, extent = defect_region(image.shape, rng, smallest, largest)
    edge = _log_uniform(rng, CRISP / 2, max(CRISP, EDGE_FRACTION * extent))
    if edge < CRISP:
        edge, profile = 0.0, region.astype(np.float64)
    else:
        profile = ndimage.gaussian_filter(region.astype(np.float64), edge)
        profile /= max(float(profile.max()), 1e-12)
        profile[profile < 1e-3] = 0.0  # the far tail of the Gaussian changes nothing
    opacity = float(rng.uniform(*OPACITY))
    weight = opacity * profile
    changed = np.clip(_changed(image, np.asarray(other, dtype=np.float64), kind, rng), 0, 1)
    defective = np.where(weight > 0, np.clip(image + weight * (changed - image), 0, 1), image)
    return Defect(defective, profile >= 0.5, weight, kind, extent, opacity, edge)


def paste_into(image: np.ndarray, other: np.ndarray, rng: np.random.Generator, kind: str | None = None,
               smallest: float = SMALLEST, largest: float | None = None,
               visible: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(defective (C, H, W) float32, mask (H, W) bool)`` for a ``(C, H, W)``
    image in [0, 1]: the defect is made on the channel mean and its change
    added to every channel; ``other`` is another ``(C, h, w)`` normal image."""
    gray = np.asarray(image, dtype=np.float64).mean(0)
    defect = paste_defect(gray, np.asarray(other, dtype=np.float64).mean(0), rng, kind, smallest, largest, visible)
    defective = np.clip(image + (defect.image - gray)[None], 0, 1)
    return defective.astype(np.float32), defect.mask
