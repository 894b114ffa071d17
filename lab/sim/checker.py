"""What must always hold in the simulated cluster (safety, checked after every step) and what
must eventually happen once the faults stop (liveness, checked in the quiet tail).

- one-owner: no two members' charons hold, or are negotiating, the same IKE SA. The check
  reads the model charons: an IKE SA is the peer's negotiation, the initiator's address and
  SPI. Counted are the members *in the cluster*: their agent serves, drains or is drained on a
  lease from the witness that has not run out (a member whose lease ran out acts on nothing;
  its charon holds leftovers that it ends before it serves again). Two documented
  exceptions, for half-open SAs only: in `stateless` mode any member answers a first message;
  in the table modes a flood's budget may push a half-open entry out (the oldest makes room)
  and a retransmission be claimed afresh, so a half-open SA counts while its member's own
  table still says it owns the negotiation: two owners is two members that each believe it.
- claim-discipline: a director grants a key only once every member it counted live when it
  announced the owner, and still counts live, has acknowledged.
- no-forwarding-loop: one packet arrival is forwarded at most once.
- no-double-injection: and written into the owner's stack at most once (a FORWARD replayed
  to it would make its charon handle an old packet again).
- bounds: tables, parked packets, pending claims, announcements and lookups stay within their
  caps, whatever a flood does.
- failure-detection: a member that crashed is out of every other member's live set
  `dead_after` and a heartbeat interval after its death (the witness's last backing of it
  counts half of `dead_after` and a margin, `membership`), or `dead_after` after the judge's
  own stall if that ends later (what queued meanwhile is handled as if it had just come),
  plus DETECTION_SLACK, and stays out until it comes back.
- no-dead-owner: no table names a member it has counted dead as the owner of an established
  IKE SA: a packet for it would be forwarded into the void.
- liveness: after the last fault heals, every peer's tunnel is up on exactly one member
  (one ESTABLISHED IKE SA with its CHILD SA at the peer, the same SA at exactly one member, and
  no member holding another with that peer) within LIVENESS_BOUND, and stays so.
- convergence: then, every serving member's table names the same owner for every established
  IKE SA, that owner holds the SA, and no table names an owner for an SA nobody holds.
"""

from dataclasses import dataclass

from lab.agent.protocol import sync
from lab.agent.protocol.claimant import MAX_PACKETS_PER_KEY, MAX_PARKED_KEYS
from lab.agent.protocol.core import MAX_FORWARDED_SPIS
from lab.agent.protocol.director import MAX_ANNOUNCING, MAX_WAITERS
from lab.agent.protocol.events import Inject, Send, SyncArrived, Tick
from lab.agent.protocol.handover import ESP_HELD_PER_PEER
from lab.agent.protocol.membership import SERVING_STATES
from lab.agent.names import MemberState, Ownership
from lab.agent.protocol.ownership import ESTABLISHED as ENTRY_ESTABLISHED
from lab.agent.protocol.ownership import Key

from .sa import CONNECTING, ESTABLISHED
from .world import CLUSTER_KEY, SimMember, SimPeer, World

DETECTION_SLACK = 0.2  # beyond dead_after and a heartbeat interval: ticks, network delays
LIVENESS_BOUND = 60.0  # simulated seconds from the heal until every tunnel is up once
STABLE_FOR = 3.0  # ... and stays so, with nothing moving, this long
MEMBER_STATES_IN = SERVING_STATES + (MemberState.DRAINED,)
TYPE_OFFSET = 5  # the sync header's type byte


class Violation(Exception):
    """An invariant broke: `invariant` names it, the message says how."""

    def __init__(self, invariant: str, text: str):
        super().__init__(f"{invariant}: {text}")
        self.invariant = invariant
        self.text = text


@dataclass
class Announced:
    tag: int
    owner: int
    targets: frozenset  # the members the director counted live when it announced, and since


class Checker:
    """Watches one world; raises Violation the moment an invariant breaks."""

    def __init__(self, world: World):
        self.world = world
        world.checker = self
        world.sa_listeners.append(self.on_sa)
        self.codec = sync.Codec(bytes.fromhex(CLUSTER_KEY), 0, 0)
        self.holders: dict[tuple, dict[int, object]] = {}  # (peer address, ispi) -> holders
        self.announced: dict[tuple, dict] = {}  # (director, key) -> tag -> Announced
        self.last_live: dict[int, frozenset] = {}  # director -> its live set, last tick
        self.last_incarnations: dict[int, dict] = {}  # director -> the incarnations it knew
        self.last_restarts: dict[int, int] = {}  # director -> restarts it had seen
        self.acked: dict[tuple, set] = {}  # (director, tag) -> members whose ACK it handled
        self.forwarded: dict[bytes, float] = {}  # arrival + packet -> when
        self.injected: dict[tuple, float] = {}  # (member, arrival + packet) -> when
        self.next_sweep = 0.0
        self.stateless = world.spec.ownership == Ownership.STATELESS

    # ---- one owner ------------------------------------------------------------------------------
    def on_sa(self, owner, sa, event: str, detail: dict) -> None:
        if isinstance(owner, SimPeer) or event == "cookie":
            return
        key = (sa.remote, sa.ispi)
        holders = self.holders.setdefault(key, {})
        if event in ("down", "failed", "lost"):
            if holders.get(owner.index) is sa:
                del holders[owner.index]
            if not holders:
                del self.holders[key]
            return
        holders[owner.index] = sa
        if len(holders) > 1:
            self._check_one_owner(key)

    def _counts(self, sa) -> bool:
        if sa.state == "GONE":
            return False
        return not (self.stateless and sa.state == CONNECTING and not sa.progressed
                    and not sa.initiator)

    def in_cluster(self, member: SimMember) -> bool:
        """Its agent acts (serving, draining, drained) on the strength of a lease the witness
        gave it that has not run out: a member whose lease ran out acts on nothing, and the
        others may have taken its keys over (what its charon still holds it ends when it
        rejoins)."""
        if not member.up or member.agent is None or member.published not in MEMBER_STATES_IN:
            return False
        return self.world.witness.leases.get(member.index, 0.0) > self.world.now

    def _check_one_owner(self, key: tuple) -> None:
        holders = {i: sa for i, sa in self.holders.get(key, {}).items()
                   if self._counts(sa) and self.in_cluster(self.world.members[i])}
        if len(holders) > 1 and not self.stateless:
            # A flood's budget may push a half-open entry out of the tables (the oldest makes
            # room, by design); a retransmission may then be claimed afresh while the first
            # member's charon still waits. Two owners means two members whose own tables
            # each say the negotiation is theirs.
            holders = {i: sa for i, sa in holders.items() if sa.progressed or self.world.members[
                i].agent.table.owner_of(Key(sa.ispi)) == f"m{i}"}
        if len(holders) > 1:
            what = ", ".join(f"m{i} ({sa.state}, {sa.ispi.hex()}/{sa.rspi.hex()})"
                             for i, sa in sorted(holders.items()))
            raise Violation("one-owner", f"the IKE SA of {key[0]} with initiator SPI "
                                         f"{key[1].hex()} is held by {what}")

    # ---- claim discipline, forwarding ---------------------------------------------------------
    def before_agent(self, member: SimMember, event) -> None:
        if type(event) is SyncArrived and event.data[TYPE_OFFSET:TYPE_OFFSET + 1] == bytes(
                [sync.ACK]):
            msg = self._read(event.data)
            if msg is not None and msg.sender in self.world.members:
                self.acked.setdefault((member.index, msg.tag), set()).add(msg.sender)

    def after_agent(self, member: SimMember, event, actions: list) -> None:
        agent = member.agent
        if agent is not None and (type(event) is Tick or self.last_restarts.get(
                member.index) != agent.counters["restarts_seen"]):
            self._left_since(member)  # first: a grant in these actions may follow from it
        if agent is not None and agent.membership.state == MemberState.ISOLATED:
            # Cut off, a director gives up what it announced (`director_isolated`).
            for key in [k for k in self.announced if k[0] == member.index]:
                del self.announced[key]
        for action in actions:
            if type(action) is not Send:
                continue
            kind = action.data[TYPE_OFFSET]
            if kind == sync.ANNOUNCE:
                msg = self._read(action.data)
                pending = self.announced.setdefault(
                    (member.index, (msg.ispi, msg.msgid, msg.requester)), {})
                if msg.tag not in pending:
                    live = frozenset(int(n[1:]) for n in agent.membership.live()) - {
                        member.index}
                    pending[msg.tag] = Announced(msg.tag, msg.owner, live)
            elif kind == sync.GRANT:
                self._check_grant(member, self._read(action.data))
            elif kind == sync.FORWARD:
                inner = action.data[sync.HEADER.size + sync.BODY.size:-sync.MAC_LEN]
                if inner in self.forwarded:
                    raise Violation("no-forwarding-loop",
                                    f"m{member.index} forwarded an arrival forwarded before "
                                    f"(at {self.forwarded[inner]:.4f} s)")
                self.forwarded[inner] = self.world.now
        if type(event) is SyncArrived and event.data[TYPE_OFFSET] == sync.FORWARD and any(
                type(a) is Inject for a in actions):
            key = (member.index, event.data[sync.HEADER.size + sync.BODY.size:-sync.MAC_LEN])
            if key in self.injected:
                raise Violation("no-double-injection",
                                f"m{member.index} wrote a forwarded packet into its stack "
                                f"twice (first at {self.injected[key]:.4f} s)")
            self.injected[key] = self.world.now
        self._check_bounds(member)

    def _left_since(self, director: SimMember) -> None:
        """Members that left a director's live set, or that it saw restart, leave its
        announcements' targets: it waits for them no more (one that comes back joins, and
        its snapshot has every key the director recorded)."""
        membership = director.agent.membership
        live, incarnations = frozenset(membership.live_set), dict(membership.incarnations)
        gone = self.last_live.get(director.index, live) - live
        before = self.last_incarnations.get(director.index, incarnations)
        gone |= {m for m, i in incarnations.items() if before.get(m, i) != i}
        self.last_live[director.index] = live
        self.last_incarnations[director.index] = incarnations
        self.last_restarts[director.index] = director.agent.counters["restarts_seen"]
        if gone:
            indexes = {int(n[1:]) for n in gone}
            for (index, _key), pending in self.announced.items():
                if index == director.index:
                    for announced in pending.values():
                        announced.targets = announced.targets - indexes

    def _read(self, data: bytes):
        try:
            return self.codec.decode(data)
        except sync.SyncError:
            return None
        finally:
            self.codec.windows.clear()  # the checker reads every message, replays included

    def _check_grant(self, director: SimMember, msg) -> None:
        if msg is None or msg.owner == 0:
            return
        pending = self.announced.get((director.index, (msg.ispi, msg.msgid, msg.requester)))
        if not pending:
            return  # the owner was known before any claim: nothing was announced
        live = {int(n[1:]) for n in director.agent.membership.live()}
        missing = min(((a.targets & live) - self.acked.get((director.index, a.tag), set())
                       for a in pending.values()), key=len)
        if missing:
            raise Violation("claim-discipline",
                            f"m{director.index} granted {msg.ispi.hex()}/{msg.msgid}/"
                            f"{msg.requester} to m{msg.owner} before "
                            f"{', '.join(f'm{i}' for i in sorted(missing))} acknowledged")

    # ---- bounds ---------------------------------------------------------------------------------
    def _check_bounds(self, member: SimMember) -> None:
        agent = member.agent
        if agent is None:
            return
        table, spec = agent.table, self.world.spec
        problems = []
        if table.half_open() > spec.half_open_cap:
            problems.append(f"{table.half_open()} half-open entries (cap {spec.half_open_cap})")
        if len(table.entries) - table.half_open() - len(table._lingering) > table.cap:
            problems.append(f"{len(table.entries)} entries (cap {table.cap})")
        if len(agent.claims) > MAX_PARKED_KEYS or len(agent.lookups) > MAX_PARKED_KEYS:
            problems.append(f"{len(agent.claims)} claims, {len(agent.lookups)} lookups parked")
        if len(agent.announcing) > MAX_ANNOUNCING or len(agent.waiters) > MAX_WAITERS:
            problems.append(f"{len(agent.announcing)} announcements, {len(agent.waiters)} "
                            "lookups waiting")
        if len(agent.forwarded_by_spi) > MAX_FORWARDED_SPIS:
            problems.append(f"{len(agent.forwarded_by_spi)} forwarded SPIs counted")
        if problems:
            raise Violation("bounds", f"m{member.index}: " + "; ".join(problems))
        for name in agent.departed:
            if table.owned(name)[0]:
                raise Violation("no-dead-owner", f"m{member.index} counted {name} dead and "
                                f"still names it the owner of {table.owned(name)[0]} IKE SAs")
        judged = agent.membership.last_update
        for other in self.world.members.values():
            if other.crashed_at is None or judged is None:
                continue
            # A member back from a stall handles the heartbeats that queued meanwhile as if
            # they had just come (it has isolated itself, and rejoins): a full period more.
            due = max(other.crashed_at + spec.dead_after * 9 / 8,
                      member.resumed_at + spec.dead_after) + DETECTION_SLACK
            if other.name in agent.membership.live_set and member.clock(due) < judged:
                raise Violation("failure-detection", f"m{member.index} counts {other.name} "
                                f"live {self.world.now - other.crashed_at:.2f} s after it "
                                "crashed")

    def _sweep(self) -> None:
        """Once a simulated second: the bounds that cost a scan, and old records dropped."""
        now = self.world.now
        self.next_sweep = now + 1.0
        spec = self.world.spec
        for member in self.world.members.values():
            agent = member.agent
            if agent is None:
                continue
            per_peer = max((len(k) for k in agent.table._half_open_by_peer.values()), default=0)
            parked = max((len(p.packets) for p in list(agent.claims.values())
                          + list(agent.lookups.values())), default=0)
            held = max((len(refs) for refs in agent.esp_held.values()), default=0)
            if (per_peer > spec.half_open_per_peer or parked > MAX_PACKETS_PER_KEY
                    or held > ESP_HELD_PER_PEER):
                raise Violation("bounds", f"m{member.index}: {per_peer} half-open entries of "
                                          f"one peer, {parked} packets parked for one key, "
                                          f"{held} ESP packets held for one peer")
        self.forwarded = {k: t for k, t in self.forwarded.items() if now - t < 60}
        self.injected = {k: t for k, t in self.injected.items() if now - t < 60}
        live_tags = {(d, tag) for (d, _key), pending in self.announced.items()
                     for tag in pending}
        self.acked = {k: v for k, v in self.acked.items() if k in live_tags}
        if len(self.announced) > 20000:
            self.announced.clear()
            self.acked.clear()

    def after_step(self) -> None:
        if self.world.now >= self.next_sweep:
            self._sweep()

    # ---- liveness and convergence (the quiet tail) ----------------------------------------------
    def tunnels_whole(self) -> list[str]:
        """What keeps the tunnels from being up exactly once (empty: nothing)."""
        problems = []
        members = [m for m in self.world.members.values() if m.up]
        for peer in self.world.peers:
            ours = [sa for sa in peer.daemon.sas.values()
                    if sa.state == ESTABLISHED and sa.child]
            if len(ours) != 1:
                problems.append(f"{peer.name} holds {len(ours)} established IKE SAs with a "
                                "CHILD SA")
                continue
            sa = ours[0]
            holders = [m.name for m in members if any(
                s.ispi == sa.ispi and s.rspi == sa.rspi and s.state == ESTABLISHED and s.child
                for s in m.charon.sas.values())]
            others = [m.name for m in members for s in m.charon.sas.values()
                      if s.remote == peer.address and s.state == ESTABLISHED
                      and (s.ispi, s.rspi) != (sa.ispi, sa.rspi)]
            if len(holders) != 1 or others:
                problems.append(f"{peer.name}'s SA {sa.ispi.hex()} is held by "
                                f"{holders or 'nobody'}; other SAs with it on {others}")
        for m in members:
            agent = m.agent
            if m.stalled_until is not None:
                problems.append(f"{m.name} is stalled")  # its state is from before
            elif agent.membership.state != MemberState.SERVING:
                problems.append(f"{m.name} is {agent.membership.state}")
            elif agent.moving or agent.releasing or agent.ending:
                problems.append(f"{m.name} is still moving tunnels")
        return problems

    def tables_agree(self) -> list[str]:
        """Where the serving members' tables disagree with each other or with the charons."""
        members = [m for m in self.world.members.values()
                   if m.up and m.agent.membership.state in SERVING_STATES]
        held = {}
        for m in members:
            for sa in m.charon.sas.values():
                if sa.state == ESTABLISHED and sa.remote in self.world.peer_at:
                    held[sa.ispi] = m.name
        problems = []
        for m in members:
            established = {e.key.ispi: e.owner for e in m.agent.table.entries.values()
                           if e.state == ENTRY_ESTABLISHED and e.key.is_ike_sa}
            for ispi, owner in held.items():
                if established.get(ispi) != owner:
                    problems.append(f"{m.name}'s table names {established.get(ispi)} for "
                                    f"{ispi.hex()}, held by {owner}")
            for ispi, owner in established.items():
                if ispi not in held:
                    problems.append(f"{m.name}'s table names {owner} for {ispi.hex()}, "
                                    "which nobody holds")
        return problems
