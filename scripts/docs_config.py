"""Write docs/reference/configuration.md, every setting of
:class:`radar_ad.config.RadarConfig`, from the config classes themselves.

One table per section (the top-level settings, then ``data``, ``network``,
``train``, ``inference``, ``decision``), one row per setting:

- **key**: the dotted name, as ``--set KEY=VALUE``, a JSON config file and
  ``config.updated({...})`` take it; **type**: the field's annotation;
  **default**: its default as JSON (what a config file holds);
- **allowed**: what the validator demands, in its own words: each section's
  ``validate()`` states its bounds as ``_require(ok, "key", "allowed", ...)``
  (directly or through ``_int_in``, ``_optional_int_in``, ``_check_scales``)
  and registry names through ``REGISTRY.check(...)``. Every such call in the
  source of ``validate()`` is evaluated once, on the default config, with
  ``_require`` replaced by a recorder and the checked value by a placeholder
  (so conditional and optional checks are stated too), and the recorded
  texts are joined per key. Bounds are thus never copied by hand;
- **description**: ``DESCRIPTIONS`` below. config.py describes its settings
  in the classes' docstrings (each section's docstring opens its table) but
  not one by one; the one-line descriptions are those of the README's
  "Configuration reference" table (0.8.0), and of the class docstrings for
  settings added since. The script refuses to write a page while a setting
  has no description here or a description names no setting: a new setting
  needs its line in ``DESCRIPTIONS``.

    python scripts/docs_config.py            # write the page
    python scripts/docs_config.py --check    # exit 1 if the committed page is stale
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from docs_page import page_main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "configuration.md"
GENERATOR = "scripts/docs_config.py"

# key -> what the setting does (README "Configuration reference", 0.8.0); bounds live in the code, not here
DESCRIPTIONS = {
    "patch_size": "Patch side in pixels (the paper's); must be divisible by 2^(levels - 1).",
    "seed": "Seeds every random draw: split, initialisation, patches, timesteps, noise, one-class model.",
    "data.grayscale": "Read images as grayscale; false reads RGB (`radar train --rgb`).",
    "data.resize": "Scale the longer side to this many pixels (aspect kept); null keeps the native size.",
    "network.block_out_channels": "U-Net widths per level.",
    "network.attention": "Attention blocks per level (finest first; by default at the coarsest level, 7 px).",
    "network.layers_per_block": "ResNet blocks per level.",
    "network.attention_head_dim": "Channels per attention head.",
    "network.norm_num_groups": "GroupNorm groups.",
    "network.num_train_timesteps": "T, the number of DDPM timesteps.",
    "network.beta_schedule": "DDPM noise schedule.",
    "network.beta_start": "DDPM schedule: the first beta.",
    "network.beta_end": "DDPM schedule: the last beta.",
    "network.scales": "The pyramid levels the network learns (downsampling factors), each a class label of the "
                      "one network.",
    "network.repair": "A second output per channel: the repair of a defective patch, learned from synthetic "
                      "defects.",
    "train.steps": "Optimiser steps.",
    "train.batch_size": "Patches per step.",
    "train.learning_rate": "AdamW learning rate (linear warm-up, cosine decay to 10 %).",
    "train.weight_decay": "AdamW weight decay.",
    "train.warmup_steps": "Steps of linear learning-rate warm-up.",
    "train.ema_decay": "EMA of the weights (0 = off; e.g. 0.999 for long runs).",
    "train.max_timestep": "Draw training timesteps below this (null: all T, the standard objective).",
    "train.checkpoint_every": "Steps between checkpoints.",
    "train.calibration_fraction": "Normal images held out for calibration.",
    "train.calibrate_on_training": "The paper's protocol: calibrate on the training images.",
    "train.conformal_fraction": "Normal images held out from everything and only scored, for the p-values "
                                "(shrinks to what a small folder allows).",
    "train.conformal_size": "Exactly this many conformal images instead (an error when the folder is too small).",
    "train.defect_share": "Share of training patches with a synthetic defect (the repair's target; their noise "
                          "is left out of the noise loss); 0 (with `network.repair: false`): the plain DDPM "
                          "objective.",
    "inference.timestep": "0-based; 0 is the first forward step x_1.",
    "inference.stride": "Tiling stride; null: the patch size (touching patches).",
    "inference.draws": "Average the noise map over K seeded noise draws.",
    "inference.batch_size": "Patches per network call.",
    "inference.blur_ksize": "Blur kernel size of the Sobel response.",
    "inference.sobel_ksize": "Sobel kernel size.",
    "inference.window": "Window of the window-maximum features.",
    "inference.window_stride": "Stride of the window-maximum features.",
    "inference.feature_norm": "\"sobel\" response only: \"rms\" (size-independent) or \"sum\" (the paper's "
                              "raw L2).",
    "inference.response": "\"auto\": chosen at calibration by self-validation on synthetic defects; or a "
                          "registered response: \"two_sided\": Sobel response above and local noise energy below "
                          "their normal levels, per pyramid level; \"sobel\": the paper's response only; "
                          "\"energy\": the noise-energy deficit only; \"segmentation\": a small head on the image "
                          "and every level's noise and repair, trained on synthetic defects.",
    "inference.scales": "The pyramid levels the response reads; null: chosen at calibration (a per-level "
                        "response: the first level, the first two ... all; \"segmentation\": all).",
    "inference.map_scales": "The first levels of `scales` whose maps make the pixel map and the mask (the "
                            "image features read them all); null: all, or chosen by the self-validation on its "
                            "synthetic defects' pixels (a per-level response).",
    "inference.image_score": "How the map becomes the image's score: \"features\": the response's features "
                             "through the one-class model; \"max\": the largest mean of the map over "
                             "`score_window` px squares; \"robust_max\": the same on the map standardised by its "
                             "own median and MAD; \"auto\": chosen with the response.",
    "inference.score_window": "The square (px) of \"max\" and \"robust_max\".",
    "inference.energy_window": "Window (px) of the local noise energy (\"two_sided\", \"energy\").",
    "inference.map_sigma": "Gaussian smoothing (px) of the pixel map (\"two_sided\", \"energy\").",
    "inference.segmentation_examples": "\"segmentation\": calibration images it learns from, three quarters of "
                                       "them with a synthetic defect (two crops each), the rest as they are.",
    "inference.segmentation_steps": "\"segmentation\": training steps of the head (12 crops each, Adam, cosine "
                                    "decay).",
    "inference.segmentation_width": "\"segmentation\": channels of the head at full resolution (twice that at "
                                    "half and quarter).",
    "inference.segmentation_crop": "\"segmentation\": side (px) of the crops it learns from (at most the "
                                   "smallest image's side).",
    "inference.segmentation_sigma": "\"segmentation\": Gaussian smoothing (px) of its map.",
    "inference.selection_copies": "Self-validation: synthetic defective copies of each held-out calibration "
                                  "image.",
    "inference.precision": "The number format of the network through PyTorch: \"bfloat16\" runs it under "
                           "autocast (fast where the CPU has AVX-512 BF16 or AMX); calibration, thresholds and "
                           "p-values come from the same path; the exported graphs (ONNX Runtime, OpenVINO) run "
                           "float32 only and refuse such a model.",
    "decision.one_class_model": "A registered one-class model: \"isolation_forest\", \"local_outlier_factor\" "
                                "or \"knn\" (distance to the k-th nearest calibration image's features).",
    "decision.false_alarm_rate": "Anomalous when the conformal p-value is at most this (alpha): at most this "
                                 "share of normal images flagged; null: the contamination rule.",
    "decision.false_alarm_confidence": "1 - gamma: the false-alarm rate holds with this probability over the draw "
                                       "of the conformal images, not only on average (the verdict flags p <= "
                                       "alpha' for the largest attainable alpha' <= `false_alarm_rate` whose Beta "
                                       "quantile says so); null: the average guarantee.",
    "decision.drift_delta": "The drift alarm's chance of ever firing while the line is unchanged "
                            "(`radar_ad.drift`, `radar drift`).",
    "decision.drift_defect_share": "The largest share of defective images on an ordinary day: the drift alarm "
                                   "takes it in its stride and fires when more images are flagged than it and "
                                   "the false-alarm rate explain.",
    "decision.contamination": "The one-class model's own threshold (the rule when `false_alarm_rate` is null): "
                              "share of normal calibration images it lets through as anomalous.",
    "decision.n_estimators": "IsolationForest trees.",
    "decision.n_neighbors": "Neighbours of LocalOutlierFactor and of \"knn\" (k).",
    "decision.pixel_quantile": "Mask threshold as a quantile of normal pixels.",
    "decision.non_finite": "An image whose score is not a number (a broken image or model): an error (an error "
                           "row in `detect`/`watch`, 422 in `serve`, `NonFiniteError` in Python) or, fail-safe, "
                           "\"anomalous\"; never \"normal\".",
}

INTRO = """\
Every setting of a model, generated from `radar_ad.config`. A setting is named
by its dotted key everywhere:

- on the command line: `radar train DATA -o MODEL --set inference.stride=7 --set decision.false_alarm_rate=0.01`
  (the value is read as JSON, else taken as a string);
- in a JSON config file (`radar train --config FILE`) with any subset of the keys, nested by section:
  `{"train": {"steps": 500}, "inference": {"draws": 4}}`;
- in Python: `RadarConfig().updated({"train.steps": 500})`, or for a fitted model
  `radar.with_settings({"decision.false_alarm_rate": 0.01})`.

Unknown keys are an error, and so is a value outside "allowed" (checked when a config is built and when a
model's `radar.json` is loaded): one `radar: error:` line naming the setting and what it must be. Every number
has an upper bound far above real use, so that a mistyped or tampered value cannot hang the machine or exhaust
its memory.
"""


# ----------------------------------------------------------------- reading
def rest_to_markdown(text: str) -> str:
    """A reST docstring's inline markup as Markdown."""
    text = re.sub(r":[a-z]+:`~(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def paragraphs(docstring: str | None) -> list[str]:
    """A docstring's paragraphs, each one line of Markdown."""
    text = inspect.cleandoc(docstring or "")
    return [rest_to_markdown(" ".join(line.strip() for line in block.splitlines()))
            for block in re.split(r"\n\s*\n", text) if block.strip()]


def sections() -> list[tuple[str, type, Any]]:
    """(section name, settings class, default instance): the top level
    first, then each nested section in the order RadarConfig declares it."""
    from radar_ad.config import RadarConfig

    root = RadarConfig()
    found = [("", RadarConfig, root)]
    for item in dataclasses.fields(root):
        value = getattr(root, item.name)
        if dataclasses.is_dataclass(value):
            found.append((item.name, type(value), value))
    return found


def settings_of(section: str, instance: Any) -> list[tuple[str, Any]]:
    """(dotted key, dataclass field) of a section's own settings, in declared order."""
    prefix = f"{section}." if section else ""
    return [(prefix + item.name, item) for item in dataclasses.fields(instance)
            if not dataclasses.is_dataclass(getattr(instance, item.name))]


class _Placeholder:
    """Stands for the value being checked: no check holds on it, and no
    ``is not None`` test skips the check."""

    def __repr__(self) -> str:
        return "<value>"


def _keys_of(name: str, section: str) -> list[str]:
    """The dotted keys a checked name covers (``network.beta_start/beta_end``: two)."""
    keys = []
    for part in name.split("/"):
        if "." not in part and section and not part.startswith(f"{section}."):
            part = f"{section}.{part}"
        keys.append(part)
    return keys


def constraints() -> dict[str, list[str]]:
    """key -> the texts its validator demands, in the order ``validate()``
    states them (see the module docstring)."""
    from radar_ad import config as module
    from radar_ad.registry import Registry

    found: dict[str, list[str]] = {}
    helpers = {name for name, value in vars(module).items()
               if inspect.isfunction(value) and value.__module__ == module.__name__ and name.startswith("_")}
    recorded: list[tuple[str, str]] = []

    def record(ok: Any, name: str, allowed: str, value: Any) -> None:
        recorded.append((name, allowed))

    original = module._require
    module._require = record  # type: ignore[assignment]
    try:
        ordered = sections()
        for section, cls, instance in ordered[1:] + ordered[:1]:  # each section's own checks, then the cross-checks
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls.validate)))
            function = tree.body[0]
            assert isinstance(function, ast.FunctionDef)
            scope: dict[str, Any] = {**vars(module), "self": instance}
            for statement in function.body:  # the locals the messages use (levels, factor ...)
                if isinstance(statement, ast.Assign):
                    exec(compile(ast.Module([statement], []), module.__file__, "exec"), scope)
            scope["__value__"] = _Placeholder()
            calls = sorted((node for node in ast.walk(function) if isinstance(node, ast.Call) and node.args),
                           key=lambda node: (node.lineno, node.col_offset))  # in source order
            for node in calls:
                func = node.func
                if isinstance(func, ast.Name) and func.id in helpers:
                    call = ast.Call(func, [ast.Name("__value__", ast.Load()), *node.args[1:]], node.keywords)
                    recorded.clear()
                    eval(compile(ast.fix_missing_locations(ast.Expression(call)), module.__file__, "eval"), scope)
                    for name, allowed in recorded:
                        for key in _keys_of(name, section):
                            found.setdefault(key, []).append(allowed)
                elif (isinstance(func, ast.Attribute) and func.attr == "check" and isinstance(func.value, ast.Name)
                      and isinstance(scope.get(func.value.id), Registry)):
                    registry = scope[func.value.id]
                    found.setdefault(registry.setting, []).append(registry.choices())
    finally:
        module._require = original
    return found


# --------------------------------------------------------------- rendering
def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, a pipe outside code escaped."""
    parts = " ".join(text.split()).split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _type(item: Any) -> str:
    kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
    return f"`{kind}`"


def render() -> str:
    """The page's Markdown, from the config as the code defines it now."""
    from radar_ad import config as module

    checks = constraints()
    keys = [key for section, _, instance in sections() for key, _ in settings_of(section, instance)]
    missing = [key for key in keys if key not in DESCRIPTIONS]
    stale = sorted(set(DESCRIPTIONS) - set(keys))
    if missing or stale:
        raise SystemExit(f"{GENERATOR}: DESCRIPTIONS is out of step with radar_ad.config: "
                         + "; ".join(filter(None, (missing and f"no description for {', '.join(missing)}",
                                                   stale and f"no setting {', '.join(stale)}"))))
    unknown = sorted(set(checks) - set(keys))
    if unknown:
        raise SystemExit(f"{GENERATOR}: a validator names no setting: {', '.join(unknown)}")

    lines = ["# Configuration", "",
             f"<!-- Generated by {GENERATOR} from radar_ad.config.RadarConfig; do not edit by hand. -->", "",
             INTRO]
    lines += [paragraph for paragraph in paragraphs(module.__doc__)[1:] for paragraph in (paragraph, "")]
    for section, cls, instance in sections():
        title = f"`{section}`" if section else "Top level"
        lines += [f"## {title}", ""]
        for paragraph in paragraphs(cls.__doc__):
            lines += [paragraph, ""]
        lines += ["| Key | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
        for key, item in settings_of(section, instance):
            default = json.dumps(getattr(instance, item.name))  # tuples as lists: JSON, as a config file has it
            allowed = checks.get(key) or (["true or false"] if isinstance(getattr(instance, item.name), bool)
                                          else [])
            lines.append(f"| `{key}` | {_type(item)} | `{default}` | {_cell('; '.join(allowed))} | "
                         f"{_cell(DESCRIPTIONS[key])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    return page_main(render, PAGE, GENERATOR, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
