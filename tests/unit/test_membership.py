"""Membership: the live set, dead-member detection, isolation by the witness, joining."""

import pytest

from lab.agent.protocol.membership import ISOLATED, JOINING, SERVING, Membership

MEMBERS = ("m1", "m2", "m3")


def cluster(me="m1", joining=False, now=0.0) -> Membership:
    m = Membership(me, MEMBERS, dead_after=2.0)
    m.start(now, joining=joining)
    return m


def me_of(m: Membership) -> str:
    return m.me


def run(m: Membership, start: float, end: float, heard=("m2", "m3"), witness=True,
        states=None, live=None) -> list:
    """Tick every 50 ms from start to end, heartbeats from `heard` every 250 ms; returns the
    Changes of every tick that changed something."""
    changes, t = [], start
    while t <= end + 1e-9:
        if round(t / 0.25, 6) % 1 == 0:
            for other in heard:
                m.on_heartbeat(other, (states or {}).get(other, SERVING),
                               frozenset(live if live is not None else MEMBERS), t)
            if witness:  # it backs every member that is heard, as the witness would
                m.on_witness(t, frozenset(heard) | {me_of(m)})
        c = m.update(t)
        if c.died or c.appeared or c.state:
            changes.append((round(t, 2), c))
        t += 0.05
    return changes


def test_members_heard_are_live_and_a_silent_one_dies_within_dead_after():
    m = cluster()
    run(m, 0, 1)
    assert m.live() == set(MEMBERS) and m.serving() == list(MEMBERS)
    changes = run(m, 1.05, 5, heard=("m2",))
    [(at, died)] = [(t, c.died) for t, c in changes if c.died]
    assert died == {"m3"} and at <= 1.0 + 2.0 + 0.1
    assert m.serving() == ["m1", "m2"] and m.state == SERVING


def test_a_joining_member_is_live_but_not_a_director():
    m = cluster()
    run(m, 0, 1, states={"m3": JOINING})
    assert "m3" in m.live() and m.serving() == ["m1", "m2"]


def test_losing_the_witness_isolates_before_anyone_is_judged_dead():
    m = cluster()
    run(m, 0, 1)
    changes = run(m, 1.05, 4, heard=(), witness=False)
    assert changes[0][1].state == ISOLATED and not changes[0][1].died
    assert changes[0][0] < 1.0 + 2.0  # isolated before the others' dead_after ran out
    assert not any(c.died for _, c in changes), "an isolated member judges nobody"
    assert m.serving() == []


def test_an_isolated_member_rejoins_when_the_witness_answers_again():
    m = cluster()
    run(m, 0, 1)
    run(m, 1.05, 3, heard=(), witness=False)
    assert m.state == ISOLATED
    changes = run(m, 3.05, 4)
    assert [c.state for _, c in changes if c.state] == [JOINING]
    assert not m.synced


def test_a_joiner_serves_once_synced_and_every_live_member_lists_it():
    m = cluster("m3", joining=True)
    run(m, 0, 1, heard=("m1", "m2"), live=("m1", "m2"))
    assert m.state == JOINING and m.pivot() == "m1"
    m.synced = True
    run(m, 1.05, 1.5, heard=("m1", "m2"), live=("m1", "m2"))
    assert m.state == JOINING, "the others do not list it yet"
    changes = run(m, 1.55, 2, heard=("m1", "m2"))
    assert [c.state for _, c in changes if c.state] == [SERVING]


def test_a_joiner_with_nobody_serving_starts_the_cluster_afresh():
    m = cluster("m2", joining=True)
    run(m, 0, 2.5, heard=())
    assert m.nobody_serving_since(2.5, since=0.0)
    assert not m.nobody_serving_since(1.0, since=0.0)


def test_a_stall_of_our_own_loop_kills_nobody_and_we_rejoin():
    m = cluster()
    run(m, 0, 1)
    # Our loop sleeps 3 s (CPU starvation): nobody's heartbeat was processed meanwhile, and
    # the witness has stopped backing us: the others may have taken our keys over.
    stalled = m.update(4.0)
    assert not stalled.died and not stalled.state  # the stalled round judges nobody
    changes = [(4.0, m.update(4.0))] + run(m, 4.05, 5)
    assert not any(c.died for _t, c in changes)
    assert [c.state for _t, c in changes if c.state] == [ISOLATED, JOINING]
    assert m.live() == set(MEMBERS)


def test_a_stall_does_not_bring_the_dead_back_or_reconnect_the_cut_off():
    m = cluster()
    run(m, 0, 1)
    run(m, 1.05, 6, heard=("m2",))
    assert m.live() == {"m1", "m2"}
    m.update(6.7)  # a stall of 0.65 s
    run(m, 6.75, 7.5, heard=("m2",))
    assert m.live() == {"m1", "m2"} and m.serving() == ["m1", "m2"]
    run(m, 7.55, 9, heard=(), witness=False)
    assert m.state == ISOLATED
    m.update(9.7)  # stalled while cut off: still cut off
    assert not m.update(9.75).state and m.state == ISOLATED


def test_the_transition_table_allows_its_pairs_and_refuses_every_other():
    from lab.agent.protocol.membership import (TRANSITIONS, Happening, IllegalTransition,
        MemberState, next_state)
    for state in MemberState:
        for happening in Happening:
            if (state, happening) in TRANSITIONS:
                assert next_state(state, happening) == TRANSITIONS[(state, happening)]
            else:
                with pytest.raises(IllegalTransition, match=f"{happening} is not possible "
                                                            f"while {state}"):
                    next_state(state, happening)
    # what the issue named: a drain of a joining, isolated or drained member is refused
    for state in (MemberState.JOINING, MemberState.ISOLATED, MemberState.DRAINED,
                  MemberState.DRAINING):
        assert (state, Happening.DRAIN) not in TRANSITIONS
    assert next_state(MemberState.SERVING, Happening.DRAIN) == MemberState.DRAINING


def test_an_illegal_happening_changes_nothing():
    from lab.agent.protocol.membership import Happening, IllegalTransition
    m = Membership("m1", MEMBERS)
    m.start(0.0, joining=True)
    with pytest.raises(IllegalTransition):
        m.become(Happening.DRAIN)
    assert m.state == JOINING
