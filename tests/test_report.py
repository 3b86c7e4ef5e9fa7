import numpy as np

from radar_ad.report import colorize, html_report, mask_outline, overlay


def test_colorize_uses_a_fixed_scale():
    heat = colorize(np.array([[0.0, 1.0, 2.0, 5.0]]), vmax=2.0)
    assert heat.shape == (1, 4, 3) and heat.dtype == np.uint8
    assert heat[0, 0].sum() < heat[0, 1].sum() < heat[0, 2].sum()
    np.testing.assert_array_equal(heat[0, 2], heat[0, 3])  # clipped at vmax


def test_overlay_outlines_the_mask_and_keeps_the_image_elsewhere():
    image = np.full((1, 20, 20), 0.5, np.float32)
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    out = overlay(image, np.zeros((20, 20)), mask, vmax=1.0)
    assert out.shape == (20, 20, 3)
    assert tuple(out[5, 5]) == (0, 220, 255) and tuple(out[7, 7]) == (128, 128, 128)
    assert mask_outline(mask).sum() == 16


def test_html_report_is_self_contained():
    example = {"name": "good/0.png", "label": "good", "score": 0.1, "threshold": 0.5,
               "is_anomalous": False, **{k: np.zeros((4, 4, 3), np.uint8)
                                         for k in ("image", "anomaly", "mask", "overlay")}}
    page = html_report("t", {"image_auroc": 0.99, "aupro": None}, [example], ["a <note>"])
    assert page.count("data:image/png;base64,") == 4
    assert "0.9900" in page and "n/a" in page and "&lt;note&gt;" in page
    assert "http" not in page
