"""IPv6 and dual stack with the real lab (`--ip 6|dual`): every tunnel on exactly one member
with traffic in each family, in every ownership mode; owner death; an IPv6 IKE_SA_INIT flood;
an IKE_AUTH that crosses as IPv6 fragments. The reports are built from the daemons."""

import time
from dataclasses import replace

import pytest

from lab.agent.io.control import query
from lab.run.lab import Lab
from lab.run.probes import tunnel_holder
from lab.run.scenarios import SCENARIOS, owner_dies, staged
from lab.plan.topology import LabSpec

from .helpers import ikelab_json, poll
from .test_failover import GIVE_UP, assert_forgotten, assert_recovered
from .test_flood import RATE, SECONDS, agents, terminate, two_owners, up_after
from .test_takeover import no_ping_lost_or_doubled, one_sa_per_peer

pytestmark = pytest.mark.root

MODES = ("table", "table+label", "stateless")
VARIANTS = {"split-mixed": ["--hash", "split", "--ike", "mixed"],
            "l4-pubkey": ["--hash", "l4", "--auth", "pubkey"]}


def assert_both_families(report: dict, ip: str) -> None:
    assert report["ok"] and report["ip"] == ip, report
    for tunnel in report["tunnels"]:
        assert tunnel["state"] == "ESTABLISHED" and len(tunnel["ike_sa_holders"]) == 1, tunnel
        assert all(c["state"] == "INSTALLED" and c["holders"] == tunnel["ike_sa_holders"]
                   for c in tunnel["child_sas"]), tunnel
        traffic = tunnel["traffic"]
        directions = ["to_peer", "from_peer"] + (["to_peer6", "from_peer6"] if ip == "dual"
                                                  else [])
        for direction in directions:
            assert traffic[direction]["received"] > 0, (tunnel["peer"], direction, traffic)
        assert tunnel["problems"] == [], tunnel


@pytest.mark.parametrize("ownership", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ip", ["6", "dual"])
def test_every_tunnel_on_one_member_with_traffic_in_each_family(ip, variant, ownership):
    code, report = ikelab_json("--ip", ip, "--members", "3", "--peers", "4",
                               "--ownership", ownership, *VARIANTS[variant])
    assert code == 0, report
    assert_both_families(report, ip)
    # Half the peers of a dual-stack lab reach the cluster over each family, and the hashing
    # switch spread both: its IPv6 group carried IKE or ESP.
    assert sum(report["buckets"]["ikex"]["ipv6"].values()) > 0
    if ip == "dual":
        assert sum(report["buckets"]["ikex"]["ip"].values()) > 0
    if variant == "split-mixed":  # IKEv1 carries each family in a CHILD SA of its own
        assert {len(t["child_sas"]) for t in report["tunnels"]
                if t["ike_version"] == 1} == ({2} if ip == "dual" else {1})


@pytest.mark.parametrize("ip", ["6", "dual"])
def test_owner_death_over_ipv6_moves_the_tunnel_within_a_second(tmp_path, ip):
    # p2 reaches the cluster over IPv6 in either lab (in dual stack, p1 over IPv4); the LANs
    # ping over IPv6. The member holding p2's tunnel dies.
    base = SCENARIOS["owner-death"]
    scenario = replace(base, spec=replace(base.spec, ip=ip, peers=2), steps=(owner_dies("p2"),),
                       tunnels=("p1", "p2"))
    with staged(scenario, tmp_path) as run:
        [death] = run.run(scenario.steps)
        assert_forgotten(death)
        assert_recovered(death, GIVE_UP + 10)
        assert death.traffic_resumed
        assert tunnel_holder(run.lab, "p2", run.serving) in run.serving
    assert death.outage_s < 1.0, f"LAN traffic was out for {death.outage_s} s"


@pytest.mark.parametrize("ip", ["6", "dual"])
def test_an_ipv6_flood_leaves_legitimate_peers_unaffected(ip):
    # p2 floods over IPv6 (spoofed across the IPv6 internet, legitimate peers included);
    # p4 (IPv6) negotiates during it about as fast as when calm; nobody gets two owners.
    with Lab(LabSpec(members=3, peers=4, hash="l4", ip=ip)) as lab:
        calm = up_after(lab, "p4")
        terminate(lab, "p4")
        before = agents(lab)
        flood = lab.net.flood("p2", RATE, SECONDS / 3, 2, 500, spoof=True)
        poll(lambda: sum(a["counters"]["seen_in"] for a in agents(lab).values())
             > sum(a["counters"]["seen_in"] for a in before.values()) + RATE, deadline=10)
        during = up_after(lab, "p4")
        while flood.running():
            assert not two_owners(lab)
        report = flood.wait()
        again = lab.bring_up(None, 20)
    assert during <= 2 * calm + 1, f"p4 took {during:.2f} s under the flood ({calm:.2f} calm)"
    assert report["sent"] >= RATE * SECONDS / 3 * 0.95, report
    assert sorted(again.up_after) == ["p1", "p2", "p3", "p4"], again.last_sa


@pytest.mark.parametrize("ip, group", [("6", 6), ("4", 3)])
def test_ike_auth_crossing_as_ip_fragments_goes_through(ip, group):
    with Lab(LabSpec(members=3, peers=2, hash="l4", ip=ip, auth="pubkey", chain=3,
                     ike_fragmentation=False)) as lab:
        watch = lab.bring_up(None, 30)
        fragments = lab.switch("external").bucket_stats()[group]
        counters = {m.name: query(lab.node(m.name).files.agent_socket)["counters"]
                    for m in lab.plan.members}
    assert sorted(watch.up_after) == ["p1", "p2"], watch.last_sa
    # The IKE_AUTH (three CA certificates and the peer's) crossed as IP fragments: the
    # switch's fragment group carried them, by addresses, to one member, which reassembled
    # them before its agent saw the message (a fragment there would be a parse error).
    assert sum(fragments.values()) >= 2 * len(watch.up_after), fragments
    assert sum(c["seen_in"] for c in counters.values()) > 0, counters
    assert not any(c["parse_errors"] for c in counters.values()), counters


def test_nat_with_ipv6_only_is_refused_in_one_line():
    from .helpers import ikelab
    result = ikelab("run", "--ip", "6", "--nat")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "NAT66" in result.stderr, result.stderr


def test_a_dual_stack_drain_moves_tunnels_of_both_versions_without_losing_a_ping(tmp_path):
    # p2 and p4 reach the cluster over IPv6, p1 and p3 over IPv4; the LANs ping over IPv6.
    scenario = SCENARIOS["drain"]
    with staged(scenario, tmp_path, replace(scenario.spec, ip="dual")) as run:
        start = time.time()
        drained, returned = run.run(scenario.steps)
        assert drained.recovered and returned.recovered, (drained.problem, returned.problem)
        no_ping_lost_or_doubled(run, start, time.time())
        one_sa_per_peer(run, scenario.tunnels)


def test_chaos_and_ha_mode_over_ipv6():
    code, report = ikelab_json("--ip", "dual", "--members", "3", "--peers", "4", "--hash",
                               "split", "--ike", "mixed", "--chaos", timeout=600)
    assert code == 0 and report["ok"], [t["problems"] for t in report["tunnels"]]
    assert report["chaos"] and all(step["consistent_after_s"] is not None
                                   for step in report["chaos"]), report["chaos"]
    code, report = ikelab_json("--ip", "6", "--mode", "ha", "--peers", "3")
    assert code == 0
    assert_both_families(report, "6")
    assert {t["ike_sa_holders"][0] for t in report["tunnels"]} == {"m1"}
