"""Which sync messages a member's trace shows (`ikelab ladder` draws them member to member),
and how many a second. Pure.

Those of one IKE SA's ownership: CLAIM, GRANT, ANNOUNCE, ACK, LOOKUP, ANSWER, ESTABLISHED,
REKEY, DELETE. FORWARD has a trace line of its own; heartbeats, routes, snapshots and the
witness's are periodic or bulk, and say nothing of one negotiation. A flood makes six of them
per spoofed packet: past PER_SECOND a second the trace skips them (the agent counts those), so
that tracing the protocol costs a flooded member no more than its packets do.
"""

from . import sync

TRACED = frozenset((sync.CLAIM, sync.GRANT, sync.ANNOUNCE, sync.ACK, sync.LOOKUP, sync.ANSWER,
                    sync.ESTABLISHED, sync.REKEY, sync.DELETE))
PER_SECOND = 200


class Budget:
    """PER_SECOND trace lines in each whole second of the agent's clock."""

    def __init__(self, per_second: int = PER_SECOND):
        self.per_second = per_second
        self.second, self.used = -1, 0

    def allows(self, now: float) -> bool:
        """Whether one more line fits in `now`'s second (and takes it if so)."""
        if int(now) != self.second:
            self.second, self.used = int(now), 0
        if self.used >= self.per_second:
            return False
        self.used += 1
        return True
