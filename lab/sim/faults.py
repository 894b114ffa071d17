"""Faults, far more often than reality would bring them: members crash and come back empty,
stall and resume late, lose their links; the sync network loses, duplicates, delays and
reorders, and splits in any shape; an attacker on it replays what it captured; the switch
rehashes; floods come and go; members are drained and undrained; peers restart.

Faults come from a stream of their own (`FaultPlan`, its own random generator), one after
another at random intervals, so that leaving one out (`without`, for shrinking a failing run)
keeps every other fault as it was. Each fault has a start and, most, an end that undoes it;
`heal_all` undoes whatever is still in force, for the quiet tail in which the cluster must
recover.
"""

import random
from dataclasses import dataclass, field

from lab.agent.names import MemberState

from .network import LinkWeather

KINDS = ("crash", "stall", "links", "cut", "half", "pairs", "split", "weather", "rehash",
         "flood", "drain", "peer-restart", "external-loss", "replay")


@dataclass
class Fault:
    index: int
    kind: str
    at: float
    duration: float
    target: tuple = ()
    detail: dict = field(default_factory=dict)

    def __str__(self) -> str:
        what = ",".join(map(str, self.target))
        extra = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return (f"#{self.index} {self.kind}({what}) at {self.at:.3f}s for {self.duration:.2f}s"
                + (f" {extra}" if extra else ""))


class FaultPlan:
    """Draws faults for one world, applies them as their time comes and undoes them."""

    def __init__(self, world, seed: int, without: frozenset = frozenset()):
        self.world = world
        self.rng = random.Random(seed ^ 0x5EED_FA17)
        self.without = without
        self.drawn = 0
        self.applied: list[Fault] = []
        self.active: dict[int, Fault] = {}
        self.stopped = False

    def start(self) -> None:
        if self.world.spec.fault_rate > 0:
            self.world.after(self._gap(), self._next)

    def _gap(self) -> float:
        return self.rng.expovariate(self.world.spec.fault_rate)

    def _next(self) -> None:
        if self.stopped:
            return
        fault = self._draw()
        self.drawn += 1
        if fault is not None and fault.index not in self.without:
            self.applied.append(fault)
            self.active[fault.index] = fault
            self._apply(fault)
            self.world.after(fault.duration, self._undo, fault)
        self.world.after(self._gap(), self._next)

    def _draw(self) -> Fault | None:
        w, rng = self.world, self.rng
        members = sorted(w.members)
        kind = rng.choice(KINDS)
        index, now = self.drawn, w.now
        duration = rng.choice((0.1, 0.3, 0.8, 2.0, 5.0)) * rng.uniform(0.5, 1.5)
        member = rng.choice(members)
        if kind in ("crash", "stall", "links", "cut", "drain"):
            return Fault(index, kind, now, duration, (member,))
        if kind == "half":
            return Fault(index, kind, now, duration, (member,), {"side": rng.choice(("tx", "rx"))})
        if kind == "pairs":
            pairs = {(a, b) for a in members for b in members
                     if a != b and rng.random() < 0.3}
            return Fault(index, kind, now, duration, tuple(sorted(pairs)))
        if kind == "split":
            side = {m for m in members if rng.random() < 0.5}
            return Fault(index, kind, now, duration, tuple(sorted(side)))
        if kind == "weather":
            return Fault(index, kind, now, duration, (), {
                "loss": rng.choice((0.05, 0.2, 0.5)), "duplicate": rng.choice((0.0, 0.1, 0.3)),
                "late": rng.choice((0.0, 0.3)), "jitter": rng.choice((0.0005, 0.005, 0.05))})
        if kind == "rehash":
            allowed = tuple(m for m in members if rng.random() < 0.7) or (member,)
            return Fault(index, kind, now, duration, allowed, {
                "hash": rng.choice(("l3", "l4", "split")), "salt": rng.getrandbits(16),
                "all": rng.random() < 0.5})
        if kind == "flood":
            return None if not w.spec.flood else Fault(index, kind, now, duration)
        if kind == "peer-restart":
            return Fault(index, kind, now, 0.0, (rng.randrange(len(w.peers)),))
        if kind == "replay":
            return Fault(index, kind, now, 0.0, (), {"datagrams": rng.choice((10, 50, 200))})
        return Fault(index, kind, now, duration, (), {"loss": rng.choice((0.05, 0.3))})

    def _apply(self, fault: Fault) -> None:
        w, net = self.world, self.world.net
        member = w.members[fault.target[0]] if fault.kind in (
            "crash", "stall", "links", "cut", "half", "drain") else None
        if fault.kind == "crash":
            w.crash(member)
        elif fault.kind == "stall":
            w.stall(member, fault.duration)
        elif fault.kind == "links":
            w.set_links(member, False)
        elif fault.kind == "cut":
            net.tx_down.add(member.index)
            net.rx_down.add(member.index)
        elif fault.kind == "half":
            (net.tx_down if fault.detail["side"] == "tx" else net.rx_down).add(member.index)
        elif fault.kind == "pairs":
            net.cut |= set(fault.target)
        elif fault.kind == "split":
            side, others = set(fault.target), set(w.members) - set(fault.target)
            net.cut |= {(a, b) for a in side for b in others} | {
                (b, a) for a in side for b in others}
        elif fault.kind == "weather":
            d = fault.detail
            net.weather = LinkWeather(loss=d["loss"], duplicate=d["duplicate"],
                                      late_copy=d["late"], delay=0.0002, jitter=d["jitter"])
        elif fault.kind == "rehash":
            allowed = None if fault.detail["all"] else {f"m{i}" for i in fault.target}
            w.switch.rehash(fault.detail["hash"], allowed, fault.detail["salt"])
        elif fault.kind == "flood":
            w.flood(fault.duration)
        elif fault.kind == "drain":
            w.drain(member, True)
        elif fault.kind == "peer-restart":
            peer = w.peers[fault.target[0]]
            peer.daemon.clear()
            w.after(0.01, w.peer_connects, peer)
        elif fault.kind == "external-loss":
            w.external_loss = fault.detail["loss"]
        elif fault.kind == "replay":
            w.replay(fault.detail["datagrams"])

    def _undo(self, fault: Fault) -> None:
        if self.active.pop(fault.index, None) is None:
            return
        w, net = self.world, self.world.net
        member = w.members[fault.target[0]] if fault.target and fault.kind in (
            "crash", "links", "cut", "half", "drain") else None
        if fault.kind == "crash":
            w.restart(member)
        elif fault.kind == "links":
            w.set_links(member, True)
        elif fault.kind == "cut":
            net.tx_down.discard(member.index)
            net.rx_down.discard(member.index)
        elif fault.kind == "half":
            (net.tx_down if fault.detail["side"] == "tx" else net.rx_down).discard(member.index)
        elif fault.kind in ("pairs", "split"):
            self._recut()
        elif fault.kind == "weather":
            if not any(f.kind == "weather" for f in self.active.values()):
                net.weather = LinkWeather()
        elif fault.kind == "drain":
            w.drain(member, False)
        elif fault.kind == "external-loss":
            if not any(f.kind == "external-loss" for f in self.active.values()):
                w.external_loss = w.spec.external_loss

    def _recut(self) -> None:
        """The pairs still cut by the faults in force."""
        net, members = self.world.net, set(self.world.members)
        net.cut.clear()
        for fault in self.active.values():
            if fault.kind == "pairs":
                net.cut |= set(fault.target)
            elif fault.kind == "split":
                side, others = set(fault.target), members - set(fault.target)
                net.cut |= {(a, b) for a in side for b in others} | {
                    (b, a) for a in side for b in others}

    def heal_all(self) -> None:
        """No new faults; everything in force is undone now; every member serves again; no
        more floods or rekeys: the cluster is left to settle."""
        self.stopped = True
        for fault in sorted(self.active.values(), key=lambda f: f.index):
            self._undo(fault)
        w = self.world
        w.net.heal()
        w.external_loss = w.spec.external_loss
        w.switch.rehash(w.spec.hash, None, 0)
        w.flooding_until = 0.0
        w.quiet = True
        for member in w.members.values():
            if member.stalled_until is not None:
                w.resume(member, member.generation)  # a stall in force ends now too
            if not member.links_up:
                w.set_links(member, True)
            if not member.up:
                w.restart(member)
            elif member.agent is not None and member.agent.membership.state in (
                    MemberState.DRAINING, MemberState.DRAINED):
                w.drain(member, False)
