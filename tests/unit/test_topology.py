"""The model and address plan: sizes, validation, uniqueness."""

from ipaddress import IPv4Network, ip_network

import pytest

from lab.plan.topology import (CLUSTER_LAN, EXTERNAL_VIP, EXTERNAL_VMAC, INTERNAL_VIP, LabSpec,
    TopologyError, build_plan, ike_version_of, overlaps_host)


@pytest.mark.parametrize("spec, message", [
    (LabSpec(members=0), "members must be 1 to 8"),
    (LabSpec(members=9), "members must be 1 to 8"),
    (LabSpec(peers=0), "peers must be 1 to 128"),
    (LabSpec(peers=129), "peers must be 1 to 128"),
    (LabSpec(chain=2), "chain needs auth pubkey"),
    (LabSpec(auth="pubkey", chain=5), "chain must be 0 to 4"),
    (LabSpec(hash="l7"), "hash must be one of l3, l4, split"),
    (LabSpec(mode="active"), "mode must be one of ls, ha"),
    (LabSpec(ike="3"), "ike must be one of 1, 2, mixed"),
    (LabSpec(auth="eap"), "auth must be one of psk, pubkey"),
    (LabSpec(members="3"), "members must be"),
    (LabSpec(ownership="label"), "ownership must be one of table, table+label"),
    (LabSpec(expiry=0), "expiry must be 0 to 3600 seconds"),
])
def test_bad_specs_are_refused_with_one_line(spec, message):
    with pytest.raises(TopologyError) as err:
        build_plan(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_default_plan_has_three_members_two_peers_and_three_switches():
    plan = build_plan(LabSpec())
    assert [m.name for m in plan.members] == ["m1", "m2", "m3"]
    assert [p.name for p in plan.peers] == ["p1", "p2"]
    assert [s.role for s in plan.switches] == ["external", "internal", "sync"]
    assert plan.nat_router is None


@pytest.mark.parametrize("members, peers", [(1, 1), (3, 2), (8, 16), (8, 128)])
def test_every_address_is_unique_except_the_shared_virtual_ips(members, peers):
    plan = build_plan(LabSpec(members=members, peers=peers, nat=True))
    addresses = [i.address.ip for h in plan.hosts() for i in h.interfaces]
    shared = {EXTERNAL_VIP, INTERNAL_VIP}
    assert addresses.count(EXTERNAL_VIP) == members
    assert addresses.count(INTERNAL_VIP) == members
    others = [a for a in addresses if a not in shared]
    assert len(others) == len(set(others))


def test_members_share_one_mac_on_the_external_side_and_distinct_sync_addresses():
    plan = build_plan(LabSpec(members=4))
    assert {m.host.interface("eth0").mac for m in plan.members} == {EXTERNAL_VMAC}
    assert len({m.sync_address for m in plan.members}) == 4


def test_switch_ports_put_members_first_and_every_other_mac_is_distinct():
    plan = build_plan(LabSpec(members=3, peers=5, nat=True))
    external = plan.switch("external")
    assert [p.port for p in external.member_ports()] == [1, 2, 3]
    macs = [p.mac for p in external.other_ports()]
    assert len(macs) == len(set(macs)) == 5
    assert "r1" in [p.node for p in external.other_ports()]


def test_nat_puts_peer_one_behind_a_router_seen_at_its_public_address():
    plan = build_plan(LabSpec(nat=True))
    p1 = plan.peer("p1")
    assert p1.behind_nat and str(p1.address) == "198.51.100.2"
    assert str(p1.seen_as) == "203.0.113.11"
    assert plan.nat_router.interface("eth0").address.ip == p1.seen_as
    assert not plan.peer("p2").behind_nat


def test_peer_lans_and_hosts():
    plan = build_plan(LabSpec(peers=3))
    assert [p.lan for p in plan.peers] == [IPv4Network(f"10.2.{i}.0/24") for i in (1, 2, 3)]
    for p in plan.peers:
        assert p.lan_host_address in p.lan
        assert p.lan_host == f"h{p.index}"
    assert plan.lan_host.interfaces[0].address.ip in CLUSTER_LAN


def test_ike_mixed_alternates_starting_with_v2():
    spec = LabSpec(ike="mixed")
    assert [ike_version_of(spec, i) for i in (1, 2, 3, 4)] == [2, 1, 2, 1]
    assert [p.ike_version for p in build_plan(LabSpec(ike="1", peers=2)).peers] == [1, 1]


def test_interface_names_fit_linux_limit():
    plan = build_plan(LabSpec(members=8, peers=64, nat=True))
    names = [f"{h.name}-{i.name}" for h in plan.hosts() for i in h.interfaces]
    names += [f"{s.name}-eth{p.port}" for s in plan.switches for p in s.ports]  # incl. sync
    assert max(len(n) for n in names) <= 15


def test_a_host_network_that_overlaps_a_lab_prefix_is_found_and_a_default_route_is_not():
    plan = build_plan(LabSpec(peers=3, nat=True))
    host = [ip_network("0.0.0.0/0"), ip_network("192.0.2.0/24"), ip_network("127.0.0.0/8")]
    assert overlaps_host(plan, host) == []
    clash = overlaps_host(plan, host + [ip_network("10.2.3.0/25")])
    assert clash == [(ip_network("10.2.3.0/24"), ip_network("10.2.3.0/25"))]
    assert overlaps_host(build_plan(LabSpec()), [ip_network("198.51.100.0/24")]) == []
    assert overlaps_host(plan, [ip_network("198.51.100.7/32")])


def test_crowd_sites_have_their_own_addresses_lans_and_crowd_nodes():
    from lab.plan.topology import CROWD_LANS, CROWD_OUTER, MAX_CROWD, build_plan as plan_of
    plan = plan_of(LabSpec(members=8, peers=2, crowd=MAX_CROWD))
    sites = plan.sites()
    assert len(sites) == MAX_CROWD and len(plan.crowd) == 10
    assert len({s.address for s in sites}) == len({s.lan for s in sites}) == MAX_CROWD
    assert all(s.address in CROWD_OUTER and s.lan.subnet_of(CROWD_LANS) for s in sites)
    assert all(s.address in node.outer for node in plan.crowd for s in node.sites)
    # every member routes each crowd node's block to it, and the switch has a port for it
    assert plan.members[3].host.routes == tuple((str(c.outer), f"203.0.113.{200 + c.index}")
                                                 for c in plan.crowd)
    ports = {p.node for p in plan.switch("external").other_ports()}
    assert {c.name for c in plan.crowd} <= ports


@pytest.mark.parametrize("kwargs, words", [
    ({"crowd": 10001}, "crowd must be 0 to 10000"),
    ({"crowd": -1}, "crowd must be 0 to 10000"),
    ({"crowd": 10, "crowd_rate": 0}, "crowd-rate must be 1 to 5000"),
    ({"crowd": 10, "agent": False}, "crowd needs the agent")])
def test_a_crowd_beyond_the_plan_is_refused_in_one_line(kwargs, words):
    with pytest.raises(TopologyError, match=words):
        LabSpec(**kwargs).validate()
