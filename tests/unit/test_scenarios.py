"""Scenarios as data: the chaos steps, what each step does to the serving set, how a step is
named once its member is chosen, and the report item a step's result becomes."""

from lab.show.report import describe_chaos
from lab.run.scenarios import (DRAINS, LEAVES, RETURNS, SCENARIOS, STAYS, UNDRAINS, Rehash,
    StepResult, chaos, kill_daemons, owner_dies)
from lab.plan.topology import LabSpec, build_plan


def test_chaos_has_the_reports_steps_in_order_over_the_labs_first_and_last_peer():
    steps = chaos(build_plan(LabSpec(members=3, peers=4, hash="split")))
    assert len(steps) == 8
    members = ["m1", "m2", "m3"]
    assert [s.describe("m2", members) for s in steps] == [
        "fail m2 (daemons killed, it owned p1's tunnel)",
        "restore m2",
        "rehash l3 over every member (2 s watched)",
        "rehash split over m1,m3 (m2, holding p1's tunnel, drained; 2 s watched)",
        "rehash split over every member (2 s watched)",
        "partition m2 from the sync network for 10 s, then heal",
        "fail m2 (links down)",
        "restore m2"]
    assert [s.serving for s in steps] == [LEAVES, RETURNS, UNDRAINS, DRAINS, UNDRAINS, STAYS,
                                          LEAVES, RETURNS]
    assert [s.hold for s in steps] == [0, 0, 2, 2, 2, 10, 0, 0]
    assert steps[5].undo is not None and all(s.undo is None for s in steps[:5] + steps[6:])
    assert chaos(build_plan(LabSpec(hash="l3")))[2].act == Rehash("l4")


def test_a_step_leads_to_a_serving_set_without_with_or_as_before_its_member():
    serving = {"m1", "m2", "m3"}
    death = owner_dies("p1")
    assert death.act is kill_daemons and death.serving_after(serving, "m2") == {"m1", "m3"}
    back = chaos(build_plan(LabSpec()))[1]
    assert back.serving_after({"m1", "m3"}, "m2") == serving
    assert chaos(build_plan(LabSpec()))[2].serving_after(serving, None) == serving


def test_the_owner_death_is_one_step_shared_by_chaos_and_the_scenarios():
    assert SCENARIOS["owner-death"].steps == (owner_dies("p1"),)
    assert chaos(build_plan(LabSpec()))[0] == owner_dies("p1")


def test_every_scenario_brings_up_the_tunnels_its_steps_need():
    for scenario in SCENARIOS.values():
        peers = {p.name for p in build_plan(scenario.spec).peers}
        assert set(scenario.tunnels) <= peers, scenario.name
        assert scenario.steps and scenario.description


def test_a_step_result_is_the_chaos_reports_item():
    result = StepResult("restore m2", "m2", outage_s=0.4, outages={"p1": 0.4, "p2": 0.0},
                        consistent_after_s=0.51, traffic_resumed=True)
    assert result.report() == {"name": "restore m2", "member": "m2", "outage_s": 0.4,
                               "takeover_s": None, "lost": 0,
                               "consistent_after_s": 0.51, "problem": None,
                               "outages": {"p1": 0.4, "p2": 0.0}, "began": None}
    assert describe_chaos([result.report()])[1] == (
        "  restore m2: longest outage 0.4 s; consistent again after 0.5 s")
    broken = StepResult("fail ? (links down)", None, problem="no one member holds p1's tunnel")
    assert not broken.recovered
    assert broken.summary() == ("fail ? (links down): no traffic watched, consistent after "
                                "never (no one member holds p1's tunnel)")


def test_every_play_the_cli_offers_exists_and_a_renegotiating_peer_is_not_pinged():
    from lab.run.scenarios import plays
    from lab.plan.topology import CHAOS_PLAYS
    plan = build_plan(LabSpec(members=3, peers=2, hash="split"))
    offered = plays(plan)
    assert tuple(offered) == CHAOS_PLAYS
    steps, pinging = offered["rehash-mid-negotiation"]
    assert pinging == ["p1"]  # p2 renegotiates during the step: its outage is by design
    assert [s.describe(None, ["m1", "m2", "m3"]) for s in steps] == [
        "p2 renegotiates; after its IKE_SA_INIT the switches rehash l3, then its IKE_AUTH goes",
        "rehash split over every member (2 s watched)"]
    assert [len(offered[p][0]) for p in CHAOS_PLAYS] == [8, 2, 2, 1, 2]
