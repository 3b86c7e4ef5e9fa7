"""A benchmark's images: the datasets of a run, each model's held-out normal
images, and the test images as every method sees them.

The test images are divided by :mod:`radar_ad.bench.splits`; everything here
is loaded once per dataset and shared by all its methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import RadarConfig
from ..data import LabeledImage, as_image_array, evaluation_images, load_mask, training_images
from ..errors import DataError
from ..files import unique_stem
from ..patches import grid_positions
from ..progress import progress_bar
from .splits import fixed_subset, validation_split

DEMO = "demo"  # on the command line: the built-in generated data


@dataclass(frozen=True)
class DatasetSource:
    """A dataset to benchmark: an MVTec-layout folder, or the built-in
    demo data (generated into ``path`` on first use)."""

    name: str
    path: Path
    builtin: bool = False


def dataset_sources(arguments: Sequence[str] | None, cache: Path, quick: bool = False) -> list[DatasetSource]:
    """The datasets of a run, checked before anything is trained: the word
    ``demo`` is the built-in data, anything else a folder; none given means
    the built-in ``demo`` data only. Datasets of the same name are told
    apart as ``name-2``, ``name-3`` ..."""
    sources: list[DatasetSource] = []
    used: set[str] = set()
    for argument in arguments or [DEMO]:
        if argument == DEMO:
            name = "demo-quick" if quick else DEMO
            source = DatasetSource(name, cache / "data" / name, builtin=True)
        else:
            path = Path(argument)
            if not path.exists():
                raise DataError(f"dataset not found: {path}")
            if not path.is_dir():
                raise DataError(f"a dataset must be an MVTec-layout folder, got a file: {path}")
            training_images(path)  # raises a one-line DataError for unusable layouts
            if {item.is_defective for item in evaluation_images(path)} != {False, True}:
                raise DataError(f"{path}: test/ needs both normal (test/good) and defective images")
            source = DatasetSource(path.resolve().name, path)
        name = unique_stem(source.name, used.__contains__)
        used.add(name)
        sources.append(replace(source, name=name))
    return sources


class HeldOut(NamedTuple):
    """A model's held-out normal images, ``(C, H, W)`` arrays: those its
    decision was fitted on, and the conformal ones only scored."""

    calibration: list[np.ndarray]
    conformal: list[np.ndarray]


def load_held_out(calibration_files: Sequence[Path], conformal_files: Sequence[Path], config: RadarConfig,
                  progress: bool = True) -> HeldOut:
    """The held-out normal images of a model, loaded as it sees them."""
    loaded = [as_image_array(p, config.data, config.patch_size)
              for p in progress_bar([*calibration_files, *conformal_files], enabled=progress, desc="loading",
                                    leave=False)]
    return HeldOut(loaded[:len(calibration_files)], loaded[len(calibration_files):])


@dataclass
class TestSet:
    """A dataset's test images as every method sees them."""

    root: Path
    items: list[LabeledImage]  # the test split: validation images set aside
    images: list[np.ndarray]  # (C, H, W) in [0, 1], resized as the model sees them
    truths: list[np.ndarray | None]  # (H, W) masks; None where no mask applies
    positions: list[int]  # patch positions per image on the tiling grid
    subset: list[int]  # indices into items: the fixed subset every method runs on
    validation: list[LabeledImage]

    def files(self, indices: Sequence[int]) -> list[str]:
        return [relative_name(self.items[i].path, self.root) for i in indices]


def load_test_set(root: Path, config: RadarConfig, validation_fraction: float, subset: int,
                  progress: bool = True) -> TestSet:
    """Split ``root``'s test images (:func:`validation_split`, a fixed
    ``subset`` of each class) and load them, with their masks at the size
    the model sees the image."""
    validation, items = validation_split(evaluation_images(root), validation_fraction, config.seed)
    chosen = {item.path for item in fixed_subset(items, subset, config.seed)}
    images = [as_image_array(item.path, config.data, config.patch_size)
              for item in progress_bar(items, enabled=progress, desc="loading", leave=False)]
    have_masks = any(item.mask_path is not None for item in items if item.is_defective)
    truths = [load_mask(item.mask_path, image.shape[1:])
              if have_masks and (item.mask_path is not None or not item.is_defective) else None
              for item, image in zip(items, images)]
    return TestSet(root, items, images, truths,
                   [patches_per_image(image.shape[1], image.shape[2], config) for image in images],
                   [i for i, item in enumerate(items) if item.path in chosen], validation)


def patches_per_image(height: int, width: int, config: RadarConfig) -> int:
    """Patch positions on the inference tiling grid of an image."""
    p, s = config.patch_size, config.stride
    return len(grid_positions(height, p, s)) * len(grid_positions(width, p, s))


def relative_name(path: Path, root: Path) -> str:
    """How results name an image: its path under the dataset's ``root``."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)

