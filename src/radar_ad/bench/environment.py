"""Where a benchmark's numbers were measured: the machine, the library
versions and the process's peak memory."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB."""
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers were measured."""
    import sklearn

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {
        "cpu_count": os.cpu_count(), "cpus_available": available, "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "numpy": np.__version__, "scikit_learn": sklearn.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "radar_ad": __version__, "device": str(device),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
    return env

