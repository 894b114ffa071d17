"""The ownership table: Check Point's `SEP_my_IKE_packet`, with what IKE needs beyond it.

The reference keys the table by IKE cookie (initiator SPI) + Message ID and writes the owning
member as the value. Here a key is (initiator SPI, Message ID, who started the exchange):
IKEv2 counts Message IDs separately in each direction (RFC 7296 2.2), so the same number
names two exchanges; IKEv1 Phase 2 exchanges carry their own random Message IDs. The entry with
Message ID 0 started by the initiator is the IKE SA's (Phase 1) entry; an exchange with no entry
of its own belongs to the member that owns its IKE SA. An IKE SA rekey (new SPIs) becomes a new
IKE SA entry with the old SA's owner.

Only the director of a key (`director_for`) decides who owns it; every member keeps a replica
of the whole table, filled by the director's announcements, so lookups are local.

Hygiene: an entry still negotiating expires (the reference's 120 s, configurable); an
established IKE SA's entry lives until the SA is deleted; a rekeyed SA's entry lingers for a
grace period so the exchanges still in flight on it (its DELETE) find their owner. The table
has a size cap; what it refuses is counted.
"""

import hashlib
from dataclasses import dataclass, field

NEGOTIATING, ESTABLISHED, REKEYED = "negotiating", "established", "rekeyed"


@dataclass(frozen=True, order=True)
class Key:
    """(initiator SPI, Message ID, requester) with requester 'i', 'r' or '-' (IKEv1)."""

    ispi: bytes
    msgid: int = 0
    requester: str = "i"

    def __str__(self) -> str:
        return f"{self.ispi.hex()}/{self.msgid}/{self.requester}"

    @property
    def is_ike_sa(self) -> bool:
        return self.msgid == 0 and self.requester == "i"


def ike_sa_key(ispi: bytes) -> Key:
    return Key(ispi, 0, "i")


@dataclass
class Entry:
    key: Key
    owner: str
    state: str
    created: float
    expires: float | None
    rspi: bytes | None = None
    peer: str | None = None  # the peer's address, as the cluster sees it


def director_for(ispi: bytes, members: list[str]) -> str:
    """The member that decides who owns the IKE SA with this initiator SPI: highest random
    weight over the members, so a change of membership moves only the keys it must."""
    return max(members, key=lambda m: hashlib.sha256(m.encode() + ispi).digest())


@dataclass
class OwnershipTable:
    """The cluster-wide table as one member holds it; time is passed in, never read."""

    expiry: float = 120.0
    cap: int = 10000
    rekey_grace: float = 30.0
    entries: dict[Key, Entry] = field(default_factory=dict)
    refused: int = 0
    expired: int = 0

    def _ike_sa(self, ispi: bytes) -> Entry | None:
        return self.entries.get(ike_sa_key(ispi))

    def owner_of(self, key: Key) -> str | None:
        """The owner of `key`, or of its IKE SA when the exchange has no entry of its own."""
        entry = self.entries.get(key) or self._ike_sa(key.ispi)
        return entry.owner if entry else None

    def owner_for_peer(self, peer: str | None) -> str | None:
        """The owner of an established IKE SA with `peer`, if there is one.

        A new Phase 1 from a peer that already has an IKE SA is a reauthentication (IKEv1
        rekeys its IKE SA that way, with new cookies): it goes to the same member.
        """
        if peer is None:
            return None
        return next((e.owner for e in self.entries.values()
                     if e.peer == peer and e.state == ESTABLISHED and e.key.is_ike_sa), None)

    def claim(self, key: Key, member: str, now: float,
              peer: str | None = None) -> tuple[str | None, bool]:
        """Make `member` the owner of `key` unless someone already is.

        Returns (owner, won): the owner after the call and whether this claim created it;
        (None, False) when the table is full (counted in `refused`).
        """
        existing = self.entries.get(key)
        if existing:
            return existing.owner, False
        if len(self.entries) >= self.cap:
            self.refused += 1
            return None, False
        self.entries[key] = Entry(key, member, NEGOTIATING, now, now + self.expiry, peer=peer)
        return member, True

    def record(self, key: Key, owner: str, state: str, now: float,
               peer: str | None = None) -> bool:
        """Apply the director's announcement; False when refused at the cap."""
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.cap:
                self.refused += 1
                return False
            entry = self.entries[key] = Entry(key, owner, state, now, None)
        elif state == NEGOTIATING and entry.state != NEGOTIATING:
            return True  # charon confirmed this SA: word of a negotiation never undoes that
        entry.owner = owner
        entry.peer = peer or entry.peer
        self._set_state(entry, state, now)
        return True

    def _set_state(self, entry: Entry, state: str, now: float) -> None:
        entry.state = state
        entry.expires = {NEGOTIATING: entry.created + self.expiry, ESTABLISHED: None,
                         REKEYED: now + self.rekey_grace}[state]

    def establish(self, ispi: bytes, rspi: bytes | None, now: float) -> Entry | None:
        """The IKE SA is up: its entry lives until the SA is deleted."""
        entry = self._ike_sa(ispi)
        if entry:
            entry.rspi = rspi or entry.rspi
            self._set_state(entry, ESTABLISHED, now)
        return entry

    def rekey(self, old_ispi: bytes, new_ispi: bytes, new_rspi: bytes | None,
              now: float) -> Entry | None:
        """The IKE SA was rekeyed: the new SA belongs to the old one's owner."""
        old = self._ike_sa(old_ispi)
        if old is None:
            return None
        if not self.record(ike_sa_key(new_ispi), old.owner, ESTABLISHED, now):
            return None
        new = self.entries[ike_sa_key(new_ispi)]
        new.rspi = new_rspi
        new.peer = old.peer
        self._set_state(old, REKEYED, now)
        return new

    def delete(self, ispi: bytes) -> int:
        """Remove every entry of the IKE SA with this initiator SPI; how many went."""
        gone = [k for k in self.entries if k.ispi == ispi]
        for key in gone:
            del self.entries[key]
        return len(gone)

    def drop_owner(self, member: str) -> int:
        """Remove every entry `member` owns (it left the cluster); how many went.

        The survivors cannot take its IKE SAs over (the keys live in its charon), so the peer
        re-establishes through DPD, and the new negotiation is claimed afresh; meanwhile its
        packets for the old SAs find no owner and are dropped, not sent to the dead member.
        """
        gone = [k for k, e in self.entries.items() if e.owner == member]
        for key in gone:
            del self.entries[key]
        return len(gone)

    def restore(self, key: Key, owner: str, state: str, rspi: bytes | None, peer: str | None,
                age: float, now: float) -> None:
        """Take one entry from a serving member's snapshot, ages and all (no cap: the sender's
        table fit under the same cap)."""
        entry = self.entries[key] = Entry(key, owner, state, now - age, None, rspi, peer)
        self._set_state(entry, state, now)

    def owners(self) -> dict[str, str]:
        """key -> owner, for comparing replicas."""
        return {str(k): e.owner for k, e in self.entries.items()}

    def expire(self, now: float) -> list[Entry]:
        """Remove and return the entries whose time is up."""
        gone = [e for e in self.entries.values() if e.expires is not None and e.expires <= now]
        for entry in gone:
            del self.entries[entry.key]
        self.expired += len(gone)
        return gone

    def rows(self, now: float) -> list[dict]:
        """The table for `ikelab status` and the CLI: key, owner, state, age."""
        return [{"key": str(e.key), "owner": e.owner, "state": e.state,
                 "age_s": round(now - e.created, 1),
                 "rspi": e.rspi.hex() if e.rspi else None, "peer": e.peer}
                for e in sorted(self.entries.values(), key=lambda e: e.created)]
