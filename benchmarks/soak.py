"""Soak test of ``radar serve --workers 2``: does it hold steady for ten minutes?

    python benchmarks/soak.py MODEL_DIR [--workers 2] [--minutes 10] [--image PATH] [--json soak.json]

Starts ``radar serve MODEL_DIR --workers N`` on a free loopback port (as
``benchmarks/load.py`` does), measures its throughput with four clients for
``--probe`` requests, then sends a steady open-loop load at half of it (one
request every ``2 / throughput`` seconds, at most ``--clients`` in flight,
so a slow answer never makes the load burst) for ``--minutes``. Per minute it
reports the resident memory of all server processes together (the
supervisor and its workers, read from ``/proc``), p50 and p99 latency, the
requests sent and the errors. The check: minute ``--minutes`` against minute
2 (minute 1 includes the warm-up): RSS within 10 %, p99 latency within 25 %,
no errors. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from load import cli_server, image_bytes, run_load

from radar_ad import Radar


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (from ``/proc/*/stat``'s parent ids)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def steady_load(url: str, data: bytes, rate: float, seconds: float, clients: int,
                server_pid: int) -> list[dict[str, Any]]:
    """Requests at ``rate`` per second for ``seconds``; one row per minute."""
    interval = 1.0 / rate
    slots = threading.Semaphore(clients)
    lock = threading.Lock()
    outcomes: list[tuple[float, str, float]] = []  # (sent at, outcome, seconds)
    began = time.monotonic()
    rss: dict[int, int] = {}
    local = threading.local()

    def send(at: float) -> None:
        try:
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=url, timeout=120)
            started = time.perf_counter()
            try:
                outcome = str(local.http.post("/predict", content=data,
                                              headers={"content-type": "image/png"}).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes.append((at, outcome, time.perf_counter() - started))
        finally:
            slots.release()

    workers: list[threading.Thread] = []
    k = 0
    while True:
        at = k * interval
        if at >= seconds:
            break
        time.sleep(max(0.0, began + at - time.monotonic()))
        minute = int((time.monotonic() - began) // 60)
        if minute not in rss:
            rss[minute] = rss_bytes(process_tree(server_pid))
        if not slots.acquire(timeout=120):
            with lock:
                outcomes.append((at, "client-limit", 0.0))
            k += 1
            continue
        thread = threading.Thread(target=send, args=(at,), daemon=True)
        thread.start()
        workers.append(thread)
        workers = [w for w in workers if w.is_alive()]
        k += 1
    for thread in workers:
        thread.join(120)
    minutes = int(np.ceil(seconds / 60))
    rss[minutes] = rss_bytes(process_tree(server_pid))
    rows = []
    for minute in range(minutes):
        mine = [(outcome, s) for at, outcome, s in outcomes if minute * 60 <= at < (minute + 1) * 60]
        latencies = np.array([s for outcome, s in mine if outcome == "200"]) * 1000
        errors = Counter(outcome for outcome, _ in mine if outcome != "200")
        rows.append({"minute": minute + 1, "requests": len(mine), "errors": sum(errors.values()),
                     "errors_by_kind": dict(errors), "rss_mib": round(rss.get(minute + 1, rss[minutes]) / 2**20, 1),
                     "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
                     "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None})
    return rows


def server_pid(url: str) -> int:
    """The supervisor's pid: the parent of a worker that answers ``/ready``."""
    worker = int(httpx.get(url + "ready", timeout=30).json()["worker"])
    with open(f"/proc/{worker}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--probe", type=int, default=60, help="requests of the throughput measurement")
    parser.add_argument("--clients", type=int, default=8, help="most requests in flight during the soak")
    parser.add_argument("--image", type=Path, help="image file or folder (default: a generated normal surface)")
    parser.add_argument("--json", type=Path, dest="json_out", default=Path("soak.json"))
    args = parser.parse_args()
    resize = Radar.load(args.model_dir, device="cpu").config.data.resize
    data, described = image_bytes(args.image, resize)
    with cli_server(args.model_dir, args.workers, "torch", None, 8) as url:
        probe = run_load(url, data, clients=4, requests=args.probe)
        rate = probe["throughput_rps"] / 2
        print(f"radar serve --workers {args.workers}: {probe['throughput_rps']:.2f} req/s with 4 clients; "
              f"soak at {rate:.2f} req/s for {args.minutes} min ({described})", flush=True)
        rows = steady_load(url, data, rate, args.minutes * 60, args.clients, server_pid(url))
    print("| minute | requests | errors | RSS (MiB, all server processes) | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['minute']} | {row['requests']} | {row['errors']} | {row['rss_mib']} | {row['p50_ms']} | "
              f"{row['p99_ms']} |")
    second, last = rows[min(1, len(rows) - 1)], rows[-1]
    checks = {
        "rss_within_10_percent": abs(last["rss_mib"] - second["rss_mib"]) <= 0.10 * second["rss_mib"],
        "p99_within_25_percent": (last["p99_ms"] is not None and second["p99_ms"] is not None
                                  and abs(last["p99_ms"] - second["p99_ms"]) <= 0.25 * second["p99_ms"]),
        "no_errors": all(row["errors"] == 0 for row in rows),
    }
    print(f"minute {last['minute']} against minute {second['minute']}: RSS {last['rss_mib']} / {second['rss_mib']} "
          f"MiB, p99 {last['p99_ms']} / {second['p99_ms']} ms; "
          + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in checks.items()))
    args.json_out.write_text(json.dumps({"command": "python benchmarks/soak.py " + str(args.model_dir),
                                         "workers": args.workers, "probe": probe, "rate_rps": rate,
                                         "image": described, "minutes": rows, "checks": checks}, indent=2))
    print(f"written {args.json_out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
