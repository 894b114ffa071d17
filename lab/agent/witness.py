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
A member that has not pinged for `dead_after`/2 is not there. Pure: time is passed in.
"""

from itertools import combinations


class Witness:
    """`report(member, hears, now)` -> (backed?, the members backed)."""

    def __init__(self, members: list[int], dead_after: float):
        self.members = sorted(members)
        self.dead_after = dead_after
        self.reports: dict[int, tuple[float, frozenset]] = {}  # member -> (when, whom it hears)
        self.backed: frozenset = frozenset()
        self.changes = 0  # how often the backed group changed

    def report(self, member: int, hears: frozenset, now: float) -> tuple[bool, frozenset]:
        if member in self.members:
            self.reports[member] = (now, frozenset(hears))
            self._decide(now)
        return member in self.backed, self.backed

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
