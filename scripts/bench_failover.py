#!/usr/bin/env python3
"""Failover benchmarks: what each membership event costs LAN-to-LAN traffic, and how long the
cluster takes to be consistent again (median of REPEAT runs per scenario).

    .venv/bin/python scripts/bench_failover.py [--repeat 5] [--only NAME ...]

Scenarios (a fresh lab each run; pings every 100 ms from each peer's LAN host to the cluster's
LAN host; `consistent` = lab.chaos.consistency: the expected members serve, their tables are
identical and name only serving members, every tunnel is up on exactly one of them):

  owner-death     3 members, split: kill (SIGKILL) the member holding p1's tunnel.
                  Also: detection, until no survivor counts it live or names it in its table.
  mid-negotiation 3 members, l3: p1's IKE_AUTH held back, its owner killed halfway; time until
                  p1's tunnel is up on a survivor (there is no traffic to lose yet).
  rejoin          3 members, 2 peers, l4: an idle member killed, then restored under traffic.
  rehash          3 members, 2 peers, l4: rehash to l3 under traffic, then also drain the
                  member holding p1's tunnel (traffic over the other two).
  partition       3 members, 2 peers, l4: p1's owner cut off the sync network for 10 s, healed;
                  consistency counted from the heal.
  two-deaths      5 members, 4 peers, split: the busiest member killed, then the next busiest
                  once the cluster is consistent; outage and consistency of each, summed.

Targets: owner death costs no more than DPD detection plus one IKE negotiation;
rejoin and live rehash cost no outage.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import failover, strongswan  # noqa: E402
from lab.agent.daemon import query  # noqa: E402
from lab.chaos import Pinger, consistency, forgotten_by, holder  # noqa: E402
from lab.lab import Lab  # noqa: E402
from lab.render import PEER_DPD_DELAY, Retransmit  # noqa: E402
from lab.topology import LabSpec  # noqa: E402

LAN_HOST = "10.1.0.10"
RT = Retransmit()
DPD_GIVE_UP = float(PEER_DPD_DELAY.rstrip("s")) + sum(RT.timeout * RT.base ** n
                                                      for n in range(RT.tries + 1))


class Failed(Exception):
    pass


def wait(check, deadline: float, what: str, interval: float = 0.05) -> float:
    """Seconds until check() is true; Failed after `deadline`."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    raise Failed(f"{what} not within {deadline:.0f} s")


def up(lab, peers) -> None:
    watch = strongswan.bring_up({p: lab.node(p).files.vici_socket for p in peers}, 20)
    if set(watch.up_after) != set(peers):
        raise Failed("tunnels did not come up")


class Traffic:
    """Pingers from the named peers' LAN hosts, started and stopped together."""

    def __init__(self, lab, peers, directory: Path):
        self.pingers = [Pinger(lab.node(p.replace("p", "h")), LAN_HOST, directory / f"{p}.txt")
                        for p in peers]

    def __enter__(self):
        for p in self.pingers:
            p.__enter__()
        start = time.time()
        wait(lambda: all(p.replied_since(start) for p in self.pingers), 5, "first pings")
        return self

    def __exit__(self, *exc):
        for p in self.pingers:
            p.__exit__(*exc)

    def outage(self, start: float) -> float:
        end = time.time()
        return max(p.outage(start, end) for p in self.pingers)


def owner_death(directory: Path) -> dict:
    with Lab(LabSpec(members=3, peers=1, hash="split")) as lab:
        up(lab, ["p1"])
        members = {"m1", "m2", "m3"}
        owner = holder(lab, "p1", members)
        survivors = members - {owner}
        with Traffic(lab, ["p1"], directory) as traffic:
            start, t0 = time.time(), time.monotonic()
            failover.fail(lab.net, owner, "daemons")
            detected = wait(lambda: forgotten_by(lab, owner, survivors), 5, "detection")
            wait(lambda: consistency(lab, survivors) is None, DPD_GIVE_UP + 15, "consistency")
            consistent = time.monotonic() - t0
            moved = time.time()
            wait(lambda: traffic.pingers[0].replied_since(moved), 5, "pings back")
            return {"outage_s": traffic.outage(start), "consistent_s": consistent,
                    "detected_s": detected}


def mid_negotiation(directory: Path) -> dict:
    with Lab(LabSpec(members=3, peers=1, hash="l3")) as lab:
        peer = lab.node("p1")
        peer.cmd("iptables -A OUTPUT -p udp --dport 4500 -j DROP")
        strongswan.initiate(peer.files.vici_socket, strongswan.CLUSTER_CONNECTION,
                            strongswan.CHILD_NAME)
        sock = lab.node("m1").files.agent_socket
        wait(lambda: query(sock, "owners"), 5, "the first exchange")
        owner = next(iter(query(sock, "owners").values()))
        survivors = {"m1", "m2", "m3"} - {owner}
        t0 = time.monotonic()
        failover.fail(lab.net, owner, "daemons")
        peer.cmd("iptables -D OUTPUT -p udp --dport 4500 -j DROP")
        wait(lambda: consistency(lab, survivors) is None, DPD_GIVE_UP + 25, "the retry")
        return {"outage_s": None, "consistent_s": time.monotonic() - t0}


def rejoin(directory: Path) -> dict:
    with Lab(LabSpec(members=3, peers=2, hash="l4")) as lab:
        up(lab, ["p1", "p2"])
        members = {"m1", "m2", "m3"}
        idle = sorted(members - {holder(lab, p, members) for p in ("p1", "p2")})[0]
        failover.fail(lab.net, idle, "daemons")
        wait(lambda: consistency(lab, members - {idle}) is None, 10, "the death")
        with Traffic(lab, ["p1", "p2"], directory) as traffic:
            start, t0 = time.time(), time.monotonic()
            failover.restore(lab.net, idle)
            wait(lambda: consistency(lab, members) is None, 10, "the rejoin")
            consistent = time.monotonic() - t0
            time.sleep(2)  # traffic watched after the rejoin, spread over all three again
            return {"outage_s": traffic.outage(start), "consistent_s": consistent}


def rehash(directory: Path) -> dict:
    with Lab(LabSpec(members=3, peers=2, hash="l4")) as lab:
        up(lab, ["p1", "p2"])
        with Traffic(lab, ["p1", "p2"], directory) as traffic:
            start, t0 = time.time(), time.monotonic()
            failover.rehash(lab.net, "l3")
            wait(lambda: consistency(lab, {"m1", "m2", "m3"}) is None, 10, "consistency")
            consistent = time.monotonic() - t0
            time.sleep(2)  # traffic watched under the new hash
            # and with the holder of p1's tunnel drained: its packets all reach the others
            held = holder(lab, "p1", {"m1", "m2", "m3"})
            failover.rehash(lab.net, "l3", sorted({"m1", "m2", "m3"} - {held}))
            time.sleep(2)
            return {"outage_s": traffic.outage(start), "consistent_s": consistent}


def partition(directory: Path) -> dict:
    with Lab(LabSpec(members=3, peers=2, hash="l4")) as lab:
        up(lab, ["p1", "p2"])
        members = {"m1", "m2", "m3"}
        victim = holder(lab, "p1", members)
        with Traffic(lab, ["p1", "p2"], directory) as traffic:
            start = time.time()
            failover.partition(lab.net, victim)
            time.sleep(10)  # the scripted length of the partition
            t0 = time.monotonic()
            failover.heal(lab.net, victim)
            wait(lambda: consistency(lab, members) is None, DPD_GIVE_UP + 15, "consistency")
            consistent = time.monotonic() - t0
            return {"outage_s": traffic.outage(start), "consistent_s": consistent}


def two_deaths(directory: Path) -> dict:
    with Lab(LabSpec(members=5, peers=4, hash="split")) as lab:
        peers = ["p1", "p2", "p3", "p4"]
        up(lab, peers)
        alive = {"m1", "m2", "m3", "m4", "m5"}
        outage = consistent = 0.0
        with Traffic(lab, peers, directory) as traffic:
            for _ in range(2):
                held = [holder(lab, p, alive) for p in peers]
                victim = max(sorted(alive), key=held.count)
                start, t0 = time.time(), time.monotonic()
                failover.fail(lab.net, victim, "daemons")
                alive.discard(victim)
                wait(lambda: consistency(lab, alive) is None, DPD_GIVE_UP + 15, "consistency")
                consistent += time.monotonic() - t0
                moved = time.time()
                wait(lambda: all(p.replied_since(moved) for p in traffic.pingers), 5,
                     "pings back")
                outage += traffic.outage(start)
        return {"outage_s": outage, "consistent_s": consistent}


SCENARIOS = {"owner-death": owner_death, "mid-negotiation": mid_negotiation, "rejoin": rejoin,
             "rehash": rehash, "partition": partition, "two-deaths": two_deaths}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    print(f"peer DPD gives up after {DPD_GIVE_UP:.1f} s of silence (delay {PEER_DPD_DELAY}, "
          f"{RT.tries} retransmissions from {RT.timeout} s x {RT.base})")
    for name in args.only:
        results, failures = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as directory:
                try:
                    results.append(SCENARIOS[name](Path(directory)))
                except Failed as exc:
                    failures.append(str(exc))
        line = f"{name}: {len(results)}/{args.repeat} runs recovered"
        outage = median(r["outage_s"] for r in results)
        if outage is not None:
            line += f"; LAN outage median {outage:.2f} s (runs " + ", ".join(
                f"{r['outage_s']:.2f}" for r in results) + ")"
        consistent = median(r["consistent_s"] for r in results)
        if consistent is not None:
            line += f"; consistent again after median {consistent:.2f} s"
        detected = median(r.get("detected_s") for r in results)
        if detected is not None:
            line += f"; death detected after median {detected:.2f} s"
        print(line + (f"; failures: {failures}" if failures else ""), flush=True)


if __name__ == "__main__":
    main()
