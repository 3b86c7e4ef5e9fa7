"""Which normal images each part of a model is fitted on: the seeded
three-way split into training, calibration and conformal images
(:func:`three_way_split`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import RadarConfig
from .decision import MIN_CALIBRATION_IMAGES
from .errors import DataError


class ImageSplit(NamedTuple):
    """Indices of the normal images each part of a model is fitted on."""

    train: list[int]  # the diffusion network
    calibration: list[int]  # the response statistics, the one-class model, the pixel threshold
    conformal: list[int]  # nothing: only scored, for the p-values


def three_way_split(n_images: int, config: RadarConfig, network_trained: bool = False) -> ImageSplit:
    """The seeded three-way split of the normal images (``TrainConfig``):
    the conformal share is held out from everything, a calibration share of
    the rest from diffusion training, so the one-class model and the pixel
    threshold see maps of images the network never fitted, and the p-values
    scores of images nothing fitted. With ``calibrate_on_training``
    calibration and training share the non-conformal images (the paper's
    protocol). ``network_trained``: the images only calibrate (no training
    share; the conformal share is ``conformal_fraction``'s, as
    ``conformal_size`` counts training images).

    A ``conformal_fraction`` share shrinks to what small folders allow (the
    false-alarm warning then says what is missing); an explicit
    ``conformal_size`` that does not fit is an error."""
    train_config = config.train
    shares_training = train_config.calibrate_on_training or network_trained
    needed = MIN_CALIBRATION_IMAGES + (0 if shares_training else 1)
    if n_images < needed:
        raise DataError(f"need at least {needed} normal images, got {n_images}")
    n_calib = max(MIN_CALIBRATION_IMAGES, round(train_config.calibration_fraction * n_images))
    if network_trained:
        n_calib = n_images  # all but the conformal images below
    room = n_images - (MIN_CALIBRATION_IMAGES if shares_training else n_calib + 1)
    if train_config.conformal_size is not None and not network_trained:
        n_conformal = train_config.conformal_size
        if n_conformal > room:
            raise DataError(f"{n_images} normal images are too few to hold out train.conformal_size = "
                            f"{n_conformal} conformal images (at most {max(0, room)} here); add images or "
                            "lower it", setting="train.conformal_size")
    else:
        n_conformal = max(0, min(round(train_config.conformal_fraction * n_images), room))
    if not shares_training and n_calib + n_conformal >= n_images:
        raise DataError(f"{n_images} normal images are too few to hold out {n_calib} for "
                        "calibration; add images or set train.calibrate_on_training")
    order = np.random.default_rng(config.seed).permutation(n_images)
    conformal, rest = sorted(order[:n_conformal].tolist()), order[n_conformal:]
    if shares_training:
        everything = sorted(rest.tolist())
        return ImageSplit([] if network_trained else everything, everything, conformal)
    return ImageSplit(sorted(rest[n_calib:].tolist()), sorted(rest[:n_calib].tolist()), conformal)
