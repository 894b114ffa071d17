"""Liveness: the heartbeats this member sends and hears, its pings to the witness and the
witness's answers, and what follows when the live set changes: a member that died (or
restarted, or that the witness stopped backing and that has stopped acting) leaves nothing
behind here, and its tunnels are taken over. The rules themselves are `membership`'s (pure,
no messages); this role speaks for it on the sync network.

`LivenessRole` is one role of `core.Agent`; it owns `departed`, `witness_pings` and the
heartbeat timer.
"""

from .contract import LivenessView
from . import sync
from .membership import ISOLATED, JOINING, SERVING, STATE_CODES, STATES

WITNESS_PINGS_KEPT = 8  # an answer to an older ping is too late to count


class LivenessRole:
    # the state only this role changes
    OWNS = ("departed", "next_heartbeat", "witness_pings", "witness_seq")
    VIEW = LivenessView  # what it may read of the core and do through it (`contract`)

    def __init__(self):
        self.departed: set[str] = set()  # members dropped as dead, unheard since
        self.witness_pings: dict[int, float] = {}  # our ping's seq -> when we sent it
        self.witness_seq = 0
        self.next_heartbeat = 0.0

    def on_heartbeat(self, msg: sync.Message) -> None:
        beat = sync.decode_heartbeat(msg.payload)
        if beat.state >= len(STATES) or msg.sender not in self.indexes:
            raise sync.SyncError("malformed")
        name = self.config.name_of(msg.sender)
        was_live = self.membership.is_live(name) and name not in self.departed
        if self.membership.on_heartbeat(name, STATES[beat.state], frozenset(
                self.config.name_of(i) for i in beat.live if i in self.indexes),
                self.sent_at(msg), beat.incarnation) and was_live:
            # It restarted faster than we could count it dead: its charon's SAs are gone
            # all the same. Its tunnels are taken over now, not when the peers' DPD gives up.
            self.counters["restarts_seen"] += 1
            self.on_member_died(name, why="restarted")
            self.departed.discard(name)  # its new incarnation is heard
        self.compare_owned(msg.sender, STATES[beat.state], beat.owned, beat.digest)

    def on_witness_answer(self, msg: sync.Message) -> None:
        """The witness backs us (and these others) as of when we sent the ping it answers:
        never later, whatever the network did to the answer."""
        if msg.sender != sync.WITNESS:
            raise sync.SyncError("malformed")
        sent = self.witness_pings.pop(msg.tag, None)
        if sent is None or not msg.owner:
            return
        backed = frozenset(self.config.name_of(i) for i in sync.decode_members(
            int.from_bytes(msg.payload[:4], "big")) if i in self.indexes)
        self.membership.on_witness(sent, backed)

    def heartbeat(self) -> None:
        self.next_heartbeat = self.now + self.membership.heartbeat
        state, owned = STATE_CODES[self.membership.state], self.table.owned(self.config.member)
        # The others learn whom we count live (a joiner serves once all of them count it);
        # the witness, whom we hear (it backs members that hear each other).
        live = {self.config.index_of(m) for m in self.membership.live()}
        payload = sync.encode_heartbeat(state, live, self.incarnation, *owned)
        self.broadcast(sync.Message(sync.HEARTBEAT, self.me, payload=payload),
                       counter="heartbeats_sent")
        if self.config.witness:
            hears = {self.config.index_of(m) for m in self.membership.hears(self.now)}
            payload = sync.encode_heartbeat(state, hears, self.incarnation, *owned)
            self.witness_seq = (self.witness_seq + 1) & 0xFFFFFFFF
            self.witness_pings[self.witness_seq] = self.now
            for old in list(self.witness_pings)[:-WITNESS_PINGS_KEPT]:
                del self.witness_pings[old]
            self.send(sync.WITNESS, sync.Message(sync.WITNESS_PING, self.me,
                                                 tag=self.witness_seq, payload=payload),
                      counter="witness_pings")

    def stalled(self, gap: float) -> None:
        """Our loop did not run for `gap` seconds: if the witness may have dropped us
        meanwhile, stop acting before anything that queued is handled (`membership`)."""
        if gap > self.membership.dead_after / 4 and self.membership.stalled_out(self.now):
            self.counters["stalls"] += 1
            self.log(f"the loop stalled {gap:.2f} s: cut off until the witness backs us")
            self.on_state(ISOLATED)

    def judge_membership(self) -> None:
        changes = self.membership.update(self.now)
        if changes.state:
            self.on_state(changes.state)
        for name in sorted(changes.died):
            self.on_member_died(name)
        if changes.appeared & self.departed:
            self.member_arrived()  # back from the dead: it gets its share
        self.departed -= changes.appeared
        if changes.appeared and self.serving and self.config.peers:
            self.advertise()  # a newcomer learns our routes now, not in 5 s
        if self.now >= self.next_heartbeat:
            self.heartbeat()
        if self.membership.state == JOINING and not self.membership.synced:
            self.fetch_table()

    def on_state(self, state: str) -> None:
        self.log(state)
        if state == ISOLATED:
            # Nothing started here may finish: the others cannot hear about it.
            self.counters["isolations"] += 1
            self.claimant_isolated()
            self.director_isolated()
            self.abandon_snapshot()
        elif state == JOINING:
            # Back from isolation: members may have died meanwhile, unseen from here. Their
            # routes go; the live ones advertise theirs again as soon as they hear us.
            self.restart_join()
            self.forget_routes()
            if self.config.peers:
                self.steer()
        elif state == SERVING and self.config.peers:
            self.steer()  # the kernel may have lost routes while our links were down
            self.member_arrived()  # we are back (after joining): we get our share

    def on_member_died(self, name: str, why: str = "left the cluster") -> None:
        """`name` left the live set (or restarted): nothing here may point at it any more."""
        index = self.config.index_of(name)
        self.log(f"{name} {why}")
        self.trace("member-died", who=name, why=why)
        self.counters["members_died"] += 1
        self.departed.add(name)
        orphans = self.table.established(name)
        self.counters["dead_owner_entries_dropped"] += self.table.drop_owner(name)
        if self.forget_routes(index):
            self.steer()
        self.director_forgets(index)
        self.claimant_redirects(index)
        self.take_over(orphans)
