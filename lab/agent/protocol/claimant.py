"""The claimant's half of the claim protocol (see `core` for the protocol as a whole).

A member holds an IKE packet whose key has no owner yet in NFQUEUE (the packet is *parked*)
and asks the key's director: a CLAIM for a packet that may start a negotiation (or one our own
charon sends), a LOOKUP for anything else. The director's GRANT or ANSWER releases every packet
parked for the key, to its owner; a claim is sent again to whoever directs the key now while it
waits (the director may have died), and given up after CLAIM_TIMEOUT: the peer retransmits.

`ClaimantRole` is one role of `core.Agent`; it owns `claims` and `lookups`.
"""

from dataclasses import dataclass, field

from ..names import LOOKUP_TIMEOUT
from .contract import ClaimantView
from . import sync
from .events import Drop, PacketQueued
from .ownership import NEGOTIATING, Key, ike_sa_key

CLAIM_TIMEOUT = 1.0
CLAIM_RESEND = 0.3
# Parked packets are state an unauthenticated packet makes: bounded. A key waits for its
# owner a second or two; a peer retransmits a few times meanwhile.
MAX_PARKED_KEYS = 1024  # claims and lookups each
MAX_PACKETS_PER_KEY = 8


@dataclass
class Parked:
    """Packets held in NFQUEUE until their key's owner is known."""

    key: Key
    tag: int
    deadline: float
    director: int | None
    packets: list[PacketQueued] = field(default_factory=list)
    resend_at: float | None = None
    peer: str | None = None
    inbound: bool = True


class ClaimantRole:
    OWNS = ("claims", "lookups")  # the state only this role changes
    VIEW = ClaimantView  # what it may read of the core and do through it (`contract`)

    def __init__(self):
        self.claims: dict[Key, Parked] = {}
        self.lookups: dict[bytes, Parked] = {}

    def drop_parked(self, parked: Parked, why: str) -> None:
        """Give up on parked packets: the peer retransmits what still matters."""
        for packet in parked.packets:
            self.emit(Drop(packet.ref))
            self.trace("dropped", packet.data, packet.inbound, why=why)

    def parking_full(self, waiting: dict, key, packet: PacketQueued) -> bool:
        """No room to park `packet` (dropped and counted): the peer retransmits."""
        parked = waiting.get(key)
        if (parked is None and len(waiting) < MAX_PARKED_KEYS) or (
                parked is not None and len(parked.packets) < MAX_PACKETS_PER_KEY):
            return False
        self.counters["parked_full"] += 1
        self.emit(Drop(packet.ref))
        self.trace("dropped", packet.data, packet.inbound, why="no room to park it")
        return True

    def park_claim(self, key: Key, packet: PacketQueued, peer: str) -> None:
        if self.parking_full(self.claims, key, packet):
            return
        parked = self.claims.get(key)
        if parked is None:
            parked = self.claims[key] = Parked(key, self.new_tag(), self.now + CLAIM_TIMEOUT,
                                               None, resend_at=self.now + CLAIM_RESEND,
                                               peer=peer, inbound=packet.inbound)
            self.send_claim(parked)
        parked.packets.append(packet)
        self.trace("claimed", packet.data, packet.inbound,
                   director=self.config.name_of(parked.director) if parked.director else None)

    def send_claim(self, parked: Parked) -> None:
        parked.director = self.director(parked.key.ispi)
        self.send(parked.director, sync.Message(
            sync.CLAIM, self.me, ispi=parked.key.ispi, msgid=parked.key.msgid,
            requester=parked.key.requester, tag=parked.tag, peer=parked.peer,
            owner=0 if parked.inbound else self.me))

    def park_lookup(self, key: Key, packet: PacketQueued) -> None:
        if self.parking_full(self.lookups, key.ispi, packet):
            return
        parked = self.lookups.get(key.ispi)
        if parked is None:
            self.counters["lookups"] += 1
            parked = self.lookups[key.ispi] = Parked(key, self.new_tag(),
                                                     self.now + LOOKUP_TIMEOUT, None)
            self.send_lookup(parked)
        parked.packets.append(packet)
        self.trace("lookup", packet.data, packet.inbound,
                   director=self.config.name_of(parked.director) if parked.director else None)

    def send_lookup(self, parked: Parked) -> None:
        parked.director = self.director(parked.key.ispi)
        self.send(parked.director, sync.Message(sync.LOOKUP, self.me, ispi=parked.key.ispi,
                                                tag=parked.tag))

    def release_waiting(self, ispi: bytes) -> None:
        """The table now knows who owns `ispi`'s IKE SA: release the packets parked here for a
        lookup, and answer the members that asked this member as director."""
        name = self.table.owner_of(ike_sa_key(ispi))
        if name is None:
            return
        owner = self.config.index_of(name)
        parked = self.lookups.pop(ispi, None)
        if parked:
            for packet in parked.packets:
                self.release(packet, owner, ispi)
        self.answer_waiters(ispi, owner)

    def on_grant(self, msg: sync.Message) -> None:
        """The director's decision on our claim: release the parked packets to the owner."""
        key = Key(msg.ispi, msg.msgid, msg.requester)
        parked = self.claims.get(key)
        if parked is None or parked.tag != msg.tag:
            return
        del self.claims[key]
        if msg.owner == 0 or self.departed_owner(msg.owner):
            self.drop_parked(parked, "claim refused")  # the peer retransmits: a new claim
            return
        self.table.record(key, self.config.name_of(msg.owner), NEGOTIATING, self.now)
        self.counters["claims_won" if msg.owner == self.me else "claims_lost"] += 1
        for packet in parked.packets:
            self.release(packet, msg.owner, key.ispi)

    def on_answer(self, msg: sync.Message) -> None:
        parked = self.lookups.get(msg.ispi)
        if parked is None or parked.tag != msg.tag:
            return
        if msg.owner == 0 or self.departed_owner(msg.owner):
            # No owner, or one we have counted dead (the director has not yet): nobody.
            del self.lookups[msg.ispi]
            self.counters["lookups_unresolved"] += 1
            self.drop_parked(parked, "lookup: no owner")
            return
        self.table.record(ike_sa_key(msg.ispi), self.config.name_of(msg.owner), NEGOTIATING,
                          self.now)
        self.release_waiting(msg.ispi)

    def claimant_timers(self) -> None:
        for key, parked in list(self.claims.items()):
            if self.now >= parked.deadline:
                del self.claims[key]
                self.counters["claim_timeouts"] += 1
                self.drop_parked(parked, "claim timed out")
            elif parked.resend_at and self.now >= parked.resend_at:
                # Again, to whoever directs the key now: the director may have died.
                parked.resend_at = self.now + CLAIM_RESEND
                self.send_claim(parked)
        for ispi, parked in list(self.lookups.items()):
            if self.now >= parked.deadline:
                del self.lookups[ispi]
                self.counters["lookups_unresolved"] += 1
                self.drop_parked(parked, "lookup timed out")

    def claimant_redirects(self, index: int) -> None:
        """Member `index` left: what we asked of it, we ask the key's next director."""
        for parked in self.claims.values():
            if parked.director == index:
                self.send_claim(parked)
        for parked in self.lookups.values():
            if parked.director == index:
                self.send_lookup(parked)

    def claimant_isolated(self) -> None:
        """Cut off: nothing started here may finish, the others cannot hear about it."""
        for parked in list(self.claims.values()) + list(self.lookups.values()):
            self.drop_parked(parked, "cut off from the cluster")
        self.claims.clear()
        self.lookups.clear()
