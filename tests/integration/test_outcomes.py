"""What the lab shows without an agent: HA and one member work, split hashing breaks.

Each test runs the real `ikelab run --json` and judges the report built from the daemons.
"""

import pytest

from .helpers import ikelab_json

pytestmark = pytest.mark.root


def assert_all_good(report: dict, peers: int):
    assert report["ok"], report
    assert len(report["tunnels"]) == peers
    for tunnel in report["tunnels"]:
        assert tunnel["state"] == "ESTABLISHED"
        assert len(tunnel["ike_sa_holders"]) == 1, tunnel
        assert [c["state"] for c in tunnel["child_sas"]] == ["INSTALLED"]
        assert tunnel["child_sas"][0]["holders"] == tunnel["ike_sa_holders"]
        assert tunnel["traffic_ok"] and tunnel["problems"] == []


@pytest.mark.parametrize("members", [1, 3, 5])
def test_ha_mode_every_tunnel_up_on_the_active_member(members):
    code, report = ikelab_json("--no-agent", "--mode", "ha", "--members", str(members))
    assert code == 0
    assert_all_good(report, 2)
    assert {t["ike_sa_holders"][0] for t in report["tunnels"]} == {"m1"}
    assert report["mode"] == "ha" and report["members"] == members


def test_single_member_load_sharing_with_mixed_ike_versions():
    code, report = ikelab_json("--no-agent", "--members", "1", "--peers", "3", "--ike", "mixed")
    assert code == 0
    assert_all_good(report, 3)
    assert [t["ike_version"] for t in report["tunnels"]] == [2, 1, 2]


@pytest.mark.parametrize("members", [2, 3])
def test_without_agent_split_hash_breaks_the_negotiation_as_the_reference_describes(members):
    code, report = ikelab_json("--no-agent", "--hash", "split", "--members", str(members),
                               "--timeout", "25")
    assert code == 1 and report["ok"] is False and report["agent"] is False
    for tunnel in report["tunnels"]:
        paths = tunnel["switch_paths"]
        assert paths["udp500"] != paths["udp4500"]
        assert tunnel["state"] != "ESTABLISHED"
        # IKE_SA_INIT made a half-open IKE SA on the member that got UDP 500 ...
        assert tunnel["holder_states"] == {paths["udp500"]: "CONNECTING"}
        # ... and IKE_AUTH went to a member that does not hold it.
        assert any(f"to {paths['udp4500']}, which does not hold the IKE SA" in p
                   for p in tunnel["problems"]), tunnel["problems"]
    buckets = report["buckets"]["ikex"]["udp4500"]
    assert sum(buckets.values()) > 0


@pytest.mark.parametrize("options", [["--ike", "1"], ["--nat"], ["--auth", "pubkey"]],
                         ids=["ikev1", "nat", "pubkey"])
def test_variants_bring_every_tunnel_up(options):
    code, report = ikelab_json("--no-agent", "--mode", "ha", *options)
    assert code == 0
    assert_all_good(report, 2)
