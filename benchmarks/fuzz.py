"""The long fuzz run: the properties of ``tests/test_fuzz.py`` with many more
random examples than the suite's quick run, plus the repeated-SIGKILL test
of `radar watch`, each timed.

    python benchmarks/fuzz.py [--examples 2000] [--kills 10] [--json OUT]

Prints a table (property, examples, result, seconds) and writes JSON. The
examples are random (not the suite's fixed ones), so a new run explores new
inputs; a failure prints hypothesis's smallest failing example.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = (
    "tests/test_fuzz.py::test_mutated_configs_are_accepted_within_bounds_or_refused_with_a_config_error",
    "tests/test_fuzz.py::test_arbitrary_json_is_a_config_or_a_config_error",
    "tests/test_fuzz.py::test_random_and_mutated_image_files_decode_correctly_or_are_a_data_error",
    "tests/test_fuzz.py::test_the_http_api_answers_garbage_with_a_4xx_never_a_verdict",
    "tests/test_fuzz.py::test_the_http_api_answers_mutated_images_with_a_verdict_or_a_4xx",
    "tests/test_faults.py::test_repeated_sigkill_of_watch_loses_and_duplicates_nothing",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="Random examples per property.")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of `radar watch` (the suite: 2).")
    parser.add_argument("--timeout", type=int, default=3600, help="Seconds allowed per property.")
    parser.add_argument("--json", type=Path, default=Path("fuzz.json"), help="Where to write the results.")
    args = parser.parse_args()
    if not 1 <= args.examples <= 1_000_000:
        parser.error("--examples must be in [1, 1000000]")
    if not 1 <= args.kills <= 1000:
        parser.error("--kills must be in [1, 1000]")
    env = {**os.environ, "RADAR_FUZZ_EXAMPLES": str(args.examples), "RADAR_WATCH_KILLS": str(args.kills)}
    results = []
    for test in PROPERTIES:
        began = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
            outcome = "passed" if done.returncode == 0 else "FAILED"
            tail = "" if done.returncode == 0 else done.stdout[-3000:]
        except subprocess.TimeoutExpired:
            outcome, tail = "TIMED OUT", ""
        seconds = time.perf_counter() - began
        results.append({"property": test.split("::")[1], "examples": args.examples if "fuzz" in test else args.kills,
                        "result": outcome, "seconds": round(seconds, 1)})
        print(f"{results[-1]['property'][:78]:<78} {results[-1]['examples']:>6} {outcome:>9} {seconds:7.1f} s",
              flush=True)
        if tail:
            print(tail)
    args.json.write_text(json.dumps({"python": platform.python_version(), "machine": platform.machine(),
                                     "results": results}, indent=2))
    print(f"written: {args.json}")
    return 0 if all(r["result"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
