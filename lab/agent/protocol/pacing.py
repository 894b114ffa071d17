"""Pacing a member's own changes: pure, no I/O."""


PACER_BURST = 4  # changes that go out at once after a quiet spell: a tunnel coming up alone
# must not wait for its steering (the first packet through it would be lost)


class Pacer:
    """A token bucket: `burst` changes at once, then one per `gap` seconds. A crowd's
    changes many times a second are coalesced; a lone change after a quiet spell is not."""

    def __init__(self, gap: float, burst: int = PACER_BURST):
        self.gap, self.burst = gap, burst
        self.tokens, self.at = float(burst), float("-inf")

    def take(self, now: float) -> bool:
        """True, and one token spent, if a change may go out now."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.gap)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def next_at(self, now: float) -> float:
        """When the next token is there."""
        return now + max(0.0, 1 - self.tokens) * self.gap
