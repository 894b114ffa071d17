"""End to end through the load-sharing cluster: LAN-to-LAN traffic in every hash mode, steered
in the kernel to the member holding each SA, through rekeys, without the agent seeing it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab.run.lab import Lab
from lab.plan.topology import LabSpec

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


REKEYS = (("peer", "child"), ("holder", "ike"), ("holder", "child"), ("peer", "ike")) * 2


def flow(node, *args):
    """A `lab.net.seqflow` process in `node` (its JSON line on stdout)."""
    return node.popen([sys.executable, "-m", "lab.net.seqflow", *args], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True,
                      env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))


def last_json(proc, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail(f"no report from seqflow ({proc.returncode}): {err.strip()[-300:]}")


@pytest.mark.parametrize("ike, ownership", [("2", "table"), ("2", "table+label"),
                                            ("2", "stateless"), ("1", "table")])
def test_rekeys_under_traffic_lose_no_packet_and_keep_tcp(ike, ownership):
    # 1,000 datagrams/s each way with sequence numbers, and a TCP transfer beside them, while
    # the peer and the holder take turns rekeying the IKE and the CHILD SA, twice each.
    with Lab(LabSpec(members=3, peers=1, hash="split", ike=ike, ownership=ownership)) as lab:
        up(lab)
        receivers = {"to_lan": flow(lab.node("hc"), "receive", "--port", "5300"),
                     "to_peer": flow(lab.node("h1"), "receive", "--port", "5301")}
        for proc in receivers.values():
            assert proc.stdout.readline().strip() == "listening"
        tcp_server = lab.node("hc").popen(["iperf3", "-s", "-1", "-p", "5201"])
        poll(lambda: ":5201" in lab.node("hc").cmd("ss -ltn"), deadline=5)
        senders = {"to_lan": flow(lab.node("h1"), "send", "--to", "10.1.0.10", "--port", "5300",
                                  "--seconds", "300"),
                   "to_peer": flow(lab.node("hc"), "send", "--to", "10.2.1.10", "--port",
                                   "5301", "--seconds", "300")}
        # TCP capped, and its window too: with iperf3's default window a burst of ESP
        # overflows the holder's charon socket buffer (UdpRcvbufErrors, measured: 27 in 12 s),
        # whose size a network namespace cannot raise (net.core.rmem_default is the host's).
        # That is congestion in kernel-libipsec's user-space data plane, not the rekeys.
        tcp = lab.node("h1").popen(["iperf3", "-J", "-c", "10.1.0.10", "-p", "5201", "-t",
                                    "300", "-b", "5M", "-w", "32K"], stdout=subprocess.PIPE,
                                   text=True)
        started = time.monotonic()
        took, rekeys = [], []
        for by, what in REKEYS:
            at = time.monotonic()
            took.append(lab.rekey("p1", by, what))
            rekeys.append((by, what, round(at, 3), round(at + took[-1], 3)))
        time.sleep(max(0.0, started + 6 - time.monotonic()))  # TCP's seconds to judge
        tcp.send_signal(signal.SIGINT)  # iperf3 reports what it carried, and ends
        for proc in senders.values():
            proc.terminate()
        sent = {way: last_json(proc, 30)["sent"] for way, proc in senders.items()}
        got = {way: last_json(proc, 60) for way, proc in receivers.items()}
        tcp_report = json.loads(tcp.communicate(timeout=30)[0] or "{}")
        tcp_server.wait(timeout=30)
    assert all(t < 30 for t in took), took
    # TCP went on throughout: every whole second of the transfer carried bytes.
    seconds = [i["sum"] for i in tcp_report.get("intervals", []) if i["sum"]["seconds"] > 0.9]
    assert len(seconds) >= 3 and all(i["bytes"] > 0 for i in seconds), seconds
    lost = {way: sent[way] - got[way]["received"] for way in sent}
    if ike == "2":
        assert lost == {"to_lan": 0, "to_peer": 0}, ({w: got[w]["gaps"] for w in got}, rekeys)
    else:
        # IKEv1 loses a few datagrams: its Quick Mode commits in three messages, and its
        # initiator sends on the new SA before the responder, which installs it on the third,
        # can read it (charon alone loses the same: scripts/bench_rekey.py --ike 1 --members 1
        # --no-agent); and, seen once in CI (4 datagrams, not yet explained), as a
        # reauthentication's old IKE SA is deleted 10 s later. Each such gap is milliseconds
        # long, at most one per rekey each way, and the flow goes on after it.
        for way, result in got.items():
            assert result["lost"] == lost[way], (way, result, sent)  # none lost at the end
            assert len(result["gaps"]) <= len(REKEYS), (way, result["gaps"], rekeys)
            for gap in result["gaps"]:
                assert gap["before"] - gap["after"] < 0.05, (way, gap, rekeys)
