"""One network for every pyramid level, or one small network per level?

    python benchmarks/level_networks.py DATASET MODEL_DIR [--out level_networks.json]

``MODEL_DIR`` is a model trained on ``DATASET`` (``radar train``): one
U-Net that sees patches of every level with the level as its class label.
This script trains the alternative on the same training images, seed and
settings: one network per level, each on its own level's patches only, with
the same total number of training steps (``train.steps`` divided among
them), then runs every candidate of the default (response x levels x image
score) on both, on VALIDATION images only (``radar benchmark``'s split, as
``benchmarks/probes.py``), and prints image AUROC, pixel AUROC and AUPRO
side by side, with the training seconds of each. Writes JSON.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from radar_ad import Radar
from radar_ad.backend import BackendOutput, NoiseBackend, TorchBackend
from radar_ad.bench.candidates import (
    candidate_options,
    load_splits,
    metrics,
    num,
    probe_parser,
    score_sets,
    write_result,
)
from radar_ad.data import as_image_array, training_images
from radar_ad.network import build_scheduler, build_unet
from radar_ad.patches import PyramidSampler
from radar_ad.splits import three_way_split
from radar_ad.training import train_unet


class PerLevelBackend(NoiseBackend):
    """Level k's patches go to network k (each knows one level: its class label 0)."""

    name = "per_level"

    def __init__(self, networks: list[TorchBackend]) -> None:
        self.networks = networks
        self.device = networks[0].device

    def predict(self, patches: torch.Tensor, index: torch.Tensor, level: torch.Tensor) -> BackendOutput:
        noise = torch.empty_like(patches)
        repair = torch.empty_like(patches)
        for k, network in enumerate(self.networks):
            mine = level == k
            if mine.any():
                output = network.predict(patches[mine], index[mine], torch.zeros_like(index[mine]))
                noise[mine], repair[mine] = output.noise, output.repair
        return BackendOutput(noise, repair)


def main(argv: list[str] | None = None) -> int:
    parser = probe_parser(__doc__, "level_networks.json", validation_fraction=False)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    shared = Radar.load(args.model)
    config = shared.config
    files = training_images(args.dataset)
    split = three_way_split(len(files), config)
    train = [torch.from_numpy(as_image_array(files[i], config.data, config.patch_size)) for i in split.train]
    networks, seconds = [], []
    for scale in config.network.scales:
        level_config = config.updated({"network.scales": [scale], "inference.scales": [scale],
                                       "train.steps": max(1, config.train.steps // len(config.network.scales))})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet = build_unet(level_config.network, shared.channels_, config.patch_size)
        result = train_unet(unet, build_scheduler(level_config.network),
                            PyramidSampler(train, config.patch_size, (scale,)), level_config, torch.device("cpu"),
                            progress=True)
        networks.append(TorchBackend(unet, level_config, shared.channels_))
        seconds.append(result.seconds)
    per_level = Radar(config)._learned(None, PerLevelBackend(networks), shared.channels_, {}, None, "the network")
    splits = load_splits(shared, args.dataset)
    rows: list[dict[str, Any]] = []
    for name, model in (("one network, level as class label", shared), ("one network per level", per_level)):
        candidate_config, options = candidate_options(model)
        (scored,) = score_sets(model, candidate_config, options, splits.calibration, [splits.validation])
        for option in options:
            rows.append({"networks": name, **option.settings(),
                         **metrics(splits.validation, scored.scores[option],
                                   scored.maps[(option.response, option.scales)])})
    print(f"{'networks':>34} {'response':>13} {'scales':>7} {'image score':>11} | image AUROC  pixel AUROC  AUPRO")
    for row in rows:
        print(f"{row['networks']:>34} {row['inference.response']:>13} {'/'.join(map(str, row['inference.scales'])):>7} "
              f"{row['inference.image_score']:>11} | {num(row['image_auroc']):>11}  {num(row['pixel_auroc']):>11}  "
              f"{num(row['aupro']):>5}")
    print(f"training seconds: one network {shared.training_.get('seconds')}; per level {[round(s) for s in seconds]}")
    result = {"command": " ".join(sys.argv), "rows": rows, "training_seconds": {
        "shared": shared.training_.get("seconds"), "per_level": seconds}, "seconds": round(time.perf_counter() - began)}
    write_result(args.out, result)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
