"""What ``radar benchmark`` writes: ``results.json``, ``results.md`` (the
tables, with the command, hardware and wall time that produced them) and a
self-contained ``report.html`` (ROC curves, score histograms and every
method's anomaly maps of the same test images, all embedded as PNG).

Everything here reads the run's summary (the content of ``results.json``)
plus the example arrays, so a table can be redrawn from a saved JSON file.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..files import write_json, write_text
from ..report import colorize, figure_html, html_page, png_base64, to_rgb
from .results import BenchmarkResult, Example

# The method the time ratios are relative to, when a summary does not say
# (results.json files written before it did).
DEFAULT_REFERENCE = "radar_if"

QUICK_WARNING = ("--quick: a tiny network, tiny images and a tiny subset; a smoke run of the harness, "
                 "not a measurement of any method.")


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:,.1f}" if ms < 1000 else f"{ms:,.0f}"


def _metric(value: float) -> str:
    return f"{value:.3f}"


# (row key, column header, formatter) of the method tables
TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("name", "method", str),
    ("network_evaluations_per_image", "net evals / img", lambda v: f"{v:,.0f}"),
    ("n_calibration", "calib", str),
    ("accuracy", "acc", _metric),
    ("precision", "prec", _metric),
    ("recall", "rec", _metric),
    ("f1", "F1", _metric),
    ("image_auroc", "img AUROC", _metric),
    ("image_f1max", "img F1-max", _metric),
    ("pixel_auroc", "px AUROC", _metric),
    ("aupro", "AUPRO", _metric),
    ("pixel_f1max", "px F1-max", _metric),
    ("median_seconds_per_image", "ms / img", _ms),
    ("relative_time", "time / reference", _ratio),
    ("training_seconds", "train s", lambda v: f"{v:,.1f}"),
    ("peak_rss_mib", "peak RSS MiB", lambda v: f"{v:,.0f}"),
)


def reference_label(key: str) -> str:
    """How tables name the method the time ratios are relative to:
    ``radar_if`` -> ``RADAR IF``."""
    return "RADAR " + key.removeprefix("radar_").replace("_", " ").upper()


def _columns(rows: Sequence[dict[str, Any]], reference: str = DEFAULT_REFERENCE,
             ) -> tuple[tuple[str, str, Callable[[Any], str]], ...]:
    """The table columns (the time ratio named after ``reference``), plus
    peak CUDA memory when a row has it."""
    columns = tuple((key, f"time / {reference_label(reference)}" if key == "relative_time" else header, fmt)
                    for key, header, fmt in TABLE_COLUMNS)
    if any(row.get("peak_cuda_mib") is not None for row in rows):
        return (*columns, ("peak_cuda_mib", "peak CUDA MiB", lambda v: f"{v:,.0f}"))
    return columns


def _cells(row: dict[str, Any], columns: Sequence[tuple[str, str, Callable[[Any], str]]]) -> list[str]:
    return ["n/a" if row.get(key) is None else fmt(row[key]) for key, _, fmt in columns]


def method_table_markdown(rows: Sequence[dict[str, Any]],
                          columns: Sequence[tuple[str, str, Callable[[Any], str]]] | None = None,
                          reference: str = DEFAULT_REFERENCE) -> str:
    """A Markdown table with one row per method (rows as in ``results.json``'s
    ``tables``); ``n/a`` where a metric is undefined."""
    columns = columns or _columns(rows, reference)
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(row, columns)) + " |" for row in rows]
    return "\n".join(lines)


def method_table_html(rows: Sequence[dict[str, Any]], reference: str = DEFAULT_REFERENCE) -> str:
    columns = _columns(rows, reference)
    head = "".join(f"<th>{html.escape(header)}</th>" for _, header, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(row, columns))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------ words
def table_titles(dataset: dict[str, Any]) -> dict[str, str]:
    """Say which images each table is on."""
    splits = dataset["splits"]
    return {
        "subset": (f"Table 1 - every method on the same fixed subset: {splits['n_subset_normal']} normal + "
                   f"{splits['n_subset_defective']} defective test images (seed {splits['seed']})"),
        "test": (f"Table 2 - fast methods on the whole test split: {splits['n_test_normal']} normal + "
                 f"{splits['n_test_defective']} defective test images (validation images excluded)"),
    }


def dataset_facts(dataset: dict[str, Any]) -> str:
    splits, config = dataset["splits"], dataset["config"]
    resize = config["data"]["resize"]
    how = ("reused from the cache (trained in an earlier run)" if dataset["model_reused"]
           else "trained in this run")
    return (f"Data `{dataset['path']}` ({'native size' if resize is None else f'longer side {resize} px'}, "
            f"{'grayscale' if config['data']['grayscale'] else 'RGB'}): {splits['n_train']} training + "
            f"{splits['n_calibration']} held-out calibration images; test split {splits['n_test_normal']} "
            f"normal + {splits['n_test_defective']} defective; {len(splits['validation_files'])} defective "
            f"set aside for validation. Model `{dataset['model_dir']}`: {config['train']['steps']} steps in "
            f"{dataset['training_seconds']} s, {how}; patch {config['patch_size']} px.")


def dataset_notes(dataset: dict[str, Any]) -> list[str]:
    """What a reader must know to read the tables right."""
    splits, config, methods = dataset["splits"], dataset["config"], dataset["methods"]
    slow = [key for key, info in methods.items() if info["slow"]]
    limited = [key for key, info in methods.items() if info["n_calibration"] < splits["n_calibration"]]
    stride = config["inference"]["stride"] or config["patch_size"]
    reference = reference_label(dataset.get("reference_method", DEFAULT_REFERENCE))
    backends = ("every network ran through PyTorch" if dataset.get("backend", "torch") == "torch" else
                f"RADAR's network ran through {dataset['backend']}, the baselines' through PyTorch")
    validation = (
        f"{len(splits['validation_files'])} defective test images ({splits['validation_fraction']:.0%} of each "
        "defect type, at least one where a type has two or more) are set aside for choosing settings and are "
        "in neither table; results.json lists them." if splits["validation_fraction"] > 0 else
        "No test images were set aside for validation (--validation-fraction 0): any setting chosen on "
        "these tables was chosen on the test images.")
    notes = [
        ("Table 1 has every method on one fixed seeded subset of the test split; Table 2 has only the fast "
         "methods (" + ", ".join(k for k, info in methods.items() if not info["slow"]) + ") on the whole "
         "test split" + (f"; the slow ones ({', '.join(slow)}: more network evaluations per patch position "
                         "than RADAR) are in Table 1 only." if slow else ".")),
        validation,
        (f"Every one-class model is fitted on the same held-out normal calibration images "
         f"({splits['n_calibration']}, never trained on)"
         + (f"; {', '.join(limited)} on a seeded {splits['calibration_limit']} of them because they are "
            "slow, RADAR on all (column 'calib')." if limited else ".")),
        (f"Network evaluations per image = U-Net evaluations per patch position x patch positions per image "
         f"on the tiling grid ({dataset['patches_per_image']:.1f} on average: patch {config['patch_size']}, "
         f"stride {stride}); RADAR: {config['inference']['draws']} per position."),
        (f"Time per image: after one untimed warm-up image, each batch of up to 8 images (already loaded) "
         f"is timed and divided by its size; the median over images. 'time / {reference}' is the ratio to "
         f"{reference}'s median in the same table and process; {backends}."),
        ("Peak RSS is the process's peak resident memory (getrusage) read after each method: cumulative for "
         "the process, so it only grows down the table; a method's own share is at most its increase."),
        ("All methods share the one trained network (train s); the statistical baseline uses none (0 s)."),
    ]
    if any(info.get("peak_cuda_mib") is not None for info in methods.values()):
        notes.append("Peak CUDA MiB: torch.cuda.max_memory_allocated, reset before each method.")
    if not dataset["have_masks"]:
        notes.append("No ground-truth masks: pixel metrics are n/a.")
    else:
        notes.append("Pixel metrics compare each method's anomaly map with the mask at the image size the "
                     "model saw (masks resized nearest).")
    return notes


def environment_line(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    device = env.get("cuda_device", env["device"])
    return (f"{env['cpus_available']} of {env['cpu_count']} CPUs available ({env['cpu_model']}), "
            f"torch {env['torch']} ({env['torch_threads']} threads), device {device}, "
            f"Python {env['python']}, {env['platform']}, radar-ad {env['radar_ad']}")


def markdown_report(summary: dict[str, Any]) -> str:
    """``results.md``: per dataset its two tables and notes, under the
    command, hardware and wall time that produced them."""
    lines = ["# radar-ad benchmark", "",
             f"- command: `{summary['command']}` (started {summary['started']})",
             f"- hardware: {environment_line(summary)}",
             f"- total wall time: {summary['total_seconds']:.0f} s", ""]
    if summary["options"]["quick"]:
        lines += [QUICK_WARNING, ""]
    for dataset in summary["datasets"]:
        titles = table_titles(dataset)
        lines += [f"## {dataset['name']}", "", dataset_facts(dataset), ""]
        for table in ("subset", "test"):
            if dataset["tables"][table]:
                lines += [f"### {titles[table]}", "",
                          method_table_markdown(dataset["tables"][table], reference=_reference(dataset)), ""]
        lines += ["Notes:", ""] + [f"- {note}" for note in dataset_notes(dataset)] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures
def _reference(dataset: dict[str, Any]) -> str:
    return dataset.get("reference_method", DEFAULT_REFERENCE)


def _figure(width: float, height: float) -> Any:
    figure = require("matplotlib.figure", "bench", "the benchmark report", package="matplotlib")
    return figure.Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_png_base64(figure: Any) -> str:
    """A matplotlib figure as base64 PNG (Agg canvas: no pyplot, no global
    backend switch in the caller's process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return png_base64(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def _labels_scores(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r["label"] != "good" for r in records], dtype=int),
            np.array([r["score"] for r in records], dtype=np.float64))


def roc_figure(dataset: dict[str, Any]) -> str:
    """ROC curves of every method on the subset, as base64 PNG."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = _figure(6.5, 6.0)
    axes = figure.add_subplot()
    for key, records in dataset["images"].items():
        labels, scores = _labels_scores([r for r in records if r["in_subset"]])
        if labels.min() == labels.max():
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, drawstyle="steps-post",
                  label=f"{dataset['methods'][key]['name']}: AUROC {roc_auc_score(labels, scores):.3f}")
    axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
             title=f"{dataset['name']}: image ROC, every method on the subset")
    figure.legend(loc="outside lower center", fontsize="small")
    return figure_png_base64(figure)


def histogram_figure(dataset: dict[str, Any]) -> str:
    """Per method, its scores of normal against defective test images (on
    the whole test split for fast methods, the subset for slow ones)."""
    keys = list(dataset["images"])
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    figure = _figure(3.4 * columns, 2.9 * rows)
    for n, key in enumerate(keys):
        axes = figure.add_subplot(rows, columns, n + 1)
        labels, scores = _labels_scores(dataset["images"][key])
        bins = np.histogram_bin_edges(scores, bins=20)
        axes.hist(scores[labels == 0], bins=bins, alpha=0.6, color="tab:green", label="normal")
        axes.hist(scores[labels == 1], bins=bins, alpha=0.6, color="tab:red", label="defective")
        where = "subset" if dataset["methods"][key]["slow"] else "test split"
        axes.set_title(textwrap.fill(f"{dataset['methods'][key]['name']} ({where})", 40), fontsize="small")
        axes.set_xlabel("score", fontsize="small")
        axes.tick_params(labelsize="x-small")
        if n == 0:
            axes.legend(fontsize="x-small")
    return figure_png_base64(figure)


def gallery_html(dataset: dict[str, Any], examples: list[Example]) -> str:
    """The same test images in columns; rows: the image, its ground-truth
    mask, then each method's anomaly map (one colour scale per method)."""
    if not examples:
        return ""
    head = "".join(f"<th>{html.escape(e.file)}<br>({html.escape(e.label)})</th>" for e in examples)
    masks = [np.repeat(e.truth[..., None].astype(np.uint8) * 255, 3, axis=2) for e in examples]
    rows = ["<tr><th>image</th>" + "".join(f"<td>{figure_html(to_rgb(e.image), 'image')}</td>"
                                           for e in examples) + "</tr>",
            "<tr><th>ground truth</th>" + "".join(f"<td>{figure_html(mask, 'mask')}</td>" for mask in masks)
            + "</tr>"]
    for key, info in dataset["methods"].items():
        shown = [e.maps[key] for e in examples if key in e.maps]
        if not shown:
            continue
        vmax = float(np.quantile(np.concatenate([m.ravel() for m in shown]), 0.999)) or 1e-12
        cells = []
        for e in examples:
            if key not in e.maps:
                cells.append("<td>n/a</td>")
                continue
            caption = f"score {e.scores[key]:.4g}, {'anomalous' if e.verdicts[key] else 'normal'}"
            cells.append(f"<td>{figure_html(colorize(e.maps[key], vmax), caption)}</td>")
        rows.append(f"<tr><th>{html.escape(info['name'])}</th>{''.join(cells)}</tr>")
    return f'<table class="gallery"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


REPORT_CSS = """
th, td { padding: 3px 8px; text-align: right; font-size: 0.9em; }
th:first-child, td:first-child { text-align: left; }
.gallery td { text-align: center; }
figure { display: block; margin: 0; }
.gallery img { width: 128px; border: 1px solid #999; }
img.figure { max-width: 100%; image-rendering: auto; }
"""


def benchmark_page(summary: dict[str, Any], examples: dict[str, list[Example]]) -> str:
    """``report.html``: one self-contained page (no external resources)."""
    parts = []
    for dataset in summary["datasets"]:
        titles = table_titles(dataset)
        tables = "".join(f"<h3>{html.escape(titles[t])}</h3>"
                         f"{method_table_html(dataset['tables'][t], _reference(dataset))}"
                         for t in ("subset", "test") if dataset["tables"][t])
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in dataset_notes(dataset))
        parts.append(
            f"<section><h2>{html.escape(dataset['name'])}</h2><p>{html.escape(dataset_facts(dataset))}</p>"
            f"{tables}<ul class=\"notes\">{notes}</ul>"
            f"<h3>ROC curves</h3><img class=\"figure\" alt=\"ROC curves\" "
            f"src=\"data:image/png;base64,{roc_figure(dataset)}\">"
            f"<h3>Scores: normal against defective</h3><img class=\"figure\" alt=\"score histograms\" "
            f"src=\"data:image/png;base64,{histogram_figure(dataset)}\">"
            f"<h3>Anomaly maps of the same test images</h3>"
            f"<p>Each method's maps share one colour scale (0 to its 99.9th percentile over these images); "
            f"scales differ between methods.</p>{gallery_html(dataset, examples.get(dataset['name'], []))}"
            f"</section>")
    quick = f"<p><strong>{html.escape(QUICK_WARNING)}</strong></p>" if summary["options"]["quick"] else ""
    body = (f"<p>Command: <code>{html.escape(summary['command'])}</code> "
            f"(started {html.escape(summary['started'])})</p>\n"
            f"<p>Hardware: {html.escape(environment_line(summary))}</p>\n"
            f"<p>Total wall time: {summary['total_seconds']:.0f} s</p>\n{quick}\n{''.join(parts)}")
    return html_page("radar-ad benchmark", body, REPORT_CSS)


def write_reports(result: BenchmarkResult, out: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``report.html`` into
    ``out``, each atomically; the HTML is drawn first, so a plotting error
    leaves no new results half-written beside old ones."""
    out = Path(out)
    page = benchmark_page(result.summary, result.examples)
    result.markdown = markdown_report(result.summary)
    files = {"json": out / "results.json", "markdown": out / "results.md", "html": out / "report.html"}
    write_json(files["json"], result.summary)
    write_text(files["markdown"], result.markdown)
    write_text(files["html"], page)
    result.files = files
    return files
