"""End to end through the load-sharing cluster: LAN-to-LAN traffic in every hash mode, steered
in the kernel to the member holding each SA, through rekeys, without the agent seeing it."""

import json
import threading

import pytest

from lab import strongswan
from lab.lab import Lab
from lab.agent.names import CHILD_NAME
from lab.topology import LabSpec

from .helpers import bring_up, ikelab_json, poll, statuses

pytestmark = pytest.mark.root

CASES = [
    ("l3", "2", 3, 2, []), ("l4", "2", 3, 2, []), ("split", "2", 3, 2, []),
    ("l3", "1", 2, 2, []), ("l4", "1", 2, 2, []), ("split", "1", 2, 2, []),
    ("split", "mixed", 5, 8, []), ("split", "mixed", 3, 2, ["--nat"]),
    ("l4", "mixed", 5, 2, ["--ownership", "table+label"]), ("split", "2", 3, 2, ["--mode", "ha"]),
]


@pytest.mark.parametrize("hash_mode, ike, members, peers, extra", CASES,
                         ids=[f"{c[0]}-ike{c[1]}-{c[2]}x{c[3]}{''.join(c[4])}" for c in CASES])
def test_ikelab_run_is_green_in_every_hash_mode(hash_mode, ike, members, peers, extra):
    code, report = ikelab_json("--hash", hash_mode, "--ike", ike, "--members", str(members),
                               "--peers", str(peers), *extra)
    assert code == 0, [t["problems"] for t in report["tunnels"]]
    assert report["ok"]
    if hash_mode == "split" and "--mode" not in extra:
        # ESP from every peer reached a member without its SA and was steered in the kernel.
        assert all(t["steered"]["esp"] > 0 for t in report["tunnels"]), report["tunnels"]
        assert sum(t["steered"]["lan"] for t in report["tunnels"]) > 0


def up(lab, peers=("p1",)):
    bring_up(lab, peers)
    # The holder advertises its prefixes on the CHILD SA event; wait until every member routes.
    poll(lambda: all(s["steering"]["holds"] or s["steering"]["routes"]
                     for s in statuses(lab).values()), deadline=10)


def iperf(lab, client: str, server_address: str, *args: str, seconds: int = 2) -> dict:
    out = lab.node(client).cmd(f"iperf3 -J -c {server_address} -t {seconds} {' '.join(args)}")
    return json.loads(out[out.index("{"):])


def agent_packets(lab) -> int:
    return sum(s["counters"]["seen_in"] + s["counters"]["seen_out"]
               for s in statuses(lab).values())


def test_tcp_both_ways_through_the_steered_cluster_never_touches_the_agent():
    with Lab(LabSpec(members=3, peers=1, hash="split")) as lab:
        up(lab)
        server = lab.node("hc").popen(["iperf3", "-s", "-1", "-J"])
        try:
            poll(lambda: "5201" in lab.node("hc").cmd("ss -ltn"), deadline=5)
            before = agent_packets(lab)
            # 8 parallel streams: the internal switch hashes each TCP flow to any member, and
            # with 8 of them each way at least one crosses a member without the SA.
            sent = iperf(lab, "h1", "10.1.0.10", "-P", "8", seconds=3)
        finally:
            server.wait(timeout=30)
        assert "error" not in sent, sent["error"]
        assert sent["end"]["sum_received"]["bytes"] > 100_000
        server = lab.node("hc").popen(["iperf3", "-s", "-1", "-J"])
        try:
            poll(lambda: "5201" in lab.node("hc").cmd("ss -ltn"), deadline=5)
            back = iperf(lab, "h1", "10.1.0.10", "-R", "-P", "8", seconds=3)
        finally:
            server.wait(timeout=30)
        assert "error" not in back and back["end"]["sum_received"]["bytes"] > 100_000
        # Thousands of ESP and LAN packets crossed; the agents saw none of them, only (at most)
        # the IKE of a DPD exchange that charon may start during the transfer.
        seen = agent_packets(lab) - before
        steered = [s["steering"]["counters"] for s in statuses(lab).values()]
        assert sum(c.get("esp p1", 0) for c in steered) > 1000
        assert sum(c.get("lan p1", 0) for c in steered) > 1000
        assert seen <= 8, f"the agents saw {seen} packets during the transfer"


@pytest.mark.parametrize("ike", ["2", "1"])
def test_rekeys_during_traffic_keep_tcp_and_lose_under_one_percent_of_udp(ike):
    with Lab(LabSpec(members=3, peers=1, hash="split", ike=ike)) as lab:
        up(lab)
        owner = next(m.name for m in lab.plan.members
                     if strongswan.list_sas(lab.node(m.name).files.vici_socket))
        tcp_server = lab.node("hc").popen(["iperf3", "-s", "-1", "-p", "5201"])
        udp_server = lab.node("hc").popen(["iperf3", "-s", "-1", "-p", "5202"])
        poll(lambda: (lambda ss: ":5201" in ss and ":5202" in ss)(lab.node("hc").cmd("ss -ltn")),
             deadline=5)
        results = {}
        # TCP capped well below what the lab carries, so that UDP loss measures the rekeys,
        # not congestion from the TCP stream beside it.
        tcp = lab.node("h1").popen(["iperf3", "-J", "-c", "10.1.0.10", "-p", "5201", "-t", "30",
                                    "-b", "20M"])
        # 1000-byte datagrams: iperf3 sets DF, and the tunnel's MTU (ipsec0) is 1400.
        udp = lab.node("h1").popen(["iperf3", "-J", "-c", "10.1.0.10", "-p", "5202", "-t", "30",
                                    "-u", "-b", "2M", "-l", "1000"])

        def collect(name, proc):
            out, err = proc.communicate(timeout=90)
            try:
                results[name] = json.loads(out)
            except ValueError:
                results[name] = {"error": f"no JSON from iperf3 ({proc.returncode}): {err!r}"}
        threads = [threading.Thread(target=collect, args=a) for a in (("tcp", tcp), ("udp", udp))]
        for t in threads:
            t.start()
        peer_sock = lab.node("p1").files.vici_socket
        owner_sock = lab.node(owner).files.vici_socket
        for sock, what in ((peer_sock, {"child": CHILD_NAME}), (owner_sock, {"ike": "p1"}),
                           (owner_sock, {"child": CHILD_NAME})):
            threading.Event().wait(7)  # spread the rekeys over the 30 s of traffic
            with strongswan.session(sock) as sess:
                sess.rekey(what)
        for t in threads:
            t.join(timeout=90)
        tcp_server.wait(timeout=30)
        udp_server.wait(timeout=30)
        assert "error" not in results["tcp"], results["tcp"].get("error")
        assert "error" not in results["udp"], results["udp"].get("error")
        assert results["tcp"]["end"]["sum_received"]["seconds"] > 29
        udp_end = results["udp"]["end"]["sum"]
        assert udp_end["lost_percent"] < 1.0, udp_end
