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

Hygiene, and why: every entry that an unauthenticated packet creates is a lever for an
attacker, so entries still negotiating (*half-open*: a first packet claimed, nothing proven)
are kept apart from the rest. They expire soon (`expiry`, 30 s by default: charon gives up on
a half-open IKE SA then too), they have a budget of their own (`half_open_cap`) and one per
peer address (`half_open_per_peer`), and when either is spent the *oldest* half-open entry
makes room: a new negotiation always gets a slot, and no flood of first packets can refuse an
established SA's entry or a legitimate peer's new negotiation (a negotiation needs its slot for
a fraction of a second; at the cap, an entry lives `half_open_cap / flood rate` seconds). An
established IKE SA's entry lives until the SA is deleted; a rekeyed SA's entry lingers for a
grace period so the exchanges still in flight on it (its DELETE) find their owner. Established
entries have a cap of their own (`cap`); what it refuses is counted.
"""

import hashlib
from dataclasses import dataclass

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
    port: int = 0  # the peer's UDP port (its NAT's, behind one)
    nat: bool = False  # the peer is behind a NAT
    # When its owner says the IKE SA came up (wall clock, ms; 0: not said). Every member
    # orders a peer's SAs by it, so all agree which is the newest, whenever each heard of it.
    up_ms: int = 0

    @property
    def order(self) -> tuple[int, bytes]:
        """Where this IKE SA stands among its peer's: later up, later here; the SPI breaks
        a tie the same way everywhere."""
        return self.up_ms, self.key.ispi


def director_for(ispi: bytes, members: list[str]) -> str:
    """The member that decides who owns the IKE SA with this initiator SPI: highest random
    weight over the members, so a change of membership moves only the keys it must."""
    return max(members, key=lambda m: hashlib.sha256(m.encode() + ispi).digest())


class OwnershipTable:
    """The cluster-wide table as one member holds it; time is passed in, never read. Indexed
    so that nothing on the per-packet path scans the table."""

    def __init__(self, expiry: float = 30.0, cap: int = 10000, half_open_cap: int = 2048,
                 half_open_per_peer: int = 64, rekey_grace: float = 30.0):
        self.expiry = expiry
        self.cap = cap
        self.half_open_cap = half_open_cap
        self.half_open_per_peer = half_open_per_peer
        self.rekey_grace = rekey_grace
        self.entries: dict[Key, Entry] = {}
        self.refused = 0  # established entries refused at `cap`
        self.evicted = 0  # half-open entries that made room for newer ones
        self.expired = 0
        self._by_ispi: dict[bytes, set[Key]] = {}
        self._half_open: dict[Key, None] = {}  # in creation order: the oldest first
        self._half_open_by_peer: dict[str, dict[Key, None]] = {}
        self._lingering: dict[Key, None] = {}  # rekeyed, in the order their grace ends
        self._established_by_peer: dict[str, dict[Key, None]] = {}
        self._owned: dict[str, tuple[int, int]] = {}  # owner -> (count, digest), `owned`
        self._counted: set[Key] = set()  # the entries `_owned` counts
        self._doubled: set[str] = set()  # peers with two established IKE SAs or more
        self.version = 0  # changes whenever an established IKE SA's entry comes or goes

    # ---- reading --------------------------------------------------------------------------
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
        keys = self._established_by_peer.get(peer) if peer else None
        return self.entries[next(iter(keys))].owner if keys else None

    def half_open(self) -> int:
        return len(self._half_open)

    def owned(self, owner: str) -> tuple[int, int]:
        """(count, digest) of the established IKE SAs `owner` owns: the digest is the XOR of
        a hash of each initiator SPI, kept up to date entry by entry, so two tables that
        list the same SAs for an owner agree on it without comparing the lists."""
        return self._owned.get(owner, (0, 0))

    def owns_sa(self, ispi: bytes, owner: str) -> bool:
        """`owner` owns the established IKE SA with this initiator SPI."""
        entry = self._ike_sa(ispi)
        return entry is not None and entry.owner == owner and entry.state == ESTABLISHED

    def owned_by(self, owner: str) -> list[Entry]:
        """The established IKE SAs' entries `owner` owns (a scan: for the rare resync)."""
        return [e for e in self.entries.values() if e.owner == owner
                and e.state == ESTABLISHED and e.key.is_ike_sa]

    # ---- changing ---------------------------------------------------------------------------
    def claim(self, key: Key, member: str, now: float,
              peer: str | None = None) -> tuple[str, bool]:
        """Make `member` the owner of `key` unless someone already is.

        Returns (owner, won): the owner after the call and whether this claim created it. A
        claim is never refused: at a half-open budget the oldest half-open entry gives way.
        """
        existing = self.entries.get(key)
        if existing:
            return existing.owner, False
        self._add(Entry(key, member, NEGOTIATING, now, None, peer=peer), now)
        return member, True

    def record(self, key: Key, owner: str, state: str, now: float,
               peer: str | None = None, up_ms: int = 0) -> bool:
        """Apply another member's word on `key` (`up_ms`: when its owner says the IKE SA
        came up); False when refused at the cap."""
        entry = self.entries.get(key)
        if entry is None:
            if state != NEGOTIATING and len(self.entries) - len(self._half_open) >= self.cap:
                self.refused += 1
                return False
            self._add(Entry(key, owner, state, now, None, peer=peer, up_ms=up_ms), now)
            return True
        if up_ms and state == ESTABLISHED:
            self._set_up(entry, up_ms)
        if state == NEGOTIATING and entry.state != NEGOTIATING:
            return True  # charon confirmed this SA: word of a negotiation never undoes that
        if owner != entry.owner or (peer and peer != entry.peer):
            self._unindex(entry)
            entry.owner = owner
            entry.peer = peer or entry.peer
            self._index(entry)
        self._set_state(entry, state, now)
        return True

    def establish(self, ispi: bytes, rspi: bytes | None, now: float,
                  up_ms: int = 0) -> Entry | None:
        """The IKE SA is up (at `up_ms`, its owner says): its entry lives until the SA is
        deleted."""
        entry = self._ike_sa(ispi)
        if entry:
            entry.rspi = rspi or entry.rspi
            self._set_state(entry, ESTABLISHED, now)
            if up_ms:
                self._set_up(entry, up_ms)
            # Its exchanges' own entries say nothing the SA's does not (`owner_of` falls back
            # to it): drop those of the same owner now, rather than hold them half-open until
            # they expire. At 100 tunnels a second that was 6,000 half-open entries, past the
            # budget, and the oldest that made room were negotiations still under way.
            for key in list(self._by_ispi.get(ispi, ())):
                other = self.entries[key]
                if (key != entry.key and other.state == NEGOTIATING
                        and other.owner == entry.owner):
                    self.forget(key)
        return entry

    def rekey(self, old_ispi: bytes, new_ispi: bytes, new_rspi: bytes | None,
              now: float, up_ms: int = 0) -> Entry | None:
        """The IKE SA was rekeyed: the new SA belongs to the old one's owner."""
        old = self._ike_sa(old_ispi)
        if old is None:
            return None
        if not self.record(ike_sa_key(new_ispi), old.owner, ESTABLISHED, now, old.peer,
                           up_ms):
            return None
        new = self.entries[ike_sa_key(new_ispi)]
        new.rspi, new.port, new.nat = new_rspi, old.port, old.nat
        self._set_state(old, REKEYED, now)
        return new

    def locate(self, ispi: bytes, port: int, nat: bool) -> None:
        """Where the IKE SA's peer is: the port it talks from, and whether through a NAT (a
        member taking the tunnel over must reach the peer there)."""
        entry = self._ike_sa(ispi)
        if entry is not None and port:
            entry.port, entry.nat = port, nat

    def established(self, owner: str | None = None) -> list[Entry]:
        """The established IKE SAs' entries (of `owner` only, given one), oldest first."""
        return sorted((e for e in self.entries.values() if e.state == ESTABLISHED
                       and e.key.is_ike_sa and (owner is None or e.owner == owner)),
                      key=lambda e: e.created)

    def established_with(self, peer: str | None) -> list[Entry]:
        """The established IKE SAs' entries with `peer` (its address), oldest first."""
        keys = self._established_by_peer.get(peer, {}) if peer else {}
        return sorted((self.entries[k] for k in keys), key=lambda e: e.order)

    def newest_by_peer(self) -> dict[str, Entry]:
        """peer address -> the newest established IKE SA's entry with it (one pass, no sort:
        the balance runs over every tunnel)."""
        return {peer: max((self.entries[k] for k in keys), key=lambda e: e.order)
                for peer, keys in self._established_by_peer.items()}

    def superseded(self, owner: str) -> list[tuple[Entry, Entry]]:
        """(old, new) for each of `owner`'s established IKE SAs whose peer has a newer one (the
        newest): with another member, the tunnel moved; with `owner` itself, the peer holds
        two SAs with it (a takeover and a peer's own restart crossed). Either way the old SA
        is left to end. Only peers with two SAs or more are looked at: per tick, not per
        tunnel."""
        result = []
        for peer in self._doubled:
            entries = self.established_with(peer)
            newest = entries[-1]
            result += [(e, newest) for e in entries[:-1] if e.owner == owner]
        return sorted(result, key=lambda pair: pair[0].order)

    def delete(self, ispi: bytes) -> int:
        """Remove every entry of the IKE SA with this initiator SPI; how many went."""
        gone = list(self._by_ispi.get(ispi, ()))
        for key in gone:
            self.forget(key)
        return len(gone)

    def forget(self, key: Key) -> None:
        """Remove one entry, if it is there."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._unindex(entry)
            keys = self._by_ispi[key.ispi]
            keys.discard(key)
            if not keys:
                del self._by_ispi[key.ispi]

    def drop_owner(self, member: str) -> int:
        """Remove every entry `member` owns (it left the cluster); how many went.

        The survivors cannot take its IKE SAs over (the keys live in its charon), so the peer
        re-establishes through DPD, and the new negotiation is claimed afresh; meanwhile its
        packets for the old SAs find no owner and are dropped, not sent to the dead member.
        """
        gone = [k for k, e in self.entries.items() if e.owner == member]
        for key in gone:
            self.forget(key)
        return len(gone)

    def clear(self) -> None:
        for key in list(self.entries):
            self.forget(key)

    def restore(self, key: Key, owner: str, state: str, rspi: bytes | None, peer: str | None,
                age: float, now: float, port: int = 0, nat: bool = False,
                up_ms: int = 0) -> None:
        """Take one entry from a serving member's snapshot, ages and all (no cap: the sender's
        table fit under the same cap)."""
        self.forget(key)
        self._add(Entry(key, owner, state, now - age, None, rspi, peer, port, nat, up_ms), now)

    def expire(self, now: float) -> list[Entry]:
        """Remove and return the entries whose time is up: half-open ones past `expiry`,
        rekeyed ones past their grace (both kept in the order their time ends)."""
        gone = []
        for index in (self._half_open, self._lingering):
            due = []
            for key in index:  # no copy of the index: a tick's work is what expires
                if self.entries[key].expires > now:
                    break
                due.append(key)
            for key in due:
                gone.append(self.entries[key])
                self.forget(key)
        self.expired += len(gone)
        return gone

    # ---- indexes ----------------------------------------------------------------------------
    def _add(self, entry: Entry, now: float) -> None:
        if entry.state == NEGOTIATING:
            self._make_room(entry.peer)
        self.entries[entry.key] = entry
        self._by_ispi.setdefault(entry.key.ispi, set()).add(entry.key)
        self._set_state(entry, entry.state, now, fresh=True)

    def _set_up(self, entry: Entry, up_ms: int) -> None:
        if entry.up_ms != up_ms:
            entry.up_ms = up_ms
            self.version += 1  # the newest of a peer's SAs may be another now

    def _make_room(self, peer: str | None) -> None:
        """Before a new half-open entry: the oldest half-open one gives way at a budget."""
        mine = self._half_open_by_peer.get(peer) if peer else None
        if mine and len(mine) >= self.half_open_per_peer:
            self.forget(next(iter(mine)))
            self.evicted += 1
        if len(self._half_open) >= self.half_open_cap:
            self.forget(next(iter(self._half_open)))
            self.evicted += 1

    def _set_state(self, entry: Entry, state: str, now: float, fresh: bool = False) -> None:
        if not fresh and state == entry.state and state != REKEYED:
            return  # same state: same place in its index (a half-open entry keeps its age)
        if not fresh:
            self._unindex(entry)
        entry.state = state
        entry.expires = {NEGOTIATING: entry.created + self.expiry, ESTABLISHED: None,
                         REKEYED: now + self.rekey_grace}[state]
        self._index(entry)

    def _count_owned(self, entry: Entry, sign: int) -> None:
        count, digest = self._owned.get(entry.owner, (0, 0))
        count += sign
        digest ^= int.from_bytes(hashlib.blake2b(entry.key.ispi, digest_size=8).digest(), "big")
        if count:
            self._owned[entry.owner] = (count, digest)
        else:
            self._owned.pop(entry.owner, None)

    def _index(self, entry: Entry) -> None:
        key, peer = entry.key, entry.peer
        if entry.state == ESTABLISHED and key.is_ike_sa and key not in self._counted:
            self._counted.add(key)
            self._count_owned(entry, 1)
        if entry.state == NEGOTIATING:
            self._half_open[key] = None
            if peer:
                self._half_open_by_peer.setdefault(peer, {})[key] = None
        elif entry.state == REKEYED:
            self._lingering[key] = None
        elif key.is_ike_sa and peer:
            keys = self._established_by_peer.setdefault(peer, {})
            keys[key] = None
            if len(keys) > 1:
                self._doubled.add(peer)
        if entry.state == ESTABLISHED and key.is_ike_sa:
            self.version += 1

    def _unindex(self, entry: Entry) -> None:
        key, peer = entry.key, entry.peer
        if key in self._counted:
            self._counted.discard(key)
            self._count_owned(entry, -1)
        self._half_open.pop(key, None)
        self._lingering.pop(key, None)
        for index in (self._half_open_by_peer, self._established_by_peer):
            keys = index.get(peer)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del index[peer]
        if len(self._established_by_peer.get(peer, ())) < 2:
            self._doubled.discard(peer)
        if entry.state == ESTABLISHED and key.is_ike_sa:
            self.version += 1

    def owners(self) -> dict[str, str]:
        """key -> owner, for comparing replicas."""
        return {str(k): e.owner for k, e in self.entries.items()}

    def rows(self, now: float) -> list[dict]:
        """The table for `ikelab status` and the CLI: key, owner, state, age."""
        return [{"key": str(e.key), "owner": e.owner, "state": e.state,
                 "age_s": round(now - e.created, 1),
                 "rspi": e.rspi.hex() if e.rspi else None, "peer": e.peer}
                for e in sorted(self.entries.values(), key=lambda e: e.created)]
