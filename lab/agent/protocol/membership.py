"""Cluster membership: who is alive, who serves, and whether this member may act at all.

Members send each other an authenticated HEARTBEAT every `heartbeat` seconds over the sync
network, carrying the sender's state and the members it hears. A member unheard for
`dead_after` seconds has left the live set.

States of a member:

- JOINING: it has started (or come back) and is fetching the whole table from a serving member
  (the reference's full sync). It keeps up with live updates, directs nothing, and the hashing
  switches give it no traffic.
- SERVING: it takes traffic, claims, directs keys and forwards.
- DRAINING: it serves, but hands its tunnels over to the others (make-before-break, see
  `handover`) and takes none in a rebalance; once it holds none it is DRAINED: live, up to
  date, and without traffic, until it is asked to serve again.
- ISOLATED: the witness (`witness`: the sync bridge's own address, which decides which
  members may act when the sync network splits) has not backed it for half of `dead_after`:
  it cannot reach the witness, or the witness backs a group it is not in. It stops claiming,
  directing and handling IKE altogether and tells the switches, through its state, to stop
  sending it traffic (what it still hears it records and acknowledges, so that it never holds
  up another member's grant; its table is replaced when it rejoins). Why a witness and not a
  majority vote: a two-member cluster must survive the death of either member, and with a
  vote of two neither survivor would hold a majority.

A member counts another dead only when it has not heard it for `dead_after` *and* the
witness has not backed it for half of `dead_after` plus a margin (`BACKING_MARGIN`): by then a
member that is alive but cut off has isolated itself, so no member ever takes over the keys
of one that still acts. A crashed member is counted dead `dead_after` after its last word, as
before; one on the wrong side of a partition is counted dead once the witness has dropped it
and it has stopped acting.

When the witness answers again, an isolated member rejoins: its table is replaced by a
serving member's snapshot, and what its charon holds that the cluster gave away is dropped.

A joining member serves only once every live member's heartbeat lists it as live: from then
on, any member that might direct a key waits for its acknowledgement, and it waits for theirs,
so two directors can never both grant one key during a change of membership.

A member whose own loop stalled (CPU starvation) does not judge others on that round: a gap in
its own clock is not evidence that anyone else died. If the stall was longer than half of
`dead_after`, the witness may have stopped backing it meanwhile and the others may be taking
its keys over: it isolates itself at once (`stalled_out`), before it acts on anything that
queued, and rejoins. And any message from a live member, not
only its heartbeat, shows it alive: a heartbeat can queue behind a flood's table traffic.

Pure logic: time is passed in, nothing here touches a socket.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from ..names import SERVING_STATES, MemberState  # noqa: F401 - the roles import it from here

JOINING, SERVING, ISOLATED = MemberState.JOINING, MemberState.SERVING, MemberState.ISOLATED
DRAINING, DRAINED = MemberState.DRAINING, MemberState.DRAINED
STATES = tuple(MemberState)  # in this order their codes travel in heartbeats
STATE_CODES = {state: code for code, state in enumerate(STATES)}



class Happening(StrEnum):
    """What moves a member from one state to another (`TRANSITIONS`)."""

    STARTED = "started"  # the agent (re)started
    STALLED = "stalled"  # its own loop did not run for half of dead_after (`stalled_out`)
    CUT_OFF = "cut off"  # the witness stopped backing it
    BACKED = "backed again"  # the witness answers again after a cut
    ACCEPTED = "accepted"  # synced, and every live member lists it live
    DRAIN = "drain asked"  # the operator asks it to hand its tunnels over
    UNDRAIN = "undrain asked"  # the operator asks it to serve again
    EMPTIED = "handed everything over"  # draining, and it holds no tunnel any more


# Every legal (state, happening) and the state it leads to, in one place, as h11 keeps its
# protocol's (`_state.py`). Anything else raises IllegalTransition: a drain asked of a
# joining, isolated or drained member is refused here, and a bug that would move a member
# some other way is caught here (the simulator runs the agents' core, so this table too).
TRANSITIONS = {
    **{(state, Happening.STARTED): JOINING for state in MemberState},
    **{(state, Happening.STALLED): ISOLATED for state in (JOINING, SERVING, DRAINING, DRAINED)},
    **{(state, Happening.CUT_OFF): ISOLATED for state in (JOINING, SERVING, DRAINING, DRAINED)},
    (ISOLATED, Happening.BACKED): JOINING,
    (JOINING, Happening.ACCEPTED): SERVING,
    (SERVING, Happening.DRAIN): DRAINING,
    (DRAINING, Happening.UNDRAIN): SERVING,
    (DRAINED, Happening.UNDRAIN): SERVING,
    (DRAINING, Happening.EMPTIED): DRAINED,
}


class IllegalTransition(ValueError):
    """A happening that the member's state does not allow; the message names both."""


def next_state(state: MemberState, happening: Happening) -> MemberState:
    """The state `happening` leads to from `state` (TRANSITIONS), or IllegalTransition."""
    try:
        return TRANSITIONS[(state, happening)]
    except KeyError:
        raise IllegalTransition(f"{happening} is not possible while {state}") from None


REJOIN_SILENCE = 5.0  # seconds a member back from isolation waits to hear anyone serving
BACKING_MARGIN = 0.05  # a tick of the loop (core.TICK)


@dataclass
class Heard:
    at: float  # the last sign of life (when it was sent)
    state: str
    live: frozenset  # the members the sender counts live, itself included
    said_at: float = 0.0  # when the heartbeat that said `state` and `live` was sent


@dataclass
class Changes:
    """What one `update()` found."""

    died: set = field(default_factory=set)  # left the live set
    appeared: set = field(default_factory=set)  # entered it
    state: str | None = None  # this member's new state, if it changed


@dataclass
class Membership:
    me: str
    members: tuple  # every configured member, in index order
    dead_after: float = 2.0
    state: str = SERVING
    heard: dict = field(default_factory=dict)  # member -> Heard
    backed_at: dict = field(default_factory=dict)  # member -> when the witness last backed it
    incarnations: dict = field(default_factory=dict)  # member -> its incarnation, last heard
    witness_at: float | None = None
    live_set: set = field(default_factory=set)
    last_update: float | None = None
    synced: bool = False  # JOINING: the snapshot has been applied
    joined_at: float = 0.0  # when it last began to join
    back_from_isolation: bool = False  # JOINING after a cut: the others were alive

    def become(self, happening: Happening) -> MemberState:
        """Move to the state `happening` leads to (TRANSITIONS) and return it; an illegal one
        raises IllegalTransition and changes nothing."""
        self.state = next_state(self.state, happening)
        return self.state

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats: several fit into one `dead_after`."""
        return self.dead_after / 8

    def start(self, now: float, joining: bool) -> None:
        """Every member starts JOINING and acts on nothing before the witness backs it. One
        that comes back fetches the table first; a cluster that starts together has none to
        fetch (`synced`): its members serve as soon as the witness backs them and each is
        counted live by the others, a few heartbeats after they start."""
        self.become(Happening.STARTED)
        self.synced = not joining
        self.joined_at = now
        self.witness_at = None
        self.live_set = {self.me}
        self.last_update = now

    def on_heartbeat(self, member: str, state: str, live: frozenset, now: float,
                     incarnation: int = 0) -> bool:
        """Record a heartbeat sent at `now`; True when it comes from a new incarnation of a
        member heard before (it restarted: whatever its charon held is gone, however quickly
        it came back). A heartbeat of an older incarnation, or sent before the last thing
        heard from its member, is ignored."""
        if member not in self.members or member == self.me:
            return False
        known = self.incarnations.get(member)
        if known is not None and incarnation < known:
            return False
        heard = self.heard.get(member)
        if known == incarnation and heard is not None and now < heard.at:
            return False  # sent before what we know of it: overtaken, or read late
        self.incarnations[member] = incarnation
        self.heard[member] = Heard(now, state, frozenset(live), now)
        return known is not None and incarnation != known

    def hears(self, now: float) -> set:
        """The members heard within `dead_after` (what a heartbeat and a witness ping say)."""
        return {self.me} | {m for m, h in self.heard.items() if now - h.at < self.dead_after}

    def _judge(self, now: float) -> set:
        """Who is live now: backed by the witness within half of `dead_after` plus the
        margin (until then a member cut off may still be acting), or heard within
        `dead_after` and not cut off: one that says it is cut off, and that the witness has
        stopped backing, is out, whoever still hears it (it serves nobody; its tunnels are
        taken over, and when it comes back it joins)."""
        wait = self.dead_after / 2 + self.backing_margin
        return ({self.me} | {m for m, at in self.backed_at.items() if now - at < wait}
                | {m for m, h in self.heard.items()
                   if now - h.at < self.dead_after and h.state != ISOLATED})

    @property
    def backing_margin(self) -> float:
        """Beyond half of `dead_after`: a heartbeat interval (the witness's last answer to a
        member may be that much older than ours) and a tick of the member's loop."""
        return self.heartbeat + BACKING_MARGIN

    def on_message(self, member: str, now: float) -> None:
        """Any authenticated message from a live member shows it alive: under load its
        heartbeat may sit in a queue behind the table's traffic. It keeps a member live; it
        never brings back one counted dead (that takes a heartbeat, with its state)."""
        heard = self.heard.get(member)
        if heard is not None and member in self.live_set and now > heard.at:
            heard.at = now

    def on_witness(self, now: float, backed: frozenset) -> None:
        """The witness answered our ping: it backs the members in `backed` (us among them,
        or the answer says we are not backed, and changes nothing)."""
        if self.me not in backed:
            return
        self.witness_at = now
        for member in backed:
            if member != self.me:
                self.backed_at[member] = now

    def stalled_out(self, now: float) -> bool:
        """Our own loop did not run for more than half of `dead_after`: the witness may have
        stopped backing us and the others may be taking our keys over. We stop acting now
        (ISOLATED; True if that changed our state) and rejoin once backed again."""
        if self.state == ISOLATED or self.last_update is None:
            return False
        self.become(Happening.STALLED)
        self.witness_at = None
        return True

    def connected(self, now: float) -> bool:
        """The witness answered within half of `dead_after`."""
        return self.witness_at is not None and now - self.witness_at < self.dead_after / 2

    def live(self) -> set:
        """Members heard within `dead_after` at the last update, this member included."""
        return set(self.live_set)

    def is_live(self, member: str) -> bool:
        """`member` was heard within `dead_after` at the last update (no copy: per packet)."""
        return member in self.live_set

    def state_of(self, member: str) -> str | None:
        """A live member's state (its last heartbeat, or this member's own); None if dead."""
        if member == self.me:
            return self.state
        heard = self.heard.get(member)
        return heard.state if heard is not None and member in self.live_set else None

    def serving(self) -> list:
        """Live members that serve (draining ones too), in index order: the directors."""
        return [m for m in self.members if self.state_of(m) in SERVING_STATES]

    def receivers(self) -> list:
        """Live members that serve and are not draining, in index order: those a tunnel may
        move to."""
        return [m for m in self.members if self.state_of(m) == SERVING]

    def pivot(self) -> str | None:
        """The lowest-indexed serving member: it answers joiners' snapshot requests."""
        others = [m for m in self.serving() if m != self.me]
        return others[0] if others else None

    def accepted(self) -> bool:
        """Every other live member lists this member as live, in a heartbeat sent since this
        member began to join: an older one may come from before it was counted out."""
        return all(m in self.heard and self.me in self.heard[m].live
                   and self.heard[m].said_at >= self.joined_at
                   for m in self.live_set if m != self.me)

    def update(self, now: float) -> Changes:
        """Re-judge the live set and this member's state."""
        changes = Changes()
        stalled = self.last_update is not None and now - self.last_update > self.dead_after / 4
        self.last_update = now
        if stalled:
            # Our own loop did not run for a while: give the members we counted live a fresh
            # period instead of declaring them dead for our own delay (we are cut off now,
            # `stalled_out`, and judge nobody anyway until the witness backs us again). The
            # dead stay dead.
            for member in self.live_set & self.heard.keys():
                self.heard[member].at = max(self.heard[member].at, now - self.dead_after / 2)
            return changes
        before = set(self.live_set)
        if self.state == ISOLATED or not self.connected(now):
            # Cut off: nobody is judged dead from here, and nobody else's keys taken.
            # A joining member that the witness has never backed acts on nothing yet: it
            # waits as it is. One that was backed and lost it is cut off like the others.
            if self.state in (SERVING, DRAINING, DRAINED) or (
                    self.state == JOINING and self.witness_at is not None):
                changes.state = self.become(Happening.CUT_OFF)
            if self.state == ISOLATED and self.connected(now):
                changes.state = self.become(Happening.BACKED)
                self.synced = False
                self.back_from_isolation = True
                self.joined_at = now
            self.live_set = {self.me} | {m for m, h in self.heard.items()
                                         if now - h.at < self.dead_after}
            changes.appeared = self.live_set - before
            return changes
        self.live_set = self._judge(now)
        changes.died = before - self.live_set
        changes.appeared = self.live_set - before
        if self.state == JOINING and self.synced and self.accepted():
            changes.state = self.become(Happening.ACCEPTED)
            self.back_from_isolation = False
        return changes

    def nobody_serving_since(self, now: float, since: float) -> bool:
        """JOINING with no serving member heard for `dead_after` after `since`: the whole
        cluster is (re)starting, so there is no table to fetch. Back from isolation the
        wait is REJOIN_SILENCE: the others were serving when this member was cut off, and
        their first heartbeats after a heal can lag the witness's answers by the time their
        kernels take to resolve its address again (ARP gave up on it during the cut: up to
        a second). Serving the old table instead of theirs would never heal."""
        wait = max(REJOIN_SILENCE, self.dead_after) if self.back_from_isolation \
            else self.dead_after
        return (self.state == JOINING and not self.pivot()
                and now - since >= wait and self.connected(now))
