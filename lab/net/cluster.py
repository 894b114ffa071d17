"""The lab's Mininet network, and what can be done to its cluster while it runs: fail and
restore a member, cut one off the sync network and heal it, rehash the switches; plus what
the members and switches say of it (`membership`).

These are operations of the net, as Mininet's own `configLinkStatus` is. The CLI's commands,
`ikelab run --chaos`, the scenarios, the tests and the benchmarks all call them, so each
means the same thing everywhere. A bad name or option raises FailoverError with one line for
the user. `ikelab run` builds a ClusterNet; under plain `mn`, topologies/ikecluster.py makes
it the `Mininet` that mn builds.
"""

import time
from concurrent.futures import ThreadPoolExecutor

from mininet.log import error
from mininet.net import Mininet

from ..agent.io.control import query
from ..agent.names import IKE_PORT, NATT_PORT, MemberState
from ..plan.topology import HASH_MODES, INTERNET, INTERNET6
from .daemons import READY_POLL, Daemon, DaemonConfigError
from .flood import Flood
from .nodes import ClusterMember, LabNode, PeerGateway, SyncBridge
from .switch import HashingSwitch, SwitchError

HOW = ("daemons", "links")
DRAIN_TIMEOUT = 30.0
SERVE_TIMEOUT = 15.0  # from the agents' start to every member serving (about a second)
SETTLERS = 8  # charons loading their configs at once (swanctl waits on charon, not the CPU)


def _settle(pair: tuple[LabNode, Daemon]) -> tuple[LabNode, Exception | None]:
    node, daemon = pair
    try:
        daemon.settle()
        return node, None
    except DaemonConfigError as exc:
        return node, exc


class FailoverError(ValueError):
    """An action the lab cannot take; the message is one line."""


class ClusterNet(Mininet):
    """A Mininet network holding the lab's cluster, with its failover operations, and the
    floods its peers may be made to send."""

    def __init__(self, *args, **params):
        self.floods: list[Flood] = []
        self.captures = None  # a lab.show.captures.Captures, when the lab set one up
        super().__init__(*args, **params)

    def build(self):
        super().build()
        self.wait_for_daemons()

    def start(self):
        super().start()
        self.wait_serving()

    def wait_serving(self, timeout: float = SERVE_TIMEOUT) -> None:
        """Every agent starts joining, and serves once the witness backs it and the others
        count it live: wait for every member to serve and for both hashing switches to give
        each one its bucket, so that the lab takes traffic when `start` returns. FailoverError
        names the members that did not serve (under plain mn, it is printed)."""
        members = [n for n in self.cluster_members() if n.agent is not None and not n.failed]
        names = {n.name for n in members}
        end = time.monotonic() + timeout
        while True:
            states = {}
            for node in members:
                try:
                    states[node.name] = query(node.files.agent_socket, "state",
                                              timeout=1.0)["state"]
                except (OSError, ValueError) as exc:
                    states[node.name] = f"no answer ({exc.__class__.__name__})"
            if (all(s == MemberState.SERVING for s in states.values())
                    and all(names <= set(s.buckets) for s in self.hashing_switches())):
                return
            if time.monotonic() > end:
                late = ", ".join(f"{m} {s}" for m, s in sorted(states.items())
                                 if s != MemberState.SERVING)
                message = (f"not every member served within {timeout:g} s: "
                           f"{late or 'the switches did not follow'}")
                if all(getattr(n, "strict", True) for n in members):
                    raise FailoverError(message)
                error(f"*** {message}\n")
                return
            time.sleep(READY_POLL)

    def wait_for_daemons(self) -> None:
        """Every node launched its daemons in `config()`: wait for all of them together, then
        let them settle (each charon loads its swanctl.conf) a few at a time. A daemon that
        refuses raises DaemonConfigError from its node (or is reported, under plain mn)."""
        pending = [(node, daemon) for node in self.hosts if isinstance(node, LabNode)
                   for daemon in node.daemons]
        ready = []
        while pending:
            waiting = []
            for node, daemon in pending:
                try:
                    (ready if daemon.started() else waiting).append((node, daemon))
                except DaemonConfigError as exc:
                    node.failed_to_start(exc)
            pending = waiting
            if pending:
                time.sleep(READY_POLL)
        with ThreadPoolExecutor(SETTLERS) as pool:
            for node, exc in pool.map(_settle, ready):
                if exc is not None:
                    node.failed_to_start(exc)

    def stop(self):
        self.stop_floods()
        if self.captures is not None:
            self.captures.stop()  # before the ports go: the files end cleanly
        super().stop()

    def flood(self, peer: str, rate: float = 1000.0, seconds: float = 30.0, ike: int = 2,
              port: int = IKE_PORT, spoof: bool = False, impersonating: bool = True) -> Flood:
        """Have `peer` flood the cluster with IKE first messages (lab.net.flood), in the
        background; with `spoof`, from random addresses of the lab's internet, the peers' own
        among them unless not `impersonating` (IKEv1 has no cookies: a flood that spoofs a
        peer's address fills charon's per-IP half-open limit, and that peer is locked out)."""
        node = self.nameToNode.get(peer)
        if not isinstance(node, PeerGateway):
            peers = ", ".join(n.name for n in self.hosts if isinstance(n, PeerGateway))
            raise FailoverError(f"{peer!r} is not a peer (peers: {peers})")
        if not (0 < rate <= 100000 and 0 < seconds <= 3600 and ike in (1, 2)
                and port in (IKE_PORT, NATT_PORT)):
            raise FailoverError("flood: rate 0-100000/s, seconds 0-3600, ike 1|2, port "
                                "500|4500")
        vip = self.topo.plan.peer(peer).vip  # the virtual IP of the peer's family
        internet = INTERNET6 if vip.version == 6 else INTERNET
        peers = () if impersonating else tuple(
            sorted({str(a) for p in self.topo.plan.peers for a in (p.address, p.seen_as)}))
        flood = Flood(node, rate, seconds, ike, port, str(internet) if spoof else None, str(vip),
                      spare=peers)
        self.floods = [f for f in self.floods if f.running()] + [flood]
        return flood

    def stop_floods(self) -> int:
        """Stop every flood still running; how many there were."""
        running = [f for f in self.floods if f.running()]
        for flood in running:
            flood.stop()
        return len(running)

    def cluster_members(self) -> list[ClusterMember]:
        return [n for n in self.hosts if isinstance(n, ClusterMember)]

    def member_names(self) -> list[str]:
        return [n.name for n in self.cluster_members()]

    def member(self, name: str) -> ClusterMember:
        """The cluster member called `name`; FailoverError if there is none."""
        node = self.nameToNode.get(name)
        if not isinstance(node, ClusterMember):
            raise FailoverError(f"{name!r} is not a cluster member "
                                f"(members: {', '.join(self.member_names())})")
        return node

    def hashing_switches(self) -> list[HashingSwitch]:
        return [s for s in self.switches if isinstance(s, HashingSwitch)]

    def sync_bridge(self) -> SyncBridge:
        return next(n for n in self.hosts if isinstance(n, SyncBridge))

    def fail(self, name: str, how: str = "daemons") -> None:
        """Kill `name`'s daemons (`daemons`) or take its links down (`links`)."""
        if how not in HOW:
            raise FailoverError(f"how must be one of {', '.join(HOW)} (got {how!r})")
        member = self.member(name)
        if member.failed:
            raise FailoverError(f"{name} has already failed ({member.failed}); restore it first")
        member.fail(how)

    def restore(self, name: str) -> None:
        """Bring a failed member back; it rejoins (full table first) before it takes traffic."""
        member = self.member(name)
        if not member.failed:
            raise FailoverError(f"{name} has not failed")
        try:
            member.restore()
        except (DaemonConfigError, OSError) as exc:
            raise FailoverError(f"{name} did not come back: {exc}") from None

    def drain(self, name: str, timeout: float = DRAIN_TIMEOUT) -> None:
        """Have `name` hand every tunnel over to the others, make-before-break, and stop
        serving; return once it holds none (the switches give it no traffic then). Only a
        serving member drains: any other is refused at once, with its state (its agent
        would ignore the request, and the wait would end in a misleading timeout)."""
        state = self._ask(name, "state")["state"]
        if state not in (MemberState.SERVING, MemberState.DRAINING):  # draining: wait for it
            raise FailoverError(f"{name} cannot drain: it is {state}, not serving")
        if state == MemberState.SERVING:
            self._ask(name, "drain")
        end = time.monotonic() + timeout
        while (state := self._ask(name, "state"))["state"] != MemberState.DRAINED:
            if time.monotonic() > end:
                raise FailoverError(f"{name} still holds {state.get('holds')} tunnels after "
                                    f"{timeout:g} s of draining ({state['state']})")
            time.sleep(READY_POLL)

    def undrain(self, name: str) -> None:
        """Have a drained (or draining) member serve again; the others even the tunnels out
        over it unless the lab runs with --no-rebalance. Any other member is refused at once,
        with its state."""
        state = self._ask(name, "state")["state"]
        if state not in (MemberState.DRAINING, MemberState.DRAINED):
            raise FailoverError(f"{name} cannot undrain: it is {state}, not drained")
        self._ask(name, "undrain")

    def stop_member(self, name: str) -> None:
        """Planned maintenance: drain `name`, then stop its daemons (`restore` brings it
        back)."""
        member = self.member(name)
        if member.failed:
            raise FailoverError(f"{name} has already failed ({member.failed}); restore it first")
        if self._ask(name, "state")["state"] != MemberState.DRAINED:  # `drain` first is fine
            self.drain(name)
        member.fail("stopped")

    def _ask(self, name: str, request: str) -> dict:
        member = self.member(name)
        if member.failed or member.agent is None:
            raise FailoverError(f"{name} has no agent to ask (failed: {member.failed})")
        try:
            return query(member.files.agent_socket, request, timeout=2.0)
        except (OSError, ValueError) as exc:
            raise FailoverError(f"{name}'s agent does not answer: {exc}") from None

    def partition(self, name: str) -> None:
        """Drop every frame between `name` and the sync network."""
        self._sync_port(name, cut=True)

    def heal(self, name: str) -> None:
        """Let `name`'s sync traffic through again."""
        self._sync_port(name, cut=False)

    def _sync_port(self, name: str, cut: bool) -> None:
        self.member(name)
        bridge = self.sync_bridge()
        try:
            (bridge.partition if cut else bridge.heal)(name)
        except RuntimeError as exc:
            raise FailoverError(str(exc)) from None

    def rehash(self, mode: str, members: list[str] | None = None) -> None:
        """Make both hashing switches hash on `mode`'s fields from now on, over `members`
        (default: every serving member); the members left out are drained, not failed."""
        if mode not in HASH_MODES:
            raise FailoverError(f"hash must be one of {', '.join(HASH_MODES)} (got {mode!r})")
        for name in members or []:
            self.member(name)
        # Make before break: the members left out hand their tunnels over first; the ones
        # coming back serve again (and take their share back).
        for node in self.cluster_members():
            if node.failed or node.agent is None:
                continue
            state = self._ask(node.name, "state")["state"]
            if members and node.name not in members:
                if state != MemberState.DRAINED:  # a joining or isolated one is refused
                    self.drain(node.name)
            elif state in (MemberState.DRAINING, MemberState.DRAINED):
                self.undrain(node.name)
        try:
            for switch in self.hashing_switches():
                switch.rehash(mode, set(members) if members else None)
        except SwitchError as exc:
            raise FailoverError(str(exc)) from None

    def membership(self) -> dict[str, dict]:
        """Each member's own view (state, live, serving), or why it cannot say; plus, under
        the key `witness`, whom the witness backs and what each member last told it, and
        under `switches`, what each hashing switch gives buckets to, and how many of its
        health checks failed unexpectedly."""
        result = {}
        for node in self.cluster_members():
            if node.failed in ("daemons", "stopped"):
                result[node.name] = {"state": "failed (daemons killed)" if node.failed ==
                                     "daemons" else "stopped (daemons stopped after a drain)"}
                continue
            try:
                result[node.name] = query(node.files.agent_socket, "state", timeout=1.0)
            except (OSError, ValueError) as exc:
                result[node.name] = {"state": f"no agent ({exc.__class__.__name__})"}
            if node.failed == "links":
                result[node.name]["failed"] = "links down"
        witness = self.sync_bridge().witness
        if witness is not None:
            try:
                result["witness"] = query(witness.files.witness_socket, "status", timeout=1.0)
            except (OSError, ValueError) as exc:
                result["witness"] = {"error": exc.__class__.__name__}
        result["switches"] = {s.name: {"buckets": s.buckets, "hash": s.hash_mode,
                                       "drained": sorted(set(s.members) - s.allowed)
                                       if s.allowed is not None else [],
                                       "health_errors": s.health_errors}
                              for s in self.hashing_switches()}
        return result
