"""Issue 10's search: kinds of single-step evidence, measured on VALIDATION only.

    python benchmarks/evidence_search.py DATASET MODEL_DIR --out evidence.json \\
        --directions responses,knn,selfsim,head [--response segmentation --set k=v ...]

``MODEL_DIR`` is a model trained on ``DATASET`` (``radar benchmark``'s cache
holds one per dataset: 256 px, 1000 steps). The validation split is the one
``radar benchmark`` sets aside (a seeded 20 % of each defect type) plus a
seeded half of the model's conformal images (normal, never fitted on); the
test split is never read. Every direction scores the same images and prints
image AUROC, pixel AUROC and AUPRO (pixels at the model's input size) with
the time per image; rows are added to the JSON file ``--out``.

Directions:

- ``responses``: each ``--response`` (registered responses; default: the
  model's own) recalibrated with ``--set`` overrides on the model's
  calibration images (:meth:`Radar.refit_calibration`, conformal images as in
  training), then :meth:`Radar.predict_many`: the real method.
- ``knn``: multi-scale score evidence: per 4 px cell, log local noise energy
  (3 and 9 px windows) and log Sobel response of the noise map at each
  timestep of ``--timesteps`` (t = 0 alone, and 0,50,200: one network
  evaluation per timestep), standardised, nearest-neighbour distance to a
  bank of 40k cells of 60 calibration images (chunked ``torch.cdist``); map
  = distance, smoothed; image score = its maximum.
- ``selfsim``: the same descriptors standardised by each image's own median
  and MAD before the bank (within-image evidence: a tile's finish and
  lighting cancel).
- ``head``: a head trained on synthetic defects (:mod:`radar_ad.defects`)
  pasted into crops of the network's training images, on the inputs of
  ``--head-inputs``: ``image`` (the image's high-pass: no diffusion at all,
  the DRAEM-like control), ``t0`` (the one-step noise map), or both; image
  score = the smoothed map's maximum.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from radar_ad.bench.splits import validation_split
from radar_ad.data import as_image_array, evaluation_images, load_mask, training_images
from radar_ad.defects import VISIBLE, paste_into
from radar_ad.filters import blur_sobel_map, gaussian_smooth, local_energy
from radar_ad.metrics import pixel_metrics
from radar_ad.network import build_scheduler
from radar_ad.noise_map import noise_map, one_step_noise
from radar_ad.pipeline import Radar
from radar_ad.responses.segmentation import NORMAL_SHARE, SegmentationHead, train_head
from radar_ad.splits import three_way_split

CELL = 4
BANK = 40_000
FIT_IMAGES = 60


def synthetic_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator,
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``n`` random ``size`` x ``size`` crops of the ``(C, H, W)`` images, all
    but a ``NORMAL_SHARE`` of them with a generic synthetic defect
    (:func:`radar_ad.defects.paste_into`, as the segmentation response draws
    them): ``(crops, masks (n, 1, size, size) float)``."""
    crops, masks = [], []
    for _ in range(n):
        image = images[int(rng.integers(len(images)))]
        top = int(rng.integers(0, image.shape[1] - size + 1))
        left = int(rng.integers(0, image.shape[2] - size + 1))
        crop = image[:, top:top + size, left:left + size]
        mask = np.zeros((size, size), bool)
        if rng.random() >= NORMAL_SHARE:
            crop, mask = paste_into(crop, images[int(rng.integers(len(images)))], rng, visible=VISIBLE)
        crops.append(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)))
        masks.append(torch.from_numpy(mask))
    return crops, torch.stack(masks)[:, None].float()


class Search:
    def __init__(self, dataset: Path, model_dir: Path, out: Path) -> None:
        self.radar = Radar.load(model_dir)
        self.model_dir, self.out = model_dir, out
        config = self.config = self.radar.config
        rng = np.random.default_rng(config.seed)
        items = evaluation_images(dataset)
        self.defective, _ = validation_split(items, 0.2, config.seed)
        normal_files = training_images(dataset)
        split = three_way_split(len(normal_files), config)
        conformal = [normal_files[i] for i in split.conformal]
        half = sorted(rng.permutation(len(conformal))[: len(conformal) // 2].tolist())
        self.normal = [conformal[i] for i in half]
        self.conformal = conformal
        self.calibration = [normal_files[i] for i in split.calibration]
        self.train = [normal_files[i] for i in split.train]
        self.images = [self.load(p) for p in self.normal] + [self.load(item.path) for item in self.defective]
        self.labels = np.array([0] * len(self.normal) + [1] * len(self.defective))
        self.masks = [np.zeros(image.shape[1:], bool) for image in self.images[: len(self.normal)]] + [
            load_mask(item.mask_path, self.images[len(self.normal) + j].shape[1:])
            for j, item in enumerate(self.defective)]
        self.results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
        self.scheduler = build_scheduler(config.network)
        self.predictors: dict[int, torch.nn.Module] = {}
        print(f"{dataset.name}: validation {len(self.normal)} normal + {len(self.defective)} defective images; "
              f"{len(self.calibration)} calibration, {len(self.train)} network-training images", flush=True)

    def load(self, path: Path, config: Any = None) -> np.ndarray:
        config = config or self.config
        return as_image_array(path, config.data, config.patch_size)

    def report(self, name: str, scores: list[float], maps: list[np.ndarray], seconds: float,
               **extra: Any) -> None:
        scores_array = np.asarray(scores, dtype=float)
        masks = self.masks
        if any(m.shape != mask.shape for m, mask in zip(maps, masks)):  # another input size: masks resized to it
            masks = [np.zeros(m.shape, bool) for m in maps[: len(self.normal)]] + [
                load_mask(item.mask_path, m.shape) for item, m in zip(self.defective, maps[len(self.normal):])]
        pixels = pixel_metrics(masks, maps, max_pixels=2_000_000)
        per_type = {}
        for label in sorted({item.label for item in self.defective}):
            keep = np.array([True] * len(self.normal) + [item.label == label for item in self.defective])
            per_type[label] = float(roc_auc_score(self.labels[keep], scores_array[keep]))
        row = {"image_auroc": float(roc_auc_score(self.labels, scores_array)), "pixel_auroc": pixels["pixel_auroc"],
               "aupro": pixels["aupro"], "seconds_per_image": seconds, "per_type_image_auroc": per_type, **extra}
        self.results[name] = row
        self.out.write_text(json.dumps(self.results, indent=1))
        print(f"| {name} | {row['image_auroc']:.3f} | {row['pixel_auroc']:.3f} | {row['aupro']:.3f} | "
              f"{seconds * 1000:.0f} | " + ", ".join(f"{k} {v:.2f}" for k, v in per_type.items()) + " |", flush=True)

    # ------------------------------------------------------------ responses
    def responses(self, names: list[str], settings: dict[str, Any]) -> None:
        for name in names:
            changes = {"inference.response": name, **settings}
            config = self.config.updated(changes)
            began = time.perf_counter()
            twin = self.radar.with_settings(changes)
            twin = twin.refit_calibration([self.load(p, config).transpose(1, 2, 0) for p in self.calibration],
                                          conformal=[self.load(p, config).transpose(1, 2, 0) for p in self.conformal])
            calibration_seconds = time.perf_counter() - began
            images = self.images if config.data == self.config.data else [
                self.load(p, config) for p in self.normal] + [self.load(item.path, config) for item in self.defective]
            began = time.perf_counter()
            predictions = twin.predict_many([image.transpose(1, 2, 0) for image in images])
            seconds = (time.perf_counter() - began) / len(images)
            label = name + "".join(f", {k}={v}" for k, v in settings.items())
            self.report(label, [p.score for p in predictions], [p.anomaly_map for p in predictions], seconds,
                        calibration_seconds=calibration_seconds)

    # ------------------------------------------------------------ noise maps
    def predictor(self, timestep: int) -> torch.nn.Module:
        if timestep not in self.predictors:
            unet = self.radar.unet.eval()
            self.predictors[timestep] = one_step_noise(
                unet, timestep=timestep, alphas_cumprod=self.scheduler.alphas_cumprod, seed=self.config.seed,
                draws=1, channels=self.radar.channels_, patch_size=self.config.patch_size)
        return self.predictors[timestep]

    def noise(self, images: list[torch.Tensor], timestep: int) -> torch.Tensor:
        """The predicted noise of the finest pyramid level (level 0: the image as it is)."""
        predict = self.predictor(timestep)
        with torch.inference_mode():
            return noise_map(lambda p, i: predict(p, i, torch.zeros_like(i))[0], images,
                             patch_size=self.config.patch_size, stride=self.config.stride, batch_size=256)

    def descriptors(self, image: np.ndarray, timesteps: list[int]) -> torch.Tensor:
        """``(D, h, w)`` per-cell descriptors of the noise maps at ``timesteps``."""
        parts = []
        for t in timesteps:
            n = self.noise([torch.from_numpy(image)], t).double()
            parts += [local_energy(n, 3)[:, None], local_energy(n, 9)[:, None],
                      torch.log(blur_sobel_map(n)[:, None] + 1e-6)]
        return F.avg_pool2d(torch.cat(parts, 1), CELL, ceil_mode=True)[0]

    @staticmethod
    def within(d: torch.Tensor) -> torch.Tensor:
        flat = d.flatten(1)
        median = flat.median(1).values
        mad = (flat - median[:, None]).abs().median(1).values * 1.4826 + 1e-6
        return (d - median[:, None, None]) / mad[:, None, None]

    def knn(self, timesteps: list[int], selfsim: bool) -> None:
        began = time.perf_counter()
        fit = [self.descriptors(self.load(p), timesteps) for p in self.calibration[:FIT_IMAGES]]
        if selfsim:
            fit = [self.within(d) for d in fit]
        bank = torch.cat([d.flatten(1).T for d in fit])
        mean, std = bank.mean(0), bank.std(0) + 1e-9
        bank = (bank - mean) / std
        if len(bank) > BANK:
            bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(self.config.seed))[:BANK]]
        fit_seconds = time.perf_counter() - began
        began = time.perf_counter()
        scores, maps = [], []
        for image in self.images:
            d = self.descriptors(image, timesteps)
            if selfsim:
                d = self.within(d)
            query = (d.flatten(1).T - mean) / std
            distance = torch.cat([torch.cdist(chunk, bank).min(1).values for chunk in query.split(4096)])
            m = F.interpolate(distance.reshape(d.shape[1:])[None, None], size=image.shape[1:], mode="bilinear",
                              align_corners=False)
            m = gaussian_smooth(m, 4)[0, 0]
            maps.append(m.float().numpy())
            scores.append(float(m.max()))
        seconds = (time.perf_counter() - began) / len(self.images)
        name = (f"{'within-image standardised ' if selfsim else ''}noise descriptors "
                f"t={','.join(map(str, timesteps))}, nearest neighbour")
        self.report(name, scores, maps, seconds, fit_seconds=fit_seconds)

    # ------------------------------------------------------------ heads
    def head(self, inputs: list[str], examples: int, steps: int) -> None:
        config = self.config
        size = 3 * config.patch_size
        normal = [image for image in (self.load(p) for p in self.train) if min(image.shape[1:]) >= size]
        crops, target = synthetic_crops(normal, examples, size, np.random.default_rng([config.seed, 104_729]))
        began = time.perf_counter()
        features = torch.cat([self.channel(crops, name) for name in inputs], 1)
        feature_seconds = time.perf_counter() - began
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            head = SegmentationHead(features.shape[1], 16)
        trained = train_head(head, features, target, steps, config.seed)
        train_seconds = time.perf_counter() - began
        began = time.perf_counter()
        scores, maps = [], []
        with torch.inference_mode():
            for image in self.images:
                x = torch.cat([self.channel([torch.from_numpy(image)], name) for name in inputs], 1)
                m = gaussian_smooth(torch.sigmoid(trained(x)).double(), 2)
                maps.append(m[0, 0].float().numpy())
                scores.append(float(m.max()))
        seconds = (time.perf_counter() - began) / len(self.images)
        self.report(f"synthetic-defect head on [{', '.join(inputs)}]", scores, maps, seconds,
                    feature_seconds=feature_seconds, train_seconds=train_seconds, examples=examples, steps=steps)

    def channel(self, images: list[torch.Tensor], name: str) -> torch.Tensor:
        if name == "image":
            batch = torch.stack(images)
            return (batch - gaussian_smooth(batch.double(), 8).float()) * 10
        if not name.startswith("t"):
            raise SystemExit(f"--head-inputs: image or tN (a timestep), got {name!r}")
        return torch.cat([self.noise(images[i:i + 64], int(name[1:])) for i in range(0, len(images), 64)]).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--directions", default="responses,knn,selfsim,head")
    parser.add_argument("--response", action="append", help="a registered response (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="setting for --response rows")
    parser.add_argument("--timesteps", default="0;0,50,200", help="';'-separated timestep lists for knn/selfsim")
    parser.add_argument("--head-inputs", default="image;t0;image,t0", help="';'-separated input lists for head")
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    search = Search(args.dataset, args.model_dir, args.out)
    print("| evidence | image AUROC | pixel AUROC | AUPRO | ms / image | image AUROC per defect type |")
    print("|---|---|---|---|---|---|")
    directions = args.directions.split(",")
    if "responses" in directions:
        settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        search.responses(args.response or [search.config.inference.response], settings)
    lists = [[int(t) for t in group.split(",")] for group in args.timesteps.split(";")]
    for selfsim in (False, True):
        if ("selfsim" if selfsim else "knn") in directions:
            for timesteps in lists:
                search.knn(timesteps, selfsim)
    if "head" in directions:
        for inputs in args.head_inputs.split(";"):
            search.head(inputs.split(","), args.examples, args.steps)


if __name__ == "__main__":
    main()
