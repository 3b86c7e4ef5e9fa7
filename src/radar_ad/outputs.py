"""What prediction gives back: a :class:`Prediction` per image, and
:func:`stream_predictions`, which predicts a long list a chunk at a time and
yields a :class:`StreamedPrediction` per item as soon as its chunk is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from .errors import ConfigError, RadarError, first_line

# Images analysed together: their patches go through the network in shared
# batches, while maps of at most this many images are held at once.
IMAGES_PER_PASS = 8

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Prediction:
    """The result for one image.

    ``noise_map``: ``(C, H, W)`` predicted noise of the finest pyramid
    level the model reads; ``anomaly_map``: ``(H, W)``
    the response map (the pixel-level score); ``mask``: ``(H, W)`` bool,
    ``anomaly_map > pixel_threshold``; ``features``: the image features;
    ``image``: ``(C, H, W)`` in [0, 1], the input as the model saw it (after
    any resize), so maps and image line up pixel for pixel. ``p_value``: the
    conformal p-value of ``score`` (small = unlike the normal images; with
    ``decision.false_alarm_rate`` alpha the verdict is ``p_value <= alpha``),
    ``None`` for a model without conformal images.
    """

    score: float
    is_anomalous: bool
    threshold: float
    pixel_threshold: float
    features: np.ndarray
    noise_map: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    p_value: float | None = None

    @property
    def verdict(self) -> str:
        """``"anomalous"`` or ``"normal"``."""
        return "anomalous" if self.is_anomalous else "normal"


@dataclass
class StreamedPrediction(Generic[Item, Result]):
    """One item of :func:`stream_predictions`: its position, the item, its
    prediction (a :class:`Prediction` for ``Radar.predict_stream``) and the
    seconds per image of the chunk it was predicted in; with ``keep_going``,
    an item that could not be predicted has ``prediction`` None and
    ``error`` the one-line reason."""

    index: int
    item: Item
    prediction: Result | None
    seconds: float
    error: str | None = None


def stream_predictions(predict: Callable[[list[Item]], list[Result]], items: Sequence[Item],
                       chunk_size: int = IMAGES_PER_PASS,
                       keep_going: bool = False) -> Iterator[StreamedPrediction[Item, Result]]:
    """Predict ``items`` ``chunk_size`` at a time, in order, yielding each
    prediction as soon as its chunk is done: memory stays at one chunk's maps
    whatever the number of items. ``predict`` is ``Radar.predict_many`` or any
    function of the same shape (a baseline's).

    ``keep_going``: an item that fails with a :class:`RadarError` (unreadable,
    too small, a non-finite score) becomes a streamed item with its
    ``error``, and the batch goes on (a failing chunk is retried item by
    item, so one bad file costs its neighbours nothing but time)."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}", setting="chunk_size")
    for start in range(0, len(items), chunk_size):
        chunk = list(items[start:start + chunk_size])
        began = time.perf_counter()
        try:
            predictions: list[Result | None] = list(predict(chunk))
            errors: list[str | None] = [None] * len(chunk)
        except RadarError as exc:
            if not keep_going:
                raise
            predictions, errors = [], []
            for item in chunk if len(chunk) > 1 else []:
                try:
                    predictions.append(predict([item])[0])
                    errors.append(None)
                except RadarError as one:
                    predictions.append(None)
                    errors.append(first_line(one))
            if len(chunk) == 1:
                predictions, errors = [None], [first_line(exc)]
        seconds = (time.perf_counter() - began) / max(1, len(chunk))
        for offset, (item, prediction, error) in enumerate(zip(chunk, predictions, errors)):
            yield StreamedPrediction(start + offset, item, prediction, seconds, error)
