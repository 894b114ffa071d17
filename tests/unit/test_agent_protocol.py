"""The agents' sync protocol, with three agents wired together in memory: no sockets, no
charon, no root. Each agent's sync socket is replaced by a queue, and `pump` delivers what
they send, so the tests can lose or reorder messages at will."""

import collections
import time

import pytest

from lab.agent import sync
from lab.agent.daemon import Agent, AgentConfig
from lab.agent.membership import SERVING
from lab.agent.ownership import ESTABLISHED, director_for, ike_sa_key

NAMES = ["m1", "m2", "m3"]


class Wire:
    """Where the agents' datagrams wait to be delivered."""

    def __init__(self):
        self.queue = collections.deque()

    def socket(self, me: int):
        wire = self

        class Sock:
            def sendto(self, data, address):
                wire.queue.append((me, int(address[0].split(".")[-1]), data))
        return Sock()


@pytest.fixture
def cluster(monkeypatch):
    # drop_stale_sas would ask a charon over vici; here the joiner has none to ask.
    monkeypatch.setattr(Agent, "drop_stale_sas", lambda self, mine, attempt: self.events.put(
        ("synced", (attempt, 0, 0))))
    wire = Wire()

    def agent(index: int, join: bool = False) -> Agent:
        config = AgentConfig(member=f"m{index}", index=index, key="00" * 32,
                             members={n: f"10.255.0.{n[1:]}" for n in NAMES})
        a = Agent(config, join=join)
        a.sync_sock = wire.socket(index)
        a.wake_w = None
        return a

    agents = {i: agent(i) for i in (1, 2, 3)}
    now = time.monotonic()
    for a in agents.values():
        for b in agents.values():
            if a is not b:
                a.membership.on_heartbeat(b.config.member, SERVING, frozenset(NAMES), now)
        a.membership.on_witness(now)
        a.membership.update(now)
    return agents, wire, agent


def pump(agents, wire, lose=lambda sender, receiver, message: False):
    while wire.queue or any(a.inbox for a in agents.values()):
        for a in agents.values():
            a._drain_inbox()
        if wire.queue:
            sender, receiver, data = wire.queue.popleft()
            if not lose(sender, receiver, data):
                agents[receiver].on_sync(data)
                agents[receiver]._drain_inbox()


def spi_directed_by(member: str, members=NAMES) -> bytes:
    return next(n.to_bytes(8, "big") for n in range(1000)
                if director_for(n.to_bytes(8, "big"), members) == member)


def claim(agents, claimant: int, ispi: bytes, tag: int = 7) -> list:
    """`claimant` claims ispi's IKE SA from its director; returns the owners granted to it."""
    granted = []
    agents[claimant].on_grant = lambda msg: granted.append(msg.owner)
    director = agents[claimant].director(ispi)
    agents[claimant].send(director, sync.Message(sync.CLAIM, claimant, ispi=ispi, tag=tag,
                                                 peer="203.0.113.11"))
    return granted


def test_a_claim_is_granted_once_every_live_member_acked(cluster):
    agents, wire, _ = cluster
    ispi = spi_directed_by("m1")
    granted = claim(agents, 2, ispi)
    pump(agents, wire)
    assert granted == [2]
    assert {a.table.owners()[f"{ispi.hex()}/0/i"] for a in agents.values()} == {"m2"}


def test_a_member_that_does_not_ack_holds_the_grant_until_it_leaves(cluster):
    agents, wire, _ = cluster
    ispi = spi_directed_by("m1")
    granted = claim(agents, 2, ispi)
    pump(agents, wire, lose=lambda s, r, d: r == 3)  # m3 hears nothing
    assert granted == [], "granted without m3's ACK"
    agents[1].on_member_died("m3")
    pump(agents, wire)
    assert granted == [2]


def test_an_established_owner_the_director_missed_wins_over_a_new_claim(cluster):
    agents, wire, _ = cluster
    ispi = spi_directed_by("m1")
    now = time.monotonic()
    for i in (2, 3):  # m1 lost the ESTABLISHED message
        agents[i].table.record(ike_sa_key(ispi), "m3", ESTABLISHED, now)
    granted = claim(agents, 2, ispi)
    pump(agents, wire)
    assert granted == [3]
    assert {a.table.owners()[f"{ispi.hex()}/0/i"] for a in agents.values()} == {"m3"}


def test_two_directors_of_one_key_grant_the_same_owner(cluster):
    agents, wire, _ = cluster
    ispi = b"\x42" * 8
    # Mid-change of membership, m1 and m2 each think they direct the key, and m2 and m3
    # each claim it from a different one. Both directors wait for each other's ACK.
    granted2, granted3 = [], []
    agents[2].on_grant = lambda msg: granted2.append(msg.owner)
    agents[3].on_grant = lambda msg: granted3.append(msg.owner)
    agents[2].send(1, sync.Message(sync.CLAIM, 2, ispi=ispi, tag=1, peer="203.0.113.11"))
    agents[3].send(2, sync.Message(sync.CLAIM, 3, ispi=ispi, tag=2, peer="203.0.113.11"))
    pump(agents, wire)
    assert granted2 + granted3 == [2, 2]
    assert {a.table.owners()[f"{ispi.hex()}/0/i"] for a in agents.values()} == {"m2"}


def test_a_joiner_gets_the_table_and_never_a_member_it_saw_die(cluster):
    agents, wire, agent = cluster
    now = time.monotonic()
    alive, dead = b"\x11" * 8, b"\x22" * 8
    for i in (1, 2):
        agents[i].table.record(ike_sa_key(alive), "m1", ESTABLISHED, now)
        agents[i].table.record(ike_sa_key(dead), "m2", ESTABLISHED, now)
    agents[3] = joiner = agent(3, join=True)
    for other in ("m1", "m2"):
        joiner.membership.on_heartbeat(other, SERVING, frozenset(NAMES), now)
    joiner.membership.on_witness(now)
    joiner.membership.update(now)
    joiner.fetch_table(now)
    joiner.on_member_died("m2")  # the joiner notices m2's death before the pivot does
    pump(agents, wire)
    joiner.on_event(*joiner.events.get(timeout=5))  # what the loop does with the thread's word
    assert joiner.table.owners() == {f"{alive.hex()}/0/i": "m1"}
    assert joiner.membership.synced
