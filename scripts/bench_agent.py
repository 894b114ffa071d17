#!/usr/bin/env python3
"""Forwarding agent benchmarks: forwarding latency, bring-up cost, sync and CPU per packet.

    .venv/bin/python scripts/bench_agent.py [--packets 2000] [--repeat 3]

1. Latency a forwarded IKE packet adds: a tunnel comes up in `--hash split` (UDP 4500 reaches
   the member that does not own the IKE SA); then the peer's side sends PACKETS IKE
   INFORMATIONAL messages on that IKE SA through the switch. The non-owner's agent stamps each
   on arrival; the owner's agent measures arrival-to-delivery into its charon's stack.
   Median and p99, and the agents' CPU seconds per 1000 of these packets.
2. Time for 16 peers to bring their tunnels up in `--hash split` with the agent against
   `--mode ha` (median of REPEAT runs each), and sync messages per established tunnel in each
   `--ownership` mode.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import strongswan  # noqa: E402
from lab.agent.daemon import query  # noqa: E402
from lab.lab import Lab  # noqa: E402
from lab.topology import EXTERNAL_VIP, LabSpec  # noqa: E402

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
        sock = lab.node("p1").files.vici_socket
        if "p1" not in strongswan.bring_up({"p1": sock}, 20).up_after:
            raise SystemExit("the tunnel did not come up")
        sa = next(iter(strongswan.list_sas(sock).values()))
        agents = {m: lab.node(m).files.agent_socket for m in ("m1", "m2")}
        owner = next(m for m, s in agents.items()
                     if any(r["key"].startswith(sa["initiator-spi"]) and r["owner"] == m
                            for r in query(s)["table"]))
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


def run_json(*options: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--json", *options], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if not result.stdout:
        raise SystemExit(f"ikelab run {' '.join(options)}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def tunnels_up(report: dict) -> float | None:
    up = [t for t in report["tunnels"] if t["state"] == "ESTABLISHED"]
    if len(up) != len(report["tunnels"]):
        return None
    return max(t["up_after_s"] for t in up if t["up_after_s"] is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    if not args.skip_latency:
        latency(args.packets)
    bring_up_cost(args.repeat)


def latency(packets: int) -> None:
    lat = forwarding_latency(packets)
    print(f"forwarded IKE packets: {lat['samples']} of {packets} (owner {lat['owner']})")
    print(f"  added latency, arrival at the non-owner to delivery at the owner: "
          f"median {lat['median_us'] / 1000:.3f} ms, p99 {lat['p99_us'] / 1000:.3f} ms")
    print(f"  agent CPU seconds per 1000 IKE packets (both agents): {lat['cpu_s_per_1000']:.3f}")


def bring_up_cost(repeat: int) -> None:
    times = {}
    for label, options in (("split + agent (table)", ["--hash", "split"]),
                           ("split + agent (table+label)",
                            ["--hash", "split", "--ownership", "table+label"]),
                           ("ha", ["--mode", "ha"])):
        runs = [run_json("--peers", "16", *options) for _ in range(repeat)]
        ups = [tunnels_up(r) for r in runs]
        done = [u for u in ups if u is not None]
        sync = [sum(a["counters"]["sync_sent"] for a in r["agents"].values()) / 16
                for r in runs]
        times[label] = statistics.median(done) if done else None
        print(f"16 peers, {label}: all tunnels up in {len(done)}/{len(runs)} runs, median "
              f"{times[label] if times[label] is not None else float('nan'):.3f} s; "
              f"sync messages per tunnel {statistics.median(sync):.1f}")
    for label in ("split + agent (table)", "split + agent (table+label)"):
        if times[label] and times["ha"]:
            print(f"ratio {label} / ha: {times[label] / times['ha']:.2f}")


if __name__ == "__main__":
    main()
