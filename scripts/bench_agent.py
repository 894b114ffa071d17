#!/usr/bin/env python3
"""Forwarding agent benchmarks: forwarding latency, bring-up cost, sync and CPU per packet.

    .venv/bin/python scripts/bench_agent.py [--packets 2000] [--repeat 3] [--trace-ab]

1. Latency a forwarded IKE packet adds: a tunnel comes up in `--hash split` (UDP 4500 reaches
   the member that does not own the IKE SA); then the peer's side sends PACKETS IKE
   INFORMATIONAL messages on that IKE SA through the switch. The non-owner's agent stamps each
   on arrival; the owner's agent measures arrival-to-delivery into its charon's stack.
   Median and p99, and the agents' CPU seconds per 1000 of these packets. With --trace-ab,
   in one lab, REPEAT rounds of PACKETS forwarded packets with the agents' decision trace on
   and PACKETS with it off (switched through the control socket): the median of each side's
   medians and the agents' CPU per 1000 packets, paired round by round, so that where the
   owner sits and how busy the machine is weigh on both sides alike.
2. Time for 16 peers to bring their tunnels up in `--hash split` with the agent against
   `--mode ha` (median of REPEAT runs each, the configurations taking turns): from the first
   initiate to the last peer's CHILD SA, timed by each peer charon's own `child-updown` event;
   and sync messages per established tunnel in each `--ownership` mode, by what they carry:
   the table's state, IKE packets forwarded to their owner, the data plane's steering routes.
"""

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vici  # noqa: E402

from lab import strongswan  # noqa: E402
from lab.agent.io.control import query  # noqa: E402
from lab.agent.names import CHILD_NAME, CLUSTER_CONNECTION  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.plan.topology import EXTERNAL_VIP, OWNERSHIP_MODES, LabSpec  # noqa: E402

SENDER = """
import socket, sys, time
ispi, rspi, count = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(count):
    header = ispi + rspi + bytes([46, 0x20, 37, 0x08]) + (0x7f000000 + n).to_bytes(4, "big")
    s.sendto(b"\\0\\0\\0\\0" + header + (28).to_bytes(4, "big"), (sys.argv[4], 4500))
    time.sleep(0.001)
"""


def forwarding_latency(packets: int) -> dict:
    with Lab(LabSpec(members=2, peers=1, hash="split")) as lab:
        if "p1" not in lab.bring_up(["p1"], 20).up_after:
            raise SystemExit("the tunnel did not come up")
        sa = next(iter(strongswan.list_sas(lab.node("p1").files.vici_socket).values()))
        agents = {m: lab.node(m).files.agent_socket for m in ("m1", "m2")}
        return forwarded(lab, agents, owner_of(agents, sa["initiator-spi"]), sa, packets)


def owner_of(agents: dict, ispi: str) -> str:
    """The member whose agent's table names itself the owner of this IKE SA."""
    return next(m for m, s in agents.items()
                if any(r["key"].startswith(ispi) and r["owner"] == m for r in query(s)["table"]))


def forwarded(lab, agents: dict, owner: str, sa: dict, packets: int) -> dict:
    """Have p1 send `packets` IKE INFORMATIONALs on its IKE SA (the non-owner forwards them
    all): the owner's latency figures and both agents' CPU per 1000 packets."""
    for s in agents.values():
        query(s, "reset-latency")
    cpu_before = {m: query(s)["cpu_s"] for m, s in agents.items()}
    script = ROOT / "scripts" / ".bench_sender.py"
    script.write_text(SENDER)
    try:
        lab.node("p1").cmd(f"python3 {script} {sa['initiator-spi']} {sa['responder-spi']} "
                           f"{packets} {EXTERNAL_VIP}")
    finally:
        script.unlink()
    end = time.monotonic() + 10
    while query(agents[owner])["forward_latency_us"]["samples"] < packets \
            and time.monotonic() < end:
        time.sleep(0.1)
    status = {m: query(s) for m, s in agents.items()}
    cpu = sum(status[m]["cpu_s"] - cpu_before[m] for m in agents)
    latency = status[owner]["forward_latency_us"]
    return {"owner": owner, "samples": latency["samples"], "median_us": latency["median"],
            "p99_us": latency["p99"], "cpu_s_per_1000": 1000 * cpu / packets}


class UpClock(threading.Thread):
    """Listens to one peer's charon for its first `child-updown` up event and notes when it
    came: the event arrives the moment the CHILD SA is installed, so bring-up times are not
    quantised by a polling sweep over the peers."""

    def __init__(self, sock: Path):
        super().__init__(daemon=True)
        self.sock = sock
        self.listening = threading.Event()
        self.up_at: float | None = None

    def run(self) -> None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self.sock))
        session = vici.Session(conn)
        events = session.listen(["child-updown"])
        try:
            self.listening.set()
            for _name, message in events:
                if message.get("up") == b"yes":
                    self.up_at = time.monotonic()
                    return
        finally:
            events.close()  # unregisters from charon, while the connection is still open
            conn.close()


def timed_bring_up(spec: LabSpec, timeout: float = 30.0) -> tuple[float | None, int]:
    """Seconds from the first initiate to the last peer's CHILD SA up (None if one never came
    up), and the sync messages the agents sent per tunnel."""
    with Lab(spec) as lab:
        peers = [p.name for p in lab.plan.peers]
        clocks = [UpClock(lab.node(p).files.vici_socket) for p in peers]
        for clock in clocks:
            clock.start()
        for clock in clocks:
            clock.listening.wait(5)
        # vici's listen registers the event before it returns the generator's first item;
        # a status round trip on the same daemon makes sure registration is done.
        for p in peers:
            strongswan.list_sas(lab.node(p).files.vici_socket)
        started = time.monotonic()
        for p in peers:
            strongswan.initiate(lab.node(p).files.vici_socket, CLUSTER_CONNECTION, CHILD_NAME)
        for clock in clocks:
            clock.join(max(0.0, started + timeout - time.monotonic()))
        ups = [c.up_at for c in clocks]
        sent = sync_by_kind([query(lab.node(m.name).files.agent_socket)
                             for m in lab.plan.members] if spec.agent else [])
        per_tunnel = {kind: n / len(peers) for kind, n in sent.items()}
        if any(u is None for u in ups):
            return None, per_tunnel
        return max(ups) - started, per_tunnel


# Sync messages by what they carry: the table's state, IKE packets forwarded to their owner,
# and the data plane's steering routes. Heartbeats go by the clock, not by the tunnel.
KINDS = {"forward": "forwarded IKE", "routes": "steering", "heartbeat": None}


def sync_by_kind(statuses: list[dict]) -> dict[str, int]:
    """Sync messages the agents sent, heartbeats aside, by kind: "table", "forwarded IKE",
    "steering"."""
    result = {"table": 0, "forwarded IKE": 0, "steering": 0}
    for status in statuses:
        for kind, n in status.get("sync_sent_by_type", {}).items():
            if KINDS.get(kind, "table"):
                result[KINDS.get(kind, "table")] += n
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--trace-ab", action="store_true",
                        help="only the forwarded latency, trace on against trace off")
    args = parser.parse_args()
    if args.trace_ab:
        trace_cost(args.packets, args.repeat)
        return
    if not args.skip_latency:
        latency(args.packets)
    bring_up_cost(args.repeat)


def trace_cost(packets: int, repeat: int) -> None:
    """Forwarded latency and agents' CPU with the decision trace on and off, in one lab,
    the two taking turns."""
    medians, cpu = {True: [], False: []}, {True: [], False: []}
    with Lab(LabSpec(members=2, peers=1, hash="split")) as lab:
        if "p1" not in lab.bring_up(["p1"], 20).up_after:
            raise SystemExit("the tunnel did not come up")
        sa = next(iter(strongswan.list_sas(lab.node("p1").files.vici_socket).values()))
        agents = {m: lab.node(m).files.agent_socket for m in ("m1", "m2")}
        owner = owner_of(agents, sa["initiator-spi"])
        for _ in range(repeat):
            for trace in (True, False):
                for s in agents.values():
                    query(s, "trace-on" if trace else "trace-off")
                result = forwarded(lab, agents, owner, sa, packets)
                medians[trace].append(result["median_us"])
                cpu[trace].append(result["cpu_s_per_1000"])
    on, off = statistics.median(medians[True]), statistics.median(medians[False])
    for trace, label in ((True, "trace on "), (False, "trace off")):
        print(f"{label}: forwarded latency median of {repeat} medians "
              f"{statistics.median(medians[trace]) / 1000:.3f} ms (rounds "
              + ", ".join(f"{m / 1000:.3f}" for m in medians[trace]) + "); agents' CPU "
              f"{statistics.median(cpu[trace]):.3f} s per 1000 forwarded packets")
    ratios = sorted(a / b for a, b in zip(medians[True], medians[False]))
    print(f"trace on / off: latency {on / off:.3f} (round by round: median "
          f"{statistics.median(ratios):.3f}, from {ratios[0]:.3f} to {ratios[-1]:.3f}), CPU "
          f"{statistics.median(cpu[True]) / statistics.median(cpu[False]):.3f}")


def latency(packets: int) -> None:
    lat = forwarding_latency(packets)
    print(f"forwarded IKE packets: {lat['samples']} of {packets} (owner {lat['owner']})")
    print(f"  added latency, arrival at the non-owner to delivery at the owner: "
          f"median {lat['median_us'] / 1000:.3f} ms, p99 {lat['p99_us'] / 1000:.3f} ms")
    print(f"  agent CPU seconds per 1000 IKE packets (both agents): {lat['cpu_s_per_1000']:.3f}")


def bring_up_cost(repeat: int, peers: int = 16) -> None:
    """Runs alternate between the configurations, so drift in the machine's load hits all."""
    configs = {f"split + agent ({mode})": LabSpec(peers=peers, hash="split", ownership=mode)
               for mode in OWNERSHIP_MODES}
    configs["ha"] = LabSpec(peers=peers, mode="ha")
    runs = {label: [] for label in configs}
    for _ in range(repeat):
        for label, spec in configs.items():
            runs[label].append(timed_bring_up(spec))
    times = {}
    for label, results in runs.items():
        done = sorted(t for t, _ in results if t is not None)
        times[label] = statistics.median(done) if done else None
        per_tunnel = {kind: statistics.median(s[kind] for _, s in results)
                      for kind in results[0][1]}
        print(f"{peers} peers, {label}: all tunnels up in {len(done)}/{len(results)} runs, "
              f"median {times[label] if done else float('nan'):.3f} s "
              f"(runs {', '.join(f'{t:.3f}' for t in done)}); sync messages per tunnel "
              f"{sum(per_tunnel.values()):.1f} ("
              + ", ".join(f"{kind} {n:.1f}" for kind, n in per_tunnel.items()) + ")")
    for label in configs:
        if label != "ha" and times[label] and times["ha"]:
            print(f"ratio {label} / ha: {times[label] / times['ha']:.2f}")


if __name__ == "__main__":
    main()
