"""Keeping the replicas whole: every HEARTBEAT carries the count and a digest of the
established IKE SAs its sender owns (`OwnershipTable.owned`); a member whose table disagrees
with the same figures twice in a row asks the owner for its list (OWNED_REQUEST) and puts it
in place of what it had for that owner.

Why: the table's changes (ESTABLISHED, REKEY, DELETE) go out once, to every member. One that
is lost, or overtaken (a DELETE arriving before the ESTABLISHED it undoes), would leave a
replica wrong for good, and every member that joins later would copy the mistake. The owner
is the authority on what it owns: its own entries follow its charon's events. Twice in a row,
with the same figures: a change still on its way makes one heartbeat disagree, not two.

`ResyncRole` is one role of `core.Agent`; it owns `disagreements` and `resyncs`.
"""

from dataclasses import dataclass, field

from .contract import ResyncView
from . import sync
from .membership import DRAINED, SERVING_STATES
from .ownership import ESTABLISHED, Key

RESYNC_AFTER = 2  # heartbeats in a row with the same disagreeing figures
RESYNC_TIMEOUT = 1.0  # an owner's list not complete by then is asked for again, if need be
COMPARED_STATES = SERVING_STATES + (DRAINED,)  # members whose tables are complete


@dataclass
class Resync:
    """Our request for one owner's list, and what has arrived so far."""

    tag: int
    deadline: float
    entries: list = field(default_factory=list)


class ResyncRole:
    OWNS = ("disagreements", "resyncs")  # the state only this role changes
    VIEW = ResyncView  # what it may read of the core and do through it (`contract`)

    def __init__(self):
        self.disagreements: dict[int, tuple[int, int, int]] = {}  # owner -> figures, times
        self.resyncs: dict[int, Resync] = {}  # owner -> our request

    def compare_owned(self, sender: int, state: str, owned: int, digest: int) -> None:
        """A heartbeat's figures against our table; ask the owner after RESYNC_AFTER."""
        if (state not in COMPARED_STATES or self.membership.state not in COMPARED_STATES
                or self.departed_owner(sender)):
            return
        if self.table.owned(self.config.name_of(sender)) == (owned, digest):
            self.disagreements.pop(sender, None)
            return
        seen = self.disagreements.get(sender)
        times = seen[2] + 1 if seen and seen[:2] == (owned, digest) else 1
        self.disagreements[sender] = (owned, digest, times)
        if times >= RESYNC_AFTER and sender not in self.resyncs:
            request = self.resyncs[sender] = Resync(self.new_tag(), self.now + RESYNC_TIMEOUT)
            self.send(sender, sync.Message(sync.OWNED_REQUEST, self.me, tag=request.tag))

    def on_owned_request(self, msg: sync.Message) -> None:
        """Another member's table disagrees with ours about what we own: the list."""
        if self.membership.state not in COMPARED_STATES:
            return
        entries = [(e.key, self.me, e.state, e.rspi, e.peer, e.port, e.nat,
                    self.now - e.created, e.up_ms)
                   for e in self.table.owned_by(self.config.member)]
        for start in range(0, len(entries), sync.ENTRIES_PER_SNAPSHOT):
            self.send(msg.sender, sync.Message(sync.OWNED, self.me, tag=msg.tag, payload=(
                sync.encode_entries(entries[start:start + sync.ENTRIES_PER_SNAPSHOT]))))
        self.send(msg.sender, sync.Message(sync.OWNED_END, self.me, tag=msg.tag,
                                           payload=len(entries).to_bytes(4, "big")))

    def on_owned(self, msg: sync.Message) -> None:
        request = self.resyncs.get(msg.sender)
        if request is not None and request.tag == msg.tag:
            request.entries += sync.decode_entries(msg.payload)

    def on_owned_end(self, msg: sync.Message) -> None:
        request = self.resyncs.get(msg.sender)
        if request is None or request.tag != msg.tag:
            return
        del self.resyncs[msg.sender]
        if int.from_bytes(msg.payload[:4], "big") != len(request.entries):
            return  # a chunk was lost: the next disagreement asks again
        self.disagreements.pop(msg.sender, None)
        self.counters["resyncs"] += 1
        owner = self.config.name_of(msg.sender)
        listed = {}
        for said in request.entries:
            if (said.owner == msg.sender and said.state == ESTABLISHED
                    and (said.msgid, said.requester) == (0, "i")):
                listed[said.ispi] = said
        for entry in self.table.owned_by(owner):
            if entry.key.ispi not in listed:
                self.table.delete(entry.key.ispi)
        for ispi, said in listed.items():
            entry = self.table.entries.get(Key(ispi))
            if entry is None or entry.owner != owner or entry.state != ESTABLISHED:
                self.table.restore(Key(ispi), owner, ESTABLISHED, said.rspi, said.peer,
                                   said.age, self.now, said.port, said.nat, said.up_ms)
            else:
                self.table.record(Key(ispi), owner, ESTABLISHED, self.now, said.peer,
                                  said.up_ms)
        self.log(f"{owner}'s SAs resynchronised: {len(listed)}")

    def resync_timers(self) -> None:
        for owner, request in list(self.resyncs.items()):
            if self.now >= request.deadline:
                del self.resyncs[owner]
