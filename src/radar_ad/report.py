"""What a person looks at: coloured anomaly maps, masks, overlays, and a
self-contained HTML report (images embedded, so it works offline and can be
mailed as one file)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .files import atomic_file

if TYPE_CHECKING:
    from .outputs import Prediction

# Anchor colours of a perceptually ordered black-red-yellow-white heat scale.
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                    dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)),
                           _ANCHORS[:, c]) for c in range(3)], axis=1).astype(np.uint8)


def colorize(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """``(H, W)`` map -> ``(H, W, 3)`` uint8 heat image on a fixed scale
    [0, vmax], so colours mean the same in every image of one model."""
    scaled = np.clip(anomaly_map / max(vmax, 1e-12), 0, 1)
    return _LUT[(scaled * 255).astype(np.uint8)]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 (a grey image is
    quantised once, then repeated: a few bytes per pixel, not dozens)."""
    quantised = (np.clip(image[:3], 0, 1) * 255 + 0.5).astype(np.uint8)
    if quantised.shape[0] == 1:
        quantised = np.repeat(quantised, 3, axis=0)
    return np.ascontiguousarray(quantised.transpose(1, 2, 0))


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels on the border of the mask (4-neighbourhood)."""
    padded = np.pad(mask, 1, mode="edge")
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~interior


def overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, vmax: float,
            truth: np.ndarray | None = None) -> np.ndarray:
    """The image with the heat map blended in where it is strong, the
    predicted mask outlined in cyan and the true defect (if given) in green."""
    # float32 and in place: about 30 bytes per pixel at the peak (float64
    # temporaries cost ~120, the largest share of a served 16-megapixel answer)
    alpha = (np.clip(anomaly_map / max(vmax, 1e-12), 0, 1) * 0.7).astype(np.float32)[..., None]
    out = to_rgb(image).astype(np.float32)
    out *= 1 - alpha
    heat = colorize(anomaly_map, vmax).astype(np.float32)
    heat *= alpha
    out += heat
    del heat
    if truth is not None:
        out[mask_outline(truth)] = (40, 220, 40)
    out[mask_outline(mask)] = (0, 220, 255)
    return out.astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def png_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_uri(array: np.ndarray) -> str:
    return "data:image/png;base64," + png_base64(array)


# The pictures of a prediction, as `radar detect` and `radar watch` name their files.
MAP_KINDS = ("anomaly", "mask", "overlay")


def prediction_maps(prediction: Prediction) -> dict[str, np.ndarray]:
    """The heat map, the mask and the overlay of a prediction (one per
    :data:`MAP_KINDS`), coloured on the model's fixed scale [0, 2 x pixel
    threshold], so colours mean the same in every image, file and tool."""
    vmax = 2 * prediction.pixel_threshold
    return {
        "anomaly": colorize(prediction.anomaly_map, vmax),
        "mask": prediction.mask.astype(np.uint8) * 255,
        "overlay": overlay(prediction.image, prediction.anomaly_map, prediction.mask, vmax),
    }


def save_prediction_maps(prediction: Prediction, out: Path, stem: str) -> None:
    """``<stem>_anomaly.png``, ``<stem>_mask.png`` and ``<stem>_overlay.png`` in ``out``."""
    for kind, array in prediction_maps(prediction).items():
        save_png(array, out / f"{stem}_{kind}.png")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return html.escape(str(value))


BASE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
figure { display: inline-block; margin: 0 8px 0 0; text-align: center; }
figcaption { font-size: 0.8em; }
img { image-rendering: pixelated; }
code { background: #f4f4f4; }
.anomalous { color: #c00; font-weight: bold; } .normal { color: #070; }
"""


def html_page(title: str, body: str, css: str = "") -> str:
    """A self-contained HTML page (no external resources): every report
    radar-ad writes is one of these."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{BASE_CSS}{css}</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def figure_html(array: np.ndarray, caption: str) -> str:
    """An ``(H, W[, 3])`` uint8 picture embedded as PNG, with a caption."""
    return (f'<figure><img src="{png_data_uri(array)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_report(title: str, metrics: dict[str, Any], examples: list[dict[str, Any]],
                notes: list[str] | None = None) -> str:
    """An HTML page: a metrics table, then one row per example with its
    image, anomaly map, mask and overlay (each an ``(H, W, 3)`` uint8 array
    under the keys ``image``, ``anomaly``, ``mask``, ``overlay``)."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                   for k, v in metrics.items())
    cards = []
    for ex in examples:
        verdict = "ANOMALOUS" if ex["is_anomalous"] else "normal"
        cells = "".join(figure_html(ex[key], key) for key in ("image", "anomaly", "mask", "overlay"))
        cards.append(
            f'<div class="card"><h3>{html.escape(ex["name"])} — truth: {html.escape(ex["label"])}'
            f' — verdict: <span class="{verdict.lower()}">{verdict}</span>'
            f' (score {ex["score"]:.4f}, threshold {ex["threshold"]:.4f}'
            + (f', p-value {ex["p_value"]:.4f}' if ex.get("p_value") is not None else "") + f')</h3>{cells}</div>')
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes or [])
    body = (f"{note_html}<h2>Metrics</h2><table>{rows}</table><h2>Examples</h2>"
            "<p>Overlay: heat map blended on the image, predicted mask outlined in cyan, true defect in green.</p>"
            + "".join(cards))
    return html_page(title, body, ".card { margin-bottom: 1.5em; } .card img { width: 192px; "
                                  "border: 1px solid #999; }")
