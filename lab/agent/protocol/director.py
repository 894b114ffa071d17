"""The director's half of the claim protocol (see `core` for the protocol as a whole).

Every key has one director: the serving member that rendezvous hashing of its initiator SPI
picks (`ownership.director_for`), or in `--mode ha` the active member. The director records
the first claimant as the owner, ANNOUNCEs it to every other member, and GRANTs the claim only
when every live member has ACKed; it answers LOOKUPs from its table, or as soon as it learns
the owner. What it keeps per key is pending work only: announcements waiting for ACKs and
lookups waiting for an owner.

`DirectorRole` is one role of `core.Agent`; it owns `announcing` and `waiters` and uses the
agent's table, membership and message helpers.
"""

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from ..names import LOOKUP_TIMEOUT
from .contract import DirectorView
from . import sync
from .ownership import NEGOTIATING, Key, ike_sa_key

ANNOUNCE_RESEND = 0.3
# What the director keeps per key is pending work, made by other members' packets: bounded.
MAX_ANNOUNCING = 4096
MAX_WAITERS = 1024
# How long a grant's decision is remembered apart from the table (claims for one first
# message from several members arrive within a claim's lifetime), and for how many keys.
DECIDED_FOR = 2.0
MAX_DECIDED = 4096


class Waiter(NamedTuple):
    """A member that asked us (LOOKUP) who owns a key we do not know yet."""

    member: int
    tag: int  # its LOOKUP's, for the ANSWER
    deadline: float  # then it hears that nobody knows


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


class DirectorRole:
    # the state only this role changes
    OWNS = ("announcing", "announcing_key", "decided", "waiters")
    VIEW = DirectorView  # what it may read of the core and do through it (`contract`)

    def __init__(self):
        self.announcing: dict[int, Announcement] = {}  # tag -> announcement
        self.announcing_key: dict[Key, Announcement] = {}  # the same, by key
        # Keys granted lately: their decision stands even if a flood evicts the entry.
        self.decided: OrderedDict[Key, tuple[int, float]] = OrderedDict()
        self.waiters: dict[bytes, list[Waiter]] = {}  # ispi -> the members that asked

    def on_claim(self, msg: sync.Message) -> None:
        """The first claimant of a key owns it, once every member has heard so; a peer's new
        Phase 1 while it has an IKE SA goes to that SA's owner (reauthentication)."""
        if not self.serving:
            return  # the claimant asks the key's next director when its resend is due
        key = Key(msg.ispi, msg.msgid, msg.requester)
        chosen = self.config.name_of(msg.owner or msg.sender)
        if msg.owner == 0:
            chosen = self.table.owner_for_peer(msg.peer) or chosen
        if len(self.announcing) >= MAX_ANNOUNCING and key not in self.table.entries:
            self.counters["claims_refused"] += 1  # the claimant drops; the peer retransmits
            self.send(msg.sender, sync.Message(sync.GRANT, self.me, ispi=msg.ispi,
                                               msgid=msg.msgid, requester=msg.requester,
                                               owner=0, tag=msg.tag))
            return
        pending = self.announcing_key.get(key)
        self.restore_decision(key, msg.peer)
        owner, won = self.table.claim(key, chosen, self.now, msg.peer)
        owner_index = self.config.index_of(owner)
        if won or (pending is None and not self._confirmed(key)):
            pending = Announcement(key, owner_index, NEGOTIATING, msg.peer, self.new_tag(),
                                   self.live_others(), self.now + ANNOUNCE_RESEND,
                                   self.now + 2 * self.config.dead_after)
            self.announcing[pending.tag] = self.announcing_key[key] = pending
            # Every configured member hears it (a joining one keeps up); the live ones ACK.
            self.broadcast(self._announcement(pending))
            self.trace("announced", key=str(key), owner=owner)
            self.release_waiting(key.ispi)
        if pending:
            pending.grants.append((msg.sender, msg.tag))
            self._maybe_grant(pending)
        else:
            self._grant(key, owner_index, msg.sender, msg.tag)

    def _confirmed(self, key: Key) -> bool:
        """Whether a claim for `key`, which the table has, may be granted at once: its owner's
        charon has the SA up, or this director's own announcement of it was acknowledged by
        every live member lately. An entry that only another director's announcement put
        here is not enough: that director may have reached part of the cluster only (a split
        nobody has detected yet, while the members' views of who serves differ), and another
        may be announcing the key to the other part. Our own round of ACKs settles it."""
        decided = self.decided.get(key)
        return (self.table.entries[key].state != NEGOTIATING
                or (decided is not None and self.now < decided[1]))

    def restore_decision(self, key: Key, peer: str | None) -> None:
        """A flood's budget may push a key's entry out while its announcement still waits for
        ACKs, or moments after its grant, while another claim for the same first message (or
        another director's announcement of it) is still on its way: this director's
        decision stands, and goes back into the table (a second one could grant another
        owner)."""
        if key in self.table.entries:
            return
        pending = self.announcing_key.get(key)
        decided = self.decided.get(key)
        owner = pending.owner if pending else (
            decided[0] if decided and self.now < decided[1] else None)
        if owner is not None:
            self.table.record(key, self.config.name_of(owner), NEGOTIATING, self.now, peer)

    def _grant(self, key: Key, owner: int, to: int, tag: int) -> None:
        self.decided[key] = (owner, self.now + DECIDED_FOR)
        self.decided.move_to_end(key)
        if len(self.decided) > MAX_DECIDED:
            self.decided.popitem(last=False)
        self.send(to, sync.Message(sync.GRANT, self.me, ispi=key.ispi, msgid=key.msgid,
                                   requester=key.requester, owner=owner, tag=tag))
        self.trace("granted", key=str(key), owner=self.config.name_of(owner),
                   to=self.config.name_of(to))

    def _announcement(self, a: Announcement) -> sync.Message:
        return sync.Message(sync.ANNOUNCE, self.me, ispi=a.key.ispi, msgid=a.key.msgid,
                            requester=a.key.requester, owner=a.owner, state=a.state, tag=a.tag,
                            peer=a.peer)

    def _forget(self, announcement: Announcement) -> None:
        del self.announcing[announcement.tag]
        if self.announcing_key.get(announcement.key) is announcement:
            del self.announcing_key[announcement.key]

    def _maybe_grant(self, announcement: Announcement) -> None:
        if announcement.waiting or announcement.tag not in self.announcing:
            return
        self._forget(announcement)
        for member, tag in announcement.grants:
            self._grant(announcement.key, announcement.owner, member, tag)

    @staticmethod
    def lower(a: int, b: int) -> int:
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
                                  self.now, announcement.peer)
            else:
                # Another director announced this key to the acker first: both keep the lower.
                announcement.owner = self.lower(announcement.owner, msg.owner)
                self.table.record(announcement.key, self.config.name_of(announcement.owner),
                                  NEGOTIATING, self.now, announcement.peer)
        announcement.waiting.discard(msg.sender)
        self._maybe_grant(announcement)

    def on_lookup(self, msg: sync.Message) -> None:
        if not self.serving:
            return
        name = self.table.owner_of(ike_sa_key(msg.ispi))
        if name:
            self.send(msg.sender, sync.Message(sync.ANSWER, self.me, ispi=msg.ispi,
                                               owner=self.config.index_of(name), tag=msg.tag))
        elif msg.ispi in self.waiters or len(self.waiters) < MAX_WAITERS:
            self.waiters.setdefault(msg.ispi, []).append(
                Waiter(msg.sender, msg.tag, self.now + LOOKUP_TIMEOUT))
        else:
            self.send(msg.sender, sync.Message(sync.ANSWER, self.me, ispi=msg.ispi, owner=0,
                                               tag=msg.tag))

    def answer_waiters(self, ispi: bytes, owner: int) -> None:
        """The owner of `ispi` is known now: tell the members that asked us."""
        for waiter in self.waiters.pop(ispi, []):
            self.send(waiter.member, sync.Message(sync.ANSWER, self.me, ispi=ispi, owner=owner,
                                                  tag=waiter.tag))

    def director_timers(self) -> None:
        """Announcements: resend to the live members that have not ACKed, grant once none is
        left, give up when the claimants have; lookups nobody could answer: say so."""
        for announcement in list(self.announcing.values()):
            announcement.waiting &= self.live_others()
            if self.now >= announcement.abandon_at:
                self._forget(announcement)  # the claimants have given up
            elif not announcement.waiting:
                self._maybe_grant(announcement)
            elif self.now >= announcement.resend_at:
                announcement.resend_at = self.now + ANNOUNCE_RESEND
                for index in announcement.waiting:
                    self.send(index, self._announcement(announcement))
        for ispi, waiting in list(self.waiters.items()):
            late = [w for w in waiting if self.now >= w.deadline]
            for waiter in late:
                self.send(waiter.member, sync.Message(sync.ANSWER, self.me, ispi=ispi, owner=0,
                                                      tag=waiter.tag))
            if len(late) == len(waiting):
                del self.waiters[ispi]
            else:
                self.waiters[ispi] = [w for w in waiting if self.now < w.deadline]

    def director_forgets(self, index: int) -> None:
        """Member `index` left the live set: never grant it, and stop waiting for its ACK."""
        for announcement in list(self.announcing.values()):
            if announcement.owner == index:
                # Never grant a dead owner: the claimants time out, the peer retransmits.
                self._forget(announcement)
                continue
            announcement.waiting.discard(index)
            self._maybe_grant(announcement)
        for ispi, waiting in list(self.waiters.items()):
            self.waiters[ispi] = [w for w in waiting if w.member != index]

    def director_isolated(self) -> None:
        """Cut off: what we recorded as director but never granted is nobody's. The others may
        grant those keys afresh once they count us dead, and our table must not contradict
        them meanwhile."""
        for announcement in self.announcing.values():
            entry = self.table.entries.get(announcement.key)
            if entry is not None and entry.state == NEGOTIATING:
                self.table.forget(announcement.key)
        self.announcing.clear()
        self.announcing_key.clear()
        self.decided.clear()
        self.waiters.clear()
