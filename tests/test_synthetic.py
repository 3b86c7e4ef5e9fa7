"""Tests of the synthetic printed-surface generator (the demo and test data)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radar_ad.errors import ConfigError, DataError
from radar_ad.synthetic import (
    DEFECT_TYPES,
    SyntheticSpec,
    add_defect,
    make_dataset,
    make_surface,
    render_surface,
)

SMALL = SyntheticSpec(size=64, n_train=6, n_test_good=3, n_test_per_defect=2, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic") / "cat", SMALL)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path, small_dataset: Path) -> None:
    again = make_dataset(tmp_path / "again", SMALL)
    assert _files(again) == _files(small_dataset)
    other = _files(make_dataset(tmp_path / "other", dataclasses.replace(SMALL, seed=4)))
    same_names = _files(small_dataset)
    assert other.keys() == same_names.keys()
    assert all(other[name] != same_names[name] for name in same_names if name.startswith("train/"))


def test_adding_test_images_keeps_training_images(tmp_path: Path, small_dataset: Path) -> None:
    bigger = dataclasses.replace(SMALL, n_train=8, n_test_good=5, n_test_per_defect=3)
    files = _files(make_dataset(tmp_path / "bigger", bigger))
    for name, data in _files(small_dataset).items():
        assert files[name] == data, name


def test_layout_counts_and_masks(small_dataset: Path) -> None:
    root = small_dataset
    assert sorted(p.name for p in (root / "train").iterdir()) == ["good"]
    assert len(list((root / "train" / "good").glob("*.png"))) == SMALL.n_train
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(("good", *DEFECT_TYPES))
    assert len(list((root / "test" / "good").glob("*.png"))) == SMALL.n_test_good
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
    assert not (root / "ground_truth" / "good").exists()  # normal images have no mask
    for path in (root / "train" / "good").glob("*.png"):
        assert _load(path).shape == (SMALL.size, SMALL.size)
    for kind in DEFECT_TYPES:
        images = sorted((root / "test" / kind).glob("*.png"))
        assert [p.name for p in images] == [f"{i:03d}.png" for i in range(SMALL.n_test_per_defect)]
        for image_path in images:
            mask = _load(root / "ground_truth" / kind / f"{image_path.stem}_mask.png")
            assert _load(image_path).shape == mask.shape == (SMALL.size, SMALL.size)
            assert set(np.unique(mask)) == {0, 255}, kind
            assert 0 < (mask > 0).mean() < 0.5, kind


@pytest.mark.parametrize("kind", DEFECT_TYPES)
@pytest.mark.parametrize("severity", [0.0, 0.3, 1.0])
def test_defect_changes_image_inside_its_mask(kind: str, severity: float) -> None:
    for i in range(4):
        rng = np.random.default_rng([11, DEFECT_TYPES.index(kind), i])
        surface = render_surface(rng, 128)
        clean = surface.to_uint8().astype(np.float64)
        image, mask = add_defect(surface, kind, rng, severity)
        assert image.dtype == mask.dtype == np.uint8
        assert image.shape == mask.shape == (128, 128)
        assert set(np.unique(mask)) == {0, 255}
        inside = mask > 0
        change = np.abs(image - clean)
        assert 0 < inside.mean() < 0.25, (kind, severity)
        # Visible: a clear mean change inside; exact: almost nothing outside.
        assert change[inside].mean() > 4.0, (kind, severity, change[inside].mean())
        assert change[inside].mean() > 20 * change[~inside].mean() + 1e-9, kind
        assert (change[~inside] > 8).sum() <= 5, kind


def test_severity_scales_the_defect() -> None:
    for kind in DEFECT_TYPES:
        totals = []
        for severity in (0.0, 1.0):
            total = 0.0
            for i in range(6):
                rng = np.random.default_rng([5, i])
                surface = render_surface(rng, 128)
                image, _ = add_defect(surface, kind, rng, severity)
                total += np.abs(image - surface.to_uint8().astype(np.float64)).sum()
            totals.append(total)
        assert totals[1] > 1.5 * totals[0], kind


def test_both_orientations_occur_in_training_set() -> None:
    spec = SyntheticSpec()
    angles = {render_surface(np.random.default_rng([spec.seed, 0, 0, i]), 64).angle
              for i in range(spec.n_train)}
    assert angles == {45.0, 135.0}


def test_surface_period_is_in_pixels_and_image_is_textured() -> None:
    rng = np.random.default_rng(0)
    image = make_surface(rng, 256)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    assert 20 < image.std() < 90 and 60 < image.mean() < 200
    surface = render_surface(np.random.default_rng(1), 64)
    assert 7.0 <= surface.period <= 10.0
    assert surface.image.dtype == np.float32
    assert surface.image.min() >= 0 and surface.image.max() <= 255


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"size": 16}, "size"),
        ({"size": 64.0}, "size"),
        ({"n_train": 0}, "n_train"),
        ({"n_test_good": -1}, "n_test_good"),
        ({"n_test_per_defect": -2}, "n_test_per_defect"),
        ({"defect_types": ("gap", "scratch")}, "defect_types"),
        ({"defect_types": "gap"}, "defect_types"),
        ({"severity": (0.8, 0.2)}, "severity"),
        ({"severity": (-0.1, 0.5)}, "severity"),
        ({"severity": (0.5, 1.5)}, "severity"),
        ({"severity": (0.5,)}, "severity"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_spec_raises_config_error_naming_the_field(tmp_path: Path, change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        make_dataset(tmp_path / "out", dataclasses.replace(SMALL, **change))
    assert list(tmp_path.iterdir()) == []


def test_add_defect_rejects_unknown_kind_and_bad_severity() -> None:
    surface = render_surface(np.random.default_rng(0), 64)
    with pytest.raises(ConfigError, match="scratch"):
        add_defect(surface, "scratch", np.random.default_rng(0), 0.5)
    with pytest.raises(ConfigError, match="severity"):
        add_defect(surface, "gap", np.random.default_rng(0), 1.5)


def test_non_empty_output_is_refused_and_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        make_dataset(out, SMALL)
    assert _files(out) == {"keep.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError):
        make_dataset(a_file, SMALL)
    assert a_file.read_bytes() == b"x"


def test_empty_existing_output_is_replaced_and_no_temp_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = make_dataset(out, dataclasses.replace(SMALL, n_test_per_defect=0))
    assert result == out
    assert (out / "train" / "good" / "000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_midway_removes_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import radar_ad.synthetic as synthetic

    calls = {"n": 0}
    real_save = synthetic._save

    def failing_save(array: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        real_save(array, path)

    monkeypatch.setattr(synthetic, "_save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_dataset(tmp_path / "out", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_creates_missing_parent(tmp_path: Path) -> None:
    out = make_dataset(tmp_path / "a" / "b", dataclasses.replace(SMALL, n_train=1, n_test_good=0,
                                                                  n_test_per_defect=0))
    assert (out / "train" / "good" / "000.png").is_file()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
