"""Draw the documentation's figures (docs/img/*.png) from the demo's own
data and model: never by hand, and never from the real datasets, whose
licences forbid shipping their images.

- ``demo-overlay.png``: the first two normal test images and the first image
  of each defect type, with the anomaly map blended in, the predicted mask
  outlined in cyan and the true defect in green (the demo report's overlay,
  :func:`radar_ad.report.overlay`);
- ``concepts.png``: one defective test image through the method: the image,
  the predicted noise of the finest pyramid level the model reads
  (``Prediction.noise_map``), the response (anomaly) map
  (``Prediction.anomaly_map``) and the mask (``Prediction.mask``, the true
  defect outlined). The image shown is the defective test image whose mask
  overlaps its true defect best (Dice), the clearest example;
- ``roc-demo.png``: the image-level ROC curve on the demo test set, with the
  model's operating point (its verdicts);
- ``scores-demo.png``: the image scores of the normal and the defective test
  images, with the model's threshold.

    python scripts/docs_figures.py --demo radar-demo   # an existing `radar demo --out radar-demo`
    python scripts/docs_figures.py                     # runs the demo in a temporary folder (minutes)

The demo folder must hold ``data/`` and ``model/`` of this version's model
format. Every PNG is drawn at a modest resolution, stored with 256 colours
and no metadata, and checked to stay under ``MAX_BYTES``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
MAX_BYTES = 500_000
DPI = 100
N_GOOD = 2  # normal images in the overlay figure


def demo_folder(demo: Path | None, workdir: Path, progress: bool) -> Path:
    """``demo`` if given (checked), else a demo run into ``workdir``."""
    if demo is None:
        from radar_ad.apps.demo import run_demo

        demo = workdir / "demo"
        run_demo(demo, progress=progress)
    return demo


def load_demo(demo: Path) -> tuple[Any, Path]:
    """The demo's fitted model and its data folder; one line and exit 1 when
    the folder is not a demo output of this version's model format."""
    from radar_ad import Radar
    from radar_ad.persistence import CONFIG_FILE, FORMAT_VERSION

    data, model = demo / "data", demo / "model"
    meta_file = model / CONFIG_FILE
    if not (data / "test").is_dir() or not meta_file.is_file():
        raise SystemExit(f"docs_figures: {demo} is not a `radar demo` output (no data/test/ or model/{CONFIG_FILE})")
    version = json.loads(meta_file.read_text(encoding="utf-8")).get("format_version")
    if version != FORMAT_VERSION:
        raise SystemExit(f"docs_figures: {model} has model format version {version!r}, not {FORMAT_VERSION}: "
                         "run `radar demo` again, or leave out --demo")
    return Radar.load(model, device="cpu"), data


def predict_test_set(radar: Any, data: Path) -> list[tuple[Any, Any, Any]]:
    """(item, prediction, true mask) for every test image, in the dataset's order."""
    from radar_ad.data import evaluation_images, load_mask

    items = evaluation_images(data)
    predictions = radar.predict_many([item.path for item in items])
    return [(item, prediction, load_mask(item.mask_path, prediction.anomaly_map.shape))
            for item, prediction in zip(items, predictions)]


def _dice(mask: Any, truth: Any) -> float:
    total = int(mask.sum()) + int(truth.sum())
    return 2 * int((mask & truth).sum()) / total if total else 0.0


def _save(figure: Any, path: Path) -> int:
    """Write the figure as a 256-colour PNG (a third of the bytes of a
    true-colour one, no visible change at this size) with no metadata."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as drawn:
        palette = drawn.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    palette.save(path, format="PNG", optimize=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"docs_figures: {path.name} is {size} bytes, over the {MAX_BYTES} allowed")
    return size


def _label(item: Any, prediction: Any) -> str:
    return f"{item.label}: {prediction.verdict}\nscore {prediction.score:.3g}"


def draw_overlay(results: list[tuple[Any, Any, Any]], vmax: float, path: Path) -> int:
    import matplotlib.pyplot as plt

    from radar_ad.report import overlay

    good = [result for result in results if not result[0].is_defective][:N_GOOD]
    defective: dict[str, tuple[Any, Any, Any]] = {}
    for result in results:
        if result[0].is_defective:
            defective.setdefault(result[0].label, result)
    shown = good + [defective[label] for label in sorted(defective)]
    columns = 4
    rows = -(-len(shown) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (item, prediction, truth) in zip(axes.flat, shown):
        ax.imshow(overlay(prediction.image, prediction.anomaly_map, prediction.mask, vmax,
                          truth if item.is_defective else None), interpolation="nearest")
        ax.set_title(_label(item, prediction), fontsize=8)
    figure.suptitle("Demo test images: anomaly map, predicted mask (cyan), true defect (green)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def draw_concepts(results: list[tuple[Any, Any, Any]], vmax: float, path: Path) -> int:
    import matplotlib.pyplot as plt
    import numpy as np

    from radar_ad.report import colorize, mask_outline, to_rgb

    # the clearest example: the best overlap of mask and true defect (ties: the first in the dataset's order)
    item, prediction, truth = max((result for result in results if result[0].is_defective),
                                  key=lambda result: _dice(result[1].mask, result[2]))
    noise = prediction.noise_map[0]
    limit = float(np.quantile(np.abs(noise), 0.995)) or 1.0
    mask = np.repeat(prediction.mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    mask[mask_outline(truth)] = (40, 220, 40)
    panels = [
        (to_rgb(prediction.image), {}, f"image ({item.label})"),
        (noise, {"cmap": "coolwarm", "vmin": -limit, "vmax": limit}, "noise map (predicted noise)"),
        (colorize(prediction.anomaly_map, vmax), {}, "response (anomaly) map"),
        (mask, {}, "mask (green: true defect)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.4))
    for ax, (array, style, title) in zip(axes, panels):
        ax.imshow(array, interpolation="nearest", **style)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    figure.tight_layout()
    return _save(figure, path)


def draw_roc(results: list[tuple[Any, Any, Any]], path: Path) -> int:
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.array([item.is_defective for item, _, _ in results], dtype=int)
    scores = np.array([prediction.score for _, prediction, _ in results])
    flagged = np.array([prediction.is_anomalous for _, prediction, _ in results])
    fpr, tpr, _ = roc_curve(labels, scores)
    figure, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(fpr, tpr, drawstyle="steps-post", label=f"RADAR (AUROC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.plot(flagged[labels == 0].mean(), flagged[labels == 1].mean(), "o", color="tab:red",
            label="the model's verdicts")
    ax.set_xlabel("false positive rate (normal images flagged)")
    ax.set_ylabel("true positive rate (defects found)")
    ax.set_title(f"Demo test set: {int((labels == 0).sum())} normal, {int(labels.sum())} defective", fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def draw_scores(results: list[tuple[Any, Any, Any]], path: Path) -> int:
    import matplotlib.pyplot as plt
    import numpy as np

    normal = np.array([prediction.score for item, prediction, _ in results if not item.is_defective])
    defective = np.array([prediction.score for item, prediction, _ in results if item.is_defective])
    threshold = results[0][1].threshold
    low, high = min(normal.min(), defective.min()), max(normal.max(), defective.max())
    logarithmic = low > 0 and high / low > 20  # scores over decades: equal bins on a log axis
    bins = np.geomspace(low, high, 25) if logarithmic else np.linspace(low, high, 25)
    figure, ax = plt.subplots(figsize=(4.6, 3.0))
    if logarithmic:
        ax.set_xscale("log")
    ax.hist(normal, bins=bins, alpha=0.7, label=f"normal ({len(normal)})")
    ax.hist(defective, bins=bins, alpha=0.7, label=f"defective ({len(defective)})")
    ax.axvline(threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlabel("image score" + (" (log scale)" if logarithmic else ""))
    ax.set_ylabel("test images")
    ax.set_title("Demo test set: image scores", fontsize=9)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def draw_all(demo: Path, out: Path) -> dict[str, int]:
    """Every figure from the demo folder into ``out``: file name -> bytes."""
    import matplotlib

    matplotlib.use("Agg")
    radar, data = load_demo(demo)
    results = predict_test_set(radar, data)
    vmax = 2 * radar.pixel_threshold_  # the demo report's scale
    out.mkdir(parents=True, exist_ok=True)
    return {
        "demo-overlay.png": draw_overlay(results, vmax, out / "demo-overlay.png"),
        "concepts.png": draw_concepts(results, vmax, out / "concepts.png"),
        "roc-demo.png": draw_roc(results, out / "roc-demo.png"),
        "scores-demo.png": draw_scores(results, out / "scores-demo.png"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a `radar demo --out DIR` folder (default: run the demo)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default: docs/img)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars while the demo runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radar-docs-") as workdir:
        demo = demo_folder(args.demo, Path(workdir), progress=not args.quiet)
        sizes = draw_all(demo, args.out)
    for name, size in sizes.items():
        print(f"{name}: {size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
