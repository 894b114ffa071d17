#!/usr/bin/env python3
"""The crowd's growth: what 1,000 to 10,000 remote sites cost an 8-member cluster.

    .venv/bin/python scripts/bench_scale.py [--sites 1000 2000 5000 10000] [--members 8]
        [--rate 100] [--dead-after 2] [--plots DIR] [--json FILE]

For each crowd size, one lab (`--hash l4`, the default ownership mode, traces off):

  bring-up     seconds from the first initiation to the last site up (crowd.bring_up), and
               how many came up within the deadline (sites / rate x 2, 120 s at least)
  spread       tunnels per member, max/mean (each site's holder from the members' charons)
  cpu/tunnel   the agents' CPU (user + system, /proc) during bring-up, per site up, in ms
  sync/tunnel  sync messages the agents sent during bring-up per site up: all of them, and
               without heartbeats and witness pings (those are per second, not per tunnel)
  memory       agent RSS (largest), table entries, and RSS growth per entry in bytes
  takeover     m1 killed: seconds until every site is up on exactly one survivor, polled
               every 2 s over every crowd node's and member's vici (so, 2 s resolution)
  join         m1 restored: seconds until its agent serves (it copies the whole table first)

First, without a lab: the agent core's time per tick (median over 10 simulated seconds) with
1,000 and with 10,000 established IKE SAs in its table; per-tick work must not grow with it.

Per-tunnel figures are divided by the same thing in every run (sites up during bring-up), so
they compare across sizes. The last line is each per-tunnel cost at the largest size over the
smallest (issue 18's target: at most 1.2). DIR/scale-growth.png draws the per-tunnel costs
relative to the smallest size, DIR/scale-bringup.png the bring-up time against the sites.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.run import crowd  # noqa: E402
from lab.agent.io.control import query  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.show.plots import check_format, draw_lines  # noqa: E402
from lab.net.preflight import NotReady  # noqa: E402
from lab.run.probes import member_sas  # noqa: E402
from lab.plan.topology import LabSpec  # noqa: E402
from tests.unit.agents import tick_cost  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
PER_SECOND = ("heartbeat", "witness-ping", "routes")  # sent on a timer, not per tunnel
TAKEOVER_DEADLINE = 120.0
JOIN_DEADLINE = 60.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def agents(lab) -> dict:
    """member -> (pid, status) for every member whose agent runs."""
    result = {}
    for m in lab.plan.members:
        node = lab.node(m.name)
        if node.agent is not None and node.agent.running():
            result[m.name] = (node.agent.process.pid, query(node.files.agent_socket, timeout=10))
    return result


def sync_sent(statuses: dict) -> tuple[int, int]:
    """(all sync messages sent, those not sent on a timer), summed over the agents."""
    total = per_tunnel = 0
    for _pid, status in statuses.values():
        for kind, n in status["sync_sent_by_type"].items():
            total += n
            per_tunnel += 0 if kind in PER_SECOND else n
    return total, per_tunnel


def whole(lab, among: set[str]) -> bool:
    states = crowd.site_states(lab)
    held = crowd.holders(member_sas(lab, among), lab.plan)
    return all(s == "up" for s in states.values()) and all(len(h) == 1 for h in held.values())


def measure(sites: int, args) -> dict:
    spec = LabSpec(members=args.members, peers=1, hash="l4", crowd=sites, crowd_rate=args.rate,
                   dead_after=args.dead_after, trace=False)
    with Lab(spec) as lab:
        before = agents(lab)
        cpu0 = sum(cpu_seconds(pid) for pid, _ in before.values())
        rss0 = max(rss_bytes(pid) for pid, _ in before.values())
        sent0 = sync_sent(before)
        watch = crowd.bring_up(lab, args.rate, timeout=max(120.0, 2 * sites / args.rate),
                               quiet=not sys.stderr.isatty())
        after = agents(lab)
        up = watch.up()
        cpu = sum(cpu_seconds(pid) for pid, _ in after.values()) - cpu0
        sent = [b - a for a, b in zip(sent0, sync_sent(after))]
        entries = max(len(s["table"]) for _, s in after.values())
        rss = max(rss_bytes(pid) for pid, _ in after.values())
        held = crowd.holders(member_sas(lab), lab.plan)
        per_member = [sum(1 for h in held.values() if h == [m.name]) for m in lab.plan.members]
        row = {"sites": sites, "up": up,
               "bring_up_s": round(max(watch.up_after.values()), 1) if up else None,
               "max_over_mean": round(max(per_member) * len(per_member) / sum(per_member), 3)
               if sum(per_member) else None,
               "cpu_ms_per_tunnel": round(1000 * cpu / up, 2) if up else None,
               "sync_per_tunnel": round(sent[0] / up, 1) if up else None,
               "sync_per_tunnel_untimed": round(sent[1] / up, 1) if up else None,
               "agent_rss_mb": round(rss / 2**20, 1), "table_entries": entries,
               "bytes_per_entry": round((rss - rss0) / entries) if entries else None,
               "takeover_s": None, "join_s": None}
        if up < sites:
            return row  # a crowd that did not come up whole has no takeover to time
        survivors = {m.name for m in lab.plan.members} - {"m1"}
        start = time.monotonic()
        lab.net.fail("m1")
        while time.monotonic() - start < TAKEOVER_DEADLINE:
            if whole(lab, survivors):
                row["takeover_s"] = round(time.monotonic() - start, 1)
                break
            time.sleep(2.0)
        start = time.monotonic()
        lab.net.restore("m1")
        socket = lab.node("m1").files.agent_socket
        while time.monotonic() - start < JOIN_DEADLINE:
            try:
                if query(socket, "state", timeout=1.0)["state"] == "serving":
                    row["join_s"] = round(time.monotonic() - start, 2)
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return row


COLUMNS = ("sites", "up", "bring_up_s", "max_over_mean", "cpu_ms_per_tunnel", "sync_per_tunnel",
           "sync_per_tunnel_untimed", "agent_rss_mb", "table_entries", "bytes_per_entry",
           "takeover_s", "join_s")
PER_TUNNEL = ("cpu_ms_per_tunnel", "sync_per_tunnel", "sync_per_tunnel_untimed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--dead-after", type=float, default=2.0)
    parser.add_argument("--plots", type=Path, default=Path("."))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    growth, bringup = args.plots / "scale-growth.png", args.plots / "scale-bringup.png"
    for path in (growth, bringup, *([args.json] if args.json else [])):
        if path.suffix == ".png":
            check_format(path)
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            print(f"bench_scale: cannot write {path}", file=sys.stderr)
            return 2
    print("agent core, per tick: " + ", ".join(f"{tick_cost(n):.0f} us with {n} entries"
                                              for n in (1000, 10000)), flush=True)
    rows = []
    print("  ".join(COLUMNS), flush=True)
    for sites in sorted(args.sites):
        try:
            row = measure(sites, args)
        except NotReady as exc:
            print(f"{sites}: refused: {exc}", flush=True)
            continue
        rows.append(row)
        print("  ".join(str(row[c]) for c in COLUMNS), flush=True)
    if len(rows) >= 2 and rows[0]["up"]:
        first, last = rows[0], rows[-1]
        ratios = {k: round(last[k] / first[k], 2) for k in PER_TUNNEL
                  if first[k] and last[k] is not None}
        print(f"per-tunnel cost at {last['sites']} over {first['sites']} sites: "
              + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
        draw_lines({k: [(r["sites"], r[k] / first[k] if r[k] is not None else None)
                        for r in rows] for k in PER_TUNNEL if first[k]},
                   [], growth, "per-tunnel cost relative to the smallest crowd",
                   "x the smallest", xlabel="sites", logx=True, hlines=((1.2, "target 1.2x"),))
        draw_lines({"all sites up": [(r["sites"], r["bring_up_s"]) for r in rows]}, [],
                   bringup, f"crowd bring-up at {args.rate:g} sites/s asked, "
                   f"{args.members} members", "seconds", xlabel="sites", logx=True,
                   hlines=((120, "target 120 s for 10,000"),))
        print(f"plots: {growth}, {bringup}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
