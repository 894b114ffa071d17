"""The hashing switch's OpenFlow program."""

from lab.plan import hashing
from lab.plan.topology import LabSpec, build_plan


def program(**spec):
    spec = LabSpec(**spec)
    plan = build_plan(spec)
    return plan, spec


def test_l3_hashes_addresses_only_and_l4_adds_ports():
    plan, spec = program(hash="l3")
    group, _fragments = hashing.groups(plan.switch("external"), spec)
    assert "fields(ip_src,ip_dst)" in group
    plan, spec = program(hash="l4")
    group, _fragments = hashing.groups(plan.switch("external"), spec)
    assert "udp_src" in group and "udp_dst" in group and "tcp_src" in group


def test_every_member_gets_a_bucket_in_load_sharing():
    plan, spec = program(members=5)
    group, _fragments = hashing.groups(plan.switch("external"), spec)
    assert group.count("bucket=") == 5
    for port in (1, 2, 3, 4, 5):
        assert f"output:{port}" in group


def test_ha_sends_everything_to_the_first_member():
    plan, spec = program(members=3, mode="ha", hash="split")
    group, _fragments = hashing.groups(plan.switch("external"), spec)
    assert group.endswith("),bucket=bucket_id=1,watch_port:1,output:1")
    assert not any("tp_dst=4500" in f for f in hashing.flows(plan.switch("external"), spec))


def test_split_rotates_the_4500_group_so_each_bucket_id_lands_on_another_member():
    plan, spec = program(members=3, hash="split")
    switch = plan.switch("external")
    members = hashing.bucket_members(switch, spec)
    ike, natt = members[hashing.IKE_GROUP], members[hashing.NATT_GROUP]
    assert set(ike) == set(natt) == {1, 2, 3}
    assert all(ike[b] != natt[b] for b in ike)
    flows = hashing.flows(switch, spec)
    assert any("tp_dst=4500" in f and f"group:{hashing.NATT_GROUP}" in f for f in flows)


def test_split_needs_two_members_and_only_touches_the_external_switch():
    plan, spec = program(members=1, hash="split")
    assert len(hashing.groups(plan.switch("external"), spec)) == 2  # ip and fragments
    plan, spec = program(members=3, hash="split")
    assert len(hashing.groups(plan.switch("internal"), spec)) == 2


def test_the_switch_answers_arp_for_the_virtual_ip_and_never_floods_to_members():
    plan, spec = program(members=3, peers=2)
    switch = plan.switch("external")
    flows = hashing.flows(switch, spec)
    [responder] = [f for f in flows if "arp_op=1" in f and "arp_tpa=203.0.113.1," in f]
    assert "in_port" in responder and f"mod_dl_src:{switch.vmac}" in responder
    broadcasts = [f for f in flows if "dl_dst=ff:ff:ff:ff:ff:ff" in f]
    assert broadcasts
    for flow in broadcasts:
        actions = flow.split("actions=")[1]
        assert all(f"output:{p.port}" not in actions.split(",")
                   for p in switch.member_ports())


def test_a_members_arp_for_an_address_nobody_holds_is_answered_with_a_mac_that_is_dropped():
    """A spoofed flood must not leave members ARPing for hundreds of absent addresses."""
    plan, spec = program(members=3, peers=2)
    switch = plan.switch("external")
    flows = hashing.flows(switch, spec)
    asked = [f for f in flows if "arp_op=1" in f and f"dl_src={switch.vmac}" in f]
    to_peer = [f for f in asked if "arp_tpa=203.0.113.12," in f]
    [sink] = [f for f in asked if "arp_tpa" not in f]
    assert to_peer == [f"priority=390,arp,arp_op=1,dl_src={switch.vmac},"
                       "arp_tpa=203.0.113.12,actions=output:102"]
    assert f"mod_dl_src:{hashing.SINK_MAC}" in sink and sink.endswith("in_port")
    assert f"priority=370,dl_dst={hashing.SINK_MAC},actions=drop" in flows
    assert int(sink.split(",")[0].split("=")[1]) < int(to_peer[0].split(",")[0].split("=")[1])

def test_the_sync_network_is_no_ovs_bridge():
    plan, _ = program(members=3)
    assert plan.bridge_names() == ["ikex", "ikei"]
    assert [s.role for s in plan.hashing_switches()] == ["external", "internal"]


def test_only_serving_members_get_buckets_and_ids_follow_the_port():
    plan, spec = program(members=3, hash="split")
    switch = plan.switch("external")
    ip, _fragments, natt = hashing.groups(switch, spec, serving=["m1", "m3"])
    assert "output:2" not in ip and "bucket_id=1," in ip and "bucket_id=3," in ip
    assert "bucket=bucket_id=1,watch_port:3,output:3" in natt
    assert hashing.bucket_members(switch, spec, ["m1", "m3"])[hashing.NATT_GROUP] == {
        1: "m3", 3: "m1"}


def test_nobody_serving_leaves_a_group_without_buckets():
    plan, spec = program(members=2)
    group, _fragments = hashing.groups(plan.switch("external"), spec, serving=[])
    assert "bucket" not in group


def test_ha_gives_the_first_serving_member_everything():
    plan, spec = program(members=3, mode="ha")
    group, _fragments = hashing.groups(plan.switch("external"), spec, serving=["m2", "m3"])
    assert group.endswith("bucket=bucket_id=2,watch_port:2,output:2")


def test_rehash_mode_overrides_the_spec():
    plan, spec = program(members=3, hash="l4")
    switch = plan.switch("external")
    assert len(hashing.groups(switch, spec, mode="split")) == 3
    assert any("tp_dst=4500" in f for f in hashing.flows(switch, spec, mode="split"))
    assert not any("tp_dst=4500" in f for f in hashing.flows(switch, spec))
    group, _fragments = hashing.groups(switch, spec, mode="l3")
    assert "fields(ip_src,ip_dst)" in group


def test_every_fragment_is_hashed_on_addresses_alone_so_one_member_gets_them_all():
    """Only a first fragment carries ports: hashing them would split a datagram."""
    plan, spec = program(members=3, hash="l4")
    switch = plan.switch("external")
    ip, fragments = hashing.groups(switch, spec)
    assert "udp_src" in ip and "fields(ip_src,ip_dst)," in fragments
    assert fragments.split("),", 1)[1] == ip.split("),", 1)[1]  # the same buckets
    flows = hashing.flows(switch, spec, mode="split")
    [flow] = [f for f in flows if "nw_frag=yes" in f]
    assert f"group:{hashing.FRAGMENT_GROUP}" in flow

    def priority(f):
        return int(f.split(",")[0].split("=")[1])
    assert priority(flow) > max(priority(f) for f in flows if "group:" in f and f != flow)
