"""`ikelab run --chaos`: fail, restore, rehash and partition the cluster while every peer's LAN
pings the cluster's LAN every 100 ms, and report what each step cost.

The script: kill the member that holds the first peer's tunnel (daemons), restore it, rehash
to other fields, back over all members but the one holding the first peer's tunnel (drained),
and back over every member, cut the last peer's owner off the sync network for 10 s, take the
first peer's owner's links down, restore them.

Each step acts (through `lab.failover`), then waits until the cluster is whole again: every
tunnel ESTABLISHED with its CHILD SA on exactly one serving member, every member that should
serve serving, and every serving member's table identical, naming only serving members. The
step reports the longest ping outage any peer LAN saw and how long the cluster took to be
consistent again. The same pieces (`Pinger`, `consistency`) serve the tests and benchmarks.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import failover, strongswan
from .agent.daemon import query
from .outage import longest_outage, reply_times

RECOVERY_TIMEOUT = 45.0
SETTLE = 1.0  # traffic watched after the cluster is whole again, before the next step


class Pinger:
    """`ping -i 0.1 -D -O` from `host` to `address`, its output in a file; a context manager."""

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
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self.out.close()

    def replies(self) -> list[float]:
        return reply_times(self.path.read_text(errors="replace"))

    def replied_since(self, since: float) -> bool:
        """A reply came after Unix time `since`."""
        return any(t > since for t in self.replies())

    def outage(self, start: float, end: float) -> float:
        return longest_outage(self.replies(), start, end)


def tunnel_holders(lab, members=None) -> dict[str, list[str]]:
    """For each peer, the members (of `members`, default all) whose charon holds an ESTABLISHED
    IKE SA with an INSTALLED CHILD SA towards it (a dead member's charon holds nothing)."""
    result = {p.name: [] for p in lab.plan.peers}
    by_address = {str(p.seen_as): p.name for p in lab.plan.peers}
    for member in lab.plan.members:
        if members is not None and member.name not in members:
            continue
        node = lab.node(member.name)
        if node.charon is None or not node.charon.running():
            continue
        try:
            sas = strongswan.list_sas(node.files.vici_socket).values()
        except OSError:
            continue
        for sa in sas:
            installed = any(c.get("state") == "INSTALLED"
                            for c in sa.get("child-sas", {}).values())
            peer = by_address.get(sa.get("remote-host"))
            if peer and sa.get("state") == "ESTABLISHED" and installed:
                result[peer].append(member.name)
    return result


def peers_up(lab) -> bool:
    """Every peer holds an ESTABLISHED IKE SA with an INSTALLED CHILD SA."""
    for peer in lab.plan.peers:
        sas = strongswan.list_sas(lab.node(peer.name).files.vici_socket).values()
        if not any(sa["state"] == "ESTABLISHED" and any(
                c.get("state") == "INSTALLED" for c in sa.get("child-sas", {}).values())
                for sa in sas):
            return False
    return True


def consistency(lab, expected_serving: set[str]) -> str | None:
    """None when the cluster is whole: the expected members serve (and no others), their tables
    are identical and name only serving members, and every tunnel is up on exactly one of them.
    Otherwise what is still wrong, in a few words."""
    states, tables = {}, {}
    for member in sorted(expected_serving):
        try:
            states[member] = query(lab.node(member).files.agent_socket, "state", timeout=1.0)
            tables[member] = query(lab.node(member).files.agent_socket, "owners", timeout=1.0)
        except (OSError, ValueError):
            return f"{member}'s agent does not answer"
    for member, state in states.items():
        if state["state"] != "serving" or set(state["serving"]) != expected_serving:
            return f"{member} is {state['state']}, sees {state['serving']} serving"
    first = next(iter(tables.values()), {})
    if any(t != first for t in tables.values()):
        return "the tables differ"
    strays = {o for o in first.values()} - expected_serving
    if strays:
        return f"the table still names {', '.join(sorted(strays))}"
    # A member cut off (links down) may still hold stale SAs; only serving members count.
    holders = tunnel_holders(lab, expected_serving)
    for peer, members in holders.items():
        if len(members) != 1:
            return f"{peer}'s tunnel is held by {members or 'nobody'}"
    if not peers_up(lab):
        return "a peer's tunnel is down"
    return None


def wait_consistent(lab, expected_serving: set[str], timeout: float = RECOVERY_TIMEOUT) -> tuple[
        float | None, str | None]:
    """(seconds until consistent or None, the last thing still wrong)."""
    start = time.monotonic()
    problem = None
    while time.monotonic() - start < timeout:
        problem = consistency(lab, expected_serving)
        if problem is None:
            return time.monotonic() - start, None
        time.sleep(0.1)
    return None, problem


@dataclass
class Step:
    name: str
    outage_s: float = 0.0
    consistent_after_s: float | None = None
    problem: str | None = None
    outages: dict = field(default_factory=dict)  # peer -> longest outage


def run_chaos(lab, say=lambda message: None) -> list[dict]:
    """The scripted sequence; returns one dict per step (see `Step`)."""
    members = {m.name for m in lab.plan.members}
    original_hash = lab.spec.hash
    other_hash = "l3" if original_hash != "l3" else "l4"
    target = str(lab.plan.lan_host.interfaces[0].address.ip)
    pingers = {p.name: Pinger(lab.node(p.lan_host), target,
                              lab.run.path / f"chaos_ping_{p.name}.txt")
               for p in lab.plan.peers}
    steps = []
    for pinger in pingers.values():
        pinger.__enter__()
    try:
        start = time.time()
        while not all(p.replied_since(start) for p in pingers.values()):
            if time.time() - start > 10:
                raise RuntimeError("LAN-to-LAN pings got no reply before the chaos started")
            time.sleep(0.1)

        def step(name, act, serving, hold=0.0, after=None):
            """Act, hold that long (the scripted length of a partition, or traffic watched
            after a rehash), undo with `after`, then wait for the cluster to be whole; the
            outage counts from the action, consistency from the end of the hold."""
            say(f"chaos: {name}")
            began = time.time()
            act()
            if hold:
                time.sleep(hold)
            if after:
                after()
            held = time.time()
            took, problem = wait_consistent(lab, serving)
            time.sleep(SETTLE)
            result = Step(name, consistent_after_s=None if took is None else
                          round(time.time() - held - SETTLE, 2), problem=problem)
            result.outages = {p: pinger.outage(began, time.time())
                              for p, pinger in pingers.items()}
            result.outage_s = max(result.outages.values())
            steps.append(result.__dict__)
            say(f"chaos: {name}: outage {result.outage_s:.1f} s, consistent after "
                + (f"{result.consistent_after_s:.1f} s" if took is not None
                   else f"never ({problem})"))
            return took is not None

        owner = holder(lab, lab.plan.peers[0].name) or sorted(members)[0]
        net = lab.net
        ok = step(f"fail {owner} (daemons killed, it owned {lab.plan.peers[0].name}'s tunnel)",
                  lambda: failover.fail(net, owner, "daemons"), members - {owner})
        ok = ok and step(f"restore {owner}", lambda: failover.restore(net, owner), members)
        ok = ok and step(f"rehash {other_hash} (2 s of traffic watched)",
                         lambda: failover.rehash(net, other_hash), members, hold=2.0)
        held = holder(lab, lab.plan.peers[0].name) or sorted(members)[0]
        rest = sorted(members - {held})
        ok = ok and step(f"rehash {original_hash} over {','.join(rest)} ({held}, holding "
                         f"{lab.plan.peers[0].name}'s tunnel, drained; 2 s watched)",
                         lambda: failover.rehash(net, original_hash, rest), members, hold=2.0)
        ok = ok and step(f"rehash {original_hash} over every member (2 s watched)",
                         lambda: failover.rehash(net, original_hash), members, hold=2.0)
        victim = holder(lab, lab.plan.peers[-1].name) or sorted(members)[-1]
        ok = ok and step(f"partition {victim} from the sync network for 10 s, then heal",
                         lambda: failover.partition(net, victim), members, hold=10.0,
                         after=lambda: failover.heal(net, victim))
        links = holder(lab, lab.plan.peers[0].name) or sorted(members)[0]
        ok = ok and step(f"fail {links} (links down)", lambda: failover.fail(net, links, "links"),
                         members - {links})
        ok and step(f"restore {links}", lambda: failover.restore(net, links), members)
    finally:
        for pinger in pingers.values():
            pinger.__exit__(None, None, None)
    return steps


def holder(lab, peer: str, among=None) -> str | None:
    """The one member (of `among`, default all) holding `peer`'s tunnel, or None."""
    held = tunnel_holders(lab, None if among is None else set(among))[peer]
    return held[0] if len(held) == 1 else None


def forgotten_by(lab, dead: str, survivors) -> bool:
    """No survivor counts `dead` live, and no survivor's table names it."""
    for member in survivors:
        sock = lab.node(member).files.agent_socket
        if dead in query(sock, "state")["live"] or dead in query(sock, "owners").values():
            return False
    return True
