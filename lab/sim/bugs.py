"""Planted bugs: small variants of the agent's core, each the kind of mistake the protocol's
rules exist to prevent. `python -m lab.sim --self-test` runs the simulator against each and
fails unless every one is caught within a bounded number of seeds: a simulator that cannot
fail proves nothing (TigerBeetle's VOPR is tested the same way).

Each variant subclasses `core.Agent` and changes one rule; the real core is never touched.
"""

from lab.agent.protocol import sync
from lab.agent.protocol.core import Agent


class GrantBeforeAllAcks(Agent):
    """The director grants as soon as it has announced, without waiting for the ACKs."""

    BREAKS = "claim-discipline"  # the invariant it must be caught by: a crash is not a catch

    def _maybe_grant(self, announcement) -> None:
        announcement.waiting.clear()
        super()._maybe_grant(announcement)


class IgnoreLowerIndexRule(Agent):
    """Two directors of one key each keep their own owner instead of the lower one."""

    BREAKS = "one-owner"  # the invariant it must be caught by: a crash is not a catch

    @staticmethod
    def lower(a: int, b: int) -> int:
        return a


class _TrustingCodec(sync.Codec):
    def _fresh(self, sender: int, seq: int) -> bool:
        return True


class AcceptReplayedSync(Agent):
    """No replay window: a sync message that arrives twice (or years late) counts twice."""

    BREAKS = "no-double-injection"  # the invariant it must be caught by: a crash is not a catch

    def __init__(self, config, now, first_seq, join=False, **kwargs):
        super().__init__(config, now, first_seq, join, **kwargs)
        self.codec = _TrustingCodec(bytes.fromhex(config.key), self.me, first_seq)


class KeepDeadMembersEntries(Agent):
    """A member that dies keeps its entries in the survivors' tables."""

    BREAKS = "no-dead-owner"  # the invariant it must be caught by: a crash is not a catch

    def __init__(self, config, now, first_seq, join=False, **kwargs):
        super().__init__(config, now, first_seq, join, **kwargs)
        self.table.drop_owner = lambda member: 0


class ClaimWithoutDirector(Agent):
    """A first packet is delivered here at once and the owner announced afterwards: the
    reference's order (write yourself into the table, then sync), which races."""

    BREAKS = "one-owner"  # the invariant it must be caught by: a crash is not a catch

    def park_claim(self, key, packet, peer) -> None:
        if packet.inbound:  # inbound: a peer's first message
            owner, _won = self.table.claim(key, self.config.member, self.now, peer)
            self.release(packet, self.config.index_of(owner), key.ispi)
            return
        super().park_claim(key, packet, peer)


BUGS = {"grant-before-all-acks": GrantBeforeAllAcks,
        "ignore-lower-index": IgnoreLowerIndexRule,
        "accept-replayed-sync": AcceptReplayedSync,
        "keep-dead-members-entries": KeepDeadMembersEntries,
        "claim-without-director": ClaimWithoutDirector}
