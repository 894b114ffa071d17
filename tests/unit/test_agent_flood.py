"""Unauthenticated packets against the agents' state: a flood of first packets never takes a
slot a legitimate negotiation needs, the stateless mode keeps nothing and says nothing for
them, parked packets are bounded, and unusual exchanges are routed like any other."""

import os

from lab.agent.protocol.events import Inject, Send

from .agents import Cluster, capture

V2 = capture("ikev2.pcap")
INIT, INIT_REPLY, AUTH, AUTH_REPLY = V2[:4]


def with_spis(packet: bytes, ispi: bytes | None = None, rspi: bytes | None = None,
              source: str | None = None) -> bytes:
    """The captured packet with other SPIs (and source address); UDP checksum left as is (the
    agents never look at it)."""
    start = 28 if packet[22:24] == b"\x01\xf4" else 32  # UDP 500: no marker
    data = bytearray(packet)
    if ispi is not None:
        data[start:start + 8] = ispi
    if rspi is not None:
        data[start + 8:start + 16] = rspi
    if source is not None:
        data[12:16] = bytes(int(x) for x in source.split("."))
    return bytes(data)


def labelled(member: int) -> bytes:
    return bytes([member]) + os.urandom(7)


def test_stateless_first_packets_are_answered_where_they_land_with_no_state_or_sync():
    c = Cluster(ownership="stateless").start()
    for n in range(300):
        first = with_spis(INIT, ispi=os.urandom(8), source=f"203.0.113.{20 + n % 200}")
        member = 1 + n % 3
        c.packet(member, first)
        assert c.verdict(member, first) == "accept"
    assert not c.wire, "a first packet cost a sync message"
    assert all(not a.table.entries for a in c.agents.values())
    assert sum(a.counters["answered_here"] for a in c.agents.values()) == 300


def test_stateless_the_responder_spis_label_routes_the_rest_of_the_negotiation():
    c = Cluster(ownership="stateless").start()
    rspi = labelled(2)
    c.packet(2, INIT)
    reply, auth = with_spis(INIT_REPLY, rspi=rspi), with_spis(AUTH, rspi=rspi)
    c.packet(2, reply)
    c.packet(3, auth)  # UDP 4500 hashed to m3
    assert c.verdict(2, reply) == "accept" and c.verdict(3, auth) == "drop"
    c.deliver()
    assert c.of_kind(2, Inject) == [Inject(auth, "203.0.113.1")]
    junk = with_spis(AUTH, ispi=os.urandom(8), rspi=b"\x77" + os.urandom(7))
    c.packet(1, junk)  # a label that names nobody, and no entry
    assert c.verdict(1, junk) == "drop" and c.agents[1].counters["unknown_dropped"] == 1


def test_a_flood_of_claims_keeps_within_its_budgets_and_a_new_peer_still_gets_its_slot():
    c = Cluster(half_open_cap=100, half_open_per_peer=20).start()
    for n in range(400):
        first = with_spis(INIT, ispi=os.urandom(8), source=f"203.0.113.{20 + n % 10}")
        c.packet(1 + n % 3, first)
        c.deliver()
    assert all(a.table.half_open() <= 100 for a in c.agents.values())
    assert all(a.table.evicted >= 300 for a in c.agents.values())
    legit = with_spis(INIT, source="203.0.113.12")
    c.packet(2, legit)
    c.deliver()
    assert c.verdict(2, legit) == "accept"


def test_parked_packets_are_bounded_and_the_excess_dropped_and_counted():
    c = Cluster().start()
    c.dead.update({1, 2, 3})  # nobody answers a lookup
    sent = []
    for n in range(1100):
        unknown = with_spis(AUTH, ispi=os.urandom(8), rspi=os.urandom(8))
        sent.append(unknown)
        c.packet(1, unknown)
    assert c.agents[1].counters["parked_full"] == 1100 - 1024
    assert [c.verdict(1, p) for p in sent[-76:]] == ["drop"] * 76


def test_unusual_exchange_types_are_routed_to_the_owner_like_any_other():
    c = Cluster().start()
    c.packet(1, INIT)
    c.deliver()
    intermediate = bytearray(AUTH)
    intermediate[32 + 18] = 43  # IKE_INTERMEDIATE (RFC 9242), same SPIs and Message ID
    intermediate = bytes(intermediate)
    c.packet(3, intermediate)
    c.deliver()
    assert c.verdict(3, intermediate) == "drop"
    assert c.of_kind(1, Inject) == [Inject(intermediate, "203.0.113.1")]
    assert not any(isinstance(a, Send) for a in c.done[3])
    assert c.agents[3].counters["parse_errors"] == 0


def test_a_reply_that_keeps_no_state_claims_nothing_in_any_mode():
    """charon answers a flood with COOKIEs (responder SPI zero): no claim, no sync message."""
    for ownership in ("table", "table+label", "stateless"):
        c = Cluster(ownership=ownership).start()
        cookie = with_spis(INIT_REPLY, ispi=os.urandom(8), rspi=bytes(8))
        c.packet(2, cookie)
        assert c.verdict(2, cookie) == "accept" and not c.wire
        assert c.agents[2].counters["stateless_replies"] == 1
