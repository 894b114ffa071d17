"""The lab's main job: bring every tunnel up, send LAN-to-LAN traffic, and report.

Every fact in the report is read from a daemon: IKE and CHILD SAs from each charon over vici,
bucket counters and packet paths from Open vSwitch, ping counts from ping itself.
"""

import json
import subprocess
import time

from ..agent.names import IKE_PORT, NATT_PORT
from ..plan import hashing
from ..plan.topology import Plan
from ..show.outage import PING, ping_counts
from ..show.page import AGENTS
from ..show.report import lab_report, tunnel_report
from . import crowd
from .lab import Lab
from .probes import ask_agent, member_sas

TCP_BASE_PORT = 5201
TCP_BYTES = "1M"
TCP_PARALLEL = 8


def switch_paths(lab: Lab) -> dict[str, dict[str, str | None]]:
    """For each peer, the member the external switch hands its IKE on UDP 500 and 4500 to."""
    switch = lab.switch("external")
    ports = {(p.node, p.interface): p for p in switch.plan_switch.ports}
    result = {}
    for peer in lab.plan.peers:
        front = "r1" if peer.behind_nat else peer.name
        port = ports[(front, "eth0")]
        paths = {}
        proto, src, dst = (("udp6", "ipv6_src", "ipv6_dst") if peer.seen_as.version == 6
                           else ("udp", "nw_src", "nw_dst"))
        for udp in (IKE_PORT, NATT_PORT):
            paths[f"udp{udp}"] = switch.member_for(
                f"in_port={port.port},{proto},dl_src={port.mac},dl_dst={switch.plan_switch.vmac},"
                f"{src}={peer.seen_as},{dst}={peer.vip},udp_src={udp},udp_dst={udp}")
        result[peer.name] = paths
    return result


def bucket_counters(lab: Lab) -> dict[str, dict[str, dict[str, int]]]:
    """Per hashing switch and group: packets each member's bucket has carried."""
    result = {}
    for role in ("external", "internal"):
        switch = lab.switch(role)
        stats = switch.bucket_stats()
        result[switch.name] = {hashing.GROUP_NAMES[g]: counts
                               for g, counts in sorted(stats.items())}
    return result


def agent_status(lab: Lab) -> dict[str, dict]:
    """Each member's agent's counters and table, or {} without agents."""
    if not lab.spec.agent:
        return {}
    return {m.name: ask_agent(lab, m.name) for m in lab.plan.members}


class Pings:
    """Each tunnel's pings, both ways between the cluster's LAN host and the peer's LAN host
    in each family the LANs carry (`to_peer`, `from_peer`; with both, IPv6 is `to_peer6`,
    `from_peer6`), started the moment the tunnel is up (`start`, the bring-up's `on_up`): a
    first packet lost is the tunnel's, not a late test's."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.procs = {}

    def start(self, peer_name: str) -> None:
        plan = self.lab.plan
        peer = plan.peer(peer_name)
        lan_host = self.lab.node(plan.lan_host.name)
        ours = {a.version: a.ip for a in plan.lan_host.interfaces[0].addresses}
        for theirs in peer.lan_hosts:
            suffix = "6" if theirs.version == 6 and len(peer.lan_hosts) > 1 else ""
            self.procs[(peer.name, f"to_peer{suffix}")] = lan_host.popen(PING + [str(theirs)])
            self.procs[(peer.name, f"from_peer{suffix}")] = self.lab.node(peer.lan_host).popen(
                PING + [str(ours[theirs.version])])

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """peer -> direction -> {"sent", "received"}; a tunnel never up was never pinged:
        its directions count PING_COUNT sent and none received."""
        plan = self.lab.plan
        for peer in plan.peers:
            if not any(name == peer.name for name, _ in self.procs):
                self.start(peer.name)  # down: its pings show it
        result = {p.name: {} for p in plan.peers}
        for (peer, direction), counts in ping_counts(self.procs).items():
            result[peer][direction] = counts
        return result


def tcp_all(lab: Lab, plan: Plan) -> dict[str, dict[str, dict]]:
    """An iperf3 TCP transfer of TCP_BYTES each way between the cluster's LAN host and every
    peer's LAN host, TCP_PARALLEL peers at a time: bytes received and iperf3's error, per
    direction. A byte count, not a duration: a lost SYN costs a second, not the verdict."""
    result = {p.name: {} for p in plan.peers}
    peers = list(plan.peers)
    for start in range(0, len(peers), TCP_PARALLEL):
        for peer, tcp in _tcp_batch(lab, plan, peers[start:start + TCP_PARALLEL]).items():
            result[peer] = tcp
    return result


def _tcp_batch(lab: Lab, plan: Plan, peers: list) -> dict[str, dict[str, dict]]:
    lan_host = lab.node(plan.lan_host.name)
    lan_address = str(plan.lan_host.interfaces[0].addresses[0].ip)
    ports = {(p.name, d): TCP_BASE_PORT + 2 * (p.index - 1) + n
             for p in peers for n, d in enumerate(("from_peer", "to_peer"))}
    servers = [lan_host.popen(["iperf3", "-s", "-1", "-p", str(port)]) for port in ports.values()]
    result = {p.name: {} for p in peers}
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            listening = lan_host.cmd("ss -ltnH")
            if all(f":{port} " in listening for port in ports.values()):
                break
            time.sleep(0.05)
        clients = {}
        for (peer, direction), port in ports.items():
            cmd = ["iperf3", "-J", "-c", lan_address, "-p", str(port), "-n", TCP_BYTES,
                   "--connect-timeout", "3000"] + (["-R"] if direction == "to_peer" else [])
            clients[(peer, direction)] = lab.node(plan.peer(peer).lan_host).popen(cmd)
        for (peer, direction), proc in clients.items():
            try:
                out, _ = proc.communicate(timeout=30)
                data = json.loads(out)
            except (ValueError, subprocess.TimeoutExpired):
                proc.kill()
                data = {"error": "iperf3 printed no report within 30 s"}
            received = data.get("end", {}).get("sum_received", {}).get("bytes", 0)
            result[peer][f"tcp_{direction}"] = {
                "bytes": received, "error": data.get("error") or (None if received else
                                                                  "0 bytes received")}
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
            server.wait()
    return result


def run_main_job(lab: Lab, timeout: float, lab_up_s: float, say, quiet: bool = False) -> dict:
    """Initiate every tunnel, wait for them, test traffic; return the report dict. `quiet`:
    no progress bar (--json)."""
    plan = lab.plan
    say(f"initiating {len(plan.peers)} tunnels from the peers")
    pings = Pings(lab)
    watch = lab.bring_up(timeout=timeout, say=say, on_up=pings.start)
    say(f"tunnels up: {len(watch.up_after)}/{len(plan.peers)}"
        + (f", given up: {', '.join(sorted(watch.gave_up))}" if watch.gave_up else ""))
    # The peers' pings (each from the moment its tunnel was up) end before the crowd starts:
    # they measure a tunnel's first packets, not a crowd's bring-up on two cores.
    traffic = pings.counts()
    crowd_watch = None
    if plan.crowd:
        say(f"crowd: {len(plan.sites())} sites initiating at {plan.spec.crowd_rate:g}/s")
        crowd_watch = crowd.bring_up(lab, plan.spec.crowd_rate, timeout, quiet, say)
        say(f"crowd: {crowd_watch.up()}/{len(plan.sites())} sites up")
    say("TCP (iperf3) both ways between the LANs")
    for peer, tcp in tcp_all(lab, plan).items():
        traffic[peer].update(tcp)
    crowd_traffic = crowd.ping_sample(lab, crowd.sample(plan)) if plan.crowd else {}
    members = member_sas(lab)
    agents = agent_status(lab)
    paths = switch_paths(lab)
    tunnels = [tunnel_report(p.name, p.ike_version, watch.peer_sas(p.name), members,
                             paths[p.name], traffic[p.name], watch.up_after.get(p.name),
                             watch.last_sa.get(p.name), agents)
               for p in plan.peers]
    all_up = len(watch.up_after) == len(plan.peers)
    timings = {"lab_up_s": round(lab_up_s, 2),
               "tunnels_up_s": round(max(watch.up_after.values()), 2) if all_up else None}
    run_dir = str(lab.run.path) if lab.keep else None
    if run_dir and agents:  # for the run's page (`lab.show.page`), once the lab is gone
        (lab.run.path / AGENTS).write_text(json.dumps(agents, indent=1, default=str))
    summary = None
    if plan.crowd:
        summary = crowd.summarise(plan, crowd_watch, crowd.site_states(lab),
                                  crowd.holders(members, plan), crowd_traffic,
                                  plan.spec.crowd_rate)
        if run_dir:
            summary["plots"] = crowd.draw(summary, run_dir, plan.spec)
    return lab_report(plan.spec, tunnels, bucket_counters(lab), timings, run_dir, agents,
                      summary)
