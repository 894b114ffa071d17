"""The witness: the one place that decides which members may act when the sync network splits.

Every member sends the witness (the sync bridge's own address, 10.255.0.254, sync index 0) a
WITNESS_PING with each heartbeat, saying whom it hears. The witness backs the largest group
of members that all hear each other (a clique of the "hears and is heard by" graph) and says
so in every WITNESS_ANSWER. A member acts only while its last backed answer is fresh; one that
is not backed, or cannot reach the witness at all, is cut off (`membership`: ISOLATED).

Why a witness that decides, and not one that only answers pings: a member that hears nobody
but still reaches the bridge could be the last one standing, or one side of a partition that
is not a cut cable (a filter, a broken path between two members): from inside it cannot tell,
and if both sides carry on, each takes the other's tunnels and directs the same keys: two
owners. The witness hears both sides and backs one, as a cluster's quorum device does. A
two-member cluster still survives either member's death: the survivor alone is the largest
group. Why a clique: members that act must hear each other, so that every announcement can
reach every member that might direct the same key.

The group it backs stays the same while it is still a clique of the largest size (no flapping
between equal halves); otherwise the largest, the one with the lowest member indexes on a tie.
A member that has not pinged for `dead_after`/2 is not there.

Backing is a lease: a member told "backed" acts for half of `dead_after` (`membership`) on
the strength of it. When the group changes, a member new to it is told "backed" only once
every lease of a member left out has run out: otherwise, for that half period, the side just
dropped and the side just chosen would both act, and each direct keys. The witness's own
start counts as a change (it cannot know what it said before). Pure: time is passed in.
"""

from itertools import combinations

LEASE_MARGIN = 0.05  # a tick of a member's loop (membership.BACKING_MARGIN)


class Witness:
    """`report(member, hears, now)` -> (backed?, the members backed)."""

    def __init__(self, members: list[int], dead_after: float, now: float = 0.0):
        self.members = sorted(members)
        self.dead_after = dead_after
        self.reports: dict[int, tuple[float, frozenset]] = {}  # member -> (when, whom it hears)
        self.backed: frozenset = frozenset()
        self.changes = 0  # how often the backed group changed
        # A member's lease: until when it may act on our last "backed" (half of dead_after,
        # and the margin membership allows: a heartbeat interval and a tick of its loop).
        self.lease = dead_after / 2 + dead_after / 8 + LEASE_MARGIN
        self.leases: dict[int, float] = {}
        self.quiet_until = now + self.lease  # whatever we said before we started holds

    def report(self, member: int, hears: frozenset, now: float) -> tuple[bool, frozenset]:
        """A member's ping: (whether it is backed now, the group the witness backs)."""
        if member not in self.members:
            return False, self.backed
        self.reports[member] = (now, frozenset(hears))
        self._decide(now)
        backed = member in self.backed and (self.leases.get(member, -1.0) > now or (
            now >= self.quiet_until and all(until <= now for m, until in self.leases.items()
                                            if m not in self.backed)))
        if backed:
            self.leases[member] = now + self.lease
        return backed, self.backed

    def _decide(self, now: float) -> None:
        present = [m for m in self.members if m in self.reports
                   and now - self.reports[m][0] < self.dead_after / 2]
        hears = {m: self.reports[m][1] for m in present}

        def clique(group) -> bool:
            return all(b in hears[a] and a in hears[b] for a, b in combinations(group, 2))

        current = tuple(m for m in self.members if m in self.backed and m in hears)
        choice = ()
        for size in range(len(present), 0, -1):
            groups = [g for g in combinations(present, size) if clique(g)]
            if groups:
                choice = current if current in groups else groups[0]
                break
        backed = frozenset(choice)
        if backed != self.backed:
            self.changes += 1
            self.backed = backed
