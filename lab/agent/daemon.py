"""The forwarding agent's I/O loop: NFQUEUE, the sync network, vici events, a status socket.

One agent per member, in the member's namespaces. It sees every IKE packet before charon does
(inbound NFQUEUE on the external interface: UDP 500, and UDP 4500 whose payload starts with the
non-ESP marker) and every IKE packet charon sends (outbound NFQUEUE); ESP and NAT-keepalives
never reach it. For each packet it finds the owner of the packet's key in its replica of the
table, and then:

- own key: accept, charon handles it;
- another member's key: drop it here and send the original packet (addresses and ports intact)
  to the owner over the sync network in a FORWARD message; the owner writes it back into its
  own stack with a raw socket, so charon sees it as if it had come from the peer, and answers
  the peer directly;
- unknown key, a packet that can start a negotiation: CLAIM it from the key's director;
- unknown key, anything else: LOOKUP the owner with the director; never claim.

Why a director, and why claims wait for every member (race freedom, beyond the reference):
the reference lets the member that sees an unknown first packet write itself into the table,
then syncs. If the peer's retransmission of that first packet reaches another member before
the sync lands, both members own the key. Here exactly one member, the key's director (chosen
by rendezvous hashing the initiator SPI over the members, as Cisco ASA clusters choose a
director per flow), decides; it records the first claimant, ANNOUNCEs the owner to every other
member, and GRANTs the claim only once all of them have acknowledged. The claimant keeps the
packet queued until the grant, so charon cannot answer, and the peer cannot send its next
message, before the whole cluster knows the owner. A second claim for the same key gets the
first claimant's name and forwards its packet there. In `--mode ha` the active member is the
director of every key.

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
it was directing go to the key's next director. A member that joins asks a serving member for
the whole table (SNAPSHOT_REQUEST), applies it, replays what changed while the snapshot was in
flight, drops whatever its own charon holds that the table gives to someone else, and only then
serves. The hashing switches follow each agent's state (`lab.switch`): a member gets traffic
only while it serves.

Two directors of one key during a change of membership would each wait for the other's ACK;
an ACK carries the acker's owner for the key, an ANNOUNCE that conflicts with a negotiating
entry keeps the lower member index, and a director grants the lowest owner it has heard of, so
both grant the same member.

The agent also programs the data plane's steering (`steering`: nftables and routes) and then
stays out of its way: no ESP or LAN packet ever reaches this process.

Run: python -m lab.agent.daemon --config agent_<member>.json
"""

import argparse
import json
import os
import queue
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import ike, steering, sync
from .membership import ISOLATED, JOINING, SERVING, STATE_CODES, STATES, Membership
from .ownership import ESTABLISHED, NEGOTIATING, Key, OwnershipTable, director_for, ike_sa_key

SYNC_PORT = 4600
QUEUE_IN, QUEUE_OUT = 1, 2
CHAIN_IN, CHAIN_OUT = "IKELAB_IN", "IKELAB_OUT"
CLAIM_TIMEOUT = 1.0
CLAIM_RESEND = 0.3
ANNOUNCE_RESEND = 0.3
SNAPSHOT_RESEND = 1.0
LOOKUP_TIMEOUT = 2.0
TICK = 0.05
LATENCY_SAMPLES = 20000
ADVERTISE_INTERVAL = 5.0
HOLDINGS_SETTLE = 0.05
# u32: the 4 bytes after the UDP header are zero, i.e. the RFC 3948 non-ESP marker.
NON_ESP_MARKER_U32 = "0>>22&0x3C@8=0"

COUNTERS = ("seen_in", "seen_out", "delivered_local", "forwarded", "received_forwarded",
            "claims_won", "claims_lost", "claim_timeouts", "lookups", "lookups_unresolved",
            "label_hits", "expired", "refused", "parse_errors", "outbound_refused",
            "sync_sent", "sync_received", "sync_bad_mac", "sync_replayed", "sync_malformed",
            "heartbeats_sent", "heartbeats_received", "not_serving_drops", "members_died",
            "dead_owner_entries_dropped", "isolations", "snapshots_sent", "snapshots_applied",
            "stale_sas_dropped")
# Messages that change the table: a joining member replays them over the snapshot it applies.
TABLE_CHANGES = (sync.ANNOUNCE, sync.ANSWER, sync.DELETE, sync.REKEY, sync.ESTABLISHED)


@dataclass
class AgentConfig:
    """What the lab tells one member's agent (written as agent_<member>.json)."""

    member: str
    index: int
    members: dict[str, str]  # member name -> sync address
    key: str  # hex cluster key
    mode: str = "ls"
    ownership: str = "table"
    expiry: float = 120.0
    cap: int = 10000
    external_interface: str = ""
    lan_interface: str = ""
    sync_interface: str = ""
    peers: dict = field(default_factory=dict)  # name -> [address as seen, protected LAN]
    vici_socket: str = ""
    control_socket: str = ""
    dead_after: float = 2.0
    witness: str = ""  # the sync switch's own address (see membership)

    @classmethod
    def load(cls, path: Path) -> "AgentConfig":
        return cls(**json.loads(Path(path).read_text()))

    def name_of(self, index: int) -> str:
        return f"m{index}"

    def index_of(self, name: str) -> int:
        return int(name[1:])


@dataclass
class Parked:
    """Packets held in NFQUEUE until their key's owner is known."""

    key: Key
    tag: int
    deadline: float
    director: int
    packets: list = field(default_factory=list)  # (nfq packet, inbound?, arrival ns)
    resend_at: float | None = None
    peer: str | None = None
    inbound: bool = True

    def drop_all(self) -> None:
        """Give up: the peer retransmits what still matters."""
        for pkt, _inbound, _arrival in self.packets:
            pkt.drop()


@dataclass
class Announcement:
    """A director's decision waiting for every other live member's ACK before its grants go
    out. It never grants early: a member that does not answer is either still live (the
    announcement is sent again) or leaves the live set (and the wait for it ends)."""

    key: Key
    owner: int
    state: str
    peer: str | None
    tag: int
    waiting: set
    resend_at: float
    abandon_at: float
    grants: list = field(default_factory=list)  # (member index, claim tag)


@dataclass
class Snapshot:
    """A joining member's request for the whole table, and what has come back so far."""

    tag: int
    source: int
    resend_at: float
    entries: list = field(default_factory=list)
    replay: list = field(default_factory=list)  # table changes received meanwhile


class Agent:
    """One member's agent; `run()` until SIGTERM."""

    def __init__(self, config: AgentConfig, join: bool = False):
        self.config = config
        self.me = config.index
        self.names = sorted(config.members, key=config.index_of)
        self.indexes = {config.index_of(n) for n in self.names}
        self.membership = Membership(config.member, tuple(self.names), config.dead_after)
        self.membership.start(time.monotonic(), joining=join)
        self.joining_since = time.monotonic()
        self.snapshot: Snapshot | None = None
        self.replaying = False
        self.departed: set[str] = set()  # members dropped as dead, unheard since
        self.join_attempt = 0
        self.next_heartbeat = 0.0
        self.witness_seq = 0
        self.table = OwnershipTable(expiry=config.expiry, cap=config.cap)
        self.codec = sync.Codec(bytes.fromhex(config.key), self.me, time.time_ns())
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latencies_us: deque = deque(maxlen=LATENCY_SAMPLES)
        self.claims: dict[Key, Parked] = {}
        self.lookups: dict[bytes, Parked] = {}
        self.announcing: dict[int, Announcement] = {}
        self.waiters: dict[bytes, list] = {}  # ispi -> [(member index, tag, deadline)]
        self.inbox: deque = deque()  # messages this member sends itself
        self.events: queue.Queue = queue.Queue()
        self.next_tag = 1
        self.refused_grants = 0  # claims the director refused because its table was full
        self.forwarded_by_spi: dict[str, int] = {}
        self.holdings: set[str] = set()  # prefixes of this member's INSTALLED CHILD SAs
        self.advertised: dict[int, set[str]] = {}  # member -> prefixes it holds
        self.route_keeper = RouteKeeper(config)
        self.holdings_stale = threading.Event()
        self.next_tick = 0.0
        self.next_advertisement = 0.0
        self.stopping = False
        self.sync_sock = None
        self.raw_sock = None
        self.icmp_sock = None

    # ---- helpers -------------------------------------------------------------------------
    def _tag(self) -> int:
        self.next_tag = (self.next_tag + 1) & 0xFFFFFFFF or 1
        return self.next_tag

    @property
    def serving(self) -> bool:
        return self.membership.state == SERVING

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
        address = self.config.members[self.config.name_of(to)]
        try:
            self.sync_sock.sendto(self.codec.encode(msg), (address, SYNC_PORT))
            self.counters[counter] += 1
        except OSError:
            pass  # a member that cannot be reached answers nothing; timeouts take over

    def broadcast(self, msg: sync.Message, counter: str = "sync_sent") -> None:
        """Send `msg` to every other configured member, live or not: UDP to a dead one costs
        nothing, and one that is coming back hears what changed."""
        for index in self.indexes - {self.me}:
            self.send(index, msg, counter)

    def label_owner(self, header: ike.IkeHeader, sent_by_cluster: bool) -> int | None:
        if self.config.ownership != "table+label":
            return None
        spi = header.cluster_spi(sent_by_cluster)
        # A label names its member for good, but not a dead member's SAs: the table decides.
        if (spi is None or spi[0] not in self.indexes
                or not self.membership.is_live(self.config.name_of(spi[0]))):
            return None
        self.counters["label_hits"] += 1
        return spi[0]

    # ---- packets from NFQUEUE ---------------------------------------------------------------
    def on_packet(self, pkt, inbound: bool) -> None:
        arrival = time.monotonic_ns()
        self.counters["seen_in" if inbound else "seen_out"] += 1
        if not self.serving:
            # Joining or cut off: the switches send us nothing, and our charon must not
            # speak for the cluster until the table says what is ours.
            self.counters["not_serving_drops"] += 1
            pkt.drop()
            return
        try:
            dgram = ike.parse_datagram(pkt.get_payload())
            port = dgram.dport if inbound else dgram.sport
            data = ike.ike_payload(port, dgram.payload)
            if data is None:  # ESP or keepalive: not ours to judge (the rules should not queue it)
                pkt.accept()
                return
            header = ike.parse_header(data)
        except ike.ParseError:
            self.counters["parse_errors"] += 1
            pkt.drop()
            return
        key = Key(header.ispi, header.msgid, header.requester)
        owner = self.label_owner(header, sent_by_cluster=not inbound)
        if owner is None:
            name = self.table.owner_of(key)
            owner = self.config.index_of(name) if name else None
        if owner is not None:
            self.release(pkt, inbound, owner, arrival, key.ispi)
        elif header.can_start_negotiation or not inbound:
            # Outbound: before our own request leaves, no other member may own its key.
            self.park_claim(key, pkt, inbound, arrival, dgram.src if inbound else dgram.dst)
        else:
            self.park_lookup(key, pkt, inbound, arrival)

    def release(self, pkt, inbound: bool, owner: int, arrival: int, ispi: bytes) -> None:
        """Hand a packet to whoever owns its key."""
        if owner == self.me:
            self.counters["delivered_local"] += 1
            pkt.accept()
        elif inbound:
            payload = arrival.to_bytes(8, "big") + pkt.get_payload()
            pkt.drop()
            self.counters["forwarded"] += 1
            spi = ispi.hex()
            self.forwarded_by_spi[spi] = self.forwarded_by_spi.get(spi, 0) + 1
            self.send(owner, sync.Message(sync.FORWARD, self.me, payload=payload))
        else:
            self.counters["outbound_refused"] += 1
            pkt.drop()

    def park_claim(self, key: Key, pkt, inbound: bool, arrival: int, peer: str) -> None:
        parked = self.claims.get(key)
        if parked is None:
            now = time.monotonic()
            parked = self.claims[key] = Parked(key, self._tag(), now + CLAIM_TIMEOUT,
                                               self.director(key.ispi),
                                               resend_at=now + CLAIM_RESEND, peer=peer,
                                               inbound=inbound)
            self._send_claim(parked)
        pkt.retain()
        parked.packets.append((pkt, inbound, arrival))

    def _send_claim(self, parked: Parked) -> None:
        parked.director = self.director(parked.key.ispi)
        self.send(parked.director, sync.Message(
            sync.CLAIM, self.me, ispi=parked.key.ispi, msgid=parked.key.msgid,
            requester=parked.key.requester, tag=parked.tag, peer=parked.peer,
            owner=0 if parked.inbound else self.me))

    def park_lookup(self, key: Key, pkt, inbound: bool, arrival: int) -> None:
        parked = self.lookups.get(key.ispi)
        if parked is None:
            self.counters["lookups"] += 1
            parked = self.lookups[key.ispi] = Parked(
                key, self._tag(), time.monotonic() + LOOKUP_TIMEOUT, self.director(key.ispi))
            self._send_lookup(parked)
        pkt.retain()
        parked.packets.append((pkt, inbound, arrival))

    def _send_lookup(self, parked: Parked) -> None:
        parked.director = self.director(parked.key.ispi)
        self.send(parked.director, sync.Message(sync.LOOKUP, self.me, ispi=parked.key.ispi,
                                                tag=parked.tag))

    def learned(self, ispi: bytes) -> None:
        """The table now knows more about `ispi`: release what waited for it, here and for
        members that asked this member as director."""
        name = self.table.owner_of(ike_sa_key(ispi))
        if name is None:
            return
        owner = self.config.index_of(name)
        parked = self.lookups.pop(ispi, None)
        if parked:
            for pkt, inbound, arrival in parked.packets:
                self.release(pkt, inbound, owner, arrival, ispi)
        for member, tag, _deadline in self.waiters.pop(ispi, []):
            self.send(member, sync.Message(sync.ANSWER, self.me, ispi=ispi, owner=owner,
                                           tag=tag))

    # ---- sync messages ------------------------------------------------------------------------
    def on_sync(self, data: bytes) -> None:
        try:
            msg = self.codec.decode(data)
        except sync.SyncError as err:
            name = {"mac": "sync_bad_mac", "replay": "sync_replayed"}.get(err.reason,
                                                                          "sync_malformed")
            self.counters[name] += 1
            return
        if msg.type == sync.HEARTBEAT:
            self.counters["heartbeats_received"] += 1
        else:
            self.counters["sync_received"] += 1
        # Even cut off (isolated) a member records and ACKs what it hears: a member the others
        # still hear must not hold their grants up. Claims, lookups, forwards and snapshot
        # requests it ignores until it serves again.
        try:
            self.dispatch(msg)
        except sync.SyncError:
            self.counters["sync_malformed"] += 1

    def dispatch(self, msg: sync.Message) -> None:
        handler = {sync.CLAIM: self.on_claim, sync.GRANT: self.on_grant,
                   sync.ANNOUNCE: self.on_announce, sync.ACK: self.on_ack,
                   sync.LOOKUP: self.on_lookup, sync.ANSWER: self.on_answer,
                   sync.FORWARD: self.on_forward, sync.DELETE: self.on_delete,
                   sync.REKEY: self.on_rekey, sync.ESTABLISHED: self.on_established,
                   sync.ROUTES: self.on_routes, sync.HEARTBEAT: self.on_heartbeat,
                   sync.SNAPSHOT_REQUEST: self.on_snapshot_request,
                   sync.SNAPSHOT: self.on_snapshot,
                   sync.SNAPSHOT_END: self.on_snapshot_end}[msg.type]
        if self.snapshot is not None and msg.type in TABLE_CHANGES:
            self.snapshot.replay.append(msg)
        handler(msg)

    def on_claim(self, msg: sync.Message) -> None:
        """Director: the first claimant of a key owns it, once every member has heard so;
        a peer's new Phase 1 while it has an IKE SA goes to that SA's owner (reauth)."""
        if not self.serving:
            return  # the claimant asks the key's next director when its resend is due
        key = Key(msg.ispi, msg.msgid, msg.requester)
        chosen = self.config.name_of(msg.owner or msg.sender)
        if msg.owner == 0:
            chosen = self.table.owner_for_peer(msg.peer) or chosen
        owner, won = self.table.claim(key, chosen, time.monotonic(), msg.peer)
        if owner is None:  # refused at the cap
            self.send(msg.sender, sync.Message(sync.GRANT, self.me, ispi=msg.ispi,
                                               msgid=msg.msgid, requester=msg.requester,
                                               owner=0, tag=msg.tag))
            return
        owner_index = self.config.index_of(owner)
        pending = next((a for a in self.announcing.values() if a.key == key), None)
        if won:
            now = time.monotonic()
            pending = Announcement(key, owner_index, NEGOTIATING, msg.peer, self._tag(),
                                   self.live_others(), now + ANNOUNCE_RESEND,
                                   now + 2 * self.config.dead_after)
            self.announcing[pending.tag] = pending
            # Every configured member hears it (a joining one keeps up); the live ones ACK.
            self.broadcast(self._announcement(pending))
            self.learned(key.ispi)
        if pending:
            pending.grants.append((msg.sender, msg.tag))
            self._maybe_grant(pending)
        else:
            self._grant(key, owner_index, msg.sender, msg.tag)

    def _grant(self, key: Key, owner: int, to: int, tag: int) -> None:
        self.send(to, sync.Message(sync.GRANT, self.me, ispi=key.ispi, msgid=key.msgid,
                                   requester=key.requester, owner=owner, tag=tag))

    def _announcement(self, a: Announcement) -> sync.Message:
        return sync.Message(sync.ANNOUNCE, self.me, ispi=a.key.ispi, msgid=a.key.msgid,
                            requester=a.key.requester, owner=a.owner, state=a.state, tag=a.tag,
                            peer=a.peer)

    def _maybe_grant(self, announcement: Announcement) -> None:
        if announcement.waiting or announcement.tag not in self.announcing:
            return
        del self.announcing[announcement.tag]
        for member, tag in announcement.grants:
            self._grant(announcement.key, announcement.owner, member, tag)

    def _lower(self, a: int, b: int) -> int:
        """Of two conflicting owners of one negotiating key, the one every member keeps."""
        return min(a, b)

    def on_ack(self, msg: sync.Message) -> None:
        announcement = self.announcing.get(msg.tag)
        if announcement is None:
            return
        if msg.owner and msg.owner != announcement.owner and not self.departed_owner(msg.owner):
            if msg.state != NEGOTIATING:
                # The acker's charon-confirmed owner (an ESTABLISHED we missed) wins outright.
                announcement.owner = msg.owner
                self.table.record(announcement.key, self.config.name_of(msg.owner), msg.state,
                                  time.monotonic(), announcement.peer)
            else:
                # Another director announced this key to the acker first: both keep the lower.
                announcement.owner = self._lower(announcement.owner, msg.owner)
                self.table.record(announcement.key, self.config.name_of(announcement.owner),
                                  NEGOTIATING, time.monotonic(), announcement.peer)
        announcement.waiting.discard(msg.sender)
        self._maybe_grant(announcement)

    def on_grant(self, msg: sync.Message) -> None:
        key = Key(msg.ispi, msg.msgid, msg.requester)
        parked = self.claims.get(key)
        if parked is None or parked.tag != msg.tag:
            return
        del self.claims[key]
        if msg.owner == 0 or self.departed_owner(msg.owner):
            self.refused_grants += msg.owner == 0
            parked.drop_all()  # the peer retransmits, and the claim starts afresh
            return
        self.table.record(key, self.config.name_of(msg.owner), NEGOTIATING, time.monotonic())
        self.counters["claims_won" if msg.owner == self.me else "claims_lost"] += 1
        for pkt, inbound, arrival in parked.packets:
            self.release(pkt, inbound, msg.owner, arrival, key.ispi)

    def on_announce(self, msg: sync.Message) -> None:
        key = Key(msg.ispi, msg.msgid, msg.requester)
        owner, state = msg.owner, NEGOTIATING
        existing = self.table.entries.get(key)
        if existing and existing.state != NEGOTIATING:
            # charon already confirmed this SA (or a replayed announcement came late):
            # an announcement never takes an entry back to negotiating.
            owner, state = self.config.index_of(existing.owner), existing.state
        elif existing:
            owner = self._lower(owner, self.config.index_of(existing.owner))
            self.table.record(key, self.config.name_of(owner), NEGOTIATING, time.monotonic(),
                              msg.peer)
        elif not self.departed_owner(owner):
            self.table.record(key, self.config.name_of(owner), msg.state, time.monotonic(),
                              msg.peer)
        self.send(msg.sender, sync.Message(sync.ACK, self.me, ispi=key.ispi, msgid=key.msgid,
                                           requester=key.requester, owner=owner, state=state,
                                           tag=msg.tag))
        self.learned(msg.ispi)

    def on_lookup(self, msg: sync.Message) -> None:
        if not self.serving:
            return
        name = self.table.owner_of(ike_sa_key(msg.ispi))
        if name:
            self.send(msg.sender, sync.Message(sync.ANSWER, self.me, ispi=msg.ispi,
                                               owner=self.config.index_of(name), tag=msg.tag))
        else:
            self.waiters.setdefault(msg.ispi, []).append(
                (msg.sender, msg.tag, time.monotonic() + LOOKUP_TIMEOUT))

    def on_answer(self, msg: sync.Message) -> None:
        parked = self.lookups.get(msg.ispi)
        if parked is None or parked.tag != msg.tag:
            return
        if msg.owner == 0:
            del self.lookups[msg.ispi]
            self.counters["lookups_unresolved"] += 1
            parked.drop_all()
            return
        self.table.record(ike_sa_key(msg.ispi), self.config.name_of(msg.owner), NEGOTIATING,
                          time.monotonic())
        self.learned(msg.ispi)

    def on_forward(self, msg: sync.Message) -> None:
        """A member that must not handle an IKE packet sent it here: write it into our stack."""
        if not self.serving:
            self.counters["not_serving_drops"] += 1
            return
        arrival, packet = int.from_bytes(msg.payload[:8], "big"), msg.payload[8:]
        try:
            dgram = ike.parse_datagram(packet)
            self.raw_sock.sendto(packet, (dgram.dst, 0))
        except (ike.ParseError, OSError):
            self.counters["parse_errors"] += 1
            return
        self.counters["received_forwarded"] += 1
        self.latencies_us.append((time.monotonic_ns() - arrival) / 1000)

    def on_delete(self, msg: sync.Message) -> None:
        self.table.delete(msg.ispi)

    def on_rekey(self, msg: sync.Message) -> None:
        """The owner rekeyed an IKE SA: `ispi`/`rspi` are the new SA's, the payload the old
        initiator SPI."""
        now = time.monotonic()
        if self.departed_owner(msg.owner):
            return
        if self.table.rekey(msg.payload[:8], msg.ispi, msg.rspi, now) is None:
            self.table.record(ike_sa_key(msg.ispi), self.config.name_of(msg.owner),
                              ESTABLISHED, now)
        self.learned(msg.ispi)

    def on_established(self, msg: sync.Message) -> None:
        if self.departed_owner(msg.owner):
            return
        self.table.record(ike_sa_key(msg.ispi), self.config.name_of(msg.owner), ESTABLISHED,
                          time.monotonic(), msg.peer)
        self.table.establish(msg.ispi, msg.rspi, time.monotonic())
        self.learned(msg.ispi)

    def on_routes(self, msg: sync.Message) -> None:
        prefixes = msg.payload.decode(errors="replace")
        self.advertised[msg.sender] = {p for p in prefixes.split(",") if p}
        self.steer()

    # ---- membership ----------------------------------------------------------------------------
    def departed_owner(self, index: int) -> bool:
        """`index` left the cluster and has not been heard since: a late message naming it
        as an owner must not put it back into the table."""
        return self.config.name_of(index) in self.departed
    def on_heartbeat(self, msg: sync.Message) -> None:
        code, live = sync.decode_heartbeat(msg.payload)
        if code >= len(STATES) or msg.sender not in self.indexes:
            raise sync.SyncError("malformed")
        self.membership.on_heartbeat(self.config.name_of(msg.sender), STATES[code],
                                     frozenset(self.config.name_of(i) for i in live
                                               if i in self.indexes), time.monotonic())

    def heartbeat(self, now: float) -> None:
        self.next_heartbeat = now + self.membership.heartbeat
        payload = sync.encode_heartbeat(STATE_CODES[self.membership.state],
                                        {self.config.index_of(m) for m in self.membership.live()})
        self.broadcast(sync.Message(sync.HEARTBEAT, self.me, payload=payload),
                       counter="heartbeats_sent")
        self.ping_witness()

    def ping_witness(self) -> None:
        """ICMP echo to the sync switch's own address; the answer proves our sync link."""
        if self.icmp_sock is None:
            return
        self.witness_seq = (self.witness_seq + 1) & 0xFFFF
        header = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, self.witness_seq)
        packet = header[:2] + _checksum(header).to_bytes(2, "big") + header[4:]
        try:
            self.icmp_sock.sendto(packet, (self.config.witness, 0))
        except OSError:
            pass  # no route while our link is down: the missing answer says so

    def _read_icmp(self) -> None:
        while True:
            try:
                data, (source, _port) = self.icmp_sock.recvfrom(2048)
            except BlockingIOError:
                return
            offset = (data[0] & 0x0F) * 4
            if (source == self.config.witness and len(data) >= offset + 8 and data[offset] == 0
                    and int.from_bytes(data[offset + 4:offset + 6], "big")
                    == os.getpid() & 0xFFFF):
                self.membership.on_witness(time.monotonic())

    def judge_membership(self, now: float) -> None:
        changes = self.membership.update(now)
        if changes.state:
            self.on_state(changes.state, now)
        for name in sorted(changes.died):
            self.on_member_died(name)
        self.departed -= changes.appeared
        if changes.appeared and self.serving and self.config.peers:
            self.advertise()  # a newcomer learns our routes now, not in 5 s
        if now >= self.next_heartbeat:
            self.heartbeat(now)
        if self.membership.state == JOINING and not self.membership.synced:
            self.fetch_table(now)

    def on_state(self, state: str, now: float) -> None:
        print(f"agent {self.config.member}: {state}", flush=True)
        if state == ISOLATED:
            # Nothing started here may finish: the others cannot hear about it.
            self.counters["isolations"] += 1
            for parked in list(self.claims.values()) + list(self.lookups.values()):
                parked.drop_all()
            self.claims.clear()
            self.lookups.clear()
            # What we recorded as director but never granted is nobody's: the others may
            # grant those keys afresh once they count us dead, and our table must not
            # contradict them meanwhile.
            for announcement in self.announcing.values():
                entry = self.table.entries.get(announcement.key)
                if entry is not None and entry.state == NEGOTIATING:
                    del self.table.entries[announcement.key]
            self.announcing.clear()
            self.waiters.clear()
            self.snapshot = None
        elif state == JOINING:
            # Back from isolation: members may have died meanwhile, unseen from here. Their
            # routes go; the live ones advertise theirs again as soon as they hear us.
            self.joining_since = now
            self.snapshot = None
            self.join_attempt += 1
            self.advertised = {}
            if self.config.peers:
                self.steer()
        elif state == SERVING and self.config.peers:
            self.steer()  # the kernel may have lost routes while our links were down

    def on_member_died(self, name: str) -> None:
        """`name` left the live set: nothing here may point at it any more."""
        index = self.config.index_of(name)
        print(f"agent {self.config.member}: {name} left the cluster", flush=True)
        self.counters["members_died"] += 1
        self.departed.add(name)
        self.counters["dead_owner_entries_dropped"] += self.table.drop_owner(name)
        if self.advertised.pop(index, None) is not None:
            self.steer()
        for announcement in list(self.announcing.values()):
            if announcement.owner == index:
                # Never grant a dead owner: the claimants time out, the peer retransmits.
                del self.announcing[announcement.tag]
                continue
            announcement.waiting.discard(index)
            self._maybe_grant(announcement)
        for parked in self.claims.values():
            if parked.director == index:
                self._send_claim(parked)
        for parked in self.lookups.values():
            if parked.director == index:
                self._send_lookup(parked)
        for ispi, waiting in list(self.waiters.items()):
            self.waiters[ispi] = [w for w in waiting if w[0] != index]

    def fetch_table(self, now: float) -> None:
        """Joining: ask the pivot for the table; with nobody serving, the cluster is
        starting from nothing and this member serves what its own charon holds."""
        if self.snapshot is not None and now < self.snapshot.resend_at:
            return
        pivot = self.membership.pivot()
        if pivot is None:
            if self.membership.nobody_serving_since(now, self.joining_since):
                self.snapshot = None
                self.membership.synced = True
            return
        source = self.config.index_of(pivot)
        self.snapshot = Snapshot(self._tag(), source, now + SNAPSHOT_RESEND)
        self.send(source, sync.Message(sync.SNAPSHOT_REQUEST, self.me, tag=self.snapshot.tag))

    def on_snapshot_request(self, msg: sync.Message) -> None:
        """A joining member wants the whole table: send it, then how many entries it was."""
        if not self.serving:
            return
        now = time.monotonic()
        entries = [(e.key, self.config.index_of(e.owner), e.state, e.rspi, e.peer,
                    now - e.created) for e in self.table.entries.values()]
        for start in range(0, len(entries), sync.ENTRIES_PER_SNAPSHOT):
            chunk = entries[start:start + sync.ENTRIES_PER_SNAPSHOT]
            self.send(msg.sender, sync.Message(sync.SNAPSHOT, self.me, tag=msg.tag,
                                               payload=sync.encode_entries(chunk)))
        self.send(msg.sender, sync.Message(sync.SNAPSHOT_END, self.me, tag=msg.tag,
                                           payload=len(entries).to_bytes(4, "big")))
        self.counters["snapshots_sent"] += 1

    def on_snapshot(self, msg: sync.Message) -> None:
        if self.snapshot and msg.tag == self.snapshot.tag and msg.sender == self.snapshot.source:
            self.snapshot.entries += sync.decode_entries(msg.payload)
            self.snapshot.resend_at = time.monotonic() + SNAPSHOT_RESEND  # still coming

    def on_snapshot_end(self, msg: sync.Message) -> None:
        snapshot = self.snapshot
        if not snapshot or msg.tag != snapshot.tag or msg.sender != snapshot.source:
            return
        if int.from_bytes(msg.payload[:4], "big") != len(snapshot.entries):
            self.snapshot = None  # a chunk was lost: ask again on the next tick
            return
        now = time.monotonic()
        self.table.entries.clear()
        for ispi, msgid, requester, owner, state, rspi, peer, age in snapshot.entries:
            # The pivot may not have counted a member dead that we already dropped.
            if owner in self.indexes and not self.departed_owner(owner):
                self.table.restore(Key(ispi, msgid, requester), self.config.name_of(owner),
                                   state, rspi, peer, age, now)
        # What changed while the snapshot was on its way, applied again on top of it.
        self.snapshot = None
        self.replaying = True
        try:
            for change in snapshot.replay:
                self.dispatch(change)
        finally:
            self.replaying = False
        self.counters["snapshots_applied"] += 1
        mine = {e.key.ispi for e in self.table.entries.values()
                if e.owner == self.config.member and e.key.is_ike_sa}
        threading.Thread(target=self.drop_stale_sas, args=(mine, self.join_attempt),
                         daemon=True).start()

    def drop_stale_sas(self, mine: set, attempt: int) -> None:
        """Thread: end every IKE SA our charon holds that the cluster's table does not give to
        this member (it was given up while we were gone), check that none is left, and report
        back to the loop (which ignores the answer to an earlier join)."""
        from ..strongswan import list_sas, terminate
        sock, dropped, left = Path(self.config.vici_socket), 0, None
        for _ in range(3):
            try:
                stale = [sa for sa in list_sas(sock).values()
                         if bytes.fromhex(sa.get("initiator-spi", "")) not in mine]
            except Exception as exc:  # charon gone: nothing of it to serve with anyway
                print(f"agent {self.config.member}: reading charon's SAs: {exc}", flush=True)
                left = 0
                break
            left = len(stale)
            if not stale:
                break
            for sa in stale:
                try:
                    terminate(sock, sa["uniqueid"])
                    dropped += 1
                except Exception as exc:  # gone meanwhile, or charon busy: look again
                    print(f"agent {self.config.member}: ending stale SA: {exc}", flush=True)
        self.events.put(("synced", (attempt, dropped, left)))
        os.write(self.wake_w, b"s")

    # ---- data plane steering (rules only: no data packet passes through here) -------------------
    def steer(self) -> None:
        """Ask for the kernel's steering routes to match what the members hold."""
        self.advertised[self.me] = self.holdings
        self.route_keeper.want(steering.desired_routes(self.advertised, self.me))

    def advertise(self) -> None:
        self.next_advertisement = time.monotonic() + ADVERTISE_INTERVAL
        self.broadcast(sync.Message(sync.ROUTES, self.me,
                                    payload=",".join(sorted(self.holdings)).encode()))

    def on_holdings(self, prefixes: set[str]) -> None:
        if prefixes != self.holdings:
            self.holdings = prefixes
            self.steer()
            self.advertise()

    def install_steering(self) -> None:
        peers = {name: tuple(value) for name, value in self.config.peers.items()}
        members = {self.config.index_of(n): a for n, a in self.config.members.items()}
        script = steering.ruleset(self.me, members, self.config.external_interface,
                                  self.config.lan_interface, self.config.sync_interface, peers)
        self.remove_steering()
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)

    def remove_steering(self) -> None:
        for family, table in (("netdev", steering.TABLE_ESP), ("inet", steering.TABLE_LAN)):
            subprocess.run(["nft", "delete", "table", family, table], capture_output=True)

    def steering_counters(self) -> dict[str, int]:
        result = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
        try:
            return steering.counters(json.loads(result.stdout))
        except ValueError:
            return {}

    # ---- charon's events ------------------------------------------------------------------------
    def on_event(self, name: str, message) -> None:
        """charon's word on an IKE SA it holds (vici `ike-updown`, `ike-rekey`)."""
        if name == "holdings":
            self.on_holdings(message)
            return
        if name == "synced":
            attempt, dropped, left = message
            self.counters["stale_sas_dropped"] += dropped
            if attempt == self.join_attempt and self.membership.state == JOINING:
                if left:
                    self.snapshot = None  # charon still holds what is not ours: sync again
                else:
                    self.membership.synced = True
            return
        sa = next((v for v in message.values() if isinstance(v, dict)), None)
        if sa is None:
            return
        now = time.monotonic()
        if name == "ike-rekey":
            old, new = _spis(sa.get("old", {})), _spis(sa.get("new", {}))
            if old and new:
                if self.table.rekey(old[0], new[0], new[1], now) is None:
                    self.table.record(ike_sa_key(new[0]), self.config.member, ESTABLISHED, now)
                self.broadcast(sync.Message(sync.REKEY, self.me, ispi=new[0], rspi=new[1],
                                            owner=self.me, payload=old[0]))
                self.learned(new[0])
            return
        spis = _spis(sa)
        if name != "ike-updown" or not spis:
            return  # CHILD SA events only change what the data plane steers (on_holdings)
        if message.get("up") == "yes":
            peer = sa.get("remote-host")
            self.table.record(ike_sa_key(spis[0]), self.config.member, ESTABLISHED, now, peer)
            self.table.establish(spis[0], spis[1], now)
            self.broadcast(sync.Message(sync.ESTABLISHED, self.me, ispi=spis[0], rspi=spis[1],
                                        owner=self.me, peer=peer))
        else:
            self.table.delete(spis[0])
            self.broadcast(sync.Message(sync.DELETE, self.me, ispi=spis[0]))

    def listen_to_charon(self) -> None:
        """Thread: charon's IKE and CHILD SA events, handed to the loop through `events`."""
        import vici

        from ..strongswan import decode
        while not self.stopping:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self.config.vici_socket)
                for name, message in vici.Session(sock).listen(
                        ["ike-updown", "ike-rekey", "child-updown", "child-rekey"]):
                    self.events.put((decode(name), decode(dict(message))))
                    if decode(name).startswith(("child", "ike-updown")):
                        self.holdings_stale.set()
                    os.write(self.wake_w, b"e")
            except Exception:  # charon restarting or gone: try again while we run
                time.sleep(0.5)

    def read_holdings(self) -> None:
        """Thread: after CHILD SA events, the prefixes this member now holds outbound SAs for.
        Events come in bursts while tunnels come up; one read of charon's SAs answers a burst,
        so the loop's thread is not starved decoding vici."""
        from ..strongswan import list_sas
        while not self.stopping:
            if not self.holdings_stale.wait(0.5):
                continue
            time.sleep(HOLDINGS_SETTLE)
            self.holdings_stale.clear()
            try:
                held = {ts for sa in list_sas(Path(self.config.vici_socket)).values()
                        for child in sa.get("child-sas", {}).values()
                        if child.get("state") == "INSTALLED"
                        for ts in child.get("remote-ts", [])}
            except Exception:  # charon gone: the next event tries again
                continue
            self.events.put(("holdings", held))
            os.write(self.wake_w, b"h")

    # ---- timers -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Timeouts, expiry and re-advertisement, at most once per TICK: not per packet."""
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + TICK
        self.judge_membership(now)
        for key, parked in list(self.claims.items()):
            if now >= parked.deadline:
                del self.claims[key]
                self.counters["claim_timeouts"] += 1
                parked.drop_all()
            elif parked.resend_at and now >= parked.resend_at:
                # Again, to whoever directs the key now: the director may have died.
                parked.resend_at = now + CLAIM_RESEND
                self._send_claim(parked)
        for ispi, parked in list(self.lookups.items()):
            if now >= parked.deadline:
                del self.lookups[ispi]
                self.counters["lookups_unresolved"] += 1
                parked.drop_all()
        for announcement in list(self.announcing.values()):
            announcement.waiting &= self.live_others()
            if now >= announcement.abandon_at:
                del self.announcing[announcement.tag]  # the claimants have given up
            elif not announcement.waiting:
                self._maybe_grant(announcement)
            elif now >= announcement.resend_at:
                announcement.resend_at = now + ANNOUNCE_RESEND
                for index in announcement.waiting:
                    self.send(index, self._announcement(announcement))
        for ispi, waiting in list(self.waiters.items()):
            late = [w for w in waiting if now >= w[2]]
            for member, tag, _deadline in late:
                self.send(member, sync.Message(sync.ANSWER, self.me, ispi=ispi, owner=0, tag=tag))
            if len(late) == len(waiting):
                del self.waiters[ispi]
            else:
                self.waiters[ispi] = [w for w in waiting if now < w[2]]
        if self.config.peers and now >= self.next_advertisement and self.serving:
            self.advertise()
        self.table.expire(now)
        self.counters["expired"] = self.table.expired
        self.counters["refused"] = self.table.refused + self.refused_grants

    # ---- status ------------------------------------------------------------------------------
    def status(self) -> dict:
        lat = sorted(self.latencies_us)
        return {"member": self.config.member, "pid": os.getpid(), "mode": self.config.mode,
                "ownership": self.config.ownership, "counters": dict(self.counters),
                "membership": self.membership_state(),
                "table": self.table.rows(time.monotonic()),
                "pending": {"claims": len(self.claims), "lookups": len(self.lookups),
                            "announcements": len(self.announcing)},
                "forward_latency_us": {"samples": len(lat),
                                       "median": lat[len(lat) // 2] if lat else None,
                                       "p99": lat[int(len(lat) * 0.99)] if lat else None},
                "forwarded_by_spi": dict(self.forwarded_by_spi),
                "steering": {"counters": self.steering_counters() if self.config.peers else {},
                             "routes": {p: self.config.name_of(m)
                                        for p, m in sorted(self.route_keeper.routes().items())},
                             "holds": sorted(self.holdings)},
                "cpu_s": sum(os.times()[:2])}

    def membership_state(self) -> dict:
        """This member's state and view of the cluster: cheap enough for the switches to
        ask several times a second."""
        m = self.membership
        return {"member": self.config.member, "state": m.state, "live": sorted(m.live()),
                "serving": m.serving(), "connected": m.connected(time.monotonic()),
                "dead_after": m.dead_after, "table_size": len(self.table.entries)}

    def on_control(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(1.0)
            request = conn.recv(256).strip()
            if request == b"state":
                reply = self.membership_state()
            elif request == b"owners":
                reply = self.table.owners()
            elif request == b"status":
                reply = self.status()
            elif request == b"reset-latency":
                self.latencies_us.clear()
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown request {request[:40]!r}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    # ---- set-up and loop -------------------------------------------------------------------------
    def rules(self, action: str) -> list[list[str]]:
        """The iptables commands that queue IKE (and nothing else) to this agent."""
        intf = self.config.external_interface
        commands = []
        for chain, hook, direction, port_flag, num in (
                (CHAIN_IN, "PREROUTING", "-i", "--dport", QUEUE_IN),
                (CHAIN_OUT, "OUTPUT", "-o", "--sport", QUEUE_OUT)):
            if action == "add":
                commands += [["-N", chain],
                             ["-A", chain, "-p", "udp", port_flag, "500", "-j", "NFQUEUE",
                              "--queue-num", str(num), "--queue-bypass"],
                             ["-A", chain, "-p", "udp", port_flag, "4500", "-m", "u32",
                              "--u32", NON_ESP_MARKER_U32, "-j", "NFQUEUE",
                              "--queue-num", str(num), "--queue-bypass"],
                             ["-A", hook, direction, intf, "-p", "udp", "-j", chain]]
            else:
                commands += [["-D", hook, direction, intf, "-p", "udp", "-j", chain],
                             ["-F", chain], ["-X", chain]]
        return [["iptables", "-w", "-t", "mangle", *c] for c in commands]

    def install_rules(self) -> None:
        self.remove_rules()
        for command in self.rules("add"):
            subprocess.run(command, check=True, capture_output=True)

    def remove_rules(self) -> None:
        for command in self.rules("remove"):
            subprocess.run(command, capture_output=True)

    def run(self) -> None:
        from netfilterqueue import NetfilterQueue

        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        self.sync_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sync_sock.bind((self.config.members[self.config.member], SYNC_PORT))
        # A snapshot of a full table is a burst of 250 datagrams; a small buffer would drop
        # its tail and the joiner would ask again forever.
        self.sync_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sync_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sync_sock.setblocking(False)
        self.raw_sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        if self.config.witness:
            self.icmp_sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.icmp_sock.setblocking(False)
        control_path = Path(self.config.control_socket)
        control_path.unlink(missing_ok=True)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(control_path))
        control.listen(8)
        control.setblocking(False)
        self.wake_r, self.wake_w = os.pipe()
        queues = []
        for num, inbound in ((QUEUE_IN, True), (QUEUE_OUT, False)):
            nfq = NetfilterQueue()
            nfq.bind(num, lambda pkt, inbound=inbound: self.on_packet(pkt, inbound),
                     max_len=4096)
            queues.append(nfq)
        self.install_rules()
        if self.config.peers:
            self.install_steering()
            # A predecessor killed on this member left its steering routes behind.
            subprocess.run(["ip", "route", "flush", "proto", "static"], capture_output=True)
            self.route_keeper.start()
        threading.Thread(target=self.listen_to_charon, daemon=True).start()
        if self.config.peers:
            threading.Thread(target=self.read_holdings, daemon=True).start()
        selector = selectors.DefaultSelector()
        for nfq in queues:
            selector.register(nfq.get_fd(), selectors.EVENT_READ,
                              lambda nfq=nfq: nfq.run(block=False))
        selector.register(self.sync_sock, selectors.EVENT_READ, self._read_sync)
        selector.register(control, selectors.EVENT_READ,
                          lambda: self.on_control(control.accept()[0]))
        selector.register(self.wake_r, selectors.EVENT_READ, self._read_events)
        if self.icmp_sock is not None:
            selector.register(self.icmp_sock, selectors.EVENT_READ, self._read_icmp)
        print(f"agent {self.config.member}: running, {self.membership.state}", flush=True)
        try:
            while not self.stopping:
                for selected, _ in selector.select(TICK):
                    selected.data()
                    self._drain_inbox()
                self.tick()
                self._drain_inbox()
        finally:
            self.remove_rules()
            self.remove_steering()
            self.route_keeper.stop()
            for nfq in queues:
                nfq.unbind()
            control_path.unlink(missing_ok=True)

    def _read_sync(self) -> None:
        while True:
            try:
                data = self.sync_sock.recv(70000)
            except BlockingIOError:
                return
            self.on_sync(data)

    def _read_events(self) -> None:
        os.read(self.wake_r, 4096)
        while not self.events.empty():
            self.on_event(*self.events.get())

    def _drain_inbox(self) -> None:
        while self.inbox:
            self.dispatch(self.inbox.popleft())


class RouteKeeper(threading.Thread):
    """Applies the steering routes the loop asks for, in the background: `ip` takes
    milliseconds, and the loop must keep answering claims while tunnels come up."""

    def __init__(self, config: AgentConfig):
        super().__init__(daemon=True)
        self.config = config
        self.applied: dict[str, int] = {}  # prefix -> member, as the kernel has them
        self.desired: dict[str, int] | None = None
        self.changed = threading.Condition()
        self.stopping = False

    def want(self, desired: dict[str, int]) -> None:
        """Ask for exactly these routes; only the latest wish counts."""
        with self.changed:
            self.desired = dict(desired)
            self.changed.notify()

    def routes(self) -> dict[str, int]:
        with self.changed:
            return dict(self.applied)

    def run(self) -> None:
        while True:
            with self.changed:
                while self.desired is None and not self.stopping:
                    self.changed.wait()
                if self.stopping:
                    return
                desired, self.desired = self.desired, None
            # The kernel's own view: a link that went down took its routes with it.
            current = self.kernel_routes()
            replace, delete = steering.route_changes(current, desired)
            for prefix in delete:
                subprocess.run(["ip", "route", "del", prefix, "proto", "static"],
                               capture_output=True)
                current.pop(prefix)
            for prefix, member in replace.items():
                via = self.config.members[self.config.name_of(member)]
                done = subprocess.run(["ip", "route", "replace", prefix, "via", via, "dev",
                                       self.config.sync_interface, "proto", "static"],
                                      capture_output=True).returncode == 0
                if done:
                    current[prefix] = member
            with self.changed:
                self.applied = current

    def kernel_routes(self) -> dict[str, int]:
        """prefix -> member, for the steering routes the kernel has now."""
        members = {address: self.config.index_of(name)
                   for name, address in self.config.members.items()}
        out = subprocess.run(["ip", "-j", "route", "show", "proto", "static"],
                             capture_output=True, text=True).stdout
        try:
            routes = json.loads(out or "[]")
        except ValueError:
            return {}
        return {r["dst"]: members[r["gateway"]] for r in routes
                if r.get("gateway") in members and "dst" in r}

    def stop(self) -> None:
        """Stop, and take every steering route out of the kernel."""
        with self.changed:
            self.stopping = True
            self.changed.notify()
        if self.is_alive():
            self.join(5)
        for prefix in self.routes():
            subprocess.run(["ip", "route", "del", prefix, "proto", "static"], capture_output=True)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _spis(sa: dict) -> tuple[bytes, bytes] | None:
    """(initiator SPI, responder SPI) of a vici IKE SA dict, or None if it has none."""
    try:
        ispi = bytes.fromhex(sa["initiator-spi"])
        rspi = bytes.fromhex(sa.get("responder-spi", "0" * 16))
    except (KeyError, ValueError):
        return None
    return (ispi, rspi) if len(ispi) == 8 and len(rspi) == 8 else None


def query(control_socket: Path, request: str = "status", timeout: float = 5.0) -> dict:
    """Ask a running agent over its control socket; raises OSError if it does not answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(control_socket))
        sock.sendall(request.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    return json.loads(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="ikelab forwarding agent for one member")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--join", action="store_true",
                        help="fetch the table from a serving member before serving (a member "
                             "that comes back); without it the member starts with the cluster")
    args = parser.parse_args(argv)
    try:
        config = AgentConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        print(f"agent: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    Agent(config, join=args.join).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
