"""The agents' protocol, driven only through `Agent.handle`: real IKE packets from captures go
in, verdicts and sync datagrams come out, and three agents talk over an in-memory wire that
loses messages when a test says so (`agents.Cluster`). No sockets, no charon, no root, and no
test reaches inside an agent or replaces a method of one."""

from lab.agent.protocol import sync
from lab.agent.protocol.events import CharonSaid, Inject
from lab.agent.protocol.ownership import director_for

from .agents import Cluster, capture

V2 = capture("ikev2.pcap")
V1 = capture("ikev1.pcap")
INIT, INIT_REPLY, AUTH, AUTH_REPLY = V2[:4]
ISPI, RSPI = "0b90528146a9a791", "85d31ae727b5095a"  # the IKEv2 capture's IKE SA
KEY = f"{ISPI}/0/i"
NAMES = ["m1", "m2", "m3"]


def director(ispi: str, names=NAMES) -> int:
    return int(director_for(bytes.fromhex(ispi), names)[1:])


def up(ispi: str, rspi: str, peer: str = "203.0.113.11") -> CharonSaid:
    """charon's ike-updown event for an IKE SA that came up."""
    return CharonSaid("ike-updown", {"up": "yes", "p1": {"initiator-spi": ispi,
                                                         "responder-spi": rspi,
                                                         "remote-host": peer}})


def test_a_claim_is_granted_only_once_every_live_member_acked():
    c = Cluster().start()
    d = director(ISPI)
    claimant, third = [i for i in (1, 2, 3) if i != d]
    c.lose = lambda sender, receiver, m: sender == third and m.type == sync.ACK
    c.packet(claimant, INIT)
    c.deliver()
    assert c.verdict(claimant, INIT) is None, "granted without the third member's ACK"
    c.lose = lambda sender, receiver, m: False
    c.run(0.5)  # the director announces again; now the ACK comes
    assert c.verdict(claimant, INIT) == "accept"
    assert set(c.owners(KEY).values()) == {f"m{claimant}"} and len(c.owners(KEY)) == 3


def test_a_member_that_does_not_ack_holds_the_grant_until_it_leaves():
    c = Cluster(dead_after=0.5).start()
    d = director(ISPI)
    claimant, third = [i for i in (1, 2, 3) if i != d]
    c.dead.add(third)
    c.packet(claimant, INIT)
    c.run(0.3)
    assert c.verdict(claimant, INIT) is None
    c.run(0.6)  # the others count the third member dead: the wait for its ACK ends
    assert c.verdict(claimant, INIT) == "accept"


def test_the_capture_replayed_into_one_member_is_all_its_own_with_one_claim():
    c = Cluster().start()
    for number, data in enumerate(V2):
        c.packet(1, data)
        c.deliver()
        if number == 3:  # IKE_AUTH answered: charon says the IKE SA is up
            c.handle(1, up(ISPI, RSPI))
        if number == 13:  # the IKE SA rekey answered: charon names the new SPIs
            c.handle(1, CharonSaid("ike-rekey", {"p1": {
                "old": {"initiator-spi": ISPI, "responder-spi": RSPI},
                "new": {"initiator-spi": "8f7a4afdce0e44cb",
                        "responder-spi": "52e5b578dec2e35f"}}}))
        c.deliver()
    assert [c.verdict(1, data) for data in V2] == ["accept"] * len(V2)
    counters = c.agents[1].counters
    assert counters["claims_won"] == 1 and counters["forwarded"] == 0
    assert counters["seen_in"] == 9 and counters["seen_out"] == 9
    for key in (KEY, "8f7a4afdce0e44cb/0/i"):
        assert c.owners(key) == {1: "m1", 2: "m1", 3: "m1"}


def test_ike_auth_at_another_member_is_forwarded_and_written_back_unchanged():
    c = Cluster().start()
    c.packet(1, INIT)
    c.deliver()
    c.packet(1, INIT_REPLY)
    c.packet(2, AUTH)  # the switch hashed UDP 4500 to m2
    assert c.verdict(2, AUTH) == "drop"
    c.deliver()
    assert c.of_kind(1, Inject) == [Inject(AUTH, "203.0.113.1")]
    assert c.agents[2].counters["forwarded"] == 1
    assert c.agents[1].counters["received_forwarded"] == 1
    c.packet(1, AUTH_REPLY)
    assert c.verdict(1, AUTH_REPLY) == "accept"


def test_an_established_owner_the_director_missed_wins_over_a_new_claim():
    c = Cluster().start()
    d = director(ISPI)
    owner, claimant = [i for i in (1, 2, 3) if i != d]
    # Only the owner knows its IKE SA is up: the ESTABLISHED to the others was lost.
    c.lose = lambda sender, receiver, m: m.type == sync.ESTABLISHED
    c.handle(owner, up(ISPI, RSPI))
    c.deliver()
    c.lose = lambda sender, receiver, m: False
    c.packet(claimant, INIT)
    c.deliver()
    assert c.verdict(claimant, INIT) == "drop"  # forwarded to the owner
    assert c.of_kind(owner, Inject) == [Inject(INIT, "203.0.113.1")]
    assert set(c.owners(KEY).values()) == {f"m{owner}"} and len(c.owners(KEY)) == 3


def test_two_directors_of_one_key_grant_the_same_owner():
    c = Cluster().start()
    ispi = b"\x42" * 8
    # Mid-change of membership, m1 and m2 each think they direct the key, and m2 and m3 each
    # claim it from a different one. Both directors wait for each other's ACK.
    grants = []
    c.lose = lambda sender, receiver, m: m.type == sync.GRANT and grants.append(m.owner)
    c.say_as(2, 1, sync.Message(sync.CLAIM, 2, ispi=ispi, tag=1, peer="203.0.113.11"))
    c.say_as(3, 2, sync.Message(sync.CLAIM, 3, ispi=ispi, tag=2, peer="203.0.113.11"))
    c.deliver()
    assert grants == [2, 2]
    assert c.owners(f"{ispi.hex()}/0/i") == {1: "m2", 2: "m2", 3: "m2"}


def test_a_new_phase_1_from_a_peer_with_an_ike_sa_goes_to_that_sas_owner():
    """IKEv1 rekeys its IKE SA by reauthentication, with new cookies: same owner."""
    c = Cluster().start()
    for data in V1[:6]:  # Main Mode, all at m1
        c.packet(1, data)
        c.deliver()
    c.handle(1, up("2ca37ec0cf148014", "dad8ff1592e76000", peer="203.0.113.12"))
    c.deliver()
    reauth = V1[15]  # a new Main Mode, new cookies, hashed to m3
    c.packet(3, reauth)
    c.deliver()
    assert c.verdict(3, reauth) == "drop"
    assert c.of_kind(1, Inject) == [Inject(reauth, "203.0.113.1")]
    assert set(c.owners("f48a4e8701caf93b/0/i").values()) == {"m1"}


def test_malformed_packets_and_packets_while_not_serving_are_dropped_and_counted():
    c = Cluster().start()
    for junk in (INIT[:30], INIT[:28] + b"\xab" * 40, INIT[:-1]):
        c.packet(1, junk)
        assert c.verdict(1, junk) == "drop"
    assert c.agents[1].counters["parse_errors"] == 3
    c.cut.add(1)  # the witness goes quiet: m1 isolates itself
    c.run(1.2)
    assert c.agents[1].membership.state == "isolated"
    c.packet(1, INIT)
    assert c.verdict(1, INIT) == "drop"
    assert c.agents[1].counters["not_serving_drops"] == 1


def test_forged_and_replayed_sync_messages_are_dropped_and_counted():
    c = Cluster().start()
    c.handle(2, up("1111111111111111", "2222222222222222", peer="203.0.113.12"))
    [real] = [data for sender, receiver, data in c.wire if receiver == 1]  # m2's ESTABLISHED
    c.deliver()
    forged = sync.Codec(b"\x01" * 32, 2, 1 << 50).encode(
        sync.Message(sync.ANNOUNCE, 2, ispi=b"\x66" * 8, owner=2, state="established"))
    c.wire.extend([(2, 1, forged), (2, 1, real)])
    c.deliver()
    assert c.agents[1].counters["sync_bad_mac"] == 1
    assert c.agents[1].counters["sync_replayed"] == 1
    assert "66" * 8 not in str(c.agents[1].table.owners())
    c.run(0.5)
    assert c.agents[1].membership.serving() == NAMES  # m2's own messages still count


def test_a_restarted_member_gets_the_whole_table_and_asks_again_for_a_lost_chunk():
    c = Cluster().start()
    c.dead.add(3)
    for n in range(100):
        c.handle(1, up(f"{n + 1:016x}", f"{n + 1:016x}"))
    c.run(2.5)
    chunks = []

    def lose_second_chunk(sender, receiver, m):
        if m.type == sync.SNAPSHOT and receiver == 3:
            chunks.append(m)
            return len(chunks) == 2
        return False
    c.restart(3)
    c.lose = lose_second_chunk
    c.run(3.0)
    assert len(chunks) > 3, "the joiner did not ask again"
    assert c.agents[3].membership.state == "serving"
    assert len(c.agents[3].table.owners()) == 100
    assert c.agents[3].table.owners() == c.agents[1].table.owners()
    assert c.agents[3].counters["snapshots_applied"] == 1


def test_a_joiner_keeps_no_entry_of_a_member_that_died_during_its_join():
    """m2 dies as m3 restarts: the snapshot m1 sends may still name m2's SA (m1 has not
    counted it dead yet), and m3 never heard m2 itself: it keeps nothing of it."""
    c = Cluster().start()
    alive, dead = "1111111111111111", "2222222222222222"
    c.handle(1, up(alive, alive))
    c.handle(2, up(dead, dead))
    c.deliver()
    c.restart(3)
    c.dead.add(2)
    c.run(2.8)
    assert "m2" not in c.agents[3].membership.live()
    assert c.agents[3].table.owners() == {f"{alive}/0/i": "m1"}
    assert c.agents[3].membership.state == "serving"


def test_a_member_back_from_a_partition_fetches_the_table_however_late_the_others_speak():
    """After a heal the others' heartbeats can lag the witness's answers by an ARP
    resolution (their kernels gave up on the member's address during the cut): the member
    must still fetch their table, not take the silence for an empty cluster and serve its
    own old one. (CI saw it: a rejoined member without the survivor's takeover SA.)"""
    c = Cluster().start()
    c.cut.add(1)
    c.run(1.5)
    assert c.agents[1].membership.state == "isolated"
    taken = "3333333333333333"
    c.handle(3, up(taken, taken))  # what the others did meanwhile: a takeover, say
    c.run(1.0)
    healed = c.now
    c.cut.discard(1)  # the witness answers at once; m2 and m3 are heard 1.5 s later
    c.lose = lambda sender, receiver, m: receiver == 1 and c.now < healed + 1.5
    c.run(4.0)
    m1 = c.agents[1]
    assert m1.membership.state == "serving"
    assert m1.counters["snapshots_applied"] == 1
    assert m1.table.owners() == c.agents[2].table.owners()
    assert m1.table.owners()[f"{taken}/0/i"] == "m3"
