"""The lab itself: the hashing switch, the NAT router, isolation, teardown and clean."""

import shutil
import subprocess
import sys

import pytest

from lab import strongswan
from lab.run.lab import Lab
from lab.net.preflight import host_networks
from lab.strongswan.render import TEMPLATE_DIR
from lab.plan.topology import LabSpec, overlaps_host

from .helpers import ROOT, bring_up, ikelab, ikelab_json, poll

pytestmark = pytest.mark.root

UDP_FLOWS = ("python3 -c \"import socket\n"
             "for port in range(20000, 20064):\n"
             "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "    s.bind(('0.0.0.0', port)); s.sendto(b'x', ('203.0.113.1', 9)); s.close()\"")


def bucket_packets(lab) -> dict[str, int]:
    return lab.switch("external").bucket_stats()[1]


@pytest.mark.parametrize("hash_mode, spread", [("l3", 1), ("l4", 3)])
def test_the_hashing_switch_spreads_flows_by_its_hash_fields(hash_mode, spread):
    """64 UDP flows from one peer: l3 keeps them on one member, l4 spreads them over all."""
    with Lab(LabSpec(members=3, peers=1, hash=hash_mode)) as lab:
        before = sum(bucket_packets(lab).values())
        lab.node("p1").cmd(UDP_FLOWS)
        counts = poll(lambda: (c := bucket_packets(lab)) and sum(c.values()) >= before + 64
                      and c)
        assert len([m for m, n in counts.items() if n > 0]) == spread, counts


def test_the_root_namespace_carries_no_lab_address_or_route_while_the_lab_runs():
    # Both IP versions: sorted by text (an IPv4 and an IPv6 network do not compare).
    before = sorted(host_networks(), key=str)
    with Lab(LabSpec(members=2, peers=2, nat=True, ip="dual")) as lab:
        assert lab.node("m1").cmd("ip -4 -o addr show m1-eth0").count("203.0.113.1/24") == 1
        assert lab.node("m1").cmd("ip -6 -o addr show m1-eth0").count("2001:db8:0:1::1/64") == 1
        during = sorted(host_networks(), key=str)
        assert during == before
        assert overlaps_host(lab.plan, during) == []


def test_the_nated_peer_reaches_the_cluster_from_the_routers_address():
    with Lab(LabSpec(members=1, peers=2, nat=True)) as lab:
        sas = bring_up(lab, ("p1", "p2"))
        peer_sa = sas["p1"]
        assert peer_sa["local-host"] == "198.51.100.2" and peer_sa.get("nat-local") == "yes"
        member = strongswan.list_sas(lab.node("m1").files.vici_socket)
        by_peer = {sa["name"]: sa for sa in member.values()}
        assert by_peer["p1"]["remote-host"] == "203.0.113.11"
        assert by_peer["p2"]["remote-host"] == "203.0.113.12"


def test_a_rejected_config_aborts_with_the_node_and_strongswans_words(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATE_DIR, templates)
    swanctl = templates / "swanctl.conf.j2"
    swanctl.write_text(swanctl.read_text().replace("proposals = {{ conn.proposals }}",
                                                   "proposals = no-such-algorithm"))
    result = ikelab("run", "--templates", str(templates), timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ikelab: m1: swanctl rejected swanctl.conf")
    assert "proposals" in last


def test_plain_mininet_runs_the_lab_with_its_cli_commands():
    result = subprocess.run(
        ["mn", "--custom", "topologies/ikecluster.py",
         "--topo", "ikecluster,members=2,peers=2,mode=ha,ike=mixed"],
        cwd=ROOT, input="up\nsas\nhashing\nownership\nsteering\nexit\n", capture_output=True,
        text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "p1: up after" in out and "p2: up after" in out
    assert "m1: p1[" in out and "IKEv1 ESTABLISHED" in out and "IKEv2 ESTABLISHED" in out
    assert "ikex (external, virtual IP 203.0.113.1)" in out
    assert "m2: no IKE SAs" in out
    assert "established" in out and "3/3" not in out and "2/2" in out  # both replicas agree
    assert "m1: holds 10.2.1.0/24, 10.2.2.0/24" in out  # HA: the active member holds both


def test_plain_mininet_refuses_a_bad_topology_in_one_line():
    result = subprocess.run(["mn", "--custom", "topologies/ikecluster.py",
                             "--topo", "ikecluster,members=12"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, input="")
    assert result.returncode == 2
    assert "ikelab: error: members must be 1 to 8 (got 12)" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_cli_opens_the_lab_commands_before_teardown():
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--mode", "ha", "--members",
                             "2", "--peers", "1", "--cli"], cwd=ROOT, input="sas\nhashing\nexit\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout[-4000:]
    assert "OK: every tunnel" in result.stdout
    assert "m1: p1[1] IKEv2 ESTABLISHED" in result.stdout
    assert "ikei (internal, virtual IP 10.1.0.1)" in result.stdout


def test_the_largest_lab_the_cli_accepts_comes_up_green():
    code, report = ikelab_json("--members", "8", "--peers", "128", "--hash", "split",
                               "--ike", "mixed", timeout=600)
    assert code == 0 and report["ok"], [t["problems"] for t in report["tunnels"] if t["problems"]]
    assert len(report["tunnels"]) == 128
    assert report["timings"]["lab_up_s"] < 60  # 20 s on this machine kind; CI may be slower
