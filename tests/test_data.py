import numpy as np
import pytest
from PIL import Image

from radar_ad.config import DataConfig
from radar_ad.data import as_image_array, evaluation_images, list_images, load_image, load_mask, training_images
from radar_ad.errors import DataError

from conftest import write_gray

GRAY = DataConfig()


def test_reads_grayscale_in_unit_range(tmp_path):
    path = write_gray(tmp_path / "a.png")
    image = load_image(path, GRAY)
    assert image.shape == (1, 64, 64) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], np.asarray(Image.open(path)) / np.float32(255))


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, not an image"), "not an image"),
    (lambda p: p.write_bytes(write_gray(p).read_bytes()[:200]), "cannot read"),
])
def test_unreadable_files(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(DataError, match=reason):
        load_image(path, GRAY)


def test_missing_and_folder_and_too_small(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png", GRAY)
    with pytest.raises(DataError, match="folder"):
        load_image(tmp_path, GRAY)
    small = write_gray(tmp_path / "small.png", size=20)
    with pytest.raises(DataError, match="smaller than one 28x28 patch"):
        load_image(small, GRAY, min_size=28)


def test_16bit_rgba_and_palette_images_read_like_their_8bit_grayscale(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    reference = gray.astype(np.float32) / 255
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "pal.png")
    for name in ("g16.png", "rgba.png", "pal.png"):
        image = load_image(tmp_path / name, GRAY)
        assert image.shape == (1, 40, 40), name
        np.testing.assert_allclose(image[0], reference, atol=1.5 / 255, err_msg=name)


def test_rgb_mode_and_resize(tmp_path):
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", DataConfig(grayscale=False, resize=64))
    assert image.shape == (3, 32, 64)


def test_arrays_and_pil_images():
    gray = np.random.default_rng(1).integers(0, 256, (30, 30), dtype=np.uint8)
    a = as_image_array(gray, GRAY)
    b = as_image_array(Image.fromarray(gray), GRAY)
    c = as_image_array(gray.astype(np.float32) / 255, GRAY)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1 / 255)
    with pytest.raises(DataError, match="shape"):
        as_image_array(np.zeros((2, 3, 4, 5)), GRAY)
    with pytest.raises(DataError, match="NaN"):
        as_image_array(np.full((30, 30), np.nan, np.float32), GRAY)


def test_listing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "empty")
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    write_gray(tmp_path / "imgs" / "b.png")
    write_gray(tmp_path / "imgs" / "sub" / "a.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path / "imgs")] == ["b.png", "a.jpg"]
    assert len(training_images(tmp_path / "imgs")) == 2


def test_mvtec_layout(surfaces):
    assert len(training_images(surfaces)) == 50
    items = evaluation_images(surfaces)
    defective = [i for i in items if i.is_defective]
    assert len(items) - len(defective) == 8
    assert all(i.mask_path is not None and i.mask_path.is_file() for i in defective)
    mask = load_mask(defective[0].mask_path, (64, 64))
    assert mask.dtype == bool and mask.any()
    assert not load_mask(None, (5, 6)).any()


def test_test_images_needs_a_test_folder(tmp_path):
    with pytest.raises(DataError, match="no test/ folder"):
        evaluation_images(tmp_path)
