"""Load test of ``radar serve``: how many predictions per second one server
answers, and how latency grows when several clients share it.

    python benchmarks/load.py MODEL_DIR [--clients 4] [--requests 200] [--image PATH]
                              [--backend torch|onnx] [--max-in-flight 8] [--json OUT]
    python benchmarks/load.py --url http://127.0.0.1:8000/ --image PATH ...

Without ``--url`` it starts the server itself, in-process on a free loopback
port. ``--clients`` threads, each with its own HTTP connection, send a fixed
total of ``POST /predict`` requests of one image (``--image``: a file, or the
first image of a folder; default: a generated normal surface at the model's
size). One warm-up request is not counted. Latency is measured by the client
over successful requests; errors are counted by status (a 503 means the
request found ``--max-in-flight`` requests already admitted). Prints a
Markdown table and, with ``--json``, writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from radar_ad import Radar
from radar_ad.apps.serve import DEFAULT_MAX_IN_FLIGHT, background_server, create_app
from radar_ad.data import list_images
from radar_ad.errors import RadarError
from radar_ad.synthetic import make_surface


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", type=Path, help="model directory (omit with --url)")
    parser.add_argument("--url", help="hit a running server instead of starting one")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=200, help="total requests (default 200)")
    parser.add_argument("--image", type=Path, help="image file, or a folder (its first image)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if present)")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                        help="the in-process server's admission limit")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the results here")
    args = parser.parse_args(argv)
    if (args.model_dir is None) == (args.url is None):
        parser.error("give a MODEL_DIR or --url (one of them)")
    if args.url is not None and args.image is None:
        parser.error("--url needs --image")
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be >= 1")
    return args


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(image: Path | None, radar: Any) -> tuple[bytes, str]:
    """The upload and a description of it."""
    if image is not None:
        path = list_images(image)[0]
        return path.read_bytes(), str(path)
    size = radar.config.data.resize or 128
    return png_bytes(make_surface(np.random.default_rng(0), size)), f"synthetic normal surface, {size} px"


def run_load(url: str, data: bytes, clients: int, requests: int) -> dict[str, Any]:
    """Send ``requests`` uploads of ``data`` from ``clients`` threads; one
    warm-up request first (model and allocator warm-up is not throughput)."""
    headers = {"content-type": "image/png"}
    with httpx.Client(base_url=url, timeout=300) as http:
        warm = http.post("/predict", content=data, headers=headers)
        if warm.status_code != 200:
            raise RadarError(f"warm-up request failed: HTTP {warm.status_code} {warm.text[:200]}")

    taken = 0
    lock = threading.Lock()
    outcomes: list[tuple[str, float]] = []

    def client() -> None:
        nonlocal taken
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if taken >= requests:
                        return
                    taken += 1
                started = time.perf_counter()
                try:
                    outcome = str(http.post("/predict", content=data, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes.append((outcome, time.perf_counter() - started))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started

    latencies = np.array([s for outcome, s in outcomes if outcome == "200"]) * 1000
    errors = Counter(outcome for outcome, _ in outcomes if outcome != "200")

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 1) if latencies.size else None

    return {
        "clients": clients, "requests": requests, "ok": int(latencies.size),
        "errors": sum(errors.values()), "errors_by_status": dict(sorted(errors.items())),
        "seconds": round(seconds, 2), "throughput_rps": round(latencies.size / seconds, 2),
        "p50_ms": percentile(50), "p90_ms": percentile(90), "p99_ms": percentile(99),
    }


def markdown(result: dict[str, Any]) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in result["errors_by_status"].items())
    shown = f"{result['errors']} ({errors})" if errors else "0"
    row = [result["clients"], result["requests"], shown, f"{result['throughput_rps']:.2f}",
           *("n/a" if result[k] is None else f"{result[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms"))]
    return ("| clients | requests | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms |\n"
            "|---|---|---|---|---|---|---|\n"
            "| " + " | ".join(map(str, row)) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with ExitStack() as stack:
            radar = None
            url = args.url
            if url is None:
                radar = Radar.load(args.model_dir, device=args.device, backend=args.backend)
                app = create_app(radar, max_in_flight=args.max_in_flight)
                url = stack.enter_context(background_server(app))
            data, described = image_bytes(args.image, radar)
            result = run_load(url, data, args.clients, args.requests)
    except RadarError as exc:
        print(f"load.py: error: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"load.py: error: cannot reach {args.url or 'the server'}: {exc}", file=sys.stderr)
        return 2
    result = {**result, "url": url if args.url else "in-process", "image": described,
              "backend": args.backend if args.url is None else None,
              "max_in_flight": args.max_in_flight if args.url is None else None}
    print(f"image: {described}; server: {result['url']}"
          + (f" ({args.backend}, max in flight {args.max_in_flight})" if args.url is None else ""))
    print(markdown(result))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"json: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
