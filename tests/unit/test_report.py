"""The report: its JSON shape, the verdict, and what it says went wrong."""

import json

from lab.show.report import describe_sas, format_text, lab_report, tunnel_report
from lab.plan.topology import LabSpec

TCP_OK = {"tcp_to_peer": {"bytes": 10**6, "error": None},
          "tcp_from_peer": {"bytes": 10**6, "error": None}}
GOOD_TRAFFIC = {"to_peer": {"sent": 3, "received": 3}, "from_peer": {"sent": 3, "received": 3},
                **TCP_OK}
NO_TRAFFIC = {"to_peer": {"sent": 3, "received": 0}, "from_peer": {"sent": 3, "received": 0},
              "tcp_to_peer": {"bytes": 0, "error": "unable to connect"},
              "tcp_from_peer": {"bytes": 0, "error": None}}


def ike_sa(state, ispi="aa", rspi="bb", name="cluster", children=None):
    return {"uniqueid": "1", "name": name, "version": "2", "state": state,
            "initiator-spi": ispi, "responder-spi": rspi, "child-sas": children or {}}


def child(spi_in, spi_out, state="INSTALLED"):
    return {"name": "lan", "state": state, "spi-in": spi_in, "spi-out": spi_out,
            "local-ts": ["10.2.1.0/24"], "remote-ts": ["10.1.0.0/24"]}


def good_tunnel():
    peer = {"1": ike_sa("ESTABLISHED", children={"lan-1": child("c1", "c2")})}
    members = {"m1": {"4": ike_sa("ESTABLISHED", name="p1",
                                  children={"lan-4": child("c2", "c1")})},
               "m2": {}}
    return tunnel_report("p1", 2, peer, members, {"udp500": "m1", "udp4500": "m1"},
                         GOOD_TRAFFIC, 0.5)


def test_a_good_tunnel_has_one_holder_and_no_problems():
    t = good_tunnel()
    assert t["ike_sa_holders"] == ["m1"]
    assert t["child_sas"][0]["holders"] == ["m1"]
    assert t["traffic_ok"] and t["problems"] == []


def test_json_shape_is_stable():
    report = lab_report(LabSpec(), [good_tunnel()], {"ikex": {"ip": {"m1": 3}}},
                        {"lab_up_s": 1.0, "tunnels_up_s": 0.5}, None)
    data = json.loads(json.dumps(report))
    for key in ("ok", "members", "peers", "hash", "mode", "agent", "tunnels", "timings"):
        assert key in data
    assert data["ok"] is True and data["agent"] is True and data["agents"] == {}
    for key in ("peer", "ike_version", "ike_sa_holders", "child_sas", "traffic_ok"):
        assert key in data["tunnels"][0]


def test_split_negotiation_names_the_member_that_got_ike_auth():
    last = ike_sa("CONNECTING", ispi="77")
    members = {"m1": {}, "m2": {"9": ike_sa("CONNECTING", ispi="77", name="p1")}}
    t = tunnel_report("p1", 2, {}, members, {"udp500": "m2", "udp4500": "m1"},
                      NO_TRAFFIC, None, last)
    assert t["state"] == "GAVE_UP (was CONNECTING)"
    assert t["holder_states"] == {"m2": "CONNECTING"}
    assert any("UDP 4500 (IKE_AUTH) to m1, which does not hold the IKE SA (half-open on m2)"
               in p for p in t["problems"])
    report = lab_report(LabSpec(hash="split"), [t], {}, {"lab_up_s": 1, "tunnels_up_s": None},
                        None)
    assert report["ok"] is False
    assert "FAIL: 1 of 1 tunnels" in format_text(report)


def test_two_established_holders_is_a_problem():
    peer = {"1": ike_sa("ESTABLISHED", children={"x": child("c1", "c2")})}
    members = {m: {"1": ike_sa("ESTABLISHED", name="p1")} for m in ("m1", "m2")}
    t = tunnel_report("p1", 2, peer, members, {}, GOOD_TRAFFIC, 1.0)
    assert any("held by 2 members" in p for p in t["problems"])


def test_one_way_traffic_fails_the_tunnel():
    t = good_tunnel()
    traffic = {"to_peer": {"sent": 3, "received": 3}, "from_peer": {"sent": 3, "received": 0},
               **TCP_OK}
    t = tunnel_report("p1", 2, {"1": ike_sa("ESTABLISHED", children={"x": child("a", "b")})},
                      {"m1": {"1": ike_sa("ESTABLISHED")}}, {}, traffic, 1.0)
    assert not t["traffic_ok"]
    assert t["problems"] == ["no traffic peer LAN -> cluster LAN (0/3 pings answered)"]


def test_a_single_lost_ping_is_a_problem_the_report_names():
    # A tunnel is pinged from the moment its data path is complete: a lost ping is the
    # cluster's fault.
    traffic = dict(GOOD_TRAFFIC, to_peer={"sent": 3, "received": 2})
    t = tunnel_report("p1", 2, {"1": ike_sa("ESTABLISHED", children={"x": child("a", "b")})},
                      {"m1": {"1": ike_sa("ESTABLISHED")}}, {}, traffic, 1.0)
    assert not t["traffic_ok"]
    assert t["problems"] == ["pings lost cluster LAN -> peer LAN after the tunnel was up "
                             "(2/3 answered)"]


def test_tcp_failing_one_way_fails_the_tunnel_and_names_iperfs_error():
    traffic = dict(GOOD_TRAFFIC, tcp_to_peer={"bytes": 0, "error": "unable to connect"})
    t = tunnel_report("p1", 2, {"1": ike_sa("ESTABLISHED", children={"x": child("a", "b")})},
                      {"m1": {"1": ike_sa("ESTABLISHED")}}, {}, traffic, 1.0)
    assert not t["traffic_ok"]
    assert t["problems"] == ["no TCP cluster LAN -> peer LAN (unable to connect)"]


def test_describe_sas_lists_ike_and_child_sas():
    lines = describe_sas("m1", {"1": ike_sa("ESTABLISHED", name="p1",
                                            children={"x": child("c1", "c2")})})
    assert "p1[1] IKEv2 ESTABLISHED" in lines[0]
    assert "lan INSTALLED spi c1_in c2_out" in lines[1]
    assert describe_sas("m2", {}) == ["m2: no IKE SAs"]


def chaos_step(name, outage, after, problem=None):
    return {"name": name, "outage_s": outage, "outages": {"p1": outage},
            "consistent_after_s": after, "problem": problem}


def test_chaos_needs_every_step_to_recover():
    report = lab_report(LabSpec(), [good_tunnel()], {}, {"lab_up_s": 1.0}, None)
    from lab.show.report import with_chaos
    steps = [chaos_step(f"step {i}", 0.0, 0.5) for i in range(8)]
    assert with_chaos(report, steps, 8)["ok"]
    bad = steps[:-1] + [chaos_step("restore m1", 0.0, None, "m1 is joining")]
    text = format_text(with_chaos(report, bad, 8))
    assert "restore m1: longest outage 0.0 s; NOT consistent: m1 is joining" in text
    assert "FAIL: the cluster did not come back whole after a chaos step" in text
    short = with_chaos(report, steps[:2], 8)
    assert not short["ok"] and "stopped after 2 of 8 steps" in format_text(short)
    unwatched = dict(chaos_step("rehash l3", None, 0.2), outages={})  # nobody pinging
    assert "rehash l3: no traffic watched; consistent again after 0.2 s" in format_text(
        with_chaos(report, [unwatched], 1, "rehash-mid-negotiation"))
    drain = with_chaos(report, steps[:2], 2, "drain")
    assert drain["ok"] and drain["play"] == "drain"
    assert "every drain step" in format_text(drain)


def test_membership_lines_name_states_views_and_drained_members():
    from lab.show.report import describe_membership
    lines = describe_membership({
        "m1": {"state": "serving", "live": ["m1", "m3"], "serving": ["m1", "m3"],
               "connected": True, "table_size": 2, "holds": 1, "moving": ["p2"]},
        "m2": {"state": "failed (daemons killed)"},
        "m3": {"state": "isolated", "live": ["m3"], "serving": [], "connected": False,
               "table_size": 2, "failed": "links down", "holds": 0, "moving": []},
        "witness": {"backs": ["m1"], "changes": 3, "heard": {
            "m1": {"hears": ["m1", "m3"], "age_s": 0.01}, "m3": {"hears": ["m3"]}}},
        "switches": {"ikex": {"buckets": ["m1"], "hash": "l4", "drained": ["m3"]}}})
    assert lines == [
        "m1: serving, holds 1 tunnels, taking over p2, hears m1,m3, sees serving m1,m3, "
        "witness backs it, table 2",
        "m2: failed (daemons killed)",
        "m3: isolated (links down), holds 0 tunnels, hears m3, sees serving nobody, witness "
        "SILENT, table 2",
        "witness: backs m1, 3 changes, m1 hears m1,m3, m3 hears m3",
        "switch ikex: hash l4, buckets m1, drained m3"]


def test_a_switchs_health_check_errors_show_only_when_there_are_some():
    from lab.show.report import describe_membership
    switch = {"buckets": ["m1", "m2"], "hash": "l4", "drained": []}
    assert describe_membership({"switches": {"ikex": dict(switch, health_errors=0)}}) == [
        "switch ikex: hash l4, buckets m1,m2"]
    assert describe_membership({"switches": {"ikex": dict(switch, health_errors=3)}}) == [
        "switch ikex: hash l4, buckets m1,m2, 3 health check errors (logged)"]
