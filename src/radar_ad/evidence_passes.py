"""Many images through the backend and the response, a pass at a time:
:data:`~radar_ad.outputs.IMAGES_PER_PASS` images a pass, the equal-size ones
among them sharing the network's batches, their results in input order.

:class:`EvidencePasses` gives the one-step evidence
(:class:`~radar_ad.noise_map.Evidence`) of lists of images; :func:`respond_in_order`
runs a response over a pass's evidence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .backend import NoiseBackend
from .config import RadarConfig
from .noise_map import Evidence, one_step_evidence
from .outputs import IMAGES_PER_PASS
from .progress import progress_bar
from .response import EvidenceResponse

# A pass: (indices into the images, their evidence) for each group of equal-size images.
Pass = list[tuple[list[int], Evidence]]


class EvidencePasses:
    """The one-step evidence of images from ``backend``, patched and batched
    as ``config`` says."""

    def __init__(self, backend: NoiseBackend, config: RadarConfig) -> None:
        self.backend = backend
        self.config = config

    def levels(self, scales: Sequence[int]) -> list[int]:
        """The network's class labels of pyramid ``scales``."""
        return [self.config.network.scales.index(scale) for scale in scales]

    def _evidence(self, images: Sequence[torch.Tensor], scales: Sequence[int]) -> Evidence:
        config = self.config
        return one_step_evidence(self.backend, images, scales, self.levels(scales), patch_size=config.patch_size,
                                 stride=config.stride, batch_size=config.inference.batch_size,
                                 device=self.backend.device)

    def chunks(self, images: list[np.ndarray], scales: Sequence[int], progress: bool = False,
               desc: str = "analysing") -> Iterator[Pass]:
        """Per pass over the images: (indices into ``images``, their
        :class:`~radar_ad.noise_map.Evidence` at ``scales``) for each group
        of equal-size images, which share batches."""
        with progress_bar(total=len(images), enabled=progress, desc=desc, unit="img") as bar:
            for start in range(0, len(images), IMAGES_PER_PASS):
                by_shape: dict[tuple[int, ...], list[int]] = {}
                for i in range(start, min(start + IMAGES_PER_PASS, len(images))):
                    by_shape.setdefault(images[i].shape, []).append(i)
                groups = []
                for indices in by_shape.values():
                    batch = [torch.from_numpy(images[i]) for i in indices]  # no stacked copy
                    groups.append((indices, self._evidence(batch, scales)))
                bar.update(sum(len(indices) for indices, _ in groups))
                yield groups

    def evidence_of(self, images: Sequence[torch.Tensor]) -> Evidence:
        """The evidence of same-size ``(C, H, W)`` images at every level of
        the network, on the CPU (for a response that learns from images it
        makes; :meth:`EvidenceResponse.learn`)."""
        return self._evidence(images, self.config.network.scales).to("cpu")

    def evidence_each(self, images: Sequence[np.ndarray], desc: str) -> list[Evidence]:
        """One :class:`Evidence` per image (every level of the network, on the CPU), in order."""
        found: dict[int, Evidence] = {}
        for groups in self.chunks(list(images), self.config.network.scales, False, desc):
            for indices, evidence in groups:
                for j, i in enumerate(indices):
                    found[i] = evidence.items([j]).to("cpu")
        return [found[i] for i in range(len(images))]

    def features(self, response: EvidenceResponse, images: list[np.ndarray], progress: bool,
                 desc: str) -> np.ndarray:
        """``(N, F)``: the response's image features of ``images``."""
        features = [feats for groups in self.chunks(images, response.scales, progress, desc)
                    for _, _, feats in respond_in_order(response, groups)]
        return np.stack(features) if features else np.zeros((0, len(response.feature_names)))


def respond_in_order(response: EvidenceResponse, groups: Pass) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(noise map of the finest level read, anomaly map, features) per
    image of a pass, in input order."""
    results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for indices, evidence in groups:
        output = response(evidence)
        for j, i in enumerate(indices):
            results[i] = (evidence.noise[0][j].cpu().numpy(), output.anomaly_map[j].cpu().numpy(),
                          output.features[j].cpu().numpy())
    return [results[i] for i in sorted(results)]
