"""Synthetic extrusion-printed surfaces with defects: the built-in demo data.

Real 3D-print inspection images are not shipped with the project, yet the
method, the CLI and the tests all need a small, realistic, labelled data set.
This module renders one: parallel raster roads at 45 or 135 degrees over a
faint cross-hatched lower layer, with the bounded natural variation a model
has to learn (period, width, height and brightness of roads, illumination,
sensor noise), and six defect types with exact masks.

Everything is vectorised numpy/scipy and driven by a seeded
:class:`numpy.random.Generator`, so the same seed gives byte-identical PNGs,
and each image has its own child generator (seed, split, defect, index) so
adding test images never changes the training images.

Images are rendered from a height map (0 = groove floor, ~1 = road top) and an
albedo map, so defects that change geometry (gap, blob, wavy, crack) and
defects that change material (particle, stain) are drawn the same way the
normal surface is, and the clean and the defective image share the same noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import ConfigError, DataError
from .files import move_into_place, remove_temporary_dir, temporary_dir

__all__ = [
    "DEFECT_TYPES",
    "SyntheticSpec",
    "Surface",
    "render_surface",
    "make_surface",
    "add_defect",
    "make_dataset",
    "validate_spec",
]

DEFECT_TYPES: tuple[str, ...] = ("gap", "blob", "wavy", "crack", "particle", "stain")
ORIENTATIONS: tuple[float, ...] = (45.0, 135.0)

# Natural-variation bounds (pixels / relative units); kept narrow enough to learn.
_PERIOD_RANGE = (7.0, 10.0)
_NOISE_SIGMA_RANGE = (1.5, 3.0)
# Intensity model: 255 * illumination * albedo * (_FLOOR + _RELIEF * height + shading).
_FLOOR = 0.20
_RELIEF = 0.55
_SHADE = 0.75
# A defect's mask is where it changed the noise-free image by more than this.
_MASK_THRESHOLD = 6.0
_MAX_SIZE = 4096
_MAX_IMAGES = 100_000
_SPLIT_IDS = {"train": 0, "test_good": 1, "test_defect": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`make_dataset` writes: sizes, counts, defect types and seed."""

    size: int = 128
    n_train: int = 80
    n_test_good: int = 20
    n_test_per_defect: int = 6
    defect_types: tuple[str, ...] = DEFECT_TYPES
    severity: tuple[float, float] = (0.3, 1.0)
    seed: int = 0


@dataclass(frozen=True)
class _Roads:
    """Per-road parameters of the top layer, indexed by ``k - k_min``."""

    k_min: int
    phase: float
    period: float
    centers: np.ndarray       # road axis positions across the roads (u), px
    half_widths: np.ndarray   # half the road width, px
    heights: np.ndarray       # relative road height (~1)
    wobble_amp: np.ndarray    # slow sideways meander of each road, px
    wobble_len: np.ndarray    # its wavelength along the road, px
    wobble_phase: np.ndarray


@dataclass(frozen=True, eq=False)
class Surface:
    """One rendered normal surface and the geometry defects need to follow it.

    ``image`` is the clean, noise-free float32 render in [0, 255];
    :meth:`to_uint8` adds this surface's own sensor noise. ``u``/``v`` are the
    across-road / along-road coordinates (px, origin at the image centre).
    """

    image: np.ndarray
    noise: np.ndarray
    angle: float
    period: float
    height: np.ndarray
    albedo: np.ndarray
    illumination: np.ndarray
    u: np.ndarray
    v: np.ndarray
    roads: _Roads = field(repr=False)
    under: np.ndarray = field(repr=False)   # height of the lower (cross) layer

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def to_uint8(self, image: np.ndarray | None = None) -> np.ndarray:
        """``image`` (default: the clean render) plus this surface's noise, as uint8."""
        base = self.image if image is None else image
        return _quantize(base + self.noise)


# --------------------------------------------------------------------------- helpers


def _quantize(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite ramp 0 -> 1 between the edges (edge0 > edge1 gives 1 -> 0)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _window(t: np.ndarray, half: float, edge: float) -> np.ndarray:
    """1 for |t| < half - edge/2, 0 beyond half + edge/2, smooth in between."""
    return _smoothstep(half + edge / 2.0, half - edge / 2.0, np.abs(t))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) with the origin at the image centre."""
    c = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    return np.meshgrid(c, c)  # x varies along columns, y along rows


def _irregular_radius(rng: np.random.Generator, theta: np.ndarray, radius: float,
                      roughness: float) -> np.ndarray:
    """A radius that varies smoothly with angle, for organic, non-circular shapes."""
    r = np.ones_like(theta)
    for m in (2, 3, 5):
        r += roughness / m * rng.uniform(0.4, 1.0) * np.cos(m * theta + rng.uniform(0, 2 * np.pi))
    return radius * r


def _blob_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cx: float, cy: float,
                radius: float, elong: float, roughness: float) -> np.ndarray:
    """Normalised radial distance (1 on the boundary) of a rough ellipse."""
    a = rng.uniform(0, np.pi)
    dx, dy = x - cx, y - cy
    p = dx * np.cos(a) + dy * np.sin(a)
    q = -dx * np.sin(a) + dy * np.cos(a)
    p = p / elong
    theta = np.arctan2(q, p)
    return np.hypot(p, q) / _irregular_radius(rng, theta, radius, roughness)


def _road_height(surface_roads: _Roads, u: np.ndarray, v: np.ndarray,
                 mods: dict[int, dict[str, np.ndarray]] | None = None) -> np.ndarray:
    """Height map of the top layer: the max of neighbouring rounded roads.

    ``mods`` maps an absolute road index to per-pixel ``shift`` (px, added to
    its axis), ``width`` and ``height`` (factors), which is how gap and wavy
    defects change one road without touching the others.
    """
    r = surface_roads
    k0 = np.rint((u - r.phase) / r.period).astype(np.int64)
    out = np.zeros_like(u)
    n = r.centers.size
    # Jitter and wobble keep each road within its own pitch, so the nearest
    # three roads suffice; a displaced (wavy) road can reach two pitches away.
    for dk in ((-2, -1, 0, 1, 2) if mods else (-1, 0, 1)):
        k = k0 + dk
        idx = np.clip(k - r.k_min, 0, n - 1)
        c = r.centers[idx] + r.wobble_amp[idx] * np.sin(
            2 * np.pi * v / r.wobble_len[idx] + r.wobble_phase[idx])
        half = r.half_widths[idx]
        top = r.heights[idx]
        if mods:
            for line, mod in mods.items():
                sel = k == line
                if not sel.any():
                    continue
                c = c + np.where(sel, mod.get("shift", 0.0), 0.0)
                half = half * np.where(sel, mod.get("width", 1.0), 1.0)
                top = top * np.where(sel, mod.get("height", 1.0), 1.0)
        d = (u - c) / np.maximum(half, 1e-3)
        h = top * np.clip(1.0 - d * d, 0.0, None) ** 0.6
        np.maximum(out, h, out=out)
    return out


def _shade(height: np.ndarray) -> np.ndarray:
    """Directional shading that makes roads look rounded.

    The light comes from the top edge, at 45 degrees to both print
    orientations, so the two orientations look alike (mirrored).
    """
    gy = np.gradient(height, axis=0)
    return _SHADE * gy


def _compose(height: np.ndarray, albedo: np.ndarray, illumination: np.ndarray) -> np.ndarray:
    """Noise-free intensity in [0, 255] from height, albedo and illumination."""
    relief = _FLOOR + _RELIEF * height + _shade(height)
    return np.clip(255.0 * illumination * albedo * relief, 0.0, 255.0)


# --------------------------------------------------------------------------- surface


def render_surface(rng: np.random.Generator, size: int) -> Surface:
    """Render one normal surface: random orientation and bounded natural variation.

    The period is in pixels and independent of ``size`` (a larger image shows
    more roads, not wider ones), as a camera at fixed magnification would.
    """
    size = int(size)
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    angle = float(ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))])
    theta = np.deg2rad(angle)
    x, y = _grid(size)
    u = -np.sin(theta) * x + np.cos(theta) * y     # across the roads
    v = np.cos(theta) * x + np.sin(theta) * y      # along the roads

    period = float(rng.uniform(*_PERIOD_RANGE))
    phase = float(rng.uniform(0, period))
    reach = size / np.sqrt(2.0) + 4 * period
    k_min = int(np.floor((-reach - phase) / period))
    k_max = int(np.ceil((reach - phase) / period))
    k = np.arange(k_min, k_max + 1)
    n = k.size
    fill = rng.uniform(0.86, 1.0)  # how fully roads fill their pitch (per image)
    roads = _Roads(
        k_min=k_min,
        phase=phase,
        period=period,
        centers=phase + k * period + np.clip(rng.normal(0, 0.04 * period, n), -0.1 * period, 0.1 * period),
        half_widths=0.5 * period * fill * np.clip(rng.normal(1.0, 0.04, n), 0.9, 1.1),
        heights=np.clip(rng.normal(1.0, 0.04, n), 0.9, 1.1),
        wobble_amp=rng.uniform(0.0, 0.35, n),
        wobble_len=rng.uniform(30.0, 90.0, n),
        wobble_phase=rng.uniform(0, 2 * np.pi, n),
    )
    top = _road_height(roads, u, v)

    # Lower layer, printed across the top one, shows faintly in the grooves.
    under_period = period * rng.uniform(0.95, 1.05)
    under = 0.2 * (0.5 + 0.5 * np.cos(2 * np.pi * (v - rng.uniform(0, under_period)) / under_period)) ** 2
    height = np.maximum(top, under)

    # Per-road brightness (filament/cooling) plus a faint fine-grained mottle.
    k_idx = np.clip(np.rint((u - phase) / period).astype(np.int64) - k_min, 0, n - 1)
    road_tone = np.clip(rng.normal(1.0, 0.035, n), 0.92, 1.08)[k_idx]
    mottle = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5, mode="wrap")
    albedo = rng.uniform(0.92, 1.06) * road_tone * (1.0 + 0.05 * mottle)

    # Smooth low-frequency illumination: a tilt plus one broad lobe.
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    lx, ly = rng.uniform(-0.5, 0.5, 2) * size
    lobe = np.exp(-((x - lx) ** 2 + (y - ly) ** 2) / (2 * (0.6 * size) ** 2))
    illumination = 1.0 + (gx * x + gy * y) / size + rng.uniform(-0.06, 0.06) * lobe

    image = _compose(height, albedo, illumination).astype(np.float32)
    noise = (rng.standard_normal((size, size)) * rng.uniform(*_NOISE_SIGMA_RANGE)).astype(np.float32)
    return Surface(image=image, noise=noise, angle=angle, period=period, height=height,
                   albedo=albedo, illumination=illumination, u=u, v=v, roads=roads, under=under)


def make_surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal uint8 image (render plus sensor noise)."""
    return render_surface(rng, size).to_uint8()


# --------------------------------------------------------------------------- defects


def _place(rng: np.random.Generator, s: Surface,
           margin: float = 0.22) -> tuple[float, float, float, float, int]:
    """A defect centre well inside the image: (x, y, u, v, nearest road index)."""
    half = (s.size - 1) / 2.0
    lim = half * (1.0 - 2.0 * margin)
    cx, cy = rng.uniform(-lim, lim, 2)
    theta = np.deg2rad(s.angle)
    cu = -np.sin(theta) * cx + np.cos(theta) * cy
    cv = np.cos(theta) * cx + np.sin(theta) * cy
    road = int(np.rint((cu - s.roads.phase) / s.roads.period))
    return float(cx), float(cy), float(cu), float(cv), road


def _with_height(s: Surface, top: np.ndarray) -> np.ndarray:
    return np.maximum(top, s.under)


def _gap(s: Surface, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Under-extrusion: one or two roads thinned and lowered along a segment."""
    _, _, _, cv, road = _place(rng, s)
    length = s.size * (0.16 + 0.3 * sev)
    n_roads = 1 if sev < 0.6 or rng.random() < 0.6 else 2
    mods: dict[int, dict[str, np.ndarray]] = {}
    for i in range(n_roads):
        offset = rng.uniform(-0.15, 0.15) * length
        win = _window(s.v - cv - offset, length / 2.0 * rng.uniform(0.8, 1.0), 0.15 * length + 2.0)
        depth = (0.45 + 0.5 * sev) * rng.uniform(0.85, 1.0)
        mods[road + i] = {"height": 1.0 - depth * win, "width": 1.0 - (0.25 + 0.45 * sev) * win}
    top = _road_height(s.roads, s.u, s.v, mods)
    return _compose(_with_height(s, top), s.albedo, s.illumination)


def _wavy(s: Surface, rng: np.random.Generator, sev: float) -> np.ndarray:
    """A misplaced road: one road segment meanders sideways into its neighbours."""
    _, _, _, cv, road = _place(rng, s)
    length = s.size * (0.22 + 0.25 * sev)
    wavelength = rng.uniform(14.0, 26.0)
    amp = s.period * (0.22 + 0.38 * sev)
    win = _window(s.v - cv, length / 2.0, 0.5 * length)
    shift = amp * np.sin(2 * np.pi * (s.v - cv) / wavelength + rng.uniform(0, 2 * np.pi)) * win
    top = _road_height(s.roads, s.u, s.v, {road: {"shift": shift}})
    return _compose(_with_height(s, top), s.albedo, s.illumination)


def _blob(s: Surface, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Over-extrusion: a rounded bump of excess material filling the grooves."""
    x, y = _grid(s.size)
    cx, cy, *_ = _place(rng, s)
    radius = 3.0 + 5.0 * sev
    rho = _blob_field(rng, x, y, cx, cy, radius, rng.uniform(1.0, 1.6), 0.25)
    peak = 1.15 + 0.3 * sev
    dome = peak * np.clip(1.0 - rho * rho, 0.0, None) ** 0.5
    height = np.maximum(s.height, dome)
    albedo = s.albedo * (1.0 + 0.06 * sev * _smoothstep(1.0, 0.3, rho))
    return _compose(height, albedo, s.illumination)


def _crack(s: Surface, rng: np.random.Generator, sev: float) -> np.ndarray:
    """A thin dark crack: a random-walk polyline crossing the roads at an angle."""
    x, y = _grid(s.size)
    cx, cy, *_ = _place(rng, s, margin=0.25)
    theta = np.deg2rad(s.angle)
    normal = np.arctan2(np.cos(theta), -np.sin(theta))   # across the roads
    heading = normal + rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.5 else 0.0)
    length = s.size * (0.22 + 0.3 * sev)
    n_steps = max(6, int(length / 3.0))
    step = length / n_steps
    turns = np.cumsum(rng.normal(0.0, 0.35, n_steps))
    turns -= turns.mean()
    px = np.concatenate([[0.0], np.cumsum(step * np.cos(heading + turns))])
    py = np.concatenate([[0.0], np.cumsum(step * np.sin(heading + turns))])
    px += cx - px.mean()
    py += cy - py.mean()
    # Distance of every pixel to the polyline (segments vectorised).
    ax, ay, bx, by = px[:-1], py[:-1], px[1:], py[1:]
    dx, dy = bx - ax, by - ay
    seg2 = np.maximum(dx * dx + dy * dy, 1e-9)
    t = np.clip(((x[..., None] - ax) * dx + (y[..., None] - ay) * dy) / seg2, 0.0, 1.0)
    dist = np.hypot(x[..., None] - ax - t * dx, y[..., None] - ay - t * dy)
    idx = np.argmin(dist, axis=-1)
    dist = np.take_along_axis(dist, idx[..., None], -1)[..., 0]
    along = (np.take_along_axis(t, idx[..., None], -1)[..., 0] + idx) / n_steps
    # Tapered at both ends, width and darkness grow with severity.
    taper = np.clip(np.sin(np.pi * along), 0.0, 1.0) ** 0.5
    half_w = (0.55 + 0.75 * sev) * (0.4 + 0.6 * taper)
    prof = _smoothstep(half_w + 0.8, half_w - 0.3, dist)
    dark = (0.5 + 0.4 * sev)
    height = s.height * (1.0 - 0.9 * prof)
    albedo = s.albedo * (1.0 - dark * prof)
    return _compose(height, albedo, s.illumination)


def _particle(s: Surface, rng: np.random.Generator, sev: float) -> np.ndarray:
    """A foreign particle: a small compact spot of other brightness, sharp edge."""
    x, y = _grid(s.size)
    cx, cy, *_ = _place(rng, s)
    radius = 1.6 + 2.8 * sev
    rho = _blob_field(rng, x, y, cx, cy, radius, rng.uniform(1.0, 1.4), 0.3)
    cover = _smoothstep(1.0 + 0.5 / radius, 1.0 - 0.5 / radius, rho)  # ~1 px anti-aliased edge
    local = float(np.mean(s.image[rho < 2.0]))
    contrast = 45.0 + 90.0 * sev
    bright = rng.random() < 0.4
    value = local + contrast if bright else local - contrast
    value = float(np.clip(value, 8.0, 247.0))
    # A faint rounded shading so it reads as an object, not a hole in the image.
    spot = value * (1.0 + 0.06 * _smoothstep(1.0, 0.0, rho) * (1.0 if bright else -1.0))
    return s.image * (1.0 - cover) + spot * cover


def _stain(s: Surface, rng: np.random.Generator, sev: float) -> np.ndarray:
    """A dried stain: its tone shifts, residue partly fills the grooves (the
    texture flattens) and a faint darker rim marks its edge, as with a liquid
    that dried on the part. The subtlest defect at low severity."""
    x, y = _grid(s.size)
    cx, cy, *_ = _place(rng, s, margin=0.28)
    radius = s.size * (0.09 + 0.1 * sev)
    rho = _blob_field(rng, x, y, cx, cy, radius, rng.uniform(1.0, 1.8), 0.35)
    weight = _smoothstep(1.0, 0.8, rho)
    amount = 0.08 + 0.12 * sev
    sign = -1.0 if rng.random() < 0.6 else 1.0
    rim = np.exp(-(((rho - 0.97) / 0.07) ** 2)) * (0.05 + 0.15 * sev)
    albedo = s.albedo * (1.0 + sign * amount * weight - rim)
    flatten = (0.15 + 0.45 * sev) * weight
    height = s.height * (1.0 - flatten) + float(np.mean(s.height)) * flatten
    return _compose(height, albedo, s.illumination)


_RENDERERS = {
    "gap": _gap,
    "blob": _blob,
    "wavy": _wavy,
    "crack": _crack,
    "particle": _particle,
    "stain": _stain,
}


def _mask_from_change(change: np.ndarray) -> np.ndarray:
    """Pixels changed meaningfully, with small holes closed, dilated by 1 px."""
    changed = change > _MASK_THRESHOLD
    if not changed.any():
        # Never return an empty mask for a defective image: fall back to the
        # pixels with at least half the largest change.
        top = float(change.max())
        if top <= 0.0:
            raise RuntimeError("defect renderer changed no pixel")  # a bug, not user input
        changed = change >= 0.5 * top
    closed = changed | ndimage.binary_closing(changed, structure=np.ones((3, 3), bool))
    filled = ndimage.binary_fill_holes(closed)
    return ndimage.binary_dilation(filled, structure=np.ones((3, 3), bool))


def add_defect(surface: Surface, kind: str, rng: np.random.Generator,
               severity: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on ``surface``: (uint8 image, uint8 mask 0/255).

    ``severity`` in [0, 1] scales size and contrast. The image carries the
    same sensor noise as ``surface.to_uint8()``, so the two differ only where
    the defect is; the mask is where the noise-free render changed by more
    than a few grey levels, holes filled, dilated by one pixel.
    """
    if kind not in _RENDERERS:
        raise ConfigError(f"unknown defect type {kind!r}; allowed: {', '.join(DEFECT_TYPES)}")
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:
        raise ConfigError(f"severity must be in [0, 1], got {severity}")
    defective = _RENDERERS[kind](surface, rng, severity)
    # Same float32 rounding as the clean render, so untouched pixels differ by 0.
    defective = defective.astype(np.float32)
    change = np.abs(defective - surface.image)
    mask = _mask_from_change(change)
    return surface.to_uint8(defective), mask.astype(np.uint8) * 255


# --------------------------------------------------------------------------- dataset


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"SyntheticSpec.{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"SyntheticSpec.{name} must be {allowed}, got {value}")
    return int(value)


def validate_spec(spec: SyntheticSpec) -> None:
    """Raise :class:`ConfigError` naming the first field outside what is allowed."""
    if not isinstance(spec, SyntheticSpec):
        raise ConfigError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
    _check_int("size", spec.size, 32, _MAX_SIZE)
    _check_int("n_train", spec.n_train, 1, _MAX_IMAGES)
    _check_int("n_test_good", spec.n_test_good, 0, _MAX_IMAGES)
    _check_int("n_test_per_defect", spec.n_test_per_defect, 0, _MAX_IMAGES)
    _check_int("seed", spec.seed, 0, 2**32 - 1)
    types = spec.defect_types
    if isinstance(types, str) or not isinstance(types, (tuple, list)):
        raise ConfigError(f"SyntheticSpec.defect_types must be a tuple of names from "
                          f"{', '.join(DEFECT_TYPES)}; got {types!r}")
    unknown = [t for t in types if t not in DEFECT_TYPES]
    if unknown:
        raise ConfigError(f"SyntheticSpec.defect_types has unknown {unknown[0]!r}; "
                          f"allowed: {', '.join(DEFECT_TYPES)}")
    if len(set(types)) != len(types):
        raise ConfigError(f"SyntheticSpec.defect_types has duplicates: {tuple(types)}")
    sev = spec.severity
    try:
        lo, hi = (float(s) for s in sev)
        ok = all(isinstance(s, (int, float, np.floating, np.integer)) and not isinstance(s, bool)
                 for s in sev)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (0.0 <= lo <= hi <= 1.0):
        raise ConfigError(f"SyntheticSpec.severity must be (low, high) with "
                          f"0 <= low <= high <= 1, got {sev!r}")


def _image_rng(seed: int, split: str, defect: str | None, index: int) -> np.random.Generator:
    """A generator of its own for each image, so counts never shift other images."""
    defect_id = 0 if defect is None else DEFECT_TYPES.index(defect) + 1
    return np.random.default_rng([seed, _SPLIT_IDS[split], defect_id, index])


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array, mode="L").save(path, format="PNG", optimize=False)


def make_dataset(out: str | os.PathLike[str], spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write an MVTec-AD-layout synthetic category to ``out`` and return its path.

    Built in a hidden sibling temporary folder and moved into place at the
    end, so ``out`` is either complete or absent; an existing non-empty
    ``out`` is refused (:class:`DataError`) and left untouched.
    """
    validate_spec(spec)
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise DataError(f"output path exists and is not a folder: {out}")
        if any(out.iterdir()):
            raise DataError(f"output folder exists and is not empty: {out}")
    try:
        tmp = temporary_dir(out)
    except OSError as exc:
        raise DataError(f"cannot create output folder next to {out}: {exc}") from None
    try:
        size, seed = spec.size, spec.seed
        good = tmp / "train" / "good"
        good.mkdir(parents=True)
        for i in range(spec.n_train):
            _save(make_surface(_image_rng(seed, "train", None, i), size), good / f"{i:03d}.png")
        test_good = tmp / "test" / "good"
        test_good.mkdir(parents=True)
        for i in range(spec.n_test_good):
            _save(make_surface(_image_rng(seed, "test_good", None, i), size), test_good / f"{i:03d}.png")
        lo, hi = (float(s) for s in spec.severity)
        for kind in spec.defect_types:
            images = tmp / "test" / kind
            masks = tmp / "ground_truth" / kind
            images.mkdir(parents=True)
            masks.mkdir(parents=True)
            for i in range(spec.n_test_per_defect):
                rng = _image_rng(seed, "test_defect", kind, i)
                surface = render_surface(rng, size)
                severity = float(rng.uniform(lo, hi))
                image, mask = add_defect(surface, kind, rng, severity)
                _save(image, images / f"{i:03d}.png")
                _save(mask, masks / f"{i:03d}_mask.png")
        try:
            move_into_place(tmp, out)
        except OSError as exc:
            raise DataError(f"cannot move the data set into place at {out}: {exc}") from None
    except BaseException:
        remove_temporary_dir(tmp)
        raise
    return out
