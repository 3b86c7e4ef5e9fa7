"""A deprecated import path: ``radar_ad.bench.harness.<name>`` gives the
name from the module of :mod:`radar_ad.bench` that holds it, with a
:class:`DeprecationWarning` that says where to import it from.

The registries are looked up only when ``REFERENCE_METHOD`` or
``BASELINE_METHODS`` is asked for.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_HOMES = {
    "methods": ("RadarRow", "one_class_label", "radar_rows", "method_names", "reference_method", "known_methods",
                "selected_methods", "Predictor", "MethodSpec", "method_specs"),
    "options": ("DEFAULT_RESIZE", "DEFAULT_SUBSET", "DEFAULT_CALIBRATION_LIMIT", "QUICK_SETTINGS", "QUICK_RESIZE",
                "QUICK_SUBSET", "QUICK_CALIBRATION_LIMIT", "QUICK_DEMO_SPEC", "BenchmarkOptions", "dataset_config",
                "command_line"),
    "datasets": ("DEMO", "DatasetSource", "dataset_sources", "HeldOut", "TestSet", "patches_per_image"),
    "splits": ("DEFAULT_VALIDATION_FRACTION", "EXAMPLES_DEFECTIVE", "validation_split", "fixed_subset",
               "example_items"),
    "model_cache": ("model_key", "radar_variant"),
    "environment": ("environment",),
    "runner": ("MAP_METRICS", "run_method", "benchmark_dataset", "require_bench", "run_benchmark"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name == "REFERENCE_METHOD":
        module, value = "methods", importlib.import_module(f"{__package__}.methods").reference_method()
        replacement = "reference_method()"
    elif name == "BASELINE_METHODS":
        module, value = "baselines", tuple(importlib.import_module(f"{__package__}.baselines").baseline_names())
        replacement = "baseline_names()"
    elif name in _MODULE_OF:
        module, replacement = _MODULE_OF[name], name
        value = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"radar_ad.bench.harness.{name} is deprecated: use {replacement} from radar_ad.bench.{module}",
                  DeprecationWarning, stacklevel=2)
    return value


def __dir__() -> list[str]:
    return sorted([*_MODULE_OF, "REFERENCE_METHOD", "BASELINE_METHODS"])
