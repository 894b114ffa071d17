#!/usr/bin/env python3
"""Failover benchmarks: what each membership event costs LAN-to-LAN traffic, and how long the
cluster takes to be consistent again (median and 95th percentile of REPEAT runs per scenario).

    .venv/bin/python scripts/bench_failover.py [--repeat 10] [--only NAME ...] [--busy SECONDS]
                                               [--plots DIR] [--ip 4|6|dual]

The scenarios are `lab.run.scenarios.SCENARIOS`, the same the failover and takeover tests run:
owner-death (3 members), owner-death-5, mid-negotiation, rejoin, rehash, partition,
two-deaths, drain, rebalance (each described as it runs). A fresh lab each run; every peer
whose tunnel is up pings the cluster's LAN host every 100 ms from its LAN host. For each step:
the longest LAN outage any peer saw (from the action), the pings never answered, the takeover
time (until the tunnels of a member that left or drained are held by others), the time until
the cluster is consistent again (lab.run.probes.consistency: the expected members serve, their
tables are identical and name only serving members, every tunnel is up on exactly one of
them; counted from the end of the step's hold), and for a member that left, the time until no
other member counts it live or names it in its table (detection).

Pictures, in DIR (the current directory): `failover-<scenario>.png`, the first run's ping
replies per peer LAN with each step marked, and `failover-outages.png`, every step's LAN
outages over the runs.

`--busy SECONDS` instead runs a default lab under four iperf3 transfers and a 1000/s IKE flood
for that long (lab.run.probes.under_load) and prints how often a member was counted dead: it must
be never.

Targets: owner death costs under 1 s of LAN traffic; drains, rejoins and rebalancing lose no
ping; no member is counted dead while it lives.
"""

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.show.plots import draw_boxes  # noqa: E402
from lab.run.probes import under_load  # noqa: E402
from lab.strongswan.render import PEER_DPD_DELAY, peer_gives_up_after  # noqa: E402
from lab.run.scenarios import SCENARIOS, Scenario, ScenarioError, staged  # noqa: E402
from lab.plan.topology import LabSpec  # noqa: E402


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def p95(values) -> float | None:
    """The 95th percentile (nearest rank): with 10 runs, the second worst."""
    values = sorted(v for v in values if v is not None)
    return values[max(0, -(-len(values) * 95 // 100) - 1)] if values else None


def spread(values, unit: str = "s") -> str:
    values = [v for v in values if v is not None]
    return f"median {median(values):.2f} {unit}, p95 {p95(values):.2f} {unit}"


def runs_of(scenario, repeat: int, plots: Path, ip: str = "4") -> tuple[list[list], list[str]]:
    """Each run's step results (complete runs only), and why the others failed; the first
    run's timeline drawn in `plots`."""
    complete, failures = [], []
    for n in range(repeat):
        with tempfile.TemporaryDirectory() as directory:
            try:
                with staged(scenario, Path(directory), replace(scenario.spec, ip=ip)) as run:
                    results = run.run(scenario.steps)
                    if n == 0:
                        path = run.draw(plots / f"failover-{scenario.name}.png",
                                        [r.report() for r in results])
                        print(f"plot: {path}", flush=True)
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
    if median(r.outage_s for r in results) is not None:
        line += f" LAN outage {spread(r.outage_s for r in results)} (runs " + ", ".join(
            f"{r.outage_s:.2f}" for r in results) + ");"
    line += f" pings lost {sum(r.lost for r in results)} in all;"
    if median(r.takeover_s for r in results) is not None:
        line += f" takeover {spread(r.takeover_s for r in results)};"
    line += f" consistent again after {spread(r.consistent_after_s for r in results)}"
    if median(r.forgotten_after_s for r in results) is not None:
        line += f"; departure detected after {spread(r.forgotten_after_s for r in results)}"
    return line


def busy(seconds: int) -> None:
    scenario = Scenario("busy", "", LabSpec(members=3, peers=2, hash="l4"), (), ("p1", "p2"))
    with tempfile.TemporaryDirectory() as directory:
        with staged(scenario, Path(directory)) as run:
            day = under_load(run.lab, seconds)
    died = {m: c["members_died"] for m, c in day["counters"].items()}
    isolated = {m: c["isolations"] for m, c in day["counters"].items()}
    print(f"{seconds} s of 4 iperf3 transfers and a 1000/s IKE flood: members counted dead "
          f"{died}, isolations {isolated}; MB delivered per transfer "
          + ", ".join(f"{b / 1e6:.0f}" for b in day["received"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--busy", type=int, metavar="SECONDS",
                        help="only the long run under load, for this many seconds")
    parser.add_argument("--plots", type=Path, default=Path("."), metavar="DIR",
                        help="where the PNGs go (the current directory)")
    parser.add_argument("--ip", choices=("4", "6", "dual"), default="4",
                        help="the labs' IP versions (`ikelab run --ip`; 4)")
    args = parser.parse_args()
    if not args.plots.is_dir():
        print(f"bench_failover: no directory {args.plots}", file=sys.stderr)
        sys.exit(2)
    if args.busy:
        busy(args.busy)
        return
    print(f"a peer gives up on a dead member after {peer_gives_up_after():.1f} s (DPD delay "
          f"{PEER_DPD_DELAY:g} s, then IKEv2's retransmissions or IKEv1's DPD timeout)")
    outages = {}
    for name in args.only:
        scenario = SCENARIOS[name]
        complete, failures = runs_of(scenario, args.repeat, args.plots, args.ip)
        print(f"{name} ({scenario.description}): {len(complete)}/{args.repeat} runs recovered"
              + (f"; failures: {failures}" if failures else ""), flush=True)
        for index in range(len(scenario.steps) if complete else 0):
            print(step_line(index, [results[index] for results in complete]), flush=True)
            outages[f"{name} {index + 1}"] = [r[index].outage_s for r in complete
                                              if r[index].outage_s is not None]
    if outages:
        path = draw_boxes(outages, args.plots / "failover-outages.png",
                          f"LAN outage per scenario step over {args.repeat} runs", "seconds")
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
