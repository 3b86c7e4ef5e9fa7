"""The benchmark's methods: which rows a run has, and how each is built on
the trained network.

The RADAR rows come from the registries: one per registered one-class model
(``radar_<abbreviation>``) on the config's response, and one per other
registered response (``radar_<name>``) with the config's one-class model, so
a new plug-in shows up here with no change to this module. Each is the
trained model with its settings changed (:meth:`Radar.with_settings`). The
baselines (:mod:`radar_ad.bench.baselines`) follow, on the same network.

The registries are looked up when a function here is called, never when the
module is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import RadarConfig
from ..errors import ConfigError
from ..outputs import Prediction
from ..pipeline import Radar
from ..registry import ONE_CLASS_MODELS, RESPONSES
from .baselines import Baseline, OneClassMethod, StatisticalBaseline, baseline_names, reconstruction_baselines
from .datasets import HeldOut
from .model_cache import as_radar_images, radar_variant, setting_value


@dataclass(frozen=True)
class RadarRow:
    """A RADAR row of the tables: the trained model with ``settings``
    (dotted keys) changed; no settings: the config's own model."""

    key: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)


def one_class_label(model: type) -> str:
    """How a table names a one-class model: its class name without the
    ``Model`` suffix (``IsolationForestModel`` -> ``IsolationForest``)."""
    return model.__name__.removesuffix("Model")


def radar_rows(config: RadarConfig | None = None) -> list[RadarRow]:
    """The RADAR rows for ``config`` (default: the default config), from the
    registries: the config's own first (the reference of the time ratios),
    then one per other registered one-class model on the config's response,
    then one per other registered response with the config's one-class model
    (one that reads the repair only where the network has a repair output)."""
    config = config or RadarConfig()
    own_model, own_response = config.decision.one_class_model, config.inference.response
    rows = [RadarRow(f"radar_{model.abbreviation or name}", f"RADAR ({one_class_label(model)})",
                     {} if name == own_model else {"decision.one_class_model": name})
            for name, model in ONE_CLASS_MODELS.items()]
    rows.sort(key=lambda row: bool(row.settings))  # stable: the config's own first
    rows += [RadarRow(f"radar_{name}", f"RADAR ({name} response)", {"inference.response": name})
             for name in RESPONSES.names() if name != own_response
             and (config.network.repair or getattr(RESPONSES.get(name), "reads", "noise") != "repair")]
    return rows


def method_names(config: RadarConfig | None = None) -> dict[str, str]:
    """Key -> display name of every method a run on ``config`` (default: the
    default config) has, in table order: the RADAR rows, then the baselines."""
    names: dict[str, str] = {}
    for key, name in [*((row.key, row.name) for row in radar_rows(config)), *baseline_names().items()]:
        if key in names:
            raise ValueError(f"two benchmark methods have the key {key!r} ({names[key]} and {name}); "
                             "rename one of the plug-ins")
        names[key] = name
    return names


def reference_method(config: RadarConfig | None = None) -> str:
    """The key of the config's own RADAR row, which the time ratios are
    relative to (``radar_if`` for the default config)."""
    return radar_rows(config)[0].key


def known_methods() -> tuple[str, ...]:
    """Every method key some config has: those of the default config, plus
    a row for each registered response (a config has one for every response
    but its own)."""
    keys = dict.fromkeys(row.key for row in radar_rows())
    keys.update(dict.fromkeys(f"radar_{name}" for name in RESPONSES.names()))
    keys.update(dict.fromkeys(method_names()))
    return tuple(keys)


def selected_methods(config: RadarConfig, methods: Sequence[str] | None) -> tuple[str, ...]:
    """The keys of ``methods`` (None: all) a run on ``config`` has, in table
    order, or a :class:`ConfigError` for one it does not have."""
    available = method_names(config)
    for key in methods or ():
        if key not in available:
            raise ConfigError(f"methods: {key!r} has no row of its own when inference.response is "
                              f"{config.inference.response!r}: every RADAR one-class row runs that response; "
                              f"available: {', '.join(available)}", setting="methods")
    return tuple(key for key in available if methods is None or key in methods)


class Predictor(Protocol):
    """A fitted method: ``(C, H, W)`` images in [0, 1] -> one
    :class:`~radar_ad.outputs.Prediction` each, in input order."""

    def predict(self, images: list[np.ndarray]) -> list[Prediction]: ...


class _RadarPredictor:
    """A :class:`Radar` behind the same ``predict(arrays)`` as the baselines."""

    def __init__(self, radar: Radar) -> None:
        self.radar = radar

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        return self.radar.predict_many(as_radar_images(images))


@dataclass
class MethodSpec:
    """A method as the runner runs it. ``slow``: scored on the subset only
    (a baseline marked slow, or one costing more network evaluations per
    patch position than RADAR). ``fit`` gets the calibration images: all of
    them, or a seeded limited share when ``limit_calibration``. ``backend``:
    the engine that runs its network."""

    key: str
    name: str
    slow: bool
    network_evaluations: int  # U-Net evaluations per patch position
    uses_network: bool
    limit_calibration: bool
    backend: str
    fit: Callable[[HeldOut], Predictor]


def method_specs(radar: Radar, methods: Sequence[str]) -> list[MethodSpec]:
    """The selected methods in table order, all on ``radar``'s network."""
    config, requested = radar.config, radar.requested_config()
    draws = config.inference.draws
    specs = []
    for row in radar_rows(requested):
        # a row that names a response changes what was asked for (its scales
        # and image score stay "auto" where they were), not what calibration
        # resolved them to; another one-class model keeps the resolved maps
        names_response = any(key.startswith("inference.") for key in row.settings)
        target = (requested if names_response else config).updated(row.settings)
        changes = {key: setting_value(target, key) for key in config.changes(target)} if row.settings else {}

        def fit_radar(held_out: HeldOut, settings: dict[str, Any] = changes) -> Predictor:
            return _RadarPredictor(radar_variant(radar, settings, held_out)[0])

        specs.append(MethodSpec(row.key, row.name, False, draws, True, False, radar.backend_name, fit_radar))
    baselines: list[Baseline] = (
        [baseline for baseline in reconstruction_baselines(radar) if baseline.key in methods]
        if any(key in methods for key in baseline_names() if key != StatisticalBaseline.key) else [])
    if StatisticalBaseline.key in methods:
        baselines.append(StatisticalBaseline(config))
    for baseline in baselines:
        def fit_baseline(held_out: HeldOut, baseline: Baseline = baseline) -> Predictor:
            return OneClassMethod(baseline, config).fit(held_out.calibration, held_out.conformal)

        # Costlier per patch than RADAR (a reverse chain): the subset only,
        # and a limited calibration set; the whole split would take them
        # many times RADAR's network time.
        slow = bool(baseline.slow) or baseline.network_evaluations > draws
        specs.append(MethodSpec(baseline.key, baseline.name, slow, int(baseline.network_evaluations),
                                baseline.network_evaluations > 0, slow, "torch", fit_baseline))
    return [spec for spec in specs if spec.key in methods]

