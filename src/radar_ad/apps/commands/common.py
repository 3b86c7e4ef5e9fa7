"""What several ``radar`` verbs share: option help texts, ``--set`` parsing,
the decision settings a verb's options change, and the arguments of the
run (for the resume hint of an interrupted ``radar train``)."""

from __future__ import annotations

import json
from typing import Any

from ...errors import ConfigError
from ...registry import BACKENDS, choices

# The arguments of this run, set by :func:`radar_ad.apps.cli.main`.
INVOCATION: list[str] = []

DEVICE_HELP = "cpu, cuda ... (default: CUDA if present)."
NON_FINITE_HELP = ("An image whose score is not a number (a broken image or model): error (an error row, "
                   "the default) or anomalous (fail-safe). Never normal.")
FALSE_ALARM_HELP = ("Flag an image when its p-value is at most this: at most this share of normal images "
                    "flagged (default: the model's decision.false_alarm_rate).")
# The help lists the plug-ins without importing them (radar --help must not wait for PyTorch).
BACKEND_HELP = (f"{choices(BACKENDS.declared()).capitalize()} (default: torch for a model directory, the file's own "
                "for an exported file; onnx and openvino run on the CPU, faster there).")


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs -> setting changes (each value read as JSON, else as a string)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.steps=500), got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def decision_settings(false_alarm_rate: float | None, non_finite: str | None = None) -> dict[str, Any] | None:
    """The settings a command's --false-alarm-rate and --non-finite change on the loaded model."""
    settings = {key: value for key, value in (("decision.false_alarm_rate", false_alarm_rate),
                                              ("decision.non_finite", non_finite)) if value is not None}
    return settings or None
