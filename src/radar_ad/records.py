"""One prediction as a record: the values every output of a verdict holds,
by name, so that `radar detect` and `radar watch` (CSV rows), `radar serve`
(the JSON answer) and `radar detect --engine ray` (Parquet rows) say the
same thing in the same words.

An image that got no verdict is a record too (:func:`error_record`): verdict
``"error"``, no score, and why in ``error``, the one name of that column in
every output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .outputs import Prediction

ERROR_VERDICT = "error"
# The columns of `radar detect`'s and `radar watch`'s results.csv that every output shares.
RESULT_COLUMNS = ("file", "score", "threshold", "p_value", "verdict", "mask_fraction")
# `radar detect`'s results.csv: an image that could not be scored is a row with verdict "error" and why.
DETECT_COLUMNS = (*RESULT_COLUMNS, "error")


def result_record(prediction: Prediction) -> dict[str, Any]:
    """A prediction's values: ``score``, ``verdict``, ``is_anomalous``,
    ``threshold``, ``p_value`` (None for a model without conformal images),
    ``pixel_threshold``, ``width`` and ``height`` of its maps,
    ``mask_fraction`` (the share of pixels flagged) and ``error`` (None)."""
    height, width = prediction.anomaly_map.shape
    return {
        "score": float(prediction.score),
        "verdict": prediction.verdict,
        "is_anomalous": bool(prediction.is_anomalous),
        "threshold": float(prediction.threshold),
        "p_value": None if prediction.p_value is None else float(prediction.p_value),
        "pixel_threshold": float(prediction.pixel_threshold),
        "width": int(width),
        "height": int(height),
        "mask_fraction": float(prediction.mask.mean()),
        "error": None,
    }


def error_record(threshold: float | None, error: str) -> dict[str, Any]:
    """The record of an image that got no verdict: the keys of
    :func:`result_record`, verdict ``"error"``, the model's image
    ``threshold`` (None: unknown) and why in ``error``; the rest None."""
    return {"score": None, "verdict": ERROR_VERDICT, "is_anomalous": None,
            "threshold": None if threshold is None else float(threshold), "p_value": None,
            "pixel_threshold": None, "width": None, "height": None, "mask_fraction": None, "error": error}


def csv_fields(record: Mapping[str, Any], columns: Iterable[str]) -> list[str]:
    """A record's values for ``columns`` as the CSV files write them: a
    number with six decimals, nothing for None, text as it is."""
    return [_csv_value(record[column]) for column in columns]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def json_fields(record: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A record's values for ``keys`` as JSON can hold them: JSON has no NaN
    or infinity, so a number that is not finite is null (a non-finite score
    that ``decision.non_finite = "anomalous"`` flagged, say)."""
    return {key: _finite_or_none(record[key]) for key in keys}


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
