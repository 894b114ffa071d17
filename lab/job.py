"""The lab's main job: bring every tunnel up, send LAN-to-LAN traffic, and report.

Every fact in the report is read from a daemon: IKE and CHILD SAs from each charon over vici,
bucket counters and packet paths from Open vSwitch, ping counts from ping itself.
"""

import re
import time

from . import hashing, strongswan
from .lab import Lab
from .render import CHILD_NAME, CLUSTER_CONNECTION
from .report import lab_report, tunnel_report
from .topology import EXTERNAL_VIP, Plan

PING_COUNT = 3
POLL_INTERVAL = 0.2


def switch_paths(lab: Lab) -> dict[str, dict[str, str | None]]:
    """For each peer, the member the external switch hands its IKE on UDP 500 and 4500 to."""
    switch = lab.switch("external")
    ports = {(p.node, p.interface): p for p in switch.plan_switch.ports}
    result = {}
    for peer in lab.plan.peers:
        front = "r1" if peer.behind_nat else peer.name
        port = ports[(front, "eth0")]
        paths = {}
        for udp in (500, 4500):
            paths[f"udp{udp}"] = switch.member_for(
                f"in_port={port.port},udp,dl_src={port.mac},dl_dst={switch.plan_switch.vmac},"
                f"nw_src={peer.seen_as},nw_dst={EXTERNAL_VIP},udp_src={udp},udp_dst={udp}")
        result[peer.name] = paths
    return result


def bucket_counters(lab: Lab) -> dict[str, dict[str, dict[str, int]]]:
    """Per hashing switch and group: packets each member's bucket has carried."""
    result = {}
    for role in ("external", "internal"):
        switch = lab.switch(role)
        stats = switch.bucket_stats()
        names = {hashing.IKE_GROUP: "ip", hashing.NATT_GROUP: "udp4500"}
        result[switch.name] = {names[g]: counts for g, counts in sorted(stats.items())}
    return result


def member_sas(lab: Lab) -> dict[str, dict]:
    return {m.name: strongswan.list_sas(lab.node(m.name).files.vici_socket)
            for m in lab.plan.members}


class TunnelWatch:
    """Polls every peer's charon until each tunnel is up or its negotiation was given up."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.started = time.monotonic()
        self.up_after: dict[str, float] = {}
        self.last_sa: dict[str, dict] = {}
        self.gave_up: set[str] = set()

    def peer_sas(self, peer: str) -> dict:
        """The IKE SAs `peer` holds now."""
        return strongswan.list_sas(self.lab.node(peer).files.vici_socket)

    def poll(self) -> bool:
        """Update every peer's state; True once none is still negotiating."""
        for peer in self.lab.plan.peers:
            if peer.name in self.up_after or peer.name in self.gave_up:
                continue
            sas = self.peer_sas(peer.name)
            if not sas and peer.name in self.last_sa:
                self.gave_up.add(peer.name)
                continue
            for sa in sas.values():
                self.last_sa[peer.name] = sa
                installed = any(c.get("state") == "INSTALLED"
                                for c in sa.get("child-sas", {}).values())
                if sa["state"] == "ESTABLISHED" and installed:
                    self.up_after[peer.name] = time.monotonic() - self.started
        return len(self.up_after) + len(self.gave_up) == len(self.lab.plan.peers)

    def wait(self, timeout: float, say) -> None:
        deadline = self.started + timeout
        reported = -1
        while not self.poll() and time.monotonic() < deadline:
            if len(self.up_after) != reported:
                reported = len(self.up_after)
                say(f"tunnels up: {reported}/{len(self.lab.plan.peers)}")
            time.sleep(POLL_INTERVAL)
        say(f"tunnels up: {len(self.up_after)}/{len(self.lab.plan.peers)}"
            + (f", given up: {', '.join(sorted(self.gave_up))}" if self.gave_up else ""))


def ping_all(lab: Lab, plan: Plan) -> dict[str, dict[str, dict[str, int]]]:
    """Ping both ways between the cluster's LAN host and every peer's LAN host, in parallel."""
    lan_host = lab.node(plan.lan_host.name)
    lan_address = plan.lan_host.interfaces[0].address.ip
    procs = {}
    for peer in plan.peers:
        cmd = ["ping", "-n", "-q", "-c", str(PING_COUNT), "-i", "0.2", "-W", "2"]
        procs[(peer.name, "to_peer")] = lan_host.popen(cmd + [str(peer.lan_host_address)])
        procs[(peer.name, "from_peer")] = lab.node(peer.lan_host).popen(cmd + [str(lan_address)])
    result = {p.name: {} for p in plan.peers}
    for (peer, direction), proc in procs.items():
        out, _ = proc.communicate(timeout=30)
        match = re.search(rb"(\d+) packets transmitted, (\d+) received", out)
        sent, received = (int(match.group(1)), int(match.group(2))) if match else (PING_COUNT, 0)
        result[peer][direction] = {"sent": sent, "received": received}
    return result


def run_main_job(lab: Lab, timeout: float, lab_up_s: float, say) -> dict:
    """Initiate every tunnel, wait for them, test traffic; return the report dict."""
    plan = lab.plan
    say(f"initiating {len(plan.peers)} tunnels from the peers")
    watch = TunnelWatch(lab)
    for peer in plan.peers:
        strongswan.initiate(lab.node(peer.name).files.vici_socket, CLUSTER_CONNECTION, CHILD_NAME)
    watch.wait(timeout, say)
    say("sending LAN-to-LAN pings both ways")
    traffic = ping_all(lab, plan)
    members = member_sas(lab)
    paths = switch_paths(lab)
    tunnels = [tunnel_report(p.name, p.ike_version, watch.peer_sas(p.name), members,
                             paths[p.name], traffic[p.name], watch.up_after.get(p.name),
                             watch.last_sa.get(p.name))
               for p in plan.peers]
    all_up = len(watch.up_after) == len(plan.peers)
    timings = {"lab_up_s": round(lab_up_s, 2),
               "tunnels_up_s": round(max(watch.up_after.values()), 2) if all_up else None}
    run_dir = str(lab.run.path) if lab.keep else None
    return lab_report(plan.spec, tunnels, bucket_counters(lab), timings, run_dir)
