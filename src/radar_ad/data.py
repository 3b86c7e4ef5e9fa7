"""Finding, decoding (from a path or an image file's bytes) and checking
images; the MVTec-AD folder layout.

Everything a user can point the tool at goes through here, so every way an
input can be unusable (missing, empty, truncated, not an image, too small)
becomes one :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DataConfig
from .errors import DataError, ImageFileError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The largest image read, checked from the header before anything is decoded
# (PIL's own process-wide limit is left as the user's program set it).
MAX_PIXELS = 64_000_000
# The most images a batch (`radar detect --batch-size`, either engine) holds in memory at once.
MAX_BATCH_IMAGES = 1024
# Float arrays a little outside [0, 1] (rounding of a conversion) are clipped; beyond this they are refused.
FLOAT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LabeledImage:
    """A test image with its label ("good" or a defect type) and mask path."""

    path: Path
    label: str
    mask_path: Path | None = None

    @property
    def is_defective(self) -> bool:
        return self.label != "good"


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(path: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Images in a folder (recursively, sorted) or a single image file;
    ``exclude``: a folder whose tree is left out (a command's own output
    folder inside its input, whose maps must not be read back as input)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"path not found: {path}")
    if path.is_file():
        return [path]
    images = sorted(p for p in path.rglob("*") if is_image_file(p))
    if exclude is not None:
        skip = Path(exclude).resolve()
        images = [p for p in images if not p.resolve().is_relative_to(skip)]
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {path}"
                        + (f" outside {exclude}" if exclude is not None else ""))
    return images


def is_mvtec_category(path: Path) -> bool:
    return (path / "train" / "good").is_dir() or (path / "test").is_dir()


def training_images(path: str | Path) -> list[Path]:
    """Normal images to train on: ``train/good`` of an MVTec-layout category,
    else every image in the folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"path not found: {path}")
    if path.is_dir() and is_mvtec_category(path):
        good = path / "train" / "good"
        if not good.is_dir():
            raise DataError(f"{path} has no train/good folder of normal images")
        return list_images(good)
    return list_images(path)


def evaluation_images(path: str | Path) -> list[LabeledImage]:
    """Labelled test images of an MVTec-layout category (``test/<label>/``),
    with masks from ``ground_truth/<label>/<stem>_mask.png`` where present."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"path not found: {path}")
    test = path / "test"
    if not test.is_dir():
        raise DataError(f"{path} is not an MVTec-layout dataset: it has no test/ folder")
    items: list[LabeledImage] = []
    for label_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        label = label_dir.name
        for image in sorted(p for p in label_dir.iterdir() if is_image_file(p)):
            mask = path / "ground_truth" / label / f"{image.stem}_mask.png"
            items.append(LabeledImage(image, label, mask if mask.is_file() else None))
    if not items:
        raise DataError(f"no test images found under {test}")
    return items


def _to_uint8(image: Image.Image, name: str) -> Image.Image:
    """Bring 16-bit, palette, alpha and bilevel images to 8-bit L or RGB."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if mode == "F":
        raise DataError(f"{name}: 32-bit float images are not supported; save as 8 or 16 bit")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        # Composite on black: the alpha channel carries no surface information.
        return image.convert("RGB") if mode == "RGBA" else image.convert("L")
    if mode in ("L", "RGB"):
        return image
    return image.convert("RGB")


def load_image(path: str | Path, config: DataConfig, min_size: int = 1,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one image as float32 ``(C, H, W)`` in [0, 1], resized per config.

    Raises :class:`DataError` for anything that is not a readable image at
    least ``min_size`` pixels on each side and at most ``max_pixels`` in all.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    if path.is_dir():
        raise DataError(f"expected an image file, got a folder: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"empty file (0 bytes): {path}")
    return _load(path, str(path), config, min_size, max_pixels)


def load_image_bytes(content: bytes, name: str, config: DataConfig, min_size: int = 1,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`load_image` of an image file's bytes (read from anywhere);
    ``name`` says which file in its errors."""
    if not content:
        raise DataError(f"empty file (0 bytes): {name}")
    return _load(content, name, config, min_size, max_pixels)


def _load(source: Path | bytes, name: str, config: DataConfig, min_size: int, max_pixels: int) -> np.ndarray:
    with warnings.catch_warnings():
        # PIL's own warning level (its MAX_IMAGE_PIXELS) counts as too large as well
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open_image(source, name, max_pixels) as opened:
            decode_opened(opened, name, max_pixels)
            try:
                image = _to_uint8(opened, name)
            except (OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"cannot read image {name}: {first_line(exc)}") from None
    return _to_array(image, config, min_size, name)


def open_image(source: Path | bytes, name: str, max_pixels: int = MAX_PIXELS,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """An image file (a path, or its bytes) identified and its pixel count
    checked from the header alone, before anything is decoded (a small file
    can declare a huge image); :func:`decode_opened` decodes it.

    ``formats``: the PIL formats tried (None: every one PIL has). Raises
    :class:`~radar_ad.errors.ImageFileError` naming ``name``: ``"too large"``
    past ``max_pixels`` (or past PIL's own limit), ``"not an image"``,
    ``"unreadable"``.
    """
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(name, max_pixels) from None
    except UnidentifiedImageError:
        raise ImageFileError(f"not an image file: {name}", kind="not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFileError(f"cannot read image {name}: {first_line(exc)}", kind="unreadable",
                             reason=first_line(exc)) from None
    try:
        check_pixels(image, max_pixels, name)
    except ImageFileError:
        image.close()
        raise
    return image


def decode_opened(image: Image.Image, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """Decode an image from :func:`open_image` in place: truncated or
    corrupt data fails here, as :class:`~radar_ad.errors.ImageFileError`
    ``"corrupt"`` naming ``name``."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(name, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFileError(f"cannot read image {name}: {first_line(exc)}", kind="corrupt",
                             reason=first_line(exc)) from None


def _too_large(name: str, max_pixels: int) -> ImageFileError:
    return ImageFileError(f"{name}: image has more than {max_pixels} pixels", kind="too large")


def check_pixels(image: Image.Image, max_pixels: int, name: str) -> None:
    """Refuse an opened (not yet decoded) image of more than ``max_pixels``:
    a small file can declare a huge image."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageFileError(f"{name}: image is {width}x{height}, more than {max_pixels} pixels", kind="too large",
                             size=(width, height))


def _to_array(image: Image.Image, config: DataConfig, min_size: int, name: str) -> np.ndarray:
    """Colour mode and resize per config, size check, then ``(C, H, W)`` in [0, 1]."""
    image = image.convert("L" if config.grayscale else "RGB")
    if config.resize is not None:
        image = resize_longer_side(image, config.resize, Image.Resampling.BILINEAR)
    width, height = image.size
    if min(width, height) < min_size:
        raise DataError(f"{name} is {width}x{height} after loading, smaller than one "
                        f"{min_size}x{min_size} patch")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header."""
    try:
        with Image.open(path) as opened:
            return opened.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_mask(path: Path | None, shape: tuple[int, int] | None) -> np.ndarray:
    """A boolean ``(H, W)`` ground-truth mask resized (nearest) to ``shape``
    (``None``: its own size); all False when there is no mask file (a normal
    image, which then needs a ``shape``)."""
    if path is None:
        if shape is None:
            raise DataError("a missing mask needs a shape")
        return np.zeros(shape, dtype=bool)
    try:
        with Image.open(path) as opened:
            mask = _to_uint8(opened, str(path)).convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None
    if shape is not None and mask.size != (shape[1], shape[0]):
        mask = mask.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


def resize_longer_side(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    scale = size / max(width, height)
    if scale == 1:
        return image
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new, resample)


def as_image_array(image: object, config: DataConfig, min_size: int = 1) -> np.ndarray:
    """A path, PIL image or numpy array -> float32 ``(C, H, W)`` in [0, 1].

    Arrays may be ``(H, W)`` or ``(H, W, C)``; uint8 is scaled by 1/255,
    uint16 by 1/65535, floats are taken to be in [0, 1] already.
    """
    if isinstance(image, (str, Path)):
        return load_image(image, config, min_size)
    if isinstance(image, Image.Image):
        try:
            image.load()  # a lazily opened, truncated file fails here, not deep inside a conversion
            pil = _to_uint8(image, "<image>")
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot decode image (truncated or corrupt?): {first_line(exc)}") from None
    elif isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise DataError(f"an image array must be (H, W) or (H, W, 3|4), got shape {array.shape}")
        if array.dtype == np.uint8:
            scaled = array
        elif array.dtype == np.uint16:
            scaled = (array.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
        elif np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise DataError("image array contains NaN or infinite values")
            low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
            if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
                # refused, not clipped: an array of 0..255 values would become almost all white
                raise DataError(f"a float image array must hold values in [0, 1], got {low:g} to {high:g}; "
                                "divide by 255 (8-bit) or 65535 (16-bit) first, or pass the integer array")
            scaled = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            raise DataError(f"unsupported image array dtype {array.dtype}")
        if scaled.ndim == 3 and scaled.shape[2] == 4:
            scaled = scaled[:, :, :3]
        pil = Image.fromarray(np.ascontiguousarray(scaled))
    else:
        raise DataError(f"cannot use {type(image).__name__} as an image")
    return _to_array(pil, config, min_size, "image")
