"""How a benchmark divides a dataset's test images: the validation images
set aside for choosing settings, the fixed subset every method is scored on,
and the examples whose maps the report shows.

Plain seeded functions of the image list, so the scripts in ``benchmarks/``
split their data exactly as ``radar benchmark`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import LabeledImage
from ..errors import ConfigError

DEFAULT_VALIDATION_FRACTION = 0.2  # the share of each defect type set aside by default
EXAMPLES_DEFECTIVE = 3  # plus one normal image: the maps shown in the report


def validation_split(items: list[LabeledImage], fraction: float, seed: int,
                     ) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """``(validation_defective, test_items)``: a seeded ``fraction`` of each
    defect type's test images (at least one when ``fraction > 0``) is set
    aside for choosing settings, so no reported number was tuned on its own
    test images. Normal images all stay in the test split. A defect type with
    a single image keeps it in the test split (else it would vanish from the
    tables). One generator draws for the types in sorted order, each type's
    images sorted by path. ``fraction == 0`` sets nothing aside."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"fraction must be in [0, 1), got {fraction}", setting="fraction")
    rng = np.random.default_rng(seed)
    aside: set[Path] = set()
    for label in sorted({item.label for item in items if item.is_defective}):
        group = sorted((item for item in items if item.label == label), key=lambda item: str(item.path))
        if fraction == 0 or len(group) < 2:
            continue
        take = min(max(1, round(fraction * len(group))), len(group) - 1)
        aside.update(group[j].path for j in rng.permutation(len(group))[:take])
    return ([item for item in items if item.path in aside],
            [item for item in items if item.path not in aside])


def fixed_subset(items: list[LabeledImage], n: int, seed: int) -> list[LabeledImage]:
    """A fixed seeded subset: ``n`` normal and ``n`` defective images (all of
    a class when it has fewer), in the input order. The slow methods run on
    it, and every method is compared on it."""
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for defective in (False, True):
        indices = [i for i, item in enumerate(items) if item.is_defective == defective]
        if len(indices) > n:
            indices = [indices[j] for j in rng.choice(len(indices), size=n, replace=False)]
        keep.update(indices)
    return [item for i, item in enumerate(items) if i in keep]


def example_items(subset: list[LabeledImage], seed: int) -> list[LabeledImage]:
    """One normal and up to three defective images (distinct defect types
    first) whose maps the report shows for every method."""
    rng = np.random.default_rng(seed)
    normal = [item for item in subset if not item.is_defective]
    defective = [item for item in subset if item.is_defective]
    chosen = [normal[int(rng.integers(len(normal)))]] if normal else []
    order = [defective[j] for j in rng.permutation(len(defective))]
    labels_seen: set[str] = set()
    picked: list[LabeledImage] = []
    for item in order:  # one per defect type, then any
        if item.label not in labels_seen and len(picked) < EXAMPLES_DEFECTIVE:
            picked.append(item)
            labels_seen.add(item.label)
    picked += [item for item in order if item not in picked][:EXAMPLES_DEFECTIVE - len(picked)]
    return chosen + picked

