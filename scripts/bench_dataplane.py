#!/usr/bin/env python3
"""Data-plane benchmark: LAN-to-LAN TCP throughput and ping latency through the cluster.

    .venv/bin/python scripts/bench_dataplane.py [--seconds 10]

Three labs, one peer each, traffic from the peer's LAN host to the cluster's LAN host:
- single gateway (`--members 1`);
- direct: three members, `--mode ha`, so every packet reaches the SA's holder itself;
- steered: three members, `--hash split`, so the peer's ESP reaches a member without the SA
  and is steered in the kernel to the holder.
For each: iperf3 TCP throughput over SECONDS, median ping round trip over 200 pings, and the
CPU seconds all agents used during the transfer. Ratios are against the single gateway.
"""

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.agent.io.control import query  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.plan.topology import LabSpec  # noqa: E402

LABS = {"single gateway": LabSpec(members=1, peers=1),
        "direct (3 members, ha)": LabSpec(members=3, peers=1, mode="ha"),
        "steered (3 members, split)": LabSpec(members=3, peers=1, hash="split")}


def measure(spec: LabSpec, seconds: int) -> dict:
    with Lab(spec) as lab:
        if "p1" not in lab.bring_up(["p1"], 20).up_after:
            raise SystemExit("the tunnel did not come up")
        end = time.monotonic() + 10
        while lab.node("h1").cmd("ping -c1 -W1 10.1.0.10").find(" 0% packet loss") < 0:
            if time.monotonic() > end:
                raise SystemExit("no LAN-to-LAN traffic")
        agents = [lab.node(m.name).files.agent_socket for m in lab.plan.members]
        cpu_before = sum(query(a)["cpu_s"] for a in agents)
        server = lab.node("hc").popen(["iperf3", "-s", "-1"])
        time.sleep(0.3)
        out = lab.node("h1").cmd(f"iperf3 -J -c 10.1.0.10 -t {seconds}")
        server.wait(timeout=30)
        cpu = sum(query(a)["cpu_s"] for a in agents) - cpu_before
        result = json.loads(out[out.index("{"):])
        bps = result["end"]["sum_received"]["bits_per_second"]
        pings = lab.node("h1").cmd("ping -n -c 200 -i 0.01 10.1.0.10")
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", pings)]
        return {"mbps": bps / 1e6, "rtt_ms": statistics.median(rtts), "agent_cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    results = {label: measure(spec, args.seconds) for label, spec in LABS.items()}
    base = results["single gateway"]
    print(f"{'lab':30} {'TCP Mbit/s':>11} {'ratio':>6} {'ping median':>12} {'+ms':>7} "
          f"{'agent CPU s':>12}")
    for label, r in results.items():
        print(f"{label:30} {r['mbps']:11.1f} {r['mbps'] / base['mbps']:6.2f} "
              f"{r['rtt_ms']:10.3f}ms {r['rtt_ms'] - base['rtt_ms']:+7.3f} "
              f"{r['agent_cpu_s']:12.3f}")


if __name__ == "__main__":
    main()
