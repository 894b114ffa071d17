"""What the lab reads from a running cluster to judge it: LAN pings and their outages, who
holds which tunnel or IKE SA, whether the cluster is whole again, whether a dead member is
forgotten.

Every probe asks a daemon (charon over vici, an agent over its control socket) or reads what
ping itself wrote; none sleeps and hopes. `ikelab run --chaos` and the scenarios
(`lab.run.scenarios`), the integration tests and the benchmarks share them, so "consistent" and
"holds" mean one thing everywhere.
"""

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import strongswan
from ..agent.io.control import query
from ..agent.names import IKE_PORT, MemberState
from ..net import daemons
from ..show.outage import duplicates, longest_outage, lost, reply_times
from ..show.report import holder_states

RECOVERY_TIMEOUT = 45.0
POLL_INTERVAL = 0.05


class Pinger:
    """`ping -i 0.1 -D -O` from `node` to `address`, its output in a file; a context manager."""

    def __init__(self, node, address: str, path: Path):
        self.node, self.address, self.path = node, address, Path(path)
        self.process = None

    def __enter__(self) -> "Pinger":
        self.out = open(self.path, "w")
        # Line-buffered: ping's stdout to a file is otherwise flushed every 4 KB (5 s).
        self.process = self.node.popen(["stdbuf", "-oL", "ping", "-n", "-i", "0.1", "-D", "-O",
                                        self.address], stdout=self.out, stderr=self.out)
        return self

    def __exit__(self, *exc) -> None:
        daemons.end(self.process)
        self.out.close()

    def replies(self) -> list[float]:
        return reply_times(self.path.read_text(errors="replace"))

    def replied_since(self, since: float) -> bool:
        """A reply came after Unix time `since`."""
        return any(t > since for t in self.replies())

    def outage(self, start: float, end: float) -> float:
        """The longest stretch without a reply overlapping Unix times [start, end]
        (`lab.show.outage`)."""
        return longest_outage(self.replies(), start, end)

    def lost(self, start: float, end: float) -> int:
        """Echo requests sent in Unix times [start, end] never answered."""
        return lost(self.path.read_text(errors="replace"), start, end)

    def duplicates(self) -> int:
        """Echo replies that came twice."""
        return duplicates(self.path.read_text(errors="replace"))


def ask_agent(lab, member: str, request: str = "status", timeout: float = 5.0) -> dict:
    """What `member`'s agent answers to `request` (`state`, `owners`, `status`); raises
    OSError if it does not answer and ValueError if the answer is not JSON."""
    return query(lab.node(member).files.agent_socket, request, timeout)


def member_sas(lab, among=None) -> dict[str, dict]:
    """member -> the IKE SAs its charon holds (by unique id, with their CHILD SAs), for the
    members (of `among`, default all) whose charon runs and answers: a dead member's charon
    holds nothing."""
    result = {}
    for member in lab.plan.members:
        if among is not None and member.name not in among:
            continue
        node = lab.node(member.name)
        if node.charon is None or not node.charon.running():
            continue
        try:
            result[member.name] = strongswan.list_sas(node.files.vici_socket)
        except OSError:
            continue
    return result


def tunnel_holders(lab, among=None) -> dict[str, list[str]]:
    """For each peer, the members (of `among`, default all) whose charon holds a tunnel with
    it: an ESTABLISHED IKE SA with an INSTALLED CHILD SA."""
    result = {p.name: [] for p in lab.plan.peers}
    by_address = {str(p.seen_as): p.name for p in lab.plan.peers}
    for member, sas in member_sas(lab, among).items():
        for sa in sas.values():
            peer = by_address.get(sa.get("remote-host"))
            if peer and strongswan.tunnel_up(sa):
                result[peer].append(member)
    return result


def tunnel_holder(lab, peer: str, among=None) -> str | None:
    """The one member (of `among`, default all) holding `peer`'s tunnel, or None."""
    held = tunnel_holders(lab, among)[peer]
    return held[0] if len(held) == 1 else None


def ike_sa_holder(lab, initiator_spi: str) -> str | None:
    """The one member holding an ESTABLISHED IKE SA with this initiator SPI, or None."""
    states = holder_states(initiator_spi, member_sas(lab))
    held = [m for m, state in states.items() if state == "ESTABLISHED"]
    return held[0] if len(held) == 1 else None


TUNNEL_TABLE, STEERING_TABLE = 220, 210  # kernel-libipsec's; the agents' (lab.agent.io.routes)


def kernel_routes(node, table: int) -> dict[str, str | None]:
    """prefix -> gateway (None for a route to a device) in routing table `table` of `node`,
    as its kernel has them now; empty if the table does not exist."""
    routes = {}
    for line in node.cmd(f"ip -4 -o route show table {table} 2>/dev/null; "
                         f"ip -6 -o route show table {table} 2>/dev/null").splitlines():
        words = line.split()
        if words and "/" in words[0]:
            routes[words[0]] = words[words.index("via") + 1] if "via" in words else None
    return routes


def data_path_complete(lab, peers) -> set[str]:
    """The peers (of `peers`, names) whose LAN-to-LAN data path is complete in the kernels:
    the peer routes the cluster's LAN into its tunnel; exactly one member routes the peer's
    LAN into its own, and every other member the LAN switch hands traffic to routes the
    peer's LAN to that member over the sync network (the agents' steering). Without agents
    nobody steers: the holder's route is the whole path."""
    if not peers:
        return set()
    plan = lab.plan
    tunnels = {m.name: kernel_routes(lab.node(m.name), TUNNEL_TABLE) for m in plan.members}
    steering = ({m.name: kernel_routes(lab.node(m.name), STEERING_TABLE)
                 for m in plan.members} if plan.spec.agent else {})
    sync_of = {(m.name, 4): str(m.sync_address) for m in plan.members}
    sync_of |= {(m.name, 6): str(m.sync_address6) for m in plan.members}
    serving = lab.switch("internal").buckets
    cluster_lans = [str(lan) for lan in plan.cluster_lans]
    complete = set()
    for peer in plan.peers:
        if peer.name not in peers:
            continue
        holders = {m for m, routes in tunnels.items() for lan in peer.lans if str(lan) in routes}
        if len(holders) != 1 or not all(
                str(lan) in tunnels[next(iter(holders))] for lan in peer.lans):
            continue
        holder = next(iter(holders))
        theirs = kernel_routes(lab.node(peer.name), TUNNEL_TABLE)
        if not all(lan in theirs for lan in cluster_lans):
            continue
        if not plan.spec.agent or steered_to(holder, {
                str(lan): sync_of[(holder, lan.version)] for lan in peer.lans}, serving, steering):
            complete.add(peer.name)
    return complete


def steered_to(holder: str, routes: dict[str, str], serving: list[str],
               steering: dict[str, dict[str, str | None]]) -> bool:
    """The LAN switch feeds someone (`serving`), and every member it feeds but `holder` has
    each of `routes` (prefix -> the holder's sync address) in its steering table. An empty
    LAN switch hands the traffic to nobody: no data path, however the routes."""
    return bool(serving) and all(m == holder or steering[m].get(prefix) == via
                                 for m in serving for prefix, via in routes.items())


def lans_steered(lab, lans) -> set[str]:
    """The prefixes (of `lans`, as the kernel spells them) whose path through the cluster is
    complete in the members' kernels: exactly one member routes the prefix into its tunnel,
    and every other member the LAN switch hands traffic to steers it to that member (a crowd
    site's LAN: `data_path_complete` checks a peer's, its own routes too)."""
    plan = lab.plan
    tunnels = {m.name: kernel_routes(lab.node(m.name), TUNNEL_TABLE) for m in plan.members}
    steering = {m.name: kernel_routes(lab.node(m.name), STEERING_TABLE) for m in plan.members}
    sync_of = {m.name: str(m.sync_address) for m in plan.members}
    serving = lab.switch("internal").buckets
    done = set()
    for lan in lans:
        holders = [m for m, routes in tunnels.items() if lan in routes]
        if len(holders) == 1 and steered_to(holders[0], {lan: sync_of[holders[0]]}, serving,
                                            steering):
            done.add(lan)
    return done


def peers_up(lab) -> bool:
    """Every peer holds a tunnel to the cluster."""
    return all(any(strongswan.tunnel_up(sa) for sa in strongswan.list_sas(
        lab.node(peer.name).files.vici_socket).values()) for peer in lab.plan.peers)


def consistency(lab, expected_serving: set[str]) -> str | None:
    """None when the cluster is whole: the expected members serve (and no others), their tables
    are identical and name only serving members, and every tunnel is up on exactly one of them.
    Otherwise what is still wrong, in a few words."""
    states, tables = {}, {}
    for member in sorted(expected_serving):
        try:
            states[member] = ask_agent(lab, member, "state", timeout=1.0)
            tables[member] = ask_agent(lab, member, "owners", timeout=1.0)
        except (OSError, ValueError):
            return f"{member}'s agent does not answer"
    for member, state in states.items():
        if state["state"] != MemberState.SERVING or set(state["serving"]) != expected_serving:
            return f"{member} is {state['state']}, sees {state['serving']} serving"
    first = next(iter(tables.values()), {})
    if any(t != first for t in tables.values()):
        return "the tables differ"
    strays = set(first.values()) - expected_serving
    if strays:
        return f"the table still names {', '.join(sorted(strays))}"
    # A member cut off (links down) may still hold stale SAs; only serving members count.
    for peer, members in tunnel_holders(lab, expected_serving).items():
        if len(members) != 1:
            return f"{peer}'s tunnel is held by {members or 'nobody'}"
    if not peers_up(lab):
        return "a peer's tunnel is down"
    return None


def forgotten_by(lab, dead: str, survivors) -> bool:
    """No survivor counts `dead` live, and no survivor's table names it."""
    for member in survivors:
        if (dead in ask_agent(lab, member, "state")["live"]
                or dead in ask_agent(lab, member, "owners").values()):
            return False
    return True


@dataclass
class Recovery:
    """How a wait for the cluster to be whole again ended (seconds from the wait's start)."""

    consistent_after_s: float | None  # None: not within the timeout
    problem: str | None  # what was still wrong, if it never became consistent
    forgotten_after_s: float | None = None  # until the departed member was forgotten


def wait_consistent(lab, expected_serving: set[str], timeout: float = RECOVERY_TIMEOUT,
                    departed: str | None = None) -> Recovery:
    """Poll until the cluster is consistent with `expected_serving` serving, at most `timeout`
    seconds; with `departed` (a member that left), also note when the others forgot it."""
    start = time.monotonic()
    forgotten = problem = None
    while time.monotonic() - start < timeout:
        if departed and forgotten is None and _forgotten(lab, departed, expected_serving):
            forgotten = time.monotonic() - start
        problem = consistency(lab, expected_serving)
        if problem is None:
            took = time.monotonic() - start
            if departed and forgotten is None and _forgotten(lab, departed, expected_serving):
                forgotten = took
            return Recovery(took, None, forgotten)
        time.sleep(POLL_INTERVAL)
    return Recovery(None, problem, forgotten)


def _forgotten(lab, dead: str, survivors) -> bool:
    try:
        return forgotten_by(lab, dead, survivors)
    except (OSError, ValueError):
        return False  # a survivor that does not answer has not said it forgot


def under_load(lab, seconds: float, flood_rate: int = 1000) -> dict:
    """A hard time for the cluster: for `seconds`, four iperf3 transfers (4 streams each, two
    each way) between the first two peers' LANs and the cluster's LAN host, and an unspoofed
    IKEv2 IKE_SA_INIT flood of `flood_rate` packets/s from p1. Returns the bytes each transfer
    delivered (`received`) and each agent's counters afterwards (`counters`)."""
    hc, target = lab.node("hc"), str(lab.plan.lan_host.interfaces[0].addresses[0].ip)
    hosts = [f"h{p.name[1:]}" for p in lab.plan.peers[:2]] * 2
    ports = [5201 + n for n in range(len(hosts))]
    # Their output goes to files, not pipes: ten minutes of it would fill a pipe nobody reads
    # before the end, and block iperf3.
    servers = [hc.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL) for port in ports]
    outputs = [tempfile.TemporaryFile() for _ in ports]
    clients = []
    try:
        deadline = time.monotonic() + 10
        while not all(f":{port} " in hc.cmd("ss -ltnH") for port in ports):
            if time.monotonic() > deadline:
                raise OSError("iperf3 servers did not listen")
            time.sleep(0.05)
        clients = [lab.node(host).popen(["iperf3", "-J", "-c", target, "-p", str(port), "-t",
                                         str(seconds), "-P", "4"] + (["-R"] if n % 2 else []),
                                        stdout=out, stderr=subprocess.DEVNULL)
                   for n, (host, port, out) in enumerate(zip(sorted(hosts), ports, outputs))]
        flood = lab.net.flood("p1", flood_rate, seconds, 2, IKE_PORT)
        flood.wait(seconds + 30)
        received = []
        for client, out in zip(clients, outputs):
            client.wait(timeout=60)
            out.seek(0)
            try:
                received.append(json.loads(out.read())["end"]["sum_received"]["bytes"])
            except (ValueError, KeyError, TypeError):
                received.append(0)
    finally:
        for process in servers + clients:
            daemons.end(process)
        for out in outputs:
            out.close()
    return {"received": received,
            "counters": {m.name: ask_agent(lab, m.name)["counters"] for m in lab.plan.members}}
