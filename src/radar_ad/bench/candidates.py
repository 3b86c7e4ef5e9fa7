"""Every candidate the default chooses among, measured on a labelled
MVTec-layout dataset: what ``benchmarks/leave_one_type_out.py`` and
``benchmarks/probes.py`` are made of.

The splits are ``radar benchmark``'s: a seeded share of each defect type's
test images is set aside for choosing settings (validation), with a seeded
half of the model's conformal images (normal, never fitted on) as the
normal validation images; the rest of the test folder is the test split,
run once. The candidates (response x pyramid levels x image score,
:func:`radar_ad.selection.candidates`) learn and fit on the model's own
calibration images, exactly as the self-validation does; then every
candidate scores every image, and metrics come per defect type, so a
choice can be made on some types and reported on another.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AUTO, RadarConfig
from ..data import as_image_array, evaluation_images, load_mask, training_images
from ..evidence_passes import EvidencePasses
from ..files import json_ready
from ..metrics import pixel_metrics
from ..pipeline import Radar
from ..progress import progress_bar
from ..registry import RESPONSES
from ..selection import Candidate, Evaluated, auroc, candidates, evaluate, prepare
from ..splits import three_way_split
from .splits import validation_split

OPEN = {"inference.response": AUTO, "inference.scales": None, "inference.image_score": AUTO}


@dataclass
class LabelledSet:
    """Images ``(C, H, W)`` of one split, their labels ("good" or a defect
    type), ground-truth masks (``None`` without) and files."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, image: np.ndarray, label: str, mask: np.ndarray | None, file: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.masks.append(mask)
        self.files.append(file)

    @property
    def types(self) -> list[str]:
        return sorted({label for label in self.labels if label != "good"})


@dataclass
class Splits:
    calibration: list[np.ndarray]
    validation: LabelledSet
    test: LabelledSet


def load_splits(radar: Radar, root: Path, validation_fraction: float = 0.2, progress: bool = True) -> Splits:
    """The model's calibration images, and the validation and test splits of
    ``root`` at the model's input size (masks resized to it)."""
    config = radar.config
    normal = training_images(root)
    split = three_way_split(len(normal), config)
    conformal = split.conformal
    half = sorted(conformal[i] for i in np.random.default_rng(config.seed).permutation(len(conformal))
                  [:len(conformal) // 2].tolist())
    aside, test_items = validation_split(evaluation_images(root), validation_fraction, config.seed)

    def read(path: Path) -> np.ndarray:
        return as_image_array(path, config.data, config.patch_size)

    calibration = [read(normal[i]) for i in progress_bar(split.calibration, enabled=progress, desc="loading")]
    validation, test = LabelledSet(), LabelledSet()
    for i in half:
        image = read(normal[i])
        validation.add(image, "good", np.zeros(image.shape[1:], bool), str(normal[i]))
    for target, items in ((validation, aside), (test, test_items)):
        for item in progress_bar(items, enabled=progress, desc="loading", leave=False):
            image = read(item.path)
            has_mask = item.mask_path is not None or not item.is_defective
            target.add(image, item.label, load_mask(item.mask_path, image.shape[1:]) if has_mask else None,
                       str(item.path))
    return Splits(calibration, validation, test)


def open_probe(args: argparse.Namespace) -> tuple[Radar, Splits]:
    """The model a probe's command line names (``args.model``) and the
    splits of its dataset (``args.dataset``, ``args.validation_fraction``)."""
    radar = Radar.load(args.model)
    return radar, load_splits(radar, args.dataset, args.validation_fraction)


def candidate_options(radar: Radar, overrides: dict[str, Any] | None = None,
                      also: Sequence[str] = ()) -> tuple[RadarConfig, list[Candidate]]:
    """The config the candidates are built from (the model's, with the
    choices left open and ``overrides``) and the candidates, then those of
    each response named in ``also`` (one the self-validation never
    considers, chosen by name: its levels and image scores left open)."""
    config = radar.config.updated({**OPEN, **(overrides or {})})
    found = candidates(config)
    for name in also:
        found += [option for option in candidates(config.updated({"inference.response": name}))
                  if option not in found]
    return config, found


def score_sets(radar: Radar, config: RadarConfig, options: Sequence[Candidate], calibration: list[np.ndarray],
               sets: Sequence[LabelledSet], progress: bool = True) -> list[Evaluated]:
    """Every candidate's scores (and maps) of each labelled set, the
    candidates learned and fitted on ``calibration`` as calibration does;
    ``radar`` computes the evidence (a model with other noise settings, a
    timestep say, comes from :meth:`Radar.with_settings`)."""
    passes = EvidencePasses(radar.backend_, radar.config)
    prepared = prepare(config, options, calibration, passes.evidence_each, passes.evidence_of, progress)
    return [evaluate(prepared, labelled.images, passes.evidence_each, keep_maps=True) for labelled in sets]


def metrics(labelled: LabelledSet, scores: np.ndarray, maps: list[np.ndarray] | None,
            defect_types: Sequence[str] | None = None) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and AUPRO of the normal images against the
    defective images of ``defect_types`` (default: every type)."""
    keep = [i for i, label in enumerate(labelled.labels)
            if label == "good" or defect_types is None or label in defect_types]
    labels = np.array([labelled.labels[i] != "good" for i in keep], dtype=int)
    result: dict[str, Any] = {"image_auroc": auroc(labels, scores[keep]),
                              "n_normal": int((labels == 0).sum()), "n_defective": int(labels.sum())}
    truths = {i: mask for i in keep if (mask := labelled.masks[i]) is not None}
    if maps is not None and any(mask.any() for mask in truths.values()):
        pixels = pixel_metrics(list(truths.values()), [maps[i] for i in truths])
        result.update(pixel_auroc=pixels["pixel_auroc"], aupro=pixels["aupro"])
    else:
        result.update(pixel_auroc=None, aupro=None)
    return result


def probe_parser(doc: str | None, out: str, validation_fraction: bool = True,
                 also: bool = False) -> argparse.ArgumentParser:
    """The command line every candidate probe shares: DATASET MODEL_DIR
    [--out JSON] [--validation-fraction F] (and, where it scores the
    candidates, [--also RESPONSE ...])."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, default=Path(out))
    if also:
        parser.add_argument("--also", action="append", default=[], choices=RESPONSES.names(), metavar="RESPONSE",
                            help="also every candidate of this response, one the self-validation never considers "
                                 "(repeatable)")
    if validation_fraction:
        parser.add_argument("--validation-fraction", type=float, default=0.2)
    return parser


def num(value: float | None) -> str:
    """A metric in a printed table: three decimals, or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def write_result(path: Path, result: dict[str, Any]) -> None:
    """The probe's JSON (numpy values as plain numbers), and a line saying where."""
    path.write_text(json.dumps(json_ready(result), indent=2))
    print(f"written {path}")
