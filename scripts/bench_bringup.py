#!/usr/bin/env python3
"""Bring-up benchmark: how long `ikelab run` takes until every tunnel is up.

Runs `ikelab run --json` several times for each lab size and prints, per size, the median of:
lab up (start to every daemon loaded and the switches programmed), tunnels up (initiation to
the last tunnel ESTABLISHED with its CHILD SA), their sum, and the whole command including
pings and teardown. Run as root:  .venv/bin/python scripts/bench_bringup.py [--repeat N]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    "default lab": [],
    "default lab, --mode ha": ["--mode", "ha"],
    "--members 8 --peers 16": ["--members", "8", "--peers", "16"],
    "--members 8 --peers 16 --hash split": ["--members", "8", "--peers", "16", "--hash", "split"],
}


def one_run(options: list[str]) -> dict:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--json", *options], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - start
    if not result.stdout:
        raise SystemExit(f"ikelab run {' '.join(options)} failed: {result.stderr.strip()}")
    report = json.loads(result.stdout)
    return {"ok": report["ok"], "lab_up": report["timings"]["lab_up_s"],
            "tunnels_up": report["timings"]["tunnels_up_s"], "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'lab':36} {'runs':>4} {'ok':>3} {'lab up':>8} {'tunnels':>8} {'sum':>8} "
          f"{'command':>8}")
    for label, options in SIZES.items():
        runs = [one_run(options) for _ in range(args.repeat)]
        ok = sum(r["ok"] for r in runs)
        lab_up = statistics.median(r["lab_up"] for r in runs)
        ups = [r["tunnels_up"] for r in runs if r["tunnels_up"] is not None]
        tunnels = f"{statistics.median(ups):7.2f}s" if ups else "   never"
        total = f"{lab_up + statistics.median(ups):7.2f}s" if ups else "       -"
        wall = statistics.median(r["wall"] for r in runs)
        print(f"{label:36} {len(runs):>4} {ok:>3} {lab_up:7.2f}s {tunnels:>8} {total:>8} "
              f"{wall:7.2f}s", flush=True)


if __name__ == "__main__":
    main()
