#!/usr/bin/env python3
"""How fast the cluster simulator runs, and what it sees: events per second over many seeds
(one process per core, and one process alone), simulated seconds per wall second, the time
the cluster took to put every tunnel back on exactly one member after the last fault (median,
p95, worst), and how many seeds each planted bug needed to be caught.

    .venv/bin/python scripts/bench_sim.py [--seeds 200] [--events 1000000]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.sim.runner import run_seeds, self_test  # noqa: E402


def measure(seeds: int, events: int, jobs: int) -> tuple[list, float]:
    start = time.monotonic()
    outcomes = run_seeds(list(range(1, seeds + 1)), events // seeds, jobs=jobs)
    return outcomes, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.seeds < 1 or args.events < args.seeds:
        print("bench_sim.py: --seeds at least 1, --events at least --seeds", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    for jobs in sorted({cores, 1}, reverse=True):
        outcomes, wall = measure(args.seeds, args.events, jobs)
        events = sum(o.events for o in outcomes)
        simulated = sum(o.sim_seconds for o in outcomes)
        print(f"{jobs} process{'es' if jobs > 1 else ''}: {len(outcomes)} seeds, {events} "
              f"events in {wall:.1f} s: {events / wall:.0f} events/s, "
              f"{simulated / wall:.0f} simulated s per s; "
              f"{sum(o.failed for o in outcomes)} violations")
    recovered = sorted(o.recovered_after for o in outcomes if o.recovered_after is not None)
    if recovered:
        p95 = recovered[min(len(recovered) - 1, int(len(recovered) * 0.95))]
        print(f"tunnels whole again after the last fault: median "
              f"{statistics.median(recovered):.1f} s, p95 {p95:.1f} s, worst "
              f"{recovered[-1]:.1f} s ({len(recovered)} seeds)")
    start = time.monotonic()
    caught = self_test(say=lambda _text: None)
    print(f"self-test in {time.monotonic() - start:.1f} s: " + ", ".join(
        f"{name} by seed {o.seed} ({o.invariant})" if o else f"{name} MISSED"
        for name, o in caught.items()))
    return 0 if all(caught.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
