"""strongSwan configs rendered from templates/ for several sizes and IKE versions."""

import re
from pathlib import Path

import jinja2
import pytest

from lab.agent.names import NodeFiles
from lab.strongswan.render import Credentials, peer_gives_up_after, render_node
from lab.plan.topology import CLUSTER_ID, LabSpec, build_plan

KEY = b"k" * 32


def render(plan, node, creds=None, template_dir=None):
    files = NodeFiles(node, Path("/run/ikelab-test"))
    kwargs = {"template_dir": template_dir} if template_dir else {}
    texts = render_node(plan, node, files, creds or Credentials("psk", KEY), **kwargs)
    return texts[files.strongswan_conf], texts[files.swanctl_conf]


@pytest.mark.parametrize("members, peers, ike", [(1, 1, "2"), (3, 2, "1"), (5, 8, "mixed")])
def test_members_render_one_connection_per_peer_with_its_ike_version(members, peers, ike):
    plan = build_plan(LabSpec(members=members, peers=peers, ike=ike))
    _, swanctl = render(plan, "m1")
    for peer in plan.peers:
        block = swanctl.split(f"    {peer.name} {{")[1].split("\n    }")[0]
        assert f"version = {peer.ike_version}" in block
        assert f"remote_addrs = {peer.seen_as}" in block
        assert f"remote_ts = {peer.lan}" in block
        assert f"id = {CLUSTER_ID}" in block


def test_every_member_presents_the_same_gateway():
    plan = build_plan(LabSpec(members=3))
    first = render(plan, "m1")[1].replace("m1", "NODE")
    assert all(render(plan, m)[1].replace(m, "NODE") == first for m in ("m2", "m3"))


def test_peer_and_cluster_share_the_peer_psk_and_peers_differ():
    plan = build_plan(LabSpec(peers=2))
    member = render(plan, "m1")[1]
    secrets = {}
    for peer in ("p1", "p2"):
        [secret] = re.findall(r"secret = (0x[0-9a-f]+)", render(plan, peer)[1])
        assert secret in member
        secrets[peer] = secret
    assert secrets["p1"] != secrets["p2"]


def test_strongswan_conf_loads_libipsec_before_netlink_and_names_the_node_socket():
    plan = build_plan(LabSpec())
    conf, _ = render(plan, "p1")
    load = re.search(r"load = (.*)", conf).group(1).split()
    assert load.index("kernel-libipsec") < load.index("kernel-netlink")
    assert "unix:///run/ikelab-test/vici_p1.sock" in conf
    assert "/run/ikelab-test/charon_p1.log" in conf


def test_pubkey_names_certificates_and_renders_no_psk():
    plan = build_plan(LabSpec(auth="pubkey", peers=1))
    certs = {CLUSTER_ID: (Path("/k/c.key"), Path("/k/cluster.crt"), ()),
             "p1.ikelab.test": (Path("/k/p.key"), Path("/k/p1.crt"), ())}
    creds = Credentials("pubkey", KEY, Path("/k"), Path("/k/ca.crt"), certs)
    _, member = render(plan, "m1", creds)
    _, peer = render(plan, "p1", creds)
    assert "auth = pubkey" in member and "certs = cluster.crt" in member
    assert "certs = p1.crt" in peer
    assert "secret =" not in member + peer


def test_a_template_that_names_missing_data_fails_loudly(tmp_path):
    (tmp_path / "strongswan.conf.j2").write_text("charon { x = {{ no_such_value }} }\n")
    (tmp_path / "swanctl.conf.j2").write_text("connections {}\n")
    with pytest.raises(jinja2.UndefinedError):
        render(build_plan(LabSpec()), "m1", template_dir=tmp_path)


def test_table_plus_label_stamps_each_member_index_into_its_ike_spis():
    plan = build_plan(LabSpec(members=3, ownership="table+label"))
    for member in ("m1", "m3"):
        conf, _ = render(plan, member)
        index = int(member[1:])
        assert "spi_mask = 0xff00000000000000" in conf
        assert f"spi_label = 0x{index:02x}00000000000000" in conf
    assert "spi_label" not in render(plan, "p1")[0]
    assert "spi_label" not in render(build_plan(LabSpec()), "m1")[0]


def test_dpd_is_rendered_from_seconds_and_a_peer_gives_up_after_the_longer_of_v1_and_v2():
    plan = build_plan(LabSpec(peers=1))
    _, member = render(plan, "m1")
    _, peer = render(plan, "p1")
    assert "dpd_delay = 5s" in member and "dpd_timeout = 10s" in member
    assert "dpd_delay = 3s" in peer
    # 3 s of silence, then IKEv1's 10 s DPD timeout (IKEv2's retransmissions take ~7.1 s).
    assert peer_gives_up_after() == 13.0


@pytest.mark.parametrize("ike", ["2", "1", "mixed"])
def test_a_crowd_node_renders_one_connection_per_site_and_members_answer_them_all(ike):
    plan = build_plan(LabSpec(members=3, crowd=1500, ike=ike))
    node = plan.crowd[1]
    assert [c.name for c in plan.crowd] == ["c1", "c2"] and len(node.sites) == 500
    conf, swanctl = render(plan, node.name)
    assert swanctl.count("mobike = no") == 500
    for site in (node.sites[0], node.sites[-1]):
        block = swanctl.split(f"    {site.name} {{")[1].split("\n    }")[0]
        assert f"version = {site.ike_version}" in block
        assert f"local_addrs = {site.address}" in block and "remote_addrs = 203.0.113.1" in block
        assert f"id = {site.identity}" in block and f"local_ts = {site.lan}" in block
        assert "dpd_delay = 30s" in block and "dpd_action = restart" in block
    assert "ikesa_table_size = 512" in conf  # a power of two for its 500 sites
    _, member = render(plan, "m1")
    responder = member.split("    crowd {")[1].split("\n    }")[0]
    assert f"version = {0 if ike == 'mixed' else ike}" in responder
    assert "remote_addrs = 10.128.0.0/18" in responder and "remote_ts = 10.64.0.0/14" in responder
    assert "id = *.crowd.ikelab.test" in responder
    assert member.count("version =") == 2 * len(plan.peers) + 1  # no connection per site


def test_a_members_agent_can_initiate_a_crowd_site_it_never_rendered():
    from lab.agent.protocol.crowd import site_connection
    from lab.strongswan.render import agent_config
    plan = build_plan(LabSpec(members=2, crowd=20))
    creds = Credentials("psk", KEY)
    config = agent_config(plan, plan.members[0], NodeFiles("m1", Path("/run/x")), creds)
    assert len(config.sites) == 20 and "s7" in config.peers and config.cap >= 10000
    address, lan = config.peers["s7"]
    identity, version = config.sites["s7"]
    name, message = site_connection(config.site_connection, "s7", address, lan, identity,
                                    version, handover=True)
    conn = message[name]
    assert name == "s7-mbb" and conn["unique"] == "never"
    assert conn["remote_addrs"] == [address] and conn["remote"]["id"] == identity
    assert conn["children"]["lan"]["remote_ts"] == [lan]
    assert conn["children"]["lan"]["local_ts"] == ["10.1.0.0/24"]
    name, message = site_connection(config.site_connection, "s7", address, lan, identity,
                                    version, handover=False)
    assert name == "s7" and "unique" not in message[name]  # a takeover: INITIAL_CONTACT
