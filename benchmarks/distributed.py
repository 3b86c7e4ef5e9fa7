"""Training throughput on 1 and N processes (data-parallel through
Accelerate), with the global batch fixed.

    python benchmarks/distributed.py [DATA] [--processes 1,2] [--steps 60] [--batch-size 16]
                                     [--size 128] [--set KEY=JSON ...] [--json distributed.json]

DATA is a folder of normal images or an MVTec category (default: generated
surfaces at --size px). Each run is the real command in a fresh process:
``python -m radar_ad train`` for one process, ``accelerate launch
--multi_gpu --num_processes N -m radar_ad train`` for N (gloo on CPUs, NCCL
on GPUs), the same config, seed and global batch, so every run trains on the
same number of samples. The table gives patches/s of the training loop
(as the run reports it), the loss after those samples, the run's wall time
(imports, data loading and rank 0's calibration included) and how long
rank 0 calibrated while the others waited. On one CPU machine N processes
share the same cores (each runs one thread; the single process runs all of
them), so this measures the parallel efficiency of the data-parallel path
and its communication cost, not a cluster's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from radar_ad import RadarConfig
from radar_ad.backend import available_cores
from radar_ad.synthetic import SyntheticSpec, make_dataset


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def train_command(processes: int, data: Path, out: Path, config: Path) -> list[str]:
    radar = ["-m", "radar_ad", "train", str(data), "--out", str(out), "--config", str(config), "-q"]
    if processes == 1:
        return [sys.executable, *radar]
    launcher = shutil.which("accelerate")
    if launcher is None:
        raise SystemExit("accelerate is not installed: pip install 'radar-ad[distributed]'")
    return [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", *radar]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", type=Path, help="normal images (default: generated surfaces)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16, help="the global batch")
    parser.add_argument("--size", type=int, default=128, help="generated image size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="any other setting")
    parser.add_argument("--json", type=Path, default=Path("distributed.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="radar-distributed-") as scratch:
        work = Path(scratch)
        data = args.data or make_dataset(work / "surfaces", SyntheticSpec(size=args.size, n_train=40,
                                                                          n_test_good=2, n_test_per_defect=1))
        overrides = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.set)}
        config = RadarConfig().updated({"data.resize": args.size, "train.steps": args.steps,
                                        "train.batch_size": args.batch_size,
                                        "train.checkpoint_every": args.steps, **overrides})
        config_file = work / "config.json"
        config_file.write_text(config.to_json())
        rows = []
        for processes in [int(p) for p in args.processes.split(",") if p]:
            out = work / f"model-{processes}"
            began = time.perf_counter()
            run = subprocess.run(train_command(processes, data, out, config_file), capture_output=True, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
            wall = time.perf_counter() - began
            if run.returncode != 0:
                print(run.stderr[-2000:], file=sys.stderr)
                return run.returncode
            info = json.loads((out / "radar.json").read_text())["training"]
            rows.append({"processes": processes, "global_batch": args.batch_size,
                         "per_process_batch": args.batch_size // processes, "steps": info["steps"],
                         "samples": info["steps"] * args.batch_size,
                         "patches_per_second": info["patches_per_second"], "training_seconds": info["seconds"],
                         "final_loss": info["final_loss"], "wall_seconds": round(wall, 1),
                         "calibration_seconds": info.get("calibration_seconds")})
    base = rows[0]["patches_per_second"]
    print("| processes | global batch | per process | samples | patches/s | vs first | loss after | "
          "training s | calibration s (rank 0) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['global_batch']} | {r['per_process_batch']} | {r['samples']} | "
              f"{r['patches_per_second']:.1f} | {r['patches_per_second'] / base:.2f}x | {r['final_loss']:.4f} | "
              f"{r['training_seconds']:.1f} | {r['calibration_seconds']} | {r['wall_seconds']:.1f} |")
    result = {"config": overrides, "size": args.size, "rows": rows,
              "machine": {"cores": available_cores(), "platform": platform.platform(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
