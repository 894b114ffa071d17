"""Data-plane steering plans: SPI ranges, the nftables script, route changes."""

from lab.agent.names import esp_spi_range
from lab.agent.protocol.steering import counters, desired_routes, route_changes, ruleset
from lab.agent.names import NodeFiles
from lab.strongswan.render import Credentials, render_node
from lab.plan.topology import LabSpec, build_plan

MEMBERS = {1: "10.255.0.1", 2: "10.255.0.2", 3: "10.255.0.3"}
PEERS = {"p1": ("203.0.113.11", "10.2.1.0/24"), "p2": ("203.0.113.12", "10.2.2.0/24")}


def test_each_member_has_its_own_esp_spi_range():
    ranges = [esp_spi_range(i) for i in (1, 2, 3)]
    assert ranges[0] == (0xC1000000, 0xC1FFFFFF)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def test_members_render_their_esp_range_and_peers_do_not(tmp_path):
    plan = build_plan(LabSpec(members=3))
    files = NodeFiles("m2", tmp_path)
    conf = render_node(plan, "m2", files, Credentials("psk", b"k" * 32))[files.strongswan_conf]
    assert "spi_min = 0xc2000000" in conf and "spi_max = 0xc2ffffff" in conf
    peer = NodeFiles("p1", tmp_path)
    assert "spi_min" not in render_node(plan, "p1", peer,
                                        Credentials("psk", b"k" * 32))[peer.strongswan_conf]


def test_ruleset_forwards_other_members_esp_and_counts_per_peer():
    script = ruleset(2, MEMBERS, "m2-eth0", "m2-eth1", "m2-eth2", PEERS)
    assert 'hook ingress device "m2-eth0"' in script
    assert 'udp dport 4500 @th,64,8 0xc1 counter fwd ip to 10.255.0.1 device "m2-eth2"' in script
    assert 'fwd ip to 10.255.0.3' in script and 'fwd ip to 10.255.0.2' not in script
    assert 'ip saddr 203.0.113.11 udp dport 4500 @th,64,8 { 0xc1, 0xc3 } counter' in script
    assert 'iifname "m2-eth1" oifname "m2-eth2" ip daddr 10.2.2.0/24 counter' in script


def test_a_lone_member_steers_no_esp():
    script = ruleset(1, {1: "10.255.0.1"}, "m1-eth0", "m1-eth1", "m1-eth2", PEERS)
    assert "fwd" not in script and "ip daddr 10.2.1.0/24" in script


def test_routes_point_at_the_holder_and_never_at_ourselves():
    advertised = {1: {"10.2.1.0/24"}, 2: {"10.2.2.0/24"}, 3: set()}
    assert desired_routes(advertised, 3) == {"10.2.1.0/24": 1, "10.2.2.0/24": 2}
    assert desired_routes(advertised, 1) == {"10.2.2.0/24": 2}
    # Two holders of one prefix: the lowest index wins, on every member alike.
    assert desired_routes({1: {"10.2.1.0/24"}, 2: {"10.2.1.0/24"}}, 3) == {"10.2.1.0/24": 1}


def test_route_changes_replace_moved_and_delete_withdrawn_prefixes():
    current = {"10.2.1.0/24": 1, "10.2.2.0/24": 2}
    replace, delete = route_changes(current, {"10.2.1.0/24": 3, "10.2.3.0/24": 2})
    assert replace == {"10.2.1.0/24": 3, "10.2.3.0/24": 2}
    assert delete == ["10.2.2.0/24"]
    assert route_changes(current, dict(current)) == ({}, [])


def test_counters_read_from_nft_json():
    data = {"nftables": [{"metainfo": {}},
                         {"rule": {"comment": "to m1", "expr": [{"counter": {"packets": 7}}]}},
                         {"rule": {"expr": [{"counter": {"packets": 9}}]}}]}
    assert counters(data) == {"to m1": 7}
