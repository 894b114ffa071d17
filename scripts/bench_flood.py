#!/usr/bin/env python3
"""Hostile load and full size: what an IKE_SA_INIT flood costs each --ownership mode, and how
fast the biggest labs come up.

    .venv/bin/python scripts/bench_flood.py [--only NAME ...] [--repeat 3] [--plots DIR]

  doubling   For each mode (3 members, 3 peers, l4): peer p2's calm bring-up time, then under
             floods from p1 (lab.net.flood: IKEv2 first messages on 500, fresh SPIs and ports) of
             rising rate, p2's bring-up 3 s into each flood (median of REPEAT): the first rate
             at which it takes twice as long, and the rate the flood really reached.
             Drawn in DIR/flood-doubling.png: bring-up time against flood rate per mode.
  cost       For each mode: a 30 s flood at 1000/s (unspoofed and spoofed): the agents' CPU
             seconds per 1000 flood packets and the sync messages per flood packet.
  size       `ikelab run --members 8 --peers 64|128 --hash split --ike mixed`: lab up and
             every tunnel up (the report's timings).

A bring-up is timed the same way in every mode (`Lab.bring_up`, polled every 50 ms): from
p2's initiation until its IKE SA is established with its CHILD SA installed at p2 and at the
one member that holds it, and the LAN-to-LAN data path is complete in every kernel on the way.

Sync messages per established tunnel and the 16-peer bring-up ratio against --mode ha are in
scripts/bench_agent.py.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import strongswan  # noqa: E402
from lab.agent.io.control import query  # noqa: E402
from lab.agent.names import CLUSTER_CONNECTION  # noqa: E402
from lab.plan.topology import OWNERSHIP_MODES, LabSpec  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.show.plots import draw_lines  # noqa: E402

RATES = (250, 500, 1000, 2000, 4000, 8000, 16000)


def spec(ownership: str) -> LabSpec:
    return LabSpec(members=3, peers=3, hash="l4", ownership=ownership)


def bring_up(lab, peer: str) -> float | None:
    """Seconds for `peer` to bring its tunnel up (None: not within 20 s); then down again."""
    watch = lab.bring_up([peer], 20)
    strongswan.terminate(lab.node(peer).files.vici_socket, CLUSTER_CONNECTION)
    return watch.up_after.get(peer)


def agents(lab) -> list[dict]:
    return [query(lab.node(m.name).files.agent_socket) for m in lab.plan.members]


def doubling(ownership: str, repeat: int, points: list) -> str:
    """The doubling line for `ownership`; appends (rate, median bring-up or None) to
    `points`, the calm one at rate 0 first."""
    with Lab(spec(ownership)) as lab:
        calm = statistics.median(t for t in (bring_up(lab, "p2") for _ in range(repeat)) if t)
        points.append((0, calm))
        measured = []
        for rate in RATES:
            times, reached = [], []
            for _ in range(repeat):
                flood = lab.net.flood("p1", rate, 8, 2, 500)
                time.sleep(3)
                times.append(bring_up(lab, "p2"))
                reached.append(flood.wait(30).get("rate", 0))
            done = [t for t in times if t is not None]
            took = statistics.median(done) if len(done) == len(times) else None
            points.append((rate, took))
            measured.append(f"{rate}/s (reached {statistics.median(reached):.0f}): "
                            + (f"{took:.3f} s" if took is not None else "not up"))
            if took is None or took >= 2 * calm:
                return (f"{ownership}: calm {calm:.3f} s; doubles at {rate}/s; "
                        + "; ".join(measured))
        return f"{ownership}: calm {calm:.3f} s; never doubled up to {RATES[-1]}/s; " + \
            "; ".join(measured)


def cost(ownership: str, spoof: bool) -> str:
    with Lab(spec(ownership)) as lab:
        before = agents(lab)
        report = lab.net.flood("p1", 1000, 30, 2, 500, spoof=spoof).wait(60)
        after = agents(lab)
    packets = report["sent"]
    cpu = sum(a["cpu_s"] for a in after) - sum(a["cpu_s"] for a in before)
    sync = (sum(a["counters"]["sync_sent"] for a in after)
            - sum(a["counters"]["sync_sent"] for a in before))
    return (f"{ownership}, {'spoofed' if spoof else 'unspoofed'}: {packets} packets at "
            f"{report['rate']:.0f}/s; agents' CPU {1000 * cpu / packets:.3f} s per 1000 flood "
            f"packets; {sync / packets:.3f} sync messages per flood packet")


def size(peers: int) -> str:
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--json", "--members", "8",
                             "--peers", str(peers), "--hash", "split", "--ike", "mixed"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads(result.stdout)
    timings = report["timings"]
    return (f"8 x {peers} (split, mixed): ok {report['ok']}, lab up {timings['lab_up_s']} s, "
            f"every tunnel {timings['tunnels_up_s']} s later")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=("doubling", "cost", "size"),
                        default=("doubling", "cost", "size"))
    parser.add_argument("--plots", type=Path, default=Path("."), metavar="DIR",
                        help="where the PNGs go (the current directory)")
    args = parser.parse_args()
    # Before minutes of measuring, not after: the picture must have somewhere to go.
    if not args.plots.is_dir() or not os.access(args.plots, os.W_OK):
        print(f"bench_flood: {args.plots} is not a directory this process can write",
              file=sys.stderr)
        sys.exit(2)
    if "doubling" in args.only:
        series = {}
        for mode in OWNERSHIP_MODES:
            series[mode] = []
            print("doubling:", doubling(mode, args.repeat, series[mode]), flush=True)
        path = draw_lines({m: [(r, t) for r, t in points if r] for m, points in series.items()},
                          [], args.plots / "flood-doubling.png",
                          "p2's bring-up under an IKE_SA_INIT flood from p1 (median of "
                          f"{args.repeat}; missing: not up within 20 s)", "seconds",
                          "flood rate (packets/s)", logx=True,
                          hlines=tuple((2 * points[0][1], f"2 x calm ({m})")
                                       for m, points in series.items() if points))
        print(f"plot: {path}", flush=True)
    if "cost" in args.only:
        for mode in OWNERSHIP_MODES:
            for spoof in (False, True):
                print("cost:", cost(mode, spoof), flush=True)
    if "size" in args.only:
        for peers in (64, 128):
            print("size:", size(peers), flush=True)


if __name__ == "__main__":
    main()
