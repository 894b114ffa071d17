"""The CLI's `sites`: its filter words and its lines, from a plan and made-up charon states."""

from lab.run.crowd import SITES_LISTED, describe_sites, sites_filter
from lab.plan.topology import LabSpec, build_plan

PLAN = build_plan(LabSpec(members=3, peers=1, crowd=50))
MEMBERS = [m.name for m in PLAN.members]


def states_and_holders():
    states, held = {}, {}
    for site in PLAN.sites():
        states[site.name] = "connecting" if site.index % 10 == 0 else "up"
        held[site.name] = [] if site.index % 10 == 0 else [MEMBERS[site.index % 3]]
    held["s7"] = ["m1", "m2"]
    return states, held


def test_sites_summarises_states_and_members_then_lists_at_most_forty():
    states, held = states_and_holders()
    lines = describe_sites(PLAN, states, held)
    assert lines[0] == "50 sites: 45 up, 5 connecting"
    assert lines[1].startswith("held by: m1=") and lines[1].endswith("by two members or more: 1")
    assert len(lines) == 2 + SITES_LISTED + 1 and lines[-1] == "  ... and 10 more"


def test_sites_filters_by_member_state_and_double_holding():
    states, held = states_and_holders()
    down = describe_sites(PLAN, states, held, sites_filter(["down"], MEMBERS))
    assert [line.split()[0] for line in down[2:]] == ["s10", "s20", "s30", "s40", "s50"]
    double = describe_sites(PLAN, states, held, sites_filter(["double"], MEMBERS))
    assert [line.split()[0] for line in double[2:]] == ["s7"]
    on_m3 = describe_sites(PLAN, states, held, sites_filter(["m3", "up"], MEMBERS))
    assert all(line.split()[-1] == "m3" for line in on_m3[2:]) and len(on_m3) > 3
    none = describe_sites(PLAN, states, held, sites_filter(["m3", "double"], MEMBERS))
    assert none[2:] == ["  (no site matches)"]


def test_an_unknown_word_is_one_line_naming_what_is_allowed():
    assert sites_filter(["m9"], MEMBERS) == ("'m9' is neither a member (m1, m2, m3) nor up, "
                                            "down or double")
