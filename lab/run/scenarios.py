"""Scenarios as data: what is done to a running cluster, step by step, and what the cluster
must look like after each step; and the one runner that carries them out under LAN traffic.

As in strongSwan's testing/tests/*/ folders, a scenario is a description, a lab and its
steps, judged only from what the daemons say. A `Step` has a name, an action on a member
chosen when the step runs (the one holding a peer's tunnel, an idle one, the busiest), the
serving set it leads to (that member leaves it, returns to it, or every member stays), a
hold time and an undo. `ScenarioRun` acts, holds, undoes, then waits until the cluster is
whole again (`probes.consistency`), and measures what the step cost: the longest LAN outage
any peer saw, the time until consistent, and, when a member left, the time until the others
forgot it.

One definition serves everything: `ikelab run --chaos [PLAY]` runs `plays()`; the failover
integration tests and scripts/bench_failover.py run `SCENARIOS`, the tests asserting on the
results and the benchmark printing their medians. The owner's death (`owner_dies`) is written
here, once.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from .. import strongswan
from ..agent.names import CLUSTER_CONNECTION, IKE_PORT
from ..net.cluster import ClusterNet, FailoverError
from ..net.daemons import DaemonConfigError
from ..plan.topology import LabSpec, Plan
from .lab import Lab
from .probes import Pinger, ask_agent, tunnel_holder, tunnel_holders, wait_consistent

# What a step does to the serving set: the member it acts on leaves it (dead to the others),
# drains out of it (live, without tunnels or traffic), returns to it, every drained member
# returns, or every member stays.
LEAVES, DRAINS, RETURNS, UNDRAINS, STAYS = "leaves", "drains", "returns", "undrains", "stays"
TUNNEL_TIMEOUT = 20.0
TAKEOVER = 20.0  # seconds a step waits for a departing member's tunnels to be held by others


class ScenarioError(RuntimeError):
    """The stage could not be set, or a step found no member to act on; one line."""


# ---- actions: what a step does to the net, to the member it acts on ---------------------------
def kill_daemons(net: ClusterNet, member: str) -> None:
    net.fail(member, "daemons")


def take_links_down(net: ClusterNet, member: str) -> None:
    net.fail(member, "links")


def restore(net: ClusterNet, member: str) -> None:
    net.restore(member)


def partition(net: ClusterNet, member: str) -> None:
    net.partition(member)


def heal(net: ClusterNet, member: str) -> None:
    net.heal(member)


def drain(net: ClusterNet, member: str) -> None:
    net.drain(member)


def undrain(net: ClusterNet, member: str) -> None:
    net.undrain(member)


def stop_member(net: ClusterNet, member: str) -> None:
    net.stop_member(member)


@dataclass(frozen=True)
class Rehash:
    """Both switches hash on `mode`'s fields from now on; with `drain`, over every member but
    the one the step acts on (drained: it keeps its tunnels)."""

    mode: str
    drain: bool = False

    def __call__(self, net: ClusterNet, member: str | None) -> None:
        net.rehash(self.mode, [m for m in net.member_names() if m != member]
                   if self.drain else None)


# ---- whom a step acts on, chosen when it runs --------------------------------------------------
@dataclass(frozen=True)
class TunnelHolder:
    """The member holding `peer`'s tunnel when the step runs."""

    peer: str

    def __call__(self, run: "ScenarioRun") -> str:
        member = tunnel_holder(run.lab, self.peer)
        if member is None:
            raise ScenarioError(f"no one member holds {self.peer}'s tunnel")
        return member


def same_member(run: "ScenarioRun") -> str:
    """The member the step before acted on."""
    return run.last_member


def idle_member(run: "ScenarioRun") -> str:
    """The first serving member (by name) that holds no tunnel."""
    busy = {m for held in tunnel_holders(run.lab, run.serving).values() for m in held}
    idle = sorted(run.serving - busy)
    if not idle:
        raise ScenarioError("every serving member holds a tunnel")
    return idle[0]


def busiest_member(run: "ScenarioRun") -> str:
    """The serving member holding the most tunnels (the first by name on a tie)."""
    held = [m for members in tunnel_holders(run.lab, run.serving).values() for m in members]
    return max(sorted(run.serving), key=held.count)


def least_loaded_member(run: "ScenarioRun") -> str:
    """The serving member holding the fewest tunnels (the first by name on a tie)."""
    held = [m for members in tunnel_holders(run.lab, run.serving).values() for m in members]
    return min(sorted(run.serving), key=held.count)


def negotiation_owner(run: "ScenarioRun") -> str:
    """The member the agents' tables name as the owner of the one negotiation under way."""
    owners = set(ask_agent(run.lab, min(run.serving), "owners").values())
    if len(owners) != 1:
        raise ScenarioError(f"the table names {sorted(owners) or 'no'} owners, not one")
    return owners.pop()


# ---- steps and scenarios ------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One thing done to the running cluster, and the serving set the cluster must reach."""

    name: str  # `{member}`: the member it acts on; `{others}`: every other member
    act: Callable[[ClusterNet, str | None], None]
    on: Callable[["ScenarioRun"], str] | None = None  # whom it acts on; None: no one member
    serving: str = STAYS  # the member it acts on LEAVES the serving set, RETURNS, or all STAYS
    hold: float = 0.0  # seconds between the action and the undo: a partition's length, say
    undo: Callable[[ClusterNet, str | None], None] | None = None  # what ends the hold

    def describe(self, member: str | None, members: list[str]) -> str:
        """The step's name, with the member it acts on and the others of `members` in it."""
        return self.name.format(member=member,
                                others=",".join(sorted(m for m in members if m != member)))

    def serving_after(self, serving: set[str], member: str | None,
                      drained: set[str] = frozenset()) -> set[str]:
        """The members that must serve once the cluster is whole again after this step
        (`drained`: the members drained so far)."""
        if self.serving in (LEAVES, DRAINS):
            return serving - {member}
        if self.serving == RETURNS:
            return serving | {member}
        if self.serving == UNDRAINS:
            return serving | drained
        return set(serving)


def owner_dies(peer: str) -> Step:
    """The member holding `peer`'s tunnel dies: its agent and charon are killed outright. The
    others count it dead within --dead-after, and one of them takes the tunnel over at once
    (lab.agent.protocol.handover); the peer's DPD is only the fallback."""
    return Step(f"fail {{member}} (daemons killed, it owned {peer}'s tunnel)", kill_daemons,
                TunnelHolder(peer), LEAVES)


def owner_drained(peer: str) -> Step:
    """The member holding `peer`'s tunnel is drained: its tunnels move to the others, each
    make-before-break, then it stops serving (it stays live, up to date, without traffic)."""
    return Step(f"drain {{member}} (it held {peer}'s tunnel)", drain, TunnelHolder(peer),
                DRAINS)


UNDRAINED = Step("undrain {member} (it takes its share back)", undrain, same_member, RETURNS)


def rehashed(mode: str, drained: str | None = None) -> Step:
    """The switches hash on `mode`'s fields, live, over every member or (given `drained`, a
    peer) over all but the one holding that peer's tunnel; 2 s of traffic are watched."""
    if drained is None:
        return Step(f"rehash {mode} over every member (2 s watched)", Rehash(mode), None,
                    UNDRAINS, hold=2.0)
    return Step(f"rehash {mode} over {{others}} ({{member}}, holding {drained}'s tunnel, "
                "drained; 2 s watched)", Rehash(mode, drain=True), TunnelHolder(drained),
                DRAINS, hold=2.0)


def partitioned(peer: str) -> Step:
    """The member holding `peer`'s tunnel is cut off the sync network for 10 s, then healed:
    it isolates itself, the others count it dead, and it rejoins with their table."""
    return Step("partition {member} from the sync network for 10 s, then heal", partition,
                TunnelHolder(peer), hold=10.0, undo=heal)


RESTORED = Step("restore {member}", restore, same_member, RETURNS)


def chaos(plan: Plan) -> list[Step]:
    """`ikelab run --chaos` (8 steps): the first peer's owner dies and comes
    back, the switches rehash to other fields, then back with that owner drained, then over
    every member; the last peer's owner is partitioned for 10 s; the first peer's owner loses
    its links and gets them back."""
    first, last = plan.peers[0].name, plan.peers[-1].name
    other = "l3" if plan.spec.hash != "l3" else "l4"
    return [owner_dies(first), RESTORED, rehashed(other), rehashed(plan.spec.hash, first),
            rehashed(plan.spec.hash), partitioned(last),
            Step("fail {member} (links down)", take_links_down, TunnelHolder(first), LEAVES),
            RESTORED]


FLOOD_SECONDS = 10.0


@dataclass(frozen=True)
class Flooded:
    """`peer` floods the cluster with spoofed IKEv2 IKE_SA_INIT at `rate` a second (lab.net.flood)
    for the step's hold; the undo stops it."""

    peer: str
    rate: float = 1000.0

    def __call__(self, net: ClusterNet, member: str | None) -> None:
        net.flood(self.peer, self.rate, FLOOD_SECONDS, 2, IKE_PORT, spoof=True)

    def stop(self, net: ClusterNet, member: str | None) -> None:
        net.stop_floods()


def hold_udp_4500(node, held: bool) -> None:
    """Drop (or stop dropping) what `node` sends to UDP 4500, IPv4 and IPv6: a negotiation's
    IKE_AUTH (with IKEv1, Main Mode from message 5 on) stays at the peer."""
    rule = "OUTPUT -p udp --dport 4500 -j DROP"
    flag = "-A" if held else "-D"
    node.cmd(f"iptables {flag} {rule}; ip6tables {flag} {rule}")


@dataclass(frozen=True)
class RehashMidNegotiation:
    """`peer` negotiates its tunnel afresh with everything it sends to UDP 4500 held back (its
    IKE_AUTH; with IKEv1, Main Mode from message 5 on); once its IKE_SA_INIT (Main Mode 1) is
    answered, both switches hash on `mode`'s fields; the undo lets the rest go, to whichever
    member the new hash picks, and the agents hand it to the negotiation's owner."""

    peer: str
    mode: str
    ANSWERED = 5.0  # seconds for the IKE_SA_INIT's answer

    def __call__(self, net: ClusterNet, member: str | None) -> None:
        node = net[self.peer]
        sock = node.files.vici_socket
        try:
            strongswan.terminate(sock, CLUSTER_CONNECTION)
            hold_udp_4500(node, True)
            try:
                strongswan.initiate(sock, CLUSTER_CONNECTION)
                if not _poll(lambda: any(
                        sa["state"] == "CONNECTING" and int(sa["responder-spi"], 16)
                        for sa in strongswan.list_sas(sock).values()), self.ANSWERED):
                    raise FailoverError(f"{self.peer}'s first message got no answer within "
                                        f"{self.ANSWERED:g} s")
                net.rehash(self.mode)
            except BaseException:
                self.release(net, member)  # never a rule left behind
                raise
        except (DaemonConfigError, *strongswan.VICI_ERRORS) as exc:
            raise FailoverError(f"{self.peer} could not renegotiate: {exc}") from None

    def release(self, net: ClusterNet, member: str | None) -> None:
        hold_udp_4500(net[self.peer], False)


def plays(plan: Plan) -> dict[str, tuple[list[Step], list[str]]]:
    """What `ikelab run --chaos [PLAY]` can do to the running lab, by name: the steps, and the
    peers whose LANs ping throughout (one renegotiating mid-step has an outage by design)."""
    first, last = plan.peers[0].name, plan.peers[-1].name
    everyone = [p.name for p in plan.peers]
    other = "l3" if plan.spec.hash != "l3" else "l4"
    return {
        "chaos": (chaos(plan), everyone),
        "owner-death": ([owner_dies(first), RESTORED], everyone),
        "drain": ([owner_drained(first), UNDRAINED], everyone),
        "flood": ([Step(f"{first} floods the virtual IP: 1000 spoofed IKE_SA_INIT a second for "
                        f"{FLOOD_SECONDS:g} s", Flooded(first), hold=FLOOD_SECONDS,
                        undo=Flooded(first).stop)], everyone),
        "rehash-mid-negotiation": (
            [Step(f"{last} renegotiates; after its IKE_SA_INIT the switches rehash {other}, "
                  "then its IKE_AUTH goes", RehashMidNegotiation(last, other), hold=1.0,
                  undo=RehashMidNegotiation(last, other).release),
             rehashed(plan.spec.hash)], [p for p in everyone if p != last]),
    }


@dataclass(frozen=True)
class HalfNegotiation:
    """`peer` starts its tunnel with its IKE_AUTH (UDP 4500) held back, so the negotiation
    stops halfway, its IKE_SA_INIT claimed by and answered from one member; `release` lets the
    peer's IKE_AUTH through again."""

    peer: str

    def __call__(self, lab: Lab) -> None:
        node = lab.node(self.peer)
        hold_udp_4500(node, True)
        strongswan.initiate(node.files.vici_socket, CLUSTER_CONNECTION)
        if not _poll(lambda: ask_agent(lab, lab.plan.members[0].name, "owners"), 5.0):
            raise ScenarioError(f"{self.peer}'s IKE_SA_INIT was never claimed")
        [sa] = strongswan.list_sas(node.files.vici_socket).values()
        if sa["state"] != "CONNECTING":
            raise ScenarioError(f"{self.peer}'s negotiation was meant to stop halfway "
                                f"(it is {sa['state']})")

    def release(self, net: ClusterNet, member: str | None) -> None:
        hold_udp_4500(net[self.peer], False)


@dataclass(frozen=True)
class Scenario:
    """A lab, the tunnels up before the first step (their peers' LANs ping the cluster's LAN
    throughout), anything else that sets the stage, and the steps."""

    name: str
    description: str
    spec: LabSpec
    steps: tuple[Step, ...]
    tunnels: tuple[str, ...] = ()
    prepare: Callable[[Lab], None] | None = None


HALF = HalfNegotiation("p1")
SCENARIOS = {s.name: s for s in (
    Scenario("owner-death", "3 members, split: the member holding p1's tunnel dies",
             LabSpec(members=3, peers=1, hash="split"), (owner_dies("p1"),), ("p1",)),
    Scenario("mid-negotiation", "3 members, l3: p1's IKE_AUTH held back, the owner of its "
             "half-done negotiation dies, then the IKE_AUTH goes through",
             LabSpec(members=3, peers=1, hash="l3"),
             (Step("fail {member} (daemons killed, it owned p1's half-done negotiation)",
                   kill_daemons, negotiation_owner, LEAVES, undo=HALF.release),),
             prepare=HALF),
    Scenario("rejoin", "3 members, 2 peers, l4: a member holding no tunnel dies, then is "
             "restored under traffic", LabSpec(members=3, peers=2, hash="l4"),
             (Step("fail {member} (daemons killed, it held no tunnel)", kill_daemons,
                   idle_member, LEAVES), RESTORED), ("p1", "p2")),
    Scenario("rehash", "3 members, 2 peers, l4: live rehash to l3, split, l4 with the holder "
             "of p1's tunnel drained, and l4 over every member",
             LabSpec(members=3, peers=2, hash="l4"),
             (rehashed("l3"), rehashed("split"), rehashed("l4", "p1"), rehashed("l4")),
             ("p1", "p2")),
    Scenario("partition", "3 members, 2 peers, l4: the holder of p1's tunnel cut off the sync "
             "network for 10 s, then healed", LabSpec(members=3, peers=2, hash="l4"),
             (partitioned("p1"),), ("p1", "p2")),
    Scenario("two-deaths", "5 members, 4 peers, split: the busiest member dies, then the next "
             "busiest once the cluster is whole", LabSpec(members=5, peers=4, hash="split"),
             (Step("fail {member} (daemons killed, the busiest)", kill_daemons, busiest_member,
                   LEAVES),) * 2, ("p1", "p2", "p3", "p4")),
    Scenario("owner-death-5", "5 members, split: the member holding p1's tunnel dies",
             LabSpec(members=5, peers=1, hash="split"), (owner_dies("p1"),), ("p1",)),
    Scenario("drain", "3 members, 4 peers, l4: the holder of p1's tunnel drained (its tunnels "
             "handed over make-before-break), then undrained (it takes its share back)",
             LabSpec(members=3, peers=4, hash="l4"), (owner_drained("p1"), UNDRAINED),
             ("p1", "p2", "p3", "p4")),
    Scenario("rebalance", "3 members, 8 peers, l4: the least loaded member dies, then is "
             "restored and the tunnels are evened out make-before-break",
             LabSpec(members=3, peers=8, hash="l4"),
             (Step("fail {member} (daemons killed, the least loaded)", kill_daemons,
                   least_loaded_member, LEAVES), RESTORED),
             tuple(f"p{i}" for i in range(1, 9))),
)}


# ---- the runner ----------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What a step cost. Times in seconds; outages from the action to the end of the step."""

    name: str
    member: str | None
    _: KW_ONLY  # eleven facts, each named where it is made
    outage_s: float | None = None  # the longest any peer's LAN saw; None without traffic
    outages: dict[str, float] = field(default_factory=dict)  # per peer
    consistent_after_s: float | None = None  # from the end of the hold; None: never
    problem: str | None = None  # what was still wrong if never consistent
    forgotten_after_s: float | None = None  # from the action, for a member that left
    traffic_resumed: bool = False  # every peer's LAN answered again once consistent
    takeover_s: float | None = None  # from the action until the tunnels the member held
    #                                  are held by others (a member that left or drained)
    lost: int = 0  # echo requests never answered, all peers, from the action to the end
    began: float | None = None  # Unix time of the action (for plots)

    @property
    def recovered(self) -> bool:
        return self.consistent_after_s is not None

    def report(self) -> dict:
        """The step as the `chaos` list of the `--json` report gives it."""
        return {"name": self.name, "member": self.member, "outage_s": self.outage_s,
                "takeover_s": self.takeover_s, "lost": self.lost,
                "consistent_after_s": self.consistent_after_s, "problem": self.problem,
                "outages": self.outages, "began": self.began}

    def summary(self) -> str:
        outage = ("no traffic watched" if self.outage_s is None
                  else f"outage {self.outage_s:.1f} s")
        after = (f"{self.consistent_after_s:.1f} s" if self.recovered
                 else f"never ({self.problem})")
        takeover = ("" if self.takeover_s is None
                    else f", its tunnels held by others after {self.takeover_s:.2f} s")
        return f"{self.name}: {outage}{takeover}, consistent after {after}"


class ScenarioRun:
    """Carries out steps on a running lab while the LAN host of each of `peers` pings the
    cluster's LAN host every 100 ms (`ping` output in `directory`); a context manager that
    starts the pings, waits for their first replies, and stops them."""

    FIRST_REPLY = 10.0  # seconds for every peer's first ping reply before the first step
    RESUME = 5.0  # seconds for every peer's LAN to answer again once the cluster is whole
    SETTLE = 1.0  # seconds of traffic watched after that, before the next step

    def __init__(self, lab: Lab, peers, directory: Path, name: str = "scenario",
                 say=lambda message: None):
        self.lab, self.name, self.say = lab, name, say
        # The cluster LAN host's IPv6 address where it has one: a dual-stack lab's scenarios
        # ping over IPv6 (every IPv4 lab's ping over IPv4).
        target = str(lab.plan.lan_host.interfaces[0].addresses[-1].ip)
        self.pingers = {p: Pinger(lab.node(lab.plan.peer(p).lan_host), target,
                                  Path(directory) / f"{name}_ping_{p}.txt") for p in peers}
        self.serving = {m.name for m in lab.plan.members}  # where the steps so far lead
        self.drained: set[str] = set()  # drained by the steps so far, not yet back
        self.last_member: str | None = None
        self._pings = ExitStack()

    def __enter__(self) -> "ScenarioRun":
        with ExitStack() as pings:
            for pinger in self.pingers.values():
                pings.enter_context(pinger)
            start = time.time()
            if not _poll(lambda: self.traffic_since(start), self.FIRST_REPLY):
                raise ScenarioError("LAN-to-LAN pings got no reply before the first step")
            self._pings = pings.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._pings.close()

    def draw(self, path: Path, steps: list[dict]) -> Path:
        """A picture of the run in `path`: each peer LAN's ping replies over time (a gap is
        an outage), each step (`StepResult.report()`s) marked where it acted."""
        from ..show.plots import draw_replies

        replies = {p: pinger.replies() for p, pinger in self.pingers.items()}
        start = min((t for times in replies.values() for t in times), default=0.0)
        marks = [(s["began"] - start, s["name"]) for s in steps if s.get("began")]
        return draw_replies({p: [t - start for t in times] for p, times in replies.items()},
                            marks, path, f"{self.name}: LAN-to-LAN ping replies per peer "
                            "(every 100 ms)")

    def traffic_since(self, since: float) -> bool:
        """Every peer's LAN got a reply after Unix time `since`."""
        return all(p.replied_since(since) for p in self.pingers.values())

    def outages(self, start: float, end: float) -> dict[str, float]:
        """peer -> its LAN's longest outage between Unix times `start` and `end`."""
        return {peer: pinger.outage(start, end) for peer, pinger in self.pingers.items()}

    def run(self, steps) -> list[StepResult]:
        """Each step in turn, until one leaves the cluster broken (its result is the last)."""
        results = []
        for step in steps:
            results.append(self.step(step))
            if not results[-1].recovered:
                break
        return results

    def step(self, step: Step) -> StepResult:
        """Act, hold, undo, wait until the cluster is whole with the serving set the step
        leads to, wait for LAN traffic, and watch it SETTLE seconds more."""
        try:
            member = step.on(self) if step.on else None
        except ScenarioError as exc:
            result = StepResult(step.describe("?", self.lab.net.member_names()), None,
                                problem=str(exc))
            self.say(f"{self.name}: {result.summary()}")
            return result
        name = step.describe(member, self.lab.net.member_names())
        self.say(f"{self.name}: {name}")
        moving = (sorted(p for p, held in tunnel_holders(self.lab).items() if member in held)
                  if step.serving in (LEAVES, DRAINS) else [])
        began, acted = time.time(), time.monotonic()
        takeover = None
        try:
            step.act(self.lab.net, member)
            if moving:
                takeover = self.taken_over(moving, member, acted + max(step.hold, TAKEOVER))
            time.sleep(max(0.0, acted + step.hold - time.monotonic()))
            if step.undo:
                step.undo(self.lab.net, member)
        except FailoverError as exc:
            result = StepResult(name, member, problem=f"the step could not act: {exc}")
            self.say(f"{self.name}: {result.summary()}")
            return result
        held = time.monotonic()
        self.serving = step.serving_after(self.serving, member, self.drained)
        if step.serving == DRAINS:
            self.drained.add(member)
        elif step.serving in (RETURNS, UNDRAINS, LEAVES):
            self.drained = set() if step.serving == UNDRAINS else self.drained - {member}
        self.last_member = member
        recovery = wait_consistent(self.lab, self.serving,
                                   departed=member if step.serving == LEAVES else None)
        whole = time.time()
        resumed = recovery.consistent_after_s is not None and bool(
            _poll(lambda: self.traffic_since(whole), self.RESUME))
        time.sleep(self.SETTLE)
        outages = self.outages(began, time.time())
        result = StepResult(
            name, member, outage_s=max(outages.values()) if outages else None, outages=outages,
            consistent_after_s=_rounded(recovery.consistent_after_s), problem=recovery.problem,
            forgotten_after_s=_rounded(None if recovery.forgotten_after_s is None
                                       else held - acted + recovery.forgotten_after_s),
            traffic_resumed=resumed,
            takeover_s=_rounded(None if takeover is None else takeover - acted),
            lost=sum(p.lost(began, time.time()) for p in self.pingers.values()), began=began)
        self.say(f"{self.name}: {result.summary()}")
        return result


    def taken_over(self, peers: list[str], member: str, until: float) -> float | None:
        """When (monotonic) every one of `peers` had its tunnel held by one member other than
        `member`; None if not by `until`."""
        while time.monotonic() < until:
            held = tunnel_holders(self.lab)
            if all(len(held[p]) == 1 and held[p] != [member] for p in peers):
                return time.monotonic()
            time.sleep(0.02)
        return None


@contextmanager
def staged(scenario: Scenario, directory: Path, spec: LabSpec | None = None,
           say=lambda message: None) -> Iterator[ScenarioRun]:
    """The scenario's lab (or one built from `spec`), with its tunnels up, its stage set and
    their LANs pinging, ready for its steps; torn down on leaving."""
    with Lab(spec or scenario.spec) as lab:
        watch = lab.bring_up(scenario.tunnels, TUNNEL_TIMEOUT)
        down = sorted(set(scenario.tunnels) - set(watch.up_after))
        if down:
            raise ScenarioError(f"tunnels did not come up: {', '.join(down)}")
        if scenario.prepare:
            scenario.prepare(lab)
        with ScenarioRun(lab, scenario.tunnels, directory, scenario.name, say) as run:
            yield run


def run_chaos(lab: Lab, say=lambda message: None, play: str = "chaos") -> tuple[list[dict], int]:
    """`ikelab run --chaos [PLAY]` on the running lab, its peers' LANs pinging: one report item
    per step taken (`StepResult.report`), and how many steps the play has."""
    steps, pinging = plays(lab.plan)[play]
    with ScenarioRun(lab, pinging, lab.run.path, play, say) as run:
        taken = [result.report() for result in run.run(steps)]
    if lab.keep:
        path = run.draw(Path(lab.run.path) / f"{play}.png", taken)
        say(f"{play} timeline: {path}")
    return taken, len(steps)


def _poll(check, deadline: float, interval: float = 0.05):
    """check()'s first truthy value within `deadline` seconds, else None."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value or time.monotonic() > end:
            return value or None
        time.sleep(interval)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)
