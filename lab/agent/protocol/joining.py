"""Joining: how a member that (re)starts, or comes back from isolation, gets the whole table
before it serves (the reference's full sync), and how a serving member hands it out.

The joiner asks the lowest serving member (the *pivot*) with SNAPSHOT_REQUEST; the pivot
sends its table in SNAPSHOT chunks and a SNAPSHOT_END with the count. A lost chunk shows as a
wrong count (or silence), and the joiner asks again. Table changes that arrive meanwhile are
kept and replayed on top of the snapshot. Then whatever the joiner's own charon holds that the
table gives to someone else is ended (`EndStaleSas`), and only when charon holds nothing stale
is the member synced; it serves once every live member hears it (`membership`). With nobody
serving at all the cluster is starting from nothing, and the member is synced as it is.

`JoiningRole` is one role of `core.Agent`; it owns `snapshot`, `joining_since` and
`join_attempt`.
"""

from dataclasses import dataclass, field

from .contract import JoiningView
from . import sync
from .events import EndStaleSas, StaleSasEnded
from .membership import JOINING
from .ownership import ESTABLISHED, Key

SNAPSHOT_RESEND = 1.0


@dataclass
class Snapshot:
    """A joining member's request for the whole table, and what has come back so far."""

    tag: int
    source: int
    resend_at: float
    entries: list = field(default_factory=list)
    replay: list = field(default_factory=list)  # table changes received meanwhile


class JoiningRole:
    # the state only this role changes
    OWNS = ("join_attempt", "joining_since", "replaying", "snapshot")
    VIEW = JoiningView  # what it may read of the core and do through it (`contract`)

    def __init__(self, now: float):
        self.snapshot: Snapshot | None = None
        self.joining_since = now
        self.join_attempt = 0
        self.replaying = False  # applying kept table changes: nothing is sent meanwhile

    def restart_join(self) -> None:
        """Joining afresh (back from isolation): any snapshot under way belongs to the past."""
        self.joining_since = self.now
        self.snapshot = None
        self.join_attempt += 1

    def abandon_snapshot(self) -> None:
        """Cut off: a snapshot under way cannot finish (nobody hears us)."""
        self.snapshot = None

    def fetch_table(self) -> None:
        """Ask the pivot for the table (again, when the last answer is overdue)."""
        if self.snapshot is not None and self.now < self.snapshot.resend_at:
            return
        pivot = self.membership.pivot()
        if pivot is None:
            if self.membership.nobody_serving_since(self.now, self.joining_since):
                # The cluster starts from what we hold: our table, once charon and it agree
                # (it may be half of an interrupted join's snapshot).
                self.snapshot = Snapshot(self.new_tag(), self.me, self.now + SNAPSHOT_RESEND)
                self.emit(EndStaleSas(self._mine(), self.join_attempt))
            return
        source = self.config.index_of(pivot)
        self.snapshot = Snapshot(self.new_tag(), source, self.now + SNAPSHOT_RESEND)
        self.send(source, sync.Message(sync.SNAPSHOT_REQUEST, self.me, tag=self.snapshot.tag))

    def keep_for_replay(self, msg: sync.Message) -> None:
        if self.snapshot is not None:
            self.snapshot.replay.append(msg)

    def on_snapshot_request(self, msg: sync.Message) -> None:
        """A joining member wants the whole table: send it, then how many entries it was."""
        if not self.serving:
            return
        entries = [(e.key, self.config.index_of(e.owner), e.state, e.rspi, e.peer, e.port,
                    e.nat, self.now - e.created, e.up_ms) for e in self.table.entries.values()]
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
            self.snapshot.resend_at = self.now + SNAPSHOT_RESEND  # still coming

    def on_snapshot_end(self, msg: sync.Message) -> None:
        snapshot = self.snapshot
        if not snapshot or msg.tag != snapshot.tag or msg.sender != snapshot.source:
            return
        if int.from_bytes(msg.payload[:4], "big") != len(snapshot.entries):
            self.snapshot = None  # a chunk was lost: ask again on the next tick
            return
        self.table.clear()
        for entry in snapshot.entries:
            # The pivot may not have counted a member dead that we already dropped, or that
            # we never heard: only members we count live own anything here (one we have not
            # heard yet says what it owns in its heartbeats, `resync`).
            owner = entry.owner
            if (owner in self.indexes and not self.departed_owner(owner)
                    and self.membership.is_live(self.config.name_of(owner))):
                self.table.restore(entry.key, self.config.name_of(owner), entry.state,
                                   entry.rspi, entry.peer, entry.age, self.now, entry.port,
                                   entry.nat, entry.up_ms)
        # What changed while the snapshot was on its way, applied again on top of it.
        self.snapshot = None
        self.replaying = True
        try:
            for change in snapshot.replay:
                self.dispatch(change)
        finally:
            self.replaying = False
        self.counters["snapshots_applied"] += 1
        self.emit(EndStaleSas(self._mine(), self.join_attempt))

    def _mine(self) -> frozenset:
        return frozenset(e.key.ispi for e in self.table.entries.values()
                         if e.owner == self.config.member and e.key.is_ike_sa)

    def on_stale_sas_ended(self, event: StaleSasEnded) -> None:
        """Our charon's SAs that the table gave away are gone (or not: then sync again)."""
        self.counters["stale_sas_dropped"] += event.dropped
        if event.attempt != self.join_attempt or self.membership.state != JOINING:
            return  # the answer to an earlier join
        if event.left:
            self.snapshot = None  # charon still holds what is not ours: sync again
            return
        # And the other way round: what the table gives us that charon no longer holds (we
        # restarted faster than the others could count us dead, or an SA went while we
        # were cut off) is gone, here and everywhere.
        for entry in self.table.owned_by(self.config.member):
            if entry.key.ispi not in event.held:
                self.table.delete(entry.key.ispi)
                self.broadcast(sync.Message(sync.DELETE, self.me, ispi=entry.key.ispi))
        # And what charon holds established that the table knows only as a negotiation of
        # ours (a member that looked our key up while we were away recorded no more than
        # that, and the snapshot carried it back): up, here and everywhere, at the time
        # charon says, or it would expire as a negotiation while charon goes on holding it.
        for ispi, seconds in event.up.items():
            entry = self.table.entries.get(Key(ispi))
            if (entry is not None and entry.owner == self.config.member
                    and entry.state != ESTABLISHED):
                up_ms = self.wall_ms() - round(seconds * 1000)
                self.table.establish(ispi, entry.rspi, self.now, up_ms)
                self.broadcast(sync.Message(
                    sync.ESTABLISHED, self.me, ispi=ispi, rspi=entry.rspi or bytes(8),
                    owner=self.me, peer=entry.peer, port=entry.port, nat=entry.nat,
                    payload=up_ms.to_bytes(8, "big")))
        self.snapshot = None
        self.membership.synced = True
