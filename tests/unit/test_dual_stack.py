"""`--ip 6|dual` in pure logic: the address plan, the rendered connections, the switch's IPv6
groups and flows, the agent's steering and queue rules for IPv6."""

from ipaddress import IPv6Network
from pathlib import Path

import pytest

from lab.plan import hashing
from lab.agent.io import nfqueue
from lab.agent.names import NodeFiles
from lab.agent.protocol.steering import route_batch, ruleset
from lab.strongswan.render import Credentials, render_node
from lab.show.report import tunnel_report
from lab.plan.topology import (EXTERNAL_VIP, EXTERNAL_VIP6, SINK_MAC, UPSTREAM6, LabSpec,
    TopologyError, build_plan)

KEY = b"k" * 32


def swanctl(plan, node: str) -> str:
    files = NodeFiles(node, Path("/run/ikelab-test"))
    return render_node(plan, node, files, Credentials("psk", KEY))[files.swanctl_conf]


def block(text: str, name: str) -> str:
    return text.split(f"    {name} {{")[1].split("\n    }")[0]


def test_ipv6_plan_mirrors_the_ipv4_one_in_documentation_space():
    plan = build_plan(LabSpec(ip="6", peers=3))
    doc = IPv6Network("2001:db8::/32")
    assert [str(p.address) for p in plan.peers] == [f"2001:db8:0:1::{10 + i}" for i in (1, 2, 3)]
    assert all(p.vip == EXTERNAL_VIP6 and p.lan.version == 6 and p.lan.subnet_of(doc)
               for p in plan.peers)
    assert plan.peers[0].lan_host_address == plan.peers[0].lan.network_address + 0x10
    member = plan.members[0].host
    assert member.interface("eth0").address is None
    assert str(member.interface("eth0").address6) == "2001:db8:0:1::1/64"
    assert member.interface("eth2").address is not None  # the agents speak over IPv4
    # Every node across a switch, and the other members' sync addresses, are known; only
    # they are on-link to a member, the rest goes to the upstream sink.
    neighbours = {address: mac for address, mac, _intf in member.neighbours}
    assert neighbours[str(UPSTREAM6)] == SINK_MAC
    assert {str(p.address) for p in plan.peers} <= set(neighbours)
    assert {str(m.sync_address6) for m in plan.members[1:]} <= set(neighbours)
    assert set(dict(member.direct6)["eth0"]) == {str(p.address) for p in plan.peers} | {
        str(UPSTREAM6)}
    assert ("::/0", str(UPSTREAM6)) in member.routes


def test_dual_stack_splits_the_peers_outside_and_gives_every_lan_both_versions():
    plan = build_plan(LabSpec(ip="dual", peers=4, nat=True))
    assert [p.address.version for p in plan.peers] == [4, 6, 4, 6]
    assert plan.peers[0].behind_nat and plan.peers[0].vip == EXTERNAL_VIP
    assert all([lan.version for lan in p.lans] == [4, 6] for p in plan.peers)
    assert [n.version for n in plan.cluster_lans] == [4, 6]
    hc = plan.lan_host.interfaces[0]
    assert hc.address is not None and hc.address6 is not None


@pytest.mark.parametrize("spec, words", [
    (dict(ip="6", nat=True), "NAT66"), (dict(ip="dual", crowd=10), "IPv4 only"),
    (dict(ip="5"), "ip must be one of 4, 6, dual")])
def test_what_ipv6_cannot_do_is_refused_in_one_line(spec, words):
    with pytest.raises(TopologyError, match=words) as refused:
        LabSpec(**spec).validate()
    assert "\n" not in str(refused.value)


def test_ikev2_carries_both_versions_in_one_child_sa_and_ikev1_in_one_each():
    plan = build_plan(LabSpec(ip="dual", peers=2, ike="mixed"))
    member = swanctl(plan, "m1")
    v2, v1 = block(member, "p1"), block(member, "p2")
    assert "local_addrs = 203.0.113.1" in v2 and "remote_ts = 10.2.1.0/24,2001:db8:2:1::/64" in v2
    assert "local_addrs = 2001:db8:0:1::1" in v1 and "remote_addrs = 2001:db8:0:1::12" in v1
    assert "lan6 {" not in v2 and v1.count(" lan {") == v1.count(" lan6 {") == 1
    lan6 = v1.split(" lan6 {")[1]
    assert "local_ts = 2001:db8:1::/64" in lan6 and "remote_ts = 2001:db8:2:2::/64" in lan6
    peer = block(swanctl(plan, "p2"), "cluster")
    assert "remote_addrs = 2001:db8:0:1::1" in peer and " lan6 {" in peer


def test_the_switch_hashes_ipv6_in_groups_of_its_own_with_the_same_bucket_ids():
    spec = LabSpec(ip="dual", hash="split", members=3)
    plan = build_plan(spec)
    switch = plan.switch("external")
    groups = hashing.groups(switch, spec)
    assert len(groups) == 6
    six = [g for g in groups if f"group_id={hashing.IKE6_GROUP}," in g]
    assert six and "fields(ipv6_src,ipv6_dst)" in six[0]
    members = hashing.bucket_members(switch, spec)
    assert members[hashing.NATT6_GROUP] == members[hashing.NATT_GROUP]
    flows = hashing.flows(switch, spec)
    assert any(f.startswith("priority=350,ipv6,nw_frag=yes")
               and f"group:{hashing.FRAGMENT6_GROUP}" in f for f in flows)
    assert any("udp6" in f and "tp_dst=4500" in f and f"group:{hashing.NATT6_GROUP}" in f
               for f in flows)
    l4 = hashing.groups(plan.switch("internal"), spec)
    assert any("fields(ipv6_src,ipv6_dst,udp_src,udp_dst,tcp_src,tcp_dst)" in g for g in l4)
    assert len(hashing.groups(switch, LabSpec())) == 2  # an IPv4 lab: no IPv6 groups


def test_steering_forwards_ipv6_esp_to_an_ipv6_next_hop_and_counts_both_lans():
    members, members6 = {1: "10.255.0.1", 2: "10.255.0.2"}, {1: "2001:db8:0:ff::1",
                                                             2: "2001:db8:0:ff::2"}
    peers = {"p1": ("203.0.113.11", "10.2.1.0/24", "2001:db8:2:1::/64"),
             "p2": ("2001:db8:0:1::12", "10.2.2.0/24", "2001:db8:2:2::/64")}
    script = ruleset(2, members, "m2-eth0", "m2-eth1", "m2-eth2", peers, None, members6)
    assert "meta protocol ip6 udp dport 4500 @th,64,8 0xc1 counter fwd ip6 to 2001:db8:0:ff::1" \
        in script
    assert "meta protocol ip udp dport 4500 @th,64,8 0xc1 counter fwd ip to 10.255.0.1" in script
    assert "ip6 saddr 2001:db8:0:1::12 udp dport 4500" in script
    assert 'ip6 daddr 2001:db8:2:2::/64 counter comment "lan p2 over IPv6"' in script
    assert 'ip daddr 10.2.2.0/24 counter comment "lan p2"' in script
    batch = route_batch({"10.2.1.0/24": 1, "2001:db8:2:1::/64": 1}, [], {1: "10.255.0.1"},
                        "m2-eth2", "static", 210, {1: "2001:db8:0:ff::1"})
    assert "route replace 2001:db8:2:1::/64 via 2001:db8:0:ff::1 dev m2-eth2" in batch
    assert "route replace 10.2.1.0/24 via 10.255.0.1 dev m2-eth2" in batch
    # Without an IPv6 next hop an IPv6 prefix is not routed at all.
    assert "2001:db8" not in route_batch({"2001:db8:2:1::/64": 1}, [], {1: "10.255.0.1"},
                                         "m2-eth2", "static", 210)


def test_ipv6_queue_rules_find_the_non_esp_marker_after_the_fixed_header():
    six = nfqueue.rules("m1-eth0", "add", 6)
    assert all(c[0] == "ip6tables" for c in six)
    assert any(nfqueue.NON_ESP_MARKER_U32_6 in c for c in six)
    assert not any(nfqueue.NON_ESP_MARKER_U32 in c for c in six)
    script = nfqueue.hold_script({"203.0.113.11", "2001:db8:0:1::12"}, 6)
    assert "-s 2001:db8:0:1::12" in script and "203.0.113.11" not in script
    assert "2001:db8" not in nfqueue.hold_script({"203.0.113.11", "2001:db8:0:1::12"})


def test_a_lost_ipv6_ping_is_reported_like_an_ipv4_one():
    traffic = {d: {"sent": 3, "received": 3} for d in ("to_peer", "from_peer", "from_peer6")}
    traffic["to_peer6"] = {"sent": 3, "received": 0}
    traffic |= {f"tcp_{d}": {"bytes": 10} for d in ("to_peer", "from_peer")}
    sa = {"state": "ESTABLISHED", "initiator-spi": "aa", "child-sas": {}}
    report = tunnel_report("p1", 2, {"1": sa}, {}, {}, traffic, 1.0)
    assert not report["traffic_ok"]
    assert any("over IPv6 (0/3" in p for p in report["problems"]), report["problems"]
