"""The ownership table: claim, lookup, Phase 1 fallback, direction, expiry, cap, rekey."""

from lab.agent.protocol.ownership import (ESTABLISHED, NEGOTIATING, REKEYED, Key, OwnershipTable,
    director_for, ike_sa_key)

A, B = b"\xaa" * 8, b"\xbb" * 8


def test_first_claim_wins_and_a_second_claim_learns_the_owner():
    table = OwnershipTable()
    assert table.claim(ike_sa_key(A), "m1", 0) == ("m1", True)
    assert table.claim(ike_sa_key(A), "m2", 0.1) == ("m1", False)
    assert table.owner_of(ike_sa_key(A)) == "m1"


def test_exchanges_without_an_entry_belong_to_the_ike_sa_owner():
    table = OwnershipTable()
    table.claim(ike_sa_key(A), "m2", 0)
    assert table.owner_of(Key(A, 7, "r")) == "m2"
    assert table.owner_of(Key(B, 0, "i")) is None


def test_the_key_tells_the_two_directions_apart():
    table = OwnershipTable()
    table.claim(Key(A, 3, "i"), "m1", 0)
    table.claim(Key(A, 3, "r"), "m3", 0)
    assert table.owner_of(Key(A, 3, "i")) == "m1"
    assert table.owner_of(Key(A, 3, "r")) == "m3"


def test_ikev1_phase_one_entry_answers_for_its_quick_modes():
    table = OwnershipTable()
    table.claim(ike_sa_key(A), "m2", 0)
    assert table.owner_of(Key(A, 0x5eed, "-")) == "m2"


def test_a_peer_with_an_established_ike_sa_keeps_its_owner_for_a_new_phase_one():
    table = OwnershipTable()
    table.claim(ike_sa_key(A), "m2", 0, peer="203.0.113.11")
    assert table.owner_for_peer("203.0.113.11") is None  # still negotiating
    table.establish(A, b"\x01" * 8, 1)
    assert table.owner_for_peer("203.0.113.11") == "m2"
    assert table.owner_for_peer("203.0.113.12") is None and table.owner_for_peer(None) is None


def test_negotiating_entries_expire_and_established_ones_do_not():
    table = OwnershipTable(expiry=120)
    table.claim(ike_sa_key(A), "m1", 0)
    table.claim(ike_sa_key(B), "m1", 0)
    table.establish(B, b"\x01" * 8, 1)
    assert table.expire(119.9) == []
    gone = table.expire(120)
    assert [e.key for e in gone] == [ike_sa_key(A)] and table.expired == 1
    assert table.owner_of(ike_sa_key(B)) == "m1" and table.expire(10**6) == []


def test_established_entries_are_refused_at_their_cap_and_counted():
    table = OwnershipTable(cap=2)
    table.record(ike_sa_key(A), "m1", ESTABLISHED, 0)
    table.record(ike_sa_key(B), "m1", ESTABLISHED, 0)
    assert not table.record(ike_sa_key(b"\xdd" * 8), "m2", ESTABLISHED, 0)
    assert table.refused == 1
    assert table.claim(ike_sa_key(b"\xcc" * 8), "m1", 0) == ("m1", True)  # half-open: apart


def test_half_open_entries_make_room_oldest_first_and_never_for_established_ones():
    table = OwnershipTable(half_open_cap=3)
    table.record(ike_sa_key(A), "m1", ESTABLISHED, 0, "203.0.113.12")
    flood = [bytes([0x10 + n]) * 8 for n in range(6)]
    for n, ispi in enumerate(flood):
        assert table.claim(ike_sa_key(ispi), "m2", n, peer=f"203.0.113.{20 + n}")[1]
    assert table.half_open() == 3 and table.evicted == 3
    assert {k.ispi for k in table.entries if k.ispi in flood} == set(flood[3:])
    assert table.owner_of(ike_sa_key(A)) == "m1"


def test_a_peer_at_its_half_open_budget_gives_up_its_own_oldest_entry():
    table = OwnershipTable(half_open_per_peer=2)
    other = b"\x99" * 8
    table.claim(ike_sa_key(other), "m1", 0, peer="203.0.113.12")
    flood = [bytes([0x10 + n]) * 8 for n in range(3)]
    for n, ispi in enumerate(flood):
        table.claim(ike_sa_key(ispi), "m2", 1 + n, peer="203.0.113.11")
    assert table.owner_of(ike_sa_key(flood[0])) is None
    assert table.owner_of(ike_sa_key(flood[2])) == "m2"
    assert table.owner_of(ike_sa_key(other)) == "m1" and table.evicted == 1

def test_a_half_open_entry_that_is_established_leaves_the_half_open_budget():
    table = OwnershipTable(half_open_cap=1)
    table.claim(ike_sa_key(A), "m1", 0, peer="203.0.113.11")
    table.establish(A, b"\x01" * 8, 1)
    table.claim(ike_sa_key(B), "m2", 2, peer="203.0.113.12")
    assert table.owner_of(ike_sa_key(A)) == "m1" and table.owner_of(ike_sa_key(B)) == "m2"
    assert table.owner_for_peer("203.0.113.11") == "m1"
    assert table.evicted == 0
    assert [e.key for e in table.expire(100)] == [ike_sa_key(B)]  # the established one stays
    assert table.owner_of(ike_sa_key(A)) == "m1"

def test_a_rekeyed_ike_sa_stays_with_its_owner_and_the_old_entry_lingers():
    table = OwnershipTable(rekey_grace=30)
    table.claim(ike_sa_key(A), "m3", 0)
    table.establish(A, b"\x01" * 8, 1)
    new = table.rekey(A, B, b"\x02" * 8, 100)
    assert new.owner == "m3" and new.state == ESTABLISHED
    assert new.rspi == b"\x02" * 8
    assert table.entries[ike_sa_key(A)].state == REKEYED
    assert table.owner_of(ike_sa_key(A)) == "m3"
    table.expire(131)
    assert table.owner_of(ike_sa_key(A)) is None and table.owner_of(ike_sa_key(B)) == "m3"
    assert table.rekey(b"\xee" * 8, b"\xff" * 8, None, 0) is None


def test_delete_removes_every_entry_of_the_ike_sa():
    table = OwnershipTable()
    table.claim(ike_sa_key(A), "m1", 0)
    table.claim(Key(A, 4, "r"), "m1", 0)
    table.claim(ike_sa_key(B), "m2", 0)
    assert table.delete(A) == 2
    assert [str(k) for k in table.entries] == [str(ike_sa_key(B))]


def test_announcements_overwrite_and_rows_show_state_and_age():
    table = OwnershipTable()
    table.record(ike_sa_key(A), "m2", NEGOTIATING, 5)
    [row] = table.rows(7.5)
    assert row == {"key": f"{A.hex()}/0/i", "owner": "m2", "state": "negotiating",
                   "age_s": 2.5, "rspi": None, "peer": None}


def test_director_is_stable_and_spreads_keys():
    members = ["m1", "m2", "m3"]
    keys = [bytes([i]) * 8 for i in range(1, 61)]
    directors = [director_for(k, members) for k in keys]
    assert directors == [director_for(k, list(reversed(members))) for k in keys]
    assert set(directors) == set(members)
    # Removing a member moves only that member's keys.
    after = [director_for(k, ["m1", "m2"]) for k in keys]
    assert all(a == d for a, d in zip(after, directors) if d != "m3")


def test_a_dead_members_entries_go_and_nothing_else():
    from lab.agent.protocol.ownership import Key, OwnershipTable
    table = OwnershipTable()
    table.claim(Key(b"\x01" * 8), "m1", 0.0)
    table.claim(Key(b"\x02" * 8), "m2", 0.0)
    table.claim(Key(b"\x02" * 8, 5, "r"), "m2", 0.0)
    assert table.drop_owner("m2") == 2
    assert table.owners() == {f"{'01' * 8}/0/i": "m1"}


def test_restored_entries_keep_their_age_and_expiry():
    from lab.agent.protocol.ownership import ESTABLISHED, NEGOTIATING, Key, OwnershipTable
    table = OwnershipTable(expiry=10.0)
    table.restore(Key(b"\x01" * 8), "m2", NEGOTIATING, None, None, age=8.0, now=100.0)
    table.restore(Key(b"\x02" * 8), "m3", ESTABLISHED, b"\x09" * 8, "203.0.113.11", 50.0, 100.0)
    assert [e.key.ispi for e in table.expire(102.5)] == [b"\x01" * 8]
    assert table.entries[Key(b"\x02" * 8)].rspi == b"\x09" * 8


def test_a_confirmed_entry_is_never_taken_back_to_negotiating():
    from lab.agent.protocol.ownership import ESTABLISHED, NEGOTIATING, Key, OwnershipTable
    table = OwnershipTable(expiry=10.0)
    table.record(Key(b"\x01" * 8), "m3", ESTABLISHED, 0.0)
    table.record(Key(b"\x01" * 8), "m2", NEGOTIATING, 1.0)
    assert table.owners() == {f"{'01' * 8}/0/i": "m3"}
    assert not table.expire(100.0)
