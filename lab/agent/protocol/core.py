"""The forwarding agent's protocol: a state machine with no I/O (`Agent`).

One agent per member. It sees every IKE packet before charon does (inbound NFQUEUE on the
external interface: UDP 500, and UDP 4500 whose payload starts with the non-ESP marker) and
every IKE packet charon sends (outbound NFQUEUE); ESP and NAT-keepalives never reach it. For
each packet it finds the owner of the packet's key in its replica of the table, and then:

- own key: accept, charon handles it;
- another member's key: drop it here and send the original packet (addresses and ports intact)
  to the owner over the sync network in a FORWARD message; the owner writes it back into its
  own stack, so charon sees it as if it had come from the peer, and answers the peer directly;
- unknown key, a packet that can start a negotiation: CLAIM it from the key's director;
- unknown key, anything else: LOOKUP the owner with the director; never claim.

Why a director, and why claims wait for every member (race freedom, beyond the reference):
the reference lets the member that sees an unknown first packet write itself into the table,
then syncs. If the peer's retransmission of that first packet reaches another member before
the sync lands, both members own the key. Here exactly one member, the key's director (chosen
by rendezvous hashing the initiator SPI over the members, as Cisco ASA clusters choose a
director per flow), decides; it records the first claimant, ANNOUNCEs the owner to every other
member, and GRANTs the claim only once all of them have acknowledged (`director`). The
claimant keeps the packet queued until the grant, so charon cannot answer, and the peer cannot
send its next message, before the whole cluster knows the owner. A second claim for the same
key gets the first claimant's name and forwards its packet there. In `--mode ha` the active
member is the director of every key.

With `--ownership table+label` each member's charon stamps its index into the top byte of the
IKE SPIs it allocates (`charon.spi_mask`/`spi_label`), and the agent reads the owner straight
from the cluster-side SPI whenever the IKEv2 header says which SPI that is; first packets and
IKEv1 (whose header does not say) fall back to the table.

The table follows charon: IKE SA up (vici `ike-updown`) makes the entry permanent, down deletes
it on every member, `ike-rekey` gives the new SPIs to the old owner.

Membership (`membership`): heartbeats decide which members are live and which serve. Only
serving members handle IKE and direct keys, and a director waits for the ACK of every live
member, whatever its state. When a member leaves the live set, the survivors drop the entries
it owned (`OwnershipTable.drop_owner`: its IKE SAs died with its charon; the peers' DPD brings
them back on a survivor), its steering routes, and its place in pending announcements; claims
it was directing go to the key's next director. A member that joins fetches the whole table
first (`joining`). The hashing switches follow each agent's state: a member gets traffic only
while it serves.

Two directors of one key during a change of membership would each wait for the other's ACK;
an ACK carries the acker's owner for the key, an ANNOUNCE that conflicts with a negotiating
entry keeps the lower member index, and a director grants the lowest owner it has heard of, so
both grant the same member. A director grants straight from its table only what the owner's
charon confirmed or what it decided itself: an entry another director's announcement left may
have reached part of the cluster only, so it gets the director's own round of ACKs first.

A peer's SAs are ordered by when their owners say they came up (wall clock, carried in
ESTABLISHED, REKEY and snapshots), so every member agrees which is the newest: the tunnel the
others give way to.

The agent also decides the data plane's steering routes (`steering`) and then stays out of
its way: no ESP or LAN packet ever reaches it.

Who may act at all is the witness's to say (`witness`, `membership`): a member that it does
not back stops acting within half of `dead_after`, and nobody counts a member dead before the
witness has stopped backing it for that long, so no partition, however it cuts the sync
network, leaves two sides each directing keys. Replicas are kept whole by the owners' digests
in every heartbeat (`resync`); a member that restarted is known by its new incarnation
(`liveness`).

The invariants the protocol keeps, and what checks each, are listed in `protocol/__init__`.

The machine: `Agent.handle(event, now)` takes one event (`events`: a queued packet, a sync
datagram, charon's word, a tick) with the time, and returns actions (verdicts, datagrams,
routes); `daemon` carries them out. No socket, clock, thread or subprocess in here.
"""

from collections import deque

from ..config import AgentConfig
from ..names import LABELLED_OWNERSHIP, Ownership
from . import ike, steering, sync, synctrace
from .claimant import ClaimantRole
from .director import DirectorRole
from .events import (Accept, CharonSaid, DrainAsked, Drop, HoldingsRead, Inject, Log,
    PacketQueued, Send, StaleSasEnded, SteerRoutes, SyncArrived, Tick, Trace)
from .handover import HandoverRole
from .joining import JoiningRole
from .liveness import LivenessRole
from .membership import SERVING, SERVING_STATES, Happening, IllegalTransition, Membership
from .ownership import ESTABLISHED, NEGOTIATING, Key, OwnershipTable, director_for, ike_sa_key
from .pacing import Pacer
from .resync import ResyncRole
from .sa_events import SaEventsRole


TICK = 0.05
STATELESS = Ownership.STATELESS
LABELLED = LABELLED_OWNERSHIP
LATENCY_SAMPLES = 20000
MAX_FORWARDED_SPIS = 4096
LOGGED_PER_KIND = 3  # malformed packets logged in full, per kind of fault
ADVERTISE_INTERVAL = 5.0
ROUTES_GAP = 0.5  # seconds between two ROUTES a burst of holdings changes sends
STEER_GAP = 0.2  # and between two recomputations of the routes that ROUTES or holdings cause

COUNTERS = ("seen_in", "seen_out", "delivered_local", "forwarded", "received_forwarded",
            "claims_won", "claims_lost", "claim_timeouts", "lookups", "lookups_unresolved",
            "label_hits", "answered_here", "unknown_dropped", "stateless_replies", "expired",
            "refused", "evicted",
            "parked_full", "claims_refused", "parse_errors", "outbound_refused",
            "sync_sent", "sync_received", "sync_bad_mac", "sync_replayed", "sync_stale",
            "sync_malformed",
            "heartbeats_sent", "heartbeats_received", "not_serving_drops", "members_died",
            "dead_owner_entries_dropped", "isolations", "snapshots_sent", "snapshots_applied",
            "stale_sas_dropped", "takeovers", "handovers", "esp_held", "esp_held_full",
            "restarts_seen", "resyncs", "witness_pings", "stalls", "routes_truncated",
            "takeovers_queued", "sync_trace_skipped")
# Messages that change the table: a joining member replays them over the snapshot it applies.
TABLE_CHANGES = (sync.ANNOUNCE, sync.ANSWER, sync.DELETE, sync.REKEY, sync.ESTABLISHED)


class Agent(ClaimantRole, DirectorRole, JoiningRole, HandoverRole, ResyncRole, SaEventsRole,
            LivenessRole):
    """One member's agent. `handle(event, now)` returns the actions it decided on; the
    `*_view` methods say what it knows, for the control socket."""

    def __init__(self, config: AgentConfig, now: float, first_seq: int, join: bool = False,
                 wall_offset: float = 0.0):
        """`first_seq`: the first sync sequence number, larger than any this member used
        before (the shell passes the wall clock in nanoseconds); `wall_offset`: the wall
        clock minus `now`'s (sync messages say when they were sent, `sync`)."""
        self.config = config
        self.me = config.index
        self.names = sorted(config.members, key=config.index_of)
        self.indexes = {config.index_of(n) for n in self.names}
        self.now = now
        self.actions: list = []
        self.membership = Membership(config.member, tuple(self.names), config.dead_after)
        self.membership.start(now, joining=join)
        self.table = OwnershipTable(expiry=config.expiry, cap=config.cap,
                                    half_open_cap=config.half_open_cap,
                                    half_open_per_peer=config.half_open_per_peer)
        self.codec = sync.Codec(bytes.fromhex(config.key), self.me, first_seq)
        self.wall_offset = wall_offset
        self.started_ms = self.wall_ms()
        self.tracing = bool(config.trace)
        self.sync_trace = synctrace.Budget()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latencies_us: deque = deque(maxlen=LATENCY_SAMPLES)
        self.inbox: deque = deque()  # messages this member sends itself
        self.next_tag = 1
        self.forwarded_by_spi: dict[str, int] = {}
        self.sent_by_type: dict[str, int] = {}  # sync messages sent, by message type
        self.parse_errors: dict[str, int] = {}  # packets dropped as malformed, by why
        self.holdings: frozenset = frozenset()  # prefixes of our INSTALLED CHILD SAs
        self.advertised: dict[int, frozenset] = {}  # member -> prefixes it holds
        self.next_tick = self.next_advertisement = 0.0
        self.routes_pacer, self.steer_pacer = Pacer(ROUTES_GAP), Pacer(STEER_GAP)
        self.steer_due = False
        self.handled = False  # no event yet
        ClaimantRole.__init__(self)
        DirectorRole.__init__(self)
        JoiningRole.__init__(self, now)
        HandoverRole.__init__(self)
        ResyncRole.__init__(self)
        LivenessRole.__init__(self)
        self.incarnation = first_seq  # a restart changes it: the others can tell
        self._handlers = {PacketQueued: self.on_packet, SyncArrived: self.on_sync,
                          Tick: self.on_tick, CharonSaid: self.on_charon,
                          HoldingsRead: self.on_holdings,
                          StaleSasEnded: self.on_stale_sas_ended, DrainAsked: self.on_drain}
        self._dispatch = {
            sync.CLAIM: self.on_claim, sync.GRANT: self.on_grant,
            sync.ANNOUNCE: self.on_announce, sync.ACK: self.on_ack, sync.LOOKUP: self.on_lookup,
            sync.ANSWER: self.on_answer, sync.FORWARD: self.on_forward,
            sync.DELETE: self.on_delete, sync.REKEY: self.on_rekey,
            sync.ESTABLISHED: self.on_established, sync.ROUTES: self.on_routes,
            sync.HEARTBEAT: self.on_heartbeat, sync.SNAPSHOT_REQUEST: self.on_snapshot_request,
            sync.SNAPSHOT: self.on_snapshot, sync.SNAPSHOT_END: self.on_snapshot_end,
            sync.OWNED_REQUEST: self.on_owned_request, sync.OWNED: self.on_owned,
            sync.OWNED_END: self.on_owned_end, sync.WITNESS_ANSWER: self.on_witness_answer}

    # ---- the machine ----------------------------------------------------------------------
    def handle(self, event, now: float) -> list:
        """Take one event at monotonic time `now`; return the actions, in order."""
        gap, self.now = now - self.now, now
        self.actions = actions = []
        if gap > self.membership.heartbeat and self.handled:
            self.stalled(gap)  # (not the shell's start-up, before the first event)
        self.handled = True
        self._handlers[type(event)](event)
        while self.inbox:
            self.dispatch(self.inbox.popleft())
        return actions

    def emit(self, action) -> None:
        self.actions.append(action)

    def log(self, text: str) -> None:
        self.emit(Log(f"agent {self.config.member}: {text}"))

    def trace(self, decision: str, packet: bytes | None = None, inbound: bool = True,
              **detail) -> None:
        """A line in this member's trace (`trace`); the shell formats it after the verdicts."""
        if self.tracing:
            self.emit(Trace(decision, packet, inbound, tuple(detail.items())))

    def new_tag(self) -> int:
        self.next_tag = (self.next_tag + 1) & 0xFFFFFFFF or 1
        return self.next_tag

    @property
    def serving(self) -> bool:
        return self.membership.state in SERVING_STATES

    def director(self, ispi: bytes) -> int | None:
        """The serving member that decides `ispi`'s owner (None if nobody serves): in HA
        mode the active member, the lowest serving one."""
        serving = self.membership.serving()
        if not serving:
            return None
        if self.config.mode == "ha":
            return self.config.index_of(serving[0])
        return self.config.index_of(director_for(ispi, serving))

    def live_others(self) -> set:
        return {self.config.index_of(m) for m in self.membership.live()} - {self.me}

    def send(self, to: int | None, msg: sync.Message, counter: str = "sync_sent") -> None:
        if self.replaying or to is None:
            return
        if to == self.me:
            self.inbox.append(msg)
            return
        self.counters[counter] += 1
        self.sent_by_type[msg.type_name] = self.sent_by_type.get(msg.type_name, 0) + 1
        if msg.type in synctrace.TRACED and self.tracing:
            self._trace_sync(to, msg)
        self.emit(Send(to, self.codec.encode(msg, self.now + self.wall_offset)))

    def _trace_sync(self, to: int, msg: sync.Message) -> None:
        if not self.sync_trace.allows(self.now):
            self.counters["sync_trace_skipped"] += 1
            return
        self.trace("sync", type=msg.type_name, to=self.config.name_of(to),
                   key=f"{msg.ispi.hex()}/{msg.msgid}/{msg.requester}",
                   owner=self.config.name_of(msg.owner) if msg.owner else None)

    def broadcast(self, msg: sync.Message, counter: str = "sync_sent") -> None:
        """Send `msg` to every other configured member, live or not: UDP to a dead one costs
        nothing, and one that is coming back hears what changed."""
        for index in sorted(self.indexes - {self.me}):
            self.send(index, msg, counter)

    def departed_owner(self, index: int) -> bool:
        """`index` left the cluster and has not been heard since: a late message naming it
        as an owner must not put it back into the table."""
        return self.config.name_of(index) in self.departed

    def labelled(self, spi: bytes | None) -> int | None:
        """The live member whose label `spi` carries. A label names its member for good, but
        not a dead member's SAs: for those the table decides (and has forgotten them)."""
        if (spi is None or spi == ike.ZERO_SPI or spi[0] not in self.indexes
                or not self.membership.is_live(self.config.name_of(spi[0]))):
            return None
        self.counters["label_hits"] += 1
        return spi[0]

    def owner_of(self, header: ike.IkeHeader, key: Key, inbound: bool) -> int | None:
        """Who owns this packet's key, as far as this member can tell without asking: the
        cluster's SPI label when the IKEv2 header says which SPI is the cluster's, else the
        table; and, statelessly, the label of an IKEv1 responder cookie that no entry claims
        (IKEv1 does not say who initiated, but a negotiation the cluster started is in the
        table from its first packet on)."""
        if self.config.ownership in LABELLED:
            owner = self.labelled(header.cluster_spi(sent_by_cluster=not inbound))
            if owner is not None:
                return owner
        name = self.table.owner_of(key)
        if name:
            return self.config.index_of(name)
        if self.config.ownership == STATELESS and header.major == 1:
            return self.labelled(header.rspi)
        return None

    # ---- packets from NFQUEUE -------------------------------------------------------------
    def on_packet(self, event: PacketQueued) -> None:
        inbound = event.inbound
        self.counters["seen_in" if inbound else "seen_out"] += 1
        if not self.serving:
            # Joining or cut off: the switches send us nothing, and our charon must not
            # speak for the cluster until the table says what is ours.
            self.counters["not_serving_drops"] += 1
            self.emit(Drop(event.ref))
            self.trace("dropped", event.data, inbound, why="not serving")
            return
        try:
            dgram = ike.parse_datagram(event.data)
            port = dgram.dport if inbound else dgram.sport
            data = ike.ike_payload(port, dgram.payload)
            if data is None:  # ESP or a keepalive: queued only while a tunnel comes up here
                if not (inbound and port == ike.NATT_PORT and len(dgram.payload) > 8
                        and self.hold_esp(dgram.src, event.ref)):
                    self.emit(Accept(event.ref))
                return
            header = ike.parse_header(data)
        except ike.ParseError as exc:
            self.counters["parse_errors"] += 1
            why = str(exc).split(":")[0]  # the kind, without the numbers
            self.parse_errors[why] = self.parse_errors.get(why, 0) + 1
            if self.parse_errors[why] <= LOGGED_PER_KIND:
                self.log(f"dropped a malformed {'inbound' if inbound else 'outbound'} packet "
                         f"({exc}): {event.data[:64].hex()}")
            self.emit(Drop(event.ref))
            self.trace("dropped", event.data, inbound, why=f"malformed: {why}")
            return
        key = Key(header.ispi, header.msgid, header.requester)
        packet = event  # parked as it came, until its owner is known
        owner = self.owner_of(header, key, inbound)
        if owner is not None:
            self.release(packet, owner, key.ispi)
        elif inbound and self.config.ownership == STATELESS:
            if header.can_start_negotiation:
                # Answered where it landed, with no state anywhere: charon's labelled
                # responder SPI names this member for the rest of the negotiation.
                self.counters["answered_here"] += 1
                self.emit(Accept(event.ref))
                self.trace("delivered", event.data, why="stateless: answered where it landed")
            else:
                self.counters["unknown_dropped"] += 1  # no label, no entry: nobody's
                self.emit(Drop(event.ref))
                self.trace("dropped", event.data, why="no owner (stateless)")
        elif not inbound and header.is_stateless_reply:
            # charon kept no state (a COOKIE, say): neither does the cluster.
            self.counters["stateless_replies"] += 1
            self.emit(Accept(event.ref))
            self.trace("sent", event.data, False, why="stateless reply")
        elif header.can_start_negotiation or not inbound:
            # Outbound: before our own request leaves, no other member may own its key.
            self.park_claim(key, packet, dgram.src if inbound else dgram.dst)
        else:
            self.park_lookup(key, packet)

    def release(self, packet: PacketQueued, owner: int, ispi: bytes) -> None:
        """Hand a packet to whoever owns its key."""
        ref, inbound, data = packet.ref, packet.inbound, packet.data
        if owner == self.me:
            self.counters["delivered_local"] += 1
            self.emit(Accept(ref))
            self.trace("delivered" if inbound else "sent", data, inbound)
        elif inbound:
            self.emit(Drop(ref))
            self.counters["forwarded"] += 1
            spi = ispi.hex()
            self.forwarded_by_spi[spi] = self.forwarded_by_spi.pop(spi, 0) + 1
            if len(self.forwarded_by_spi) > MAX_FORWARDED_SPIS:  # the least recent goes
                del self.forwarded_by_spi[next(iter(self.forwarded_by_spi))]
            self.send(owner, sync.Message(sync.FORWARD, self.me,
                                          payload=packet.arrival_ns.to_bytes(8, "big") + data))
            self.trace("forwarded", data, to=self.config.name_of(owner))
        else:
            self.counters["outbound_refused"] += 1
            self.emit(Drop(ref))
            self.trace("dropped", data, False,
                       why=f"our charon spoke for {self.config.name_of(owner)}'s key")

    # ---- sync messages --------------------------------------------------------------------
    def on_sync(self, event: SyncArrived) -> None:
        try:
            msg = self.codec.decode(event.data, self.now + self.wall_offset,
                                    self.membership.dead_after / 2)
        except sync.SyncError as err:
            name = {"mac": "sync_bad_mac", "replay": "sync_replayed",
                    "stale": "sync_stale"}.get(err.reason, "sync_malformed")
            self.counters[name] += 1
            return
        if msg.sent and msg.sent_ms < self.started_ms:
            # Sent before this process started: to an earlier one (a replay window does not
            # survive a restart, and `max_age` alone leaves half of dead_after open).
            self.counters["sync_stale"] += 1
            return
        self.counters["heartbeats_received" if msg.type == sync.HEARTBEAT
                      else "sync_received"] += 1
        if msg.sender in self.indexes and msg.sender != self.me:
            self.membership.on_message(self.config.name_of(msg.sender), self.sent_at(msg))
        # Even cut off (isolated) a member records and ACKs what it hears: a member the others
        # still hear must not hold their grants up. Claims, lookups, forwards and snapshot
        # requests it ignores until it serves again.
        try:
            self.dispatch(msg)
        except sync.SyncError:
            self.counters["sync_malformed"] += 1

    def wall_ms(self) -> int:
        """The wall clock now in milliseconds, as a message sent now says it."""
        return int((self.now + self.wall_offset) * 1000)

    def up_at(self, entry) -> float:
        """When `entry`'s IKE SA came up, on our clock (not later than now): its owner's
        word, else when we first heard of it."""
        if not entry.up_ms:
            return entry.created
        return min(self.now, entry.up_ms / 1000 - self.wall_offset)

    def sent_at(self, msg: sync.Message) -> float:
        """When `msg` was sent, on our clock (not later than now): the last time its sender
        was surely alive, however long the message waited to be read."""
        return min(self.now, msg.sent - self.wall_offset) if msg.sent else self.now

    def dispatch(self, msg: sync.Message) -> None:
        if (msg.sender == sync.WITNESS) != (msg.type == sync.WITNESS_ANSWER):
            raise sync.SyncError("malformed")  # only the witness answers, and it only answers
        if msg.type in TABLE_CHANGES:
            self.keep_for_replay(msg)
        self._dispatch[msg.type](msg)

    def on_announce(self, msg: sync.Message) -> None:
        key = Key(msg.ispi, msg.msgid, msg.requester)
        self.restore_decision(key, msg.peer)  # what we announced or granted ourselves
        owner, state = msg.owner, NEGOTIATING
        existing = self.table.entries.get(key)
        if existing and existing.state != NEGOTIATING:
            # charon already confirmed this SA (or a replayed announcement came late):
            # an announcement never takes an entry back to negotiating.
            owner, state = self.config.index_of(existing.owner), existing.state
        elif existing:
            owner = self.lower(owner, self.config.index_of(existing.owner))
            self.table.record(key, self.config.name_of(owner), NEGOTIATING, self.now, msg.peer)
        elif not self.departed_owner(owner):
            self.table.record(key, self.config.name_of(owner), msg.state, self.now, msg.peer)
        self.send(msg.sender, sync.Message(sync.ACK, self.me, ispi=key.ispi, msgid=key.msgid,
                                           requester=key.requester, owner=owner, state=state,
                                           tag=msg.tag))
        self.release_waiting(msg.ispi)

    def on_forward(self, msg: sync.Message) -> None:
        """A member that must not handle an IKE packet sent it here: into our own stack."""
        if not self.serving:
            self.counters["not_serving_drops"] += 1
            return
        arrival_ns, packet = int.from_bytes(msg.payload[:8], "big"), msg.payload[8:]
        try:
            dgram = ike.parse_datagram(packet)
        except ike.ParseError:
            self.counters["parse_errors"] += 1
            return
        self.emit(Inject(packet, dgram.dst))
        self.counters["received_forwarded"] += 1
        self.latencies_us.append((self.now * 1e9 - arrival_ns) / 1000)
        self.trace("injected", packet, **{"from": self.config.name_of(msg.sender)})

    def on_delete(self, msg: sync.Message) -> None:
        self.table.delete(msg.ispi)

    def on_rekey(self, msg: sync.Message) -> None:
        """The owner rekeyed an IKE SA: `ispi`/`rspi` are the new SA's, the payload the old
        initiator SPI."""
        if self.departed_owner(msg.owner):
            return
        if self.table.rekey(msg.payload[:8], msg.ispi, msg.rspi, self.now, msg.sent_ms) is None:
            self.table.record(ike_sa_key(msg.ispi), self.config.name_of(msg.owner),
                              ESTABLISHED, self.now, msg.peer, msg.sent_ms)
        self.release_waiting(msg.ispi)

    def on_established(self, msg: sync.Message) -> None:
        if self.departed_owner(msg.owner):
            return
        # Its owner sent this as the SA came up, or says when it did (a joiner re-announcing
        # what its charon holds): that time is the SA's place among the peer's, the same for
        # every member.
        up_ms = int.from_bytes(msg.payload[:8], "big") if len(msg.payload) >= 8 else msg.sent_ms
        self.table.record(ike_sa_key(msg.ispi), self.config.name_of(msg.owner), ESTABLISHED,
                          self.now, msg.peer, up_ms)
        self.table.establish(msg.ispi, msg.rspi if any(msg.rspi) else None, self.now, up_ms)
        self.table.locate(msg.ispi, msg.port, msg.nat)
        self.release_waiting(msg.ispi)

    def forget_routes(self, index: int | None = None) -> bool:
        """Forget what member `index` (every member, if None) said it holds; True if we knew
        something of it."""
        if index is None:
            self.advertised = {}
            return True
        return self.advertised.pop(index, None) is not None

    def on_routes(self, msg: sync.Message) -> None:
        self.advertised[msg.sender] = sync.decode_prefixes(msg.payload)
        self.steer_soon()

    def on_drain(self, event: DrainAsked) -> None:
        """Hand every tunnel over and stop serving (the switches follow), or serve again; a
        request the member's state does not allow is refused and logged (TRANSITIONS)."""
        try:
            state = self.membership.become(Happening.DRAIN if event.drain else Happening.UNDRAIN)
        except IllegalTransition as exc:
            self.log(f"refused: {exc}")
            return
        if state == SERVING:
            self.member_arrived()
        self.log(state)

    # ---- data plane steering (routes only: no data packet passes through here) ------------
    def steer(self) -> None:
        """Ask for the kernel's steering routes to match what the members hold."""
        self.steer_due = False
        self.advertised[self.me] = self.offered()
        self.emit(SteerRoutes(steering.desired_routes(self.advertised, self.me)))

    def steer_soon(self) -> None:
        """Steer now, or at a later tick if many changes came lately: with a crowd, every
        member's holdings change many times a second while tunnels come up, and each change
        recomputes routes for every tunnel of the cluster."""
        if self.steer_pacer.take(self.now):
            self.steer()
        else:
            self.steer_due = True

    def advertise(self) -> None:
        self.next_advertisement = self.now + ADVERTISE_INTERVAL
        offered = sorted(self.offered())
        if len(offered) > sync.MAX_ROUTES:  # more than the sync network's datagram carries
            self.counters["routes_truncated"] += 1
        self.broadcast(sync.Message(sync.ROUTES, self.me,
                                    payload=sync.encode_prefixes(offered[:sync.MAX_ROUTES])))

    def on_holdings(self, event: HoldingsRead) -> None:
        if event.prefixes != self.holdings:
            self.holdings = event.prefixes
            self.steer_soon()
            # Tell the others soon, but not for every burst: while a crowd comes up, charon's
            # holdings change many times a second, and each ROUTES carries them all.
            if self.routes_pacer.take(self.now):
                self.advertise()
            else:
                self.next_advertisement = min(self.next_advertisement,
                                              self.routes_pacer.next_at(self.now))
        self.installed_now(event.installed)

    # ---- timers ---------------------------------------------------------------------------
    def on_tick(self, _event: Tick) -> None:
        """Timeouts, expiry and re-advertisement, at most once per TICK: not per packet."""
        if self.now < self.next_tick:
            return
        self.next_tick = self.now + TICK
        self.judge_membership()
        self.claimant_timers()
        self.director_timers()
        self.handover_timers()
        self.resync_timers()
        if self.steer_due and self.steer_pacer.take(self.now):
            self.steer()
        if self.config.peers and self.now >= self.next_advertisement and self.serving:
            self.advertise()
        for entry in self.table.expire(self.now):
            self.trace("expired", key=str(entry.key), owner=entry.owner)
        self.counters["expired"] = self.table.expired
        self.counters["refused"] = self.table.refused
        self.counters["evicted"] = self.table.evicted

    # ---- what it knows --------------------------------------------------------------------
    def membership_view(self, now: float) -> dict:
        """This member's state and view of the cluster: cheap enough for the switches to
        ask several times a second."""
        m = self.membership
        return {"member": self.config.member, "state": m.state, "live": sorted(m.live()),
                "serving": m.serving(), "connected": m.connected(now),
                "dead_after": m.dead_after, "table_size": len(self.table.entries),
                "holds": self.table.owned(self.config.member)[0],
                "moving": sorted(self.moving)}

    def status_view(self, now: float) -> dict:
        """Counters, membership, the table, pending work, latency, the prefixes we hold."""
        lat = sorted(self.latencies_us)
        return {"member": self.config.member, "mode": self.config.mode,
                "ownership": self.config.ownership, "counters": dict(self.counters),
                "membership": self.membership_view(now),
                "table": self.table.rows(now),
                "pending": {"claims": len(self.claims), "lookups": len(self.lookups),
                            "announcements": len(self.announcing)},
                "forward_latency_us": {"samples": len(lat),
                                       "median": lat[len(lat) // 2] if lat else None,
                                       "p99": lat[int(len(lat) * 0.99)] if lat else None},
                "forwarded_by_spi": dict(self.forwarded_by_spi),
                "sync_sent_by_type": dict(self.sent_by_type),
                "parse_errors": dict(self.parse_errors),
                "half_open": self.table.half_open(),
                "steering": {"holds": sorted(self.holdings)}}

