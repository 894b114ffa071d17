#!/usr/bin/env python3
"""Failover benchmarks: what each membership event costs LAN-to-LAN traffic, and how long the
cluster takes to be consistent again (median of REPEAT runs per scenario).

    .venv/bin/python scripts/bench_failover.py [--repeat 5] [--only NAME ...]

The scenarios are `lab.scenarios.SCENARIOS`, the same the failover tests run: owner-death,
mid-negotiation, rejoin, rehash, partition, two-deaths (each described as it runs). A fresh
lab each run; every peer whose tunnel is up pings the cluster's LAN host every 100 ms from its
LAN host. For each step: the longest LAN outage any peer saw (from the action), the time until
the cluster is consistent again (lab.probes.consistency: the expected members serve, their
tables are identical and name only serving members, every tunnel is up on exactly one of
them; counted from the end of the step's hold), and for a member that left, the time until no
other member counts it live or names it in its table (detection).

Targets: owner death costs no more than DPD detection plus one IKE negotiation;
rejoin and live rehash cost no outage.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.render import PEER_DPD_DELAY, peer_gives_up_after  # noqa: E402
from lab.scenarios import SCENARIOS, ScenarioError, staged  # noqa: E402


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def runs_of(scenario, repeat: int) -> tuple[list[list], list[str]]:
    """Each run's step results (complete runs only), and why the others failed."""
    complete, failures = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as directory:
            try:
                with staged(scenario, Path(directory)) as run:
                    results = run.run(scenario.steps)
            except ScenarioError as exc:
                failures.append(str(exc))
                continue
        if len(results) == len(scenario.steps) and results[-1].recovered:
            complete.append(results)
        else:
            failures.append(f"{results[-1].name}: {results[-1].problem}")
    return complete, failures


def step_line(index: int, results: list) -> str:
    """One step's medians over the runs (its name from the first run)."""
    line = f"  {index + 1}. {results[0].name}:"
    outage = median(r.outage_s for r in results)
    if outage is not None:
        line += f" LAN outage median {outage:.2f} s (runs " + ", ".join(
            f"{r.outage_s:.2f}" for r in results) + ");"
    line += f" consistent again after median {median(r.consistent_after_s for r in results):.2f} s"
    detected = median(r.forgotten_after_s for r in results)
    if detected is not None:
        line += f"; departure detected after median {detected:.2f} s"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    print(f"a peer gives up on a dead member after {peer_gives_up_after():.1f} s (DPD delay "
          f"{PEER_DPD_DELAY:g} s, then IKEv2's retransmissions or IKEv1's DPD timeout)")
    for name in args.only:
        scenario = SCENARIOS[name]
        complete, failures = runs_of(scenario, args.repeat)
        print(f"{name} ({scenario.description}): {len(complete)}/{args.repeat} runs recovered"
              + (f"; failures: {failures}" if failures else ""), flush=True)
        for index in range(len(scenario.steps) if complete else 0):
            print(step_line(index, [results[index] for results in complete]), flush=True)


if __name__ == "__main__":
    main()
