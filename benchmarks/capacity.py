"""Is capacity the bottleneck? The default recipe beside a wider network
trained longer, both scored the same way.

    python benchmarks/capacity.py DATASET --out DIR [--resize 256] [--widths 32,64,64] [--steps-factor 10]
                                  [--default-model MODEL] [--device cuda] [--set KEY=VALUE ...]

Two models of ``DATASET`` (any MVTec-layout folder), each trained by
``radar train`` in its own process:

- ``default``: the default settings (with ``--resize`` and any ``--set``),
  or ``--default-model``, a model already trained that way;
- ``capacity``: the same recipe with the U-Net widths ``--widths`` and
  ``--steps-factor`` times its number of steps.

Each is then scored by ``leave_one_type_out.py`` (every candidate on the
validation images, each defect type left out in turn, the test split
once), and one table compares them: the network, its training time, the
self-validation's choice, the best candidate on the validation images,
the left-out mean and the default's figures on the test split. A model
already in ``DIR`` (its ``radar.json`` written) is not trained again and a
score already there is not computed again, so a run cut short resumes.
Writes ``DIR/capacity.json``.

``radar train`` uses CUDA where there is a GPU: there the defaults of this
script (twice the widths, ten times the steps) are one command. On a CPU a
shorter question fits, e.g. ``--widths 16,32,32 --steps-factor 3``: does
longer training alone help?
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from radar_ad.apps.commands.common import parse_set
from radar_ad.bench.candidates import num
from radar_ad.config import RadarConfig
from radar_ad.errors import RadarError

LEAVE_ONE_TYPE_OUT = Path(__file__).resolve().with_name("leave_one_type_out.py")
MAX_STEPS_FACTOR = 100


def widths(text: str) -> list[int]:
    """``--widths``: comma-separated positive integers."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"comma-separated positive integers, e.g. 32,64,64 (got {text!r})")
    return values


def run(command: list[str], what: str) -> None:
    """Run ``command`` (its output to this terminal), or exit with one line
    naming ``what`` failed."""
    print(f"{what}: {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"capacity.py: {what} failed (see its output above)")


def trained_as(model: Path) -> tuple[list[int], int]:
    """The U-Net widths and training steps of the model in ``model``."""
    saved = json.loads((model / "radar.json").read_text())
    return list(saved["config"]["network"]["block_out_channels"]), saved["config"]["train"]["steps"]


def summary(model: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """One model's row: its network and training from ``radar.json``, its
    figures from the leave-one-type-out JSON."""
    saved = json.loads((model / "radar.json").read_text())
    config, training = saved["config"], saved.get("training", {})
    selection = saved.get("selection") or {}
    chosen = selection.get("chosen") or {}
    best = max(scores["candidates"], key=lambda row: row["validation"]["image_auroc"] or 0.0)
    whole = scores["rows"][-1]["default_test"]
    return {"model": str(model), "widths": config["network"]["block_out_channels"],
            "steps": training.get("steps"), "training_seconds": training.get("seconds"),
            "calibration_seconds": training.get("calibration_seconds"), "device": training.get("device"),
            "final_loss": training.get("final_loss"),
            "chosen": _candidate(chosen) if chosen else config["inference"]["response"],
            "synthetic_image_auroc": selection.get("synthetic_image_auroc"),
            "best_candidate": _candidate(best), "best_validation": best["validation"],
            "left_out_mean_image_auroc": scores["summary"]["mean_image_auroc"],
            "default_left_out_mean_image_auroc": scores["summary"]["default_mean_image_auroc"],
            "default_test": whole}


def _candidate(row: dict[str, Any]) -> str:
    return (f"{row['inference.response']} {'/'.join(map(str, row['inference.scales']))}, "
            f"{row['inference.image_score']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for both models and their scores")
    parser.add_argument("--resize", type=int, default=256, help="as `radar train --resize` (0: the stored size)")
    parser.add_argument("--widths", type=widths, default=[32, 64, 64], help="the wider network's U-Net widths")
    parser.add_argument("--steps-factor", type=float, default=10.0,
                        help=f"its steps: this times the default's (at most {MAX_STEPS_FACTOR})")
    parser.add_argument("--default-model", type=Path, help="the default recipe, already trained on DATASET")
    parser.add_argument("--device", help="as `radar train --device` (default: CUDA if present)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of both models, as `radar train --set` (repeatable)")
    args = parser.parse_args(argv)
    if not 0 < args.steps_factor <= MAX_STEPS_FACTOR:
        parser.error(f"--steps-factor: in (0, {MAX_STEPS_FACTOR}] (got {args.steps_factor})")
    if not args.dataset.is_dir():
        parser.error(f"DATASET: no folder {args.dataset}")
    if args.default_model and not (args.default_model / "radar.json").is_file():
        parser.error(f"--default-model: no model in {args.default_model} (radar.json missing)")
    try:
        recipe = RadarConfig().updated(parse_set(args.set))
    except RadarError as exc:
        parser.error(f"--set: {exc}")
    steps = max(1, round(recipe.train.steps * args.steps_factor))
    args.out.mkdir(parents=True, exist_ok=True)
    # each model's widths and steps, beside the settings of both
    recipes = {"default": (list(recipe.network.block_out_channels), recipe.train.steps),
               "capacity": (args.widths, steps)}
    common = [part for pair in args.set for part in ("--set", pair)]
    rows: dict[str, dict[str, Any]] = {}
    for name, (widths_, steps_) in recipes.items():
        model = args.default_model if name == "default" and args.default_model else args.out / name
        if (model / "radar.json").is_file():
            held = trained_as(model)
            if held != (widths_, steps_):
                raise SystemExit(f"capacity.py: {model} holds widths {held[0]} and {held[1]} steps, not the "
                                 f"{name} recipe's {widths_} and {steps_}: name another --out")
        else:
            run([sys.executable, "-m", "radar_ad", "train", str(args.dataset), "--out", str(model),
                 *(["--resize", str(args.resize)] if args.resize else []),
                 *(["--device", args.device] if args.device else []), *common,
                 "--set", f"network.block_out_channels={json.dumps(widths_).replace(' ', '')}",
                 "--set", f"train.steps={steps_}"], f"training {name}")
        scored = args.out / f"{name}-leave-one-type-out.json"
        if not scored.is_file():
            run([sys.executable, str(LEAVE_ONE_TYPE_OUT), str(args.dataset), str(model), "--out", str(scored)],
                f"scoring {name}")
        rows[name] = summary(model, json.loads(scored.read_text()))
    print("| model | widths | steps | training s | chosen (synthetic image AUROC) | best candidate: validation "
          "image / pixel / AUPRO | left-out mean image AUROC (the default's) | test, the default: image / pixel "
          "/ AUPRO |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        best, test = row["best_validation"], row["default_test"]
        seconds = "n/a" if row["training_seconds"] is None else f"{row['training_seconds']:.0f}"
        print(f"| {name} | {'/'.join(map(str, row['widths']))} | {row['steps']} | {seconds} | {row['chosen']} "
              f"({num(row['synthetic_image_auroc'])}) | {row['best_candidate']}: {num(best['image_auroc'])} / "
              f"{num(best['pixel_auroc'])} / {num(best['aupro'])} | {num(row['left_out_mean_image_auroc'])} "
              f"({num(row['default_left_out_mean_image_auroc'])}) | {num(test['image_auroc'])} / "
              f"{num(test['pixel_auroc'])} / {num(test['aupro'])} |")
    result = {"command": " ".join(sys.argv), "dataset": str(args.dataset), "rows": rows}
    temporary = args.out / "capacity.json.tmp"
    temporary.write_text(json.dumps(result, indent=2))
    temporary.replace(args.out / "capacity.json")
    print(f"written {args.out / 'capacity.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
