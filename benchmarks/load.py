"""Load test of ``radar serve``: how many predictions per second one server
answers, and how latency grows when several clients share it.

    python benchmarks/load.py MODEL_DIR [--clients 4] [--requests 200] [--image PATH]
                              [--backend torch|onnx] [--max-in-flight 8] [--workers N] [--json OUT]
    python benchmarks/load.py --url http://127.0.0.1:8000/ --image PATH ...

Without ``--url`` it starts the server itself on a free loopback port:
in-process, or with ``--workers N`` as a ``radar serve MODEL_DIR --workers N``
subprocess, measured once all N workers answer ``GET /ready`` and stopped
with Ctrl-C (SIGINT) after (``--max-in-flight`` is then per worker).
``--clients`` threads, each with its own HTTP connection, send a fixed
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
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from radar_ad import Radar
from radar_ad.apps.serve import DEFAULT_MAX_IN_FLIGHT, MAX_WORKERS_BOUND, background_server, create_app
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
                        help="the started server's admission limit (per worker)")
    parser.add_argument("--workers", type=int, help="start `radar serve --workers N` as a subprocess instead of "
                        "the in-process server")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the results here")
    args = parser.parse_args(argv)
    if (args.model_dir is None) == (args.url is None):
        parser.error("give a MODEL_DIR or --url (one of them)")
    if args.url is not None and args.image is None:
        parser.error("--url needs --image")
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be >= 1")
    if args.workers is not None and (args.url is not None or not 1 <= args.workers <= MAX_WORKERS_BOUND):
        parser.error(f"--workers needs a MODEL_DIR (not --url) and must be from 1 to {MAX_WORKERS_BOUND}")
    return args


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(image: Path | None, resize: int | None) -> tuple[bytes, str]:
    """The upload and a description of it (without ``image``: a generated
    normal surface at the model's ``resize``)."""
    if image is not None:
        path = list_images(image)[0]
        return path.read_bytes(), str(path)
    size = resize or 128
    return png_bytes(make_surface(np.random.default_rng(0), size)), f"synthetic normal surface, {size} px"


@contextmanager
def cli_server(model_dir: Path, workers: int, backend: str, device: str | None, max_in_flight: int,
               timeout: float = 300) -> Iterator[str]:
    """``radar serve MODEL_DIR --workers N`` on a free loopback port: its URL
    once every worker answers ``GET /ready``; stopped with SIGINT after."""
    args = [sys.executable, "-m", "radar_ad", "serve", str(model_dir), "--host", "127.0.0.1", "--port", "0",
            "--workers", str(workers), "--backend", backend, "--max-in-flight", str(max_in_flight)]
    process = subprocess.Popen(args + (["--device", device] if device else []), stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "serving MODEL at URL (...)", or nothing when it fails (its stderr says why)
        if " at http" not in line:
            raise RadarError(f"radar serve did not start (exit code {process.wait(timeout)})")
        url = line.split(" at ")[1].split()[0]
        ready: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ready) < workers:  # a new connection each time: the kernel hands each to one worker
            if time.monotonic() > deadline or process.poll() is not None:
                raise RadarError(f"{workers - len(ready)} of {workers} workers not ready within {timeout:g} s")
            response = httpx.get(url + "ready", timeout=30)
            if response.status_code == 200:
                ready.add(response.json()["worker"])
            else:
                time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


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
    """One table row (with a workers column when the server had workers)."""
    errors = ", ".join(f"{k}: {v}" for k, v in result["errors_by_status"].items())
    shown = f"{result['errors']} ({errors})" if errors else "0"
    row = [result["clients"], result["requests"], shown, f"{result['throughput_rps']:.2f}",
           *("n/a" if result[k] is None else f"{result[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms"))]
    head = ["clients", "requests", "errors", "throughput (req/s)", "p50 ms", "p90 ms", "p99 ms"]
    if result.get("workers") is not None:
        head, row = ["workers", *head], [result["workers"], *row]
    return ("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|\n"
            "| " + " | ".join(map(str, row)) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with ExitStack() as stack:
            url = args.url
            resize = None
            if args.workers is not None:
                url = stack.enter_context(cli_server(args.model_dir, args.workers, args.backend, args.device,
                                                     args.max_in_flight))
                resize = httpx.get(url + "model", timeout=30).json()["resize"]
            elif url is None:
                radar = Radar.load(args.model_dir, device=args.device, backend=args.backend)
                app = create_app(radar, max_in_flight=args.max_in_flight)
                url = stack.enter_context(background_server(app))
                resize = radar.config.data.resize
            data, described = image_bytes(args.image, resize)
            result = run_load(url, data, args.clients, args.requests)
    except RadarError as exc:
        print(f"load.py: error: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"load.py: error: cannot reach {args.url or 'the server'}: {exc}", file=sys.stderr)
        return 2
    server = (args.url if args.url else "in-process" if args.workers is None
              else f"radar serve --workers {args.workers}")
    result = {**result, "url": server, "workers": args.workers, "image": described,
              "backend": args.backend if args.url is None else None,
              "max_in_flight": args.max_in_flight if args.url is None else None}
    per_worker = " per worker" if args.workers is not None else ""
    print(f"image: {described}; server: {server}"
          + (f" ({args.backend}, max in flight {args.max_in_flight}{per_worker})" if args.url is None else ""))
    print(markdown(result))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"json: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
