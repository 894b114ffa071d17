"""Seeing it: a captured run's pcaps as tcpdump reads them, the agents' traces, and the ladder
and topology pictures `ikelab` draws from a kept run, with the agent and without."""

import re
import subprocess
from pathlib import Path

import pytest

from lab.show.captures import CaptureError
from lab.run.lab import Lab
from lab.plan.topology import LabSpec

from .helpers import bring_up, ikelab, ikelab_json

pytestmark = pytest.mark.root

ENDPOINT = re.compile(r"IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): ")


def ike_ports_to_the_cluster(pcap) -> set[int]:
    """The UDP ports on which the capture saw p1 send to the cluster's virtual IP."""
    out = subprocess.run(["tcpdump", "-n", "-r", str(pcap), "udp"], capture_output=True,
                         text=True, check=True).stdout
    return {int(m[3]) for m in ENDPOINT.findall(out)
            if m[0] == "203.0.113.11" and m[2] == "203.0.113.1"}


def test_a_captured_split_hash_run_has_pcaps_traces_and_a_ladder_of_the_forward(kept, tmp_path):
    code, report = ikelab_json("--hash", "split", "--peers", "1", "--capture")
    assert code == 0, report
    run_dir = report["run_dir"]
    assert run_dir
    captures = {m: f"{run_dir}/captures/external-{m}.pcap" for m in ("m1", "m2", "m3")}
    ports = {m: ike_ports_to_the_cluster(path) for m, path in captures.items()}
    at_500 = {m for m, seen in ports.items() if 500 in seen}
    at_4500 = {m for m, seen in ports.items() if 4500 in seen}
    assert at_500 and at_4500 and at_500.isdisjoint(at_4500), ports
    sync = subprocess.run(["tcpdump", "-n", "-r", f"{run_dir}/captures/sync.pcap", "udp"],
                          capture_output=True, text=True, check=True).stdout
    assert "10.255.0." in sync  # the agents' messages, FORWARD among them
    svg = tmp_path / "ladder.svg"
    result = ikelab("ladder", run_dir, "--peer", "p1", "-o", str(svg))
    assert result.returncode == 0, result.stderr
    text = svg.read_text()
    for name in ("m1", "m2", "m3", "IKE_AUTH request #1", "FORWARD IKE_AUTH", "holds the IKE SA"):
        assert name in text, name
    png = tmp_path / "ladder.png"
    assert ikelab("ladder", run_dir, "-o", str(png)).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    graph = tmp_path / "lab.svg"
    assert ikelab("graph", run_dir, "-o", str(graph)).returncode == 0
    assert "bucket 3" in graph.read_text() and "203.0.113.11" in graph.read_text()


def test_the_ladders_of_a_split_run_draw_the_clusters_protocol_and_the_payloads(kept, tmp_path):
    # Eight peers: a claim goes to another member (CLAIM, GRANT) unless the member the switch
    # chose directs that SPI itself (then it only ANNOUNCEs): a third of the time each.
    code, report = ikelab_json("--hash", "split", "--peers", "8", "--keep")
    assert code == 0, [t["problems"] for t in report["tunnels"]]
    svgs = {}
    for tunnel in report["tunnels"]:
        path = tmp_path / f"{tunnel['peer']}.svg"
        result = ikelab("ladder", report["run_dir"], "--peer", tunnel["peer"], "-o", str(path))
        assert result.returncode == 0, result.stderr
        svgs[tunnel["peer"]] = path.read_text()
    # (">NAME<": an arrow's label, not the legend's words)
    for peer, svg in svgs.items():
        for word in ("sync network", ">ANNOUNCE<", ">ACK<", ">FORWARD IKE_AUTH request #1<",
                     "[IDi", "AUTH SA TSi TSr]", "CHILD SA installed",
                     "<title>IKE_AUTH request #1; SPIs "):
            assert word in svg, (peer, word)
        if ">CLAIM<" in svg:
            assert ">GRANT<" in svg and "waits for GRANT" in svg, peer
        else:  # the member the switch chose directs the SPI: it waits for the ACKs
            assert "waits for ACKs" in svg, peer
    assert any(">CLAIM<" in svg for svg in svgs.values())
    # one member's lanes and the first second only
    path = tmp_path / "part.svg"
    result = ikelab("ladder", report["run_dir"], "--members", "m2", "--window", ":1", "-o",
                    str(path))
    assert result.returncode == 0, result.stderr
    assert ">m1<" not in path.read_text() and ">m2<" in path.read_text()


def test_without_the_agent_the_ladder_shows_ike_auth_at_a_member_without_the_ike_sa(
        kept, tmp_path):
    code, report = ikelab_json("--hash", "split", "--peers", "1", "--no-agent", "--capture",
                               "--timeout", "5")
    assert code == 1 and report["run_dir"]
    svg = tmp_path / "ladder.svg"
    result = ikelab("ladder", "-o", str(svg))  # the latest run: this one
    assert result.returncode == 0, result.stderr
    text = svg.read_text()
    assert "no IKE SA here" in text and "IKE_AUTH request #1" in text
    assert "FORWARD" not in text.replace("forwarded over the sync network", "")


def test_bad_ladder_and_graph_requests_are_one_line_errors(tmp_path):
    for args in (["ladder", "-o", str(tmp_path / "x.gif")], ["ladder", "no-such-run", "-o",
                                                              str(tmp_path / "x.svg")],
                 ["graph", "--members", "9", "-o", str(tmp_path / "g.svg")]):
        result = ikelab(*args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_the_clis_capture_starts_and_stops_one_member_while_the_lab_runs():
    """What `capture start m2` / `capture stop m2` do in the Mininet CLI."""
    with Lab(LabSpec(members=2, peers=1, hash="split")) as lab:
        with pytest.raises(CaptureError, match="no capture point 'm9'"):
            lab.net.captures.start("m9")
        (pcap,) = lab.net.captures.start("m2")
        bring_up(lab)
        assert lab.net.captures.stop("m2") == [pcap]
        assert lab.net.captures.stop("m2") == []  # stopped already: nothing to do
        # Split: one member gets p1's UDP 500, the other its UDP 4500.
        assert len(ike_ports_to_the_cluster(pcap)) == 1


def test_an_owner_death_play_draws_the_takeover_on_the_ladder(kept, tmp_path):
    code, report = ikelab_json("--hash", "split", "--peers", "2", "--chaos", "owner-death",
                               "--capture")
    assert code == 0, report.get("chaos") or [t["problems"] for t in report["tunnels"]]
    assert report["play"] == "owner-death" and len(report["chaos"]) == 2
    died = report["chaos"][0]["member"]
    svg = tmp_path / "p1.svg"
    result = ikelab("ladder", report["run_dir"], "--peer", "p1", "-o", str(svg))
    assert result.returncode == 0, result.stderr
    text = svg.read_text()
    # the others count the owner dead, one of them initiates to p1 (INITIAL_CONTACT), and the
    # new CHILD SA is installed on it
    assert f">{died} dead<" in text, died
    assert "takes the tunnel over (initiates, INITIAL_CONTACT)" in text
    assert text.count("CHILD SA installed") >= 2
    assert (Path(report["run_dir"]) / "owner-death.png").is_file()


@pytest.mark.parametrize("play", ["flood", "rehash-mid-negotiation"])
def test_the_flood_and_rehash_mid_negotiation_plays_leave_the_cluster_whole(kept, play):
    code, report = ikelab_json("--hash", "l4", "--peers", "2", "--chaos", play, "--keep")
    assert code == 0, report.get("chaos") or [t["problems"] for t in report["tunnels"]]
    assert report["play"] == play
    for step in report["chaos"]:
        assert step["consistent_after_s"] is not None, step
        assert step["outage_s"] is not None and step["outage_s"] < 1.0, step
