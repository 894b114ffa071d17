"""The bugs the cluster simulator (`lab.sim`) found in the agent's core, each written down as
the smallest scenario that shows it, on the in-memory cluster (`agents.Cluster`: real cores,
the real witness decision, a wire the test controls). The seeds that found them run clean in
`test_sim.py`; these say, in a reader's words, what was wrong."""

import pytest

from lab.agent.protocol import ike, sync
from lab.agent.protocol.events import (CharonSaid, EndSa, EndStaleSas, HoldingsRead, Initiate,
    Send, StaleSasEnded, SyncArrived, Tick)
from lab.agent.protocol.ownership import Key, director_for
from lab.agent.protocol.witness import Witness
from lab.sim.sa import AUTH, Body, ike_packet

from .agents import VIP, Cluster, sync_message

A, B = "1111111111111111", "2222222222222222"


def up(ispi: str, peer: str = "203.0.113.11") -> CharonSaid:
    return CharonSaid("ike-updown", {"up": "yes", "p1": {
        "initiator-spi": ispi, "responder-spi": ispi, "remote-host": peer}})


def down(ispi: str) -> CharonSaid:
    return CharonSaid("ike-updown", {"p1": {"initiator-spi": ispi, "responder-spi": ispi}})


def peers(n: int = 3) -> dict:
    return {f"p{i}": [f"203.0.113.{10 + i}", f"10.2.{i}.0/24"] for i in range(1, n + 1)}


def test_a_member_that_restarts_faster_than_dead_after_is_taken_over_at_once():
    """Seed 3: m2 crashed and was back in 0.3 s, before anyone counted it dead. Its charon's
    SAs were gone, yet every table still named it, and its peers waited for their DPD. Its
    heartbeats now carry its incarnation: a new one means it restarted."""
    c = Cluster(peers=peers()).start()
    c.handle(2, up(A, "203.0.113.12"))
    c.deliver()
    c.dead.add(2)
    c.run(0.2)
    c.restart(2)
    c.run(1.5)
    assert all(a.counters["restarts_seen"] == 1 for i, a in c.agents.items() if i != 2)
    assert not any(f"{A}/0/i" in a.table.owners() for a in c.agents.values())
    assert sum(len(c.of_kind(i, Initiate)) for i in (1, 3)) == 1  # p2's tunnel, once


def test_a_lost_delete_is_repaired_from_the_owners_digest():
    """Seed 4: a DELETE lost on the way to one member left its table naming the owner of an
    SA that no longer existed, for good, and every member that joined later copied it."""
    c = Cluster().start()
    c.handle(2, up(A))
    c.deliver()
    c.lose = lambda sender, receiver, m: m.type == sync.DELETE and receiver == 3
    c.handle(2, down(A))
    c.deliver()
    assert f"{A}/0/i" in c.agents[3].table.owners()
    c.lose = lambda sender, receiver, m: False
    c.run(0.5)  # two heartbeats of m2 disagree with m3's table: m3 asks m2
    assert f"{A}/0/i" not in c.agents[3].table.owners()
    assert c.agents[3].counters["resyncs"] == 1


def test_a_joiner_drops_what_the_table_gives_it_but_its_charon_no_longer_holds():
    """Seed 7: back after a crash the others never noticed, a member took its old entries
    from the snapshot and kept them, with its charon empty: tunnels it would never serve."""
    c = Cluster().start()
    c.handle(1, up(A))
    c.deliver()
    c.answer_stale_sas = False  # the test answers for m1's new, empty charon
    c.restart(1)
    c.run(1.0)
    [ended] = c.of_kind(1, EndStaleSas)[-1:]
    c.handle(1, StaleSasEnded(ended.attempt, 0, 0, frozenset()))
    c.run(1.0)
    assert all(f"{A}/0/i" not in a.table.owners() for a in c.agents.values())
    assert c.agents[1].membership.state == "serving"


def test_a_member_holding_two_sas_with_one_peer_ends_the_older():
    """Seed 181: a takeover and the peer's own restart crossed, and one member ended up
    holding two established SAs with the same peer, both carrying its CHILD SA, forever."""
    c = Cluster(peers=peers(1)).start()
    c.handle(1, up(A))
    c.run(0.1)
    c.handle(1, up(B))
    c.handle(1, sync_holdings(B))
    c.run(1.5)
    assert [a.ispi for a in c.of_kind(1, EndSa)] == [bytes.fromhex(A)]


def sync_holdings(ispi: str) -> HoldingsRead:
    return HoldingsRead(frozenset({"10.2.1.0/24"}), frozenset({(bytes.fromhex(ispi),
                                                                 "10.2.1.0/24")}))


def test_an_announced_key_keeps_its_owner_when_a_flood_evicts_its_entry():
    """Seed 144: under a flood the director's half-open budget pushed out the entry of a key
    whose announcement still waited for an ACK; a second claimant's retransmitted claim then
    started a second announcement with another owner, and both were granted."""
    c = Cluster(half_open_cap=2).start()
    ispi = b"\x42" * 8
    director = c.agents[1]
    c.lose = lambda sender, receiver, m: m.type == sync.ACK and sender == 3
    c.say_as(2, 1, sync.Message(sync.CLAIM, 2, ispi=ispi, tag=7, peer="198.51.100.9"))
    c.deliver()
    for n in range(3):  # the flood: the budget of 2 pushes the claimed key out
        c.say_as(3, 1, sync.Message(sync.CLAIM, 3, ispi=bytes([n + 1]) * 8, tag=20 + n,
                                    peer="198.51.100.9"))
    c.deliver()
    assert Key(ispi) not in director.table.entries
    grants = []
    c.lose = lambda sender, receiver, m: m.type == sync.GRANT and m.ispi == ispi and (
        grants.append(m.owner) or False)
    c.say_as(3, 1, sync.Message(sync.CLAIM, 3, ispi=ispi, tag=30, peer="198.51.100.9"))
    c.run(0.5)
    assert grants and set(grants) == {2}


def test_a_lookup_answer_naming_a_dead_member_records_nothing():
    """Seed 5: a member that had counted m2 dead asked a director that had not yet, and the
    answer put m2 back into its table; the entry then spread to a joiner's snapshot."""
    # An SA of m2's whose key m3 directs once m2 is gone (so m1 asks over the wire).
    spi = next(bytes([n]) * 8 for n in range(1, 256)
               if director_for(bytes([n]) * 8, ["m1", "m3"]) == "m3")
    c = Cluster().start()
    c.handle(2, up(spi.hex()))
    c.deliver()
    c.dead.add(2)
    c.run(1.5)
    assert "m2" in c.agents[1].departed
    auth = ike_packet("203.0.113.11", 4500, VIP, 4500, spi, spi, 2, ike.FLAG_INITIATOR, 1,
                      Body(AUTH))
    c.packet(1, auth)  # nobody owns it here any more: m1 asks the director
    [lookup] = [sync_message(d) for s, r, d in c.wire if s == 1 and sync_type(d) == sync.LOOKUP]
    c.wire.clear()
    c.say_as(3, 1, sync.Message(sync.ANSWER, 3, ispi=spi, owner=2, tag=lookup.tag))
    c.deliver()  # as from a director that has not counted m2 dead yet
    assert f"{spi.hex()}/0/i" not in c.agents[1].table.owners()
    assert c.verdict(1, auth) == "drop"


def test_a_split_that_leaves_the_bridge_reachable_leaves_one_side_acting():
    """Seeds 35, 64, 105: the sync network split so that each side still reached the
    bridge; a witness that only answers pings told both sides their link was fine, each
    counted the other dead, and each granted the same key to its own member. The witness now
    backs the largest group that hears itself whole; the other side isolates itself before
    anyone takes over its keys."""
    c = Cluster().start()
    c.lose = lambda sender, receiver, m: {sender, receiver} in ({1, 2}, {1, 3})
    c.run(2.0)
    assert c.agents[1].membership.state == "isolated"
    assert [a.membership.state for i, a in c.agents.items() if i != 1] == ["serving"] * 2
    assert all("m1" not in a.membership.live() for i, a in c.agents.items() if i != 1)
    # m1 was cut off before the others counted it dead
    assert c.agents[1].counters["isolations"] == 1


def test_a_member_whose_loop_stalled_acts_on_nothing_that_queued():
    """Seed 132: a member stalled longer than the witness waits, the others took its keys
    over, and it resumed serving its backlog with a view a second old."""
    c = Cluster().start()
    agent = c.agents[2]
    before = agent.counters["stalls"]
    c.now += 0.5  # m2's loop did not run for 0.5 s
    actions = c.handle(2, sync_heartbeat_from(c, 1))
    assert agent.counters["stalls"] == before + 1
    assert agent.membership.state == "isolated"
    assert not [a for a in actions if isinstance(a, Send) and a.to != sync.WITNESS and
                sync_type(a.data) not in (sync.HEARTBEAT, sync.ACK)]


def sync_heartbeat_from(c: Cluster, sender: int) -> SyncArrived:
    payload = sync.encode_heartbeat(1, {1, 2, 3})
    return SyncArrived(c.agents[sender].codec.encode(sync.Message(sync.HEARTBEAT, sender,
                                                                  payload=payload)))


def sync_type(data: bytes) -> int:
    return data[5]


def test_the_witness_backs_the_largest_group_that_hears_itself_whole():
    w = Witness([1, 2, 3, 4], dead_after=0.6)
    for m, hears in {1: {1, 2}, 2: {1, 2}, 3: {3, 4}, 4: {3, 4}}.items():
        w.report(m, frozenset(hears), 0.0)
    assert w.backed == {1, 2}  # two halves: the lower indexes, and it stays so
    w.report(3, frozenset({1, 2, 3, 4}), 0.1)
    w.report(1, frozenset({1, 2, 3}), 0.1)
    w.report(2, frozenset({1, 2, 3}), 0.1)
    assert w.backed == {1, 2, 3}  # a larger clique wins
    w.report(4, frozenset({3, 4}), 0.2)
    assert w.report(4, frozenset({3, 4}), 0.2) == (False, frozenset({1, 2, 3}))
    assert w.report(1, frozenset({1, 2, 3}), 0.5)[1] == {1}  # the others fell silent


def test_a_member_that_only_hears_another_does_not_vouch_for_it():
    """Seed 2247: a member back from isolation served as soon as the others *heard* it,
    while one of them still counted it gone and ignored its announcements; two directors
    granted one key. A heartbeat now lists whom its sender counts live (a joiner serves once
    every member does); only the witness is told whom it merely hears."""
    c = Cluster().start()
    # m2 cannot reach the witness: it isolates itself, and the others, who still hear it,
    # stop counting it live once the witness has stopped backing it.
    c.lose = lambda sender, receiver, m: sync.WITNESS in (sender, receiver) and 2 in (
        sender, receiver)
    c.run(1.5)
    assert c.agents[2].membership.state == "isolated"
    assert "m2" not in c.agents[1].membership.live()
    c.wire.clear()
    c.handle(1, Tick())
    c.now += c.agents[1].membership.heartbeat
    c.handle(1, Tick())
    sent = {sync_type(d): sync.decode_heartbeat(sync_message(d).payload).live
            for s, r, d in c.wire if s == 1 and r in (2, sync.WITNESS)}
    assert 2 not in sent[sync.HEARTBEAT] and 2 in sent[sync.WITNESS_PING]


def test_a_directors_own_decision_stands_when_a_flood_evicts_it_and_another_announces():
    """Seed 2714: two directors of one key (one member had just begun to serve); a flood
    pushed the first director's entry out while its announcement waited, the second
    director's announcement then reached it, and it acknowledged the other owner: each
    director granted its own. It now answers with what it decided itself."""
    c = Cluster(half_open_cap=2).start()
    ispi = b"\x42" * 8
    c.lose = lambda sender, receiver, m: m.type == sync.ACK and sender == 3
    c.say_as(2, 1, sync.Message(sync.CLAIM, 2, ispi=ispi, tag=7, peer="198.51.100.9"))
    c.deliver()
    for n in range(3):
        c.say_as(3, 1, sync.Message(sync.CLAIM, 3, ispi=bytes([n + 1]) * 8, tag=20 + n,
                                    peer="198.51.100.9"))
    c.deliver()
    assert Key(ispi) not in c.agents[1].table.entries
    acks = []
    c.lose = lambda sender, receiver, m: m.type == sync.ACK and sender == 1 and (
        acks.append(m.owner) or True)
    c.say_as(3, 1, sync.Message(sync.ANNOUNCE, 3, ispi=ispi, owner=3, state="negotiating",
                                tag=99, peer="198.51.100.9"))
    c.deliver()
    assert acks == [2] and c.agents[1].table.owners()[f"{ispi.hex()}/0/i"] == "m2"


def test_an_old_heartbeat_replayed_to_a_member_that_just_restarted_is_stale():
    """Seeds 1102, 1128: a member restarted (its replay windows empty), and copies of a dead
    member's old heartbeats reached it: it counted the dead member alive. Sync messages say
    when they were sent, and one older than half of dead_after is refused."""
    c = Cluster().start()
    [old] = [d for s, r, d in list(c.wire) if s == 1 and r == 3] or [
        c.agents[1].codec.encode(sync.Message(sync.HEARTBEAT, 1, payload=sync.encode_heartbeat(
            1, {1, 2, 3})), c.now + c.agents[1].wall_offset)]
    c.dead.add(1)
    c.run(1.5)
    c.restart(3)
    c.run(0.2)
    c.handle(3, SyncArrived(old))  # an attacker on the sync network, or a network's copy
    assert c.agents[3].counters["sync_stale"] == 1
    assert "m1" not in c.agents[3].membership.heard


def test_a_joiner_serves_only_on_heartbeats_sent_since_it_began_to_join():
    """Seed 4222: a member back from isolation counted as accepted the heartbeat a peer had
    sent before it counted the member dead, served at once, and directed a key that member
    was directing too."""
    from lab.agent.protocol.membership import Membership
    m = Membership("m2", ("m1", "m2"), dead_after=0.6)
    m.start(1.0, joining=True)
    m.on_heartbeat("m1", "serving", frozenset({"m1", "m2"}), 0.9)  # sent before the join
    m.on_witness(1.05, frozenset({"m1", "m2"}))
    m.synced = True
    m.update(1.1)
    assert m.state == "joining"
    m.on_heartbeat("m1", "serving", frozenset({"m1", "m2"}), 1.15)
    m.update(1.2)
    assert m.state == "serving"


def test_the_witness_backs_a_member_new_to_its_group_once_the_old_leases_ran_out():
    """Seed 4636: the sync network split; the witness first backed one side, then, when the
    reports changed, another group: for half of dead_after both acted, and each granted the
    same key. A member new to the backed group now waits until every lease of a member left
    out has run out; one that was backed already goes on."""
    w = Witness([1, 2, 3], dead_after=0.6, now=0.0)
    for m in (1, 2):
        w.report(m, frozenset({1, 2}), 0.5)
    assert w.report(1, frozenset({1, 2}), 0.5) == (True, frozenset({1, 2}))
    lease_of_2 = w.leases[2]
    # 2 is cut off from 1; 3 comes and hears 1: the group becomes {1, 3}.
    w.report(2, frozenset({2}), 0.6)
    w.report(1, frozenset({1, 3}), 0.6)
    assert w.report(3, frozenset({1, 3}), 0.6) == (False, frozenset({1, 3}))
    assert w.report(1, frozenset({1, 3}), 0.6)[0]  # leased already: it goes on
    assert not w.report(3, frozenset({1, 3}), lease_of_2 - 0.01)[0]
    w.report(1, frozenset({1, 3}), lease_of_2 - 0.01)
    assert w.report(3, frozenset({1, 3}), lease_of_2 + 0.01)[0]


def test_every_member_orders_a_peers_sas_by_when_their_owners_say_they_came_up():
    """Seed 3283: a peer's own new SA (negotiation announced during a split, finished after
    it) and a takeover's SA with the same peer were each the newest on their owner's table,
    ordered by when each member first heard of them: neither owner let go, and the peer kept
    two tunnels. The time the owner says the SA came up orders them, everywhere alike."""
    from lab.agent.protocol.ownership import ESTABLISHED, NEGOTIATING, OwnershipTable, ike_sa_key
    a, b = bytes.fromhex(A), bytes.fromhex(B)
    early, late = OwnershipTable(), OwnershipTable()
    # `early` heard of A's negotiation long before B existed; `late` heard of A only when up.
    early.record(ike_sa_key(a), "m5", NEGOTIATING, 1.0, "203.0.113.13")
    early.record(ike_sa_key(b), "m3", ESTABLISHED, 2.0, "203.0.113.13", up_ms=2000)
    early.establish(a, a, 5.0, up_ms=5000)
    late.record(ike_sa_key(b), "m3", ESTABLISHED, 2.0, "203.0.113.13", up_ms=2000)
    late.record(ike_sa_key(a), "m5", ESTABLISHED, 5.0, "203.0.113.13", up_ms=5000)
    for table in (early, late):
        assert table.newest_by_peer()["203.0.113.13"].owner == "m5"
        assert [(old.key.ispi, new.key.ispi) for old, new in table.superseded("m3")] == [(b, a)]
        assert table.superseded("m5") == []


def test_a_director_grants_a_key_another_director_announced_only_after_its_own_acks():
    """Seed 5589: the sync network split while the cluster was starting, before anyone could
    notice: each side saw only its own members serving, so each had its own director for a
    key, and each announced it with an owner of its side. Then one side's director changed,
    and the new one granted at once on the entry the first one's announcement had left
    (which the other side never acknowledged): two owners. A director now grants a
    negotiation it did not decide itself only after its own round of ACKs."""
    ispi = next(bytes([n]) * 8 for n in range(1, 256)
                if director_for(bytes([n]) * 8, ["m1", "m2", "m3"]) == "m3")
    c = Cluster().start()
    c.say_as(1, 3, sync.Message(sync.ANNOUNCE, 1, ispi=ispi, owner=1, state="negotiating",
                                tag=5, peer="198.51.100.9"))  # reached m3 only
    c.deliver()
    assert c.owners(f"{ispi.hex()}/0/i") == {3: "m1"}
    grants = []
    c.lose = lambda sender, receiver, m: (m.type == sync.ACK and sender == 2) or (
        m.type == sync.GRANT and (grants.append(m.owner) or False))
    c.say_as(1, 3, sync.Message(sync.CLAIM, 1, ispi=ispi, tag=6, peer="198.51.100.9"))
    c.run(0.2)
    assert grants == []  # m2 has not acknowledged the owner yet
    c.lose = lambda sender, receiver, m: m.type == sync.GRANT and (
        grants.append(m.owner) or False)
    c.run(0.5)
    assert grants == [1] and c.owners(f"{ispi.hex()}/0/i") == {1: "m1", 2: "m1", 3: "m1"}


def test_a_message_sent_before_a_member_restarted_is_stale_to_it():
    """Seed 6074: a FORWARD the member had injected was replayed to it a moment after it
    restarted, well within half of dead_after: the new process's replay window was empty,
    and it injected the packet a second time. What was sent before a process started was
    meant for an earlier one."""
    c = Cluster().start()
    sent = c.agents[1].codec.encode(sync.Message(sync.ESTABLISHED, 1, ispi=b"\x07" * 8,
                                                 owner=1, peer="203.0.113.11"), c.now)
    c.run(0.1)
    c.restart(3)
    c.handle(3, SyncArrived(sent))
    assert c.agents[3].counters["sync_stale"] == 1
    assert Key(b"\x07" * 8) not in c.agents[3].table.entries


def test_a_joiner_brings_back_up_what_its_charon_holds_and_the_table_says_negotiating():
    """Seed 5693: while a member was cut off, another looked its key up and recorded no more
    than a negotiation; the member rejoined with that in its snapshot, and its own
    established SA expired from every table as a negotiation while its charon went on
    holding it. Charon's word (established, and since when) now puts it back up,
    everywhere, at the same place among the peer's SAs."""
    from lab.agent.protocol.ownership import ESTABLISHED, NEGOTIATING, ike_sa_key
    a = bytes.fromhex(A)
    c = Cluster().start()
    c.handle(2, up(A))
    c.deliver()
    c.cut.add(2)
    c.run(2.0)
    assert c.agents[2].membership.state == "isolated"

    def a_lookup_left_a_negotiation(sender, receiver, message):
        if message.type == sync.SNAPSHOT_REQUEST:
            c.agents[receiver].table.record(ike_sa_key(a), "m2", NEGOTIATING, c.now,
                                            "203.0.113.11")
        return False

    c.lose = a_lookup_left_a_negotiation
    c.answer_stale_sas = False
    c.cut.discard(2)
    c.run(1.0)
    ask = c.of_kind(2, EndStaleSas)[-1]
    assert a in ask.keep
    assert c.agents[2].table.entries[ike_sa_key(a)].state == NEGOTIATING
    c.handle(2, StaleSasEnded(ask.attempt, 0, 0, frozenset({a}), {a: 5.0}))
    c.run(1.0)
    assert c.agents[2].membership.state == "serving"
    entries = [agent.table.entries[ike_sa_key(a)] for agent in c.agents.values()]
    assert {(e.owner, e.state) for e in entries} == {("m2", ESTABLISHED)}
    assert len({e.up_ms for e in entries}) == 1
    assert entries[0].up_ms == pytest.approx((c.now - 1.0 - 5.0) * 1000, abs=60)
