"""The forwarding agent end to end: one owner per IKE SA in every hash mode, IKE version,
cluster size and ownership mode; rekeys, cluster-initiated tunnels, races, expiry, deletion,
hostile packets and hostile sync messages. LAN-to-LAN traffic across members is not asserted
here: carrying it is the data plane's work.
"""

import itertools
import json
import subprocess
import time

import pytest

from lab import strongswan
from lab.agent.io.control import query
from lab.agent.names import CHILD_NAME, CLUSTER_CONNECTION, SYNC_PORT
from lab.agent.protocol.sync import ANNOUNCE, Codec, Message
from lab.plan.topology import LabSpec
from lab.run.lab import Lab
from lab.run.probes import ike_sa_holder, member_sas

from .helpers import bring_up, ikelab_json, poll, statuses

pytestmark = pytest.mark.root


def assert_one_owner_each(report: dict):
    for tunnel in report["tunnels"]:
        assert tunnel["state"] == "ESTABLISHED", tunnel["problems"]
        assert len(tunnel["ike_sa_holders"]) == 1, tunnel
        assert tunnel["owner"] == tunnel["ike_sa_holders"][0], tunnel
        assert [c["state"] for c in tunnel["child_sas"]] == ["INSTALLED"]
        assert not [p for p in tunnel["problems"] if "traffic" not in p], tunnel["problems"]


MATRIX = list(itertools.product(["l3", "l4", "split"], ["1", "2"], [2, 3],
                                ["table", "table+label"]))


@pytest.mark.parametrize("hash_mode, ike, members, ownership", MATRIX,
                         ids=["-".join(map(str, m)) for m in MATRIX])
def test_every_ike_sa_has_exactly_one_owner(hash_mode, ike, members, ownership):
    _, report = ikelab_json("--hash", hash_mode, "--ike", ike, "--members", str(members),
                            "--ownership", ownership)
    assert report["agent"] is True
    assert_one_owner_each(report)
    if hash_mode == "split":
        for tunnel in report["tunnels"]:
            paths = tunnel["switch_paths"]
            assert paths["udp500"] != paths["udp4500"]
            assert tunnel["forwarded"] > 0, tunnel
            assert report["agents"][paths["udp4500"]]["counters"]["forwarded"] > 0
    if ownership == "table+label" and ike == "2" and members > 1:
        assert sum(a["counters"]["label_hits"] for a in report["agents"].values()) > 0


@pytest.mark.parametrize("options", [
    ["--members", "5", "--peers", "8", "--ike", "mixed"],
    ["--nat", "--ike", "mixed"],
    ["--auth", "pubkey", "--ike", "mixed"],
    ["--mode", "ha"],
], ids=["5x8", "nat", "pubkey", "ha"])
def test_split_hash_with_more_peers_nat_certificates_and_ha(options):
    _, report = ikelab_json("--hash", "split", *options)
    assert_one_owner_each(report)


def owners_of(lab, ispi: str) -> dict:
    return {m: row["owner"] for m, s in statuses(lab).items() for row in s["table"]
            if row["key"] == f"{ispi}/0/i"}


def sole_holder(lab, ispi: str) -> str:
    """The member holding the ESTABLISHED IKE SA with this initiator SPI; fails the test, with
    every member's SAs, unless exactly one does."""
    holder = ike_sa_holder(lab, ispi)
    assert holder, member_sas(lab)
    return holder


@pytest.mark.parametrize("ike", ["2", "1"])
def test_rekeys_from_either_side_stay_with_the_owner_and_the_table_follows(ike):
    """Each step rekeys exactly the tunnel's current SA (by unique id: naming the connection
    would also rekey a superseded IKEv1 SA that charon keeps for 10 s, and race two rekeys)
    and waits until the superseded SAs are gone from the peer and the owner alike."""
    with Lab(LabSpec(members=3, peers=1, hash="split", ike=ike)) as lab:
        sa = bring_up(lab)["p1"]
        owner = sole_holder(lab, sa["initiator-spi"])
        peer_sock = lab.node("p1").files.vici_socket
        owner_sock = lab.node(owner).files.vici_socket

        def only_sa(sock):
            """The daemon's IKE SA when it holds exactly one, ESTABLISHED, with one INSTALLED
            CHILD SA (kept as "child"), else None. An IKEv1 CHILD SA rekeyed away stays until
            its hard lifetime (charon.delete_rekeyed = no), so only installed ones count."""
            sas = list(strongswan.list_sas(sock).values())
            if len(sas) != 1 or sas[0]["state"] != "ESTABLISHED":
                return None
            installed = [c for c in sas[0]["child-sas"].values() if c["state"] == "INSTALLED"]
            return dict(sas[0], child=installed[0]) if len(installed) == 1 else None

        for side, what in (("peer", "child"), ("owner", "child"), ("peer", "ike"), ("owner", "ike")):
            sock = peer_sock if side == "peer" else owner_sock
            before = poll(lambda: only_sa(peer_sock) and only_sa(owner_sock)
                          and (only_sa(peer_sock), only_sa(sock)), deadline=30)
            peer_before, target = before
            with strongswan.session(sock) as sess:
                sess.rekey({"child-id": target["child"]["uniqueid"]} if what == "child"
                           else {"ike-id": target["uniqueid"]})

            def settled():
                """The peer's and the owner's one IKE SA with one CHILD SA, new where this step
                rekeyed them (an IKEv2 IKE rekey moves the CHILD SA over unchanged)."""
                current, held = only_sa(peer_sock), only_sa(owner_sock)
                if not current or not held:
                    return None
                if what == "ike" and current["initiator-spi"] == peer_before["initiator-spi"]:
                    return None
                if what == "child" and current["child"]["spi-in"] == peer_before["child"]["spi-in"]:
                    return None
                return current
            current = poll(settled, deadline=30)
            ispi = current["initiator-spi"]
            assert sole_holder(lab, ispi) == owner
            assert poll(lambda: set(owners_of(lab, ispi).values()) == {owner}
                        and len(owners_of(lab, ispi)) == 3, deadline=10)


def test_a_tunnel_the_cluster_initiates_is_owned_by_the_initiating_member_from_its_first_packet():
    with Lab(LabSpec(members=3, peers=1, hash="split")) as lab:
        m2 = lab.node("m2").files.vici_socket
        strongswan.initiate(m2, "p1", CHILD_NAME)
        sa = poll(lambda: next((s for s in strongswan.list_sas(m2).values()
                                if s["state"] == "ESTABLISHED"), None), deadline=20)
        assert sole_holder(lab, sa["initiator-spi"]) == "m2"
        assert set(owners_of(lab, sa["initiator-spi"]).values()) == {"m2"}
        counters = statuses(lab)["m2"]["counters"]
        assert counters["seen_out"] > 0 and counters["claims_won"] >= 1


def test_a_first_packet_reaching_two_members_at_once_gets_one_owner():
    """The switch copies p1's UDP 500 to m1 and m2: both see IKE_SA_INIT and claim it."""
    with Lab(LabSpec(members=3, peers=1, hash="l4")) as lab:
        switch = lab.switch("external").name
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "add-flow", switch,
                        "priority=500,udp,in_port=101,tp_dst=500,actions=output:1,output:2"],
                       check=True)
        sa = bring_up(lab)["p1"]
        owner = sole_holder(lab, sa["initiator-spi"])
        assert owner in ("m1", "m2")
        other = "m2" if owner == "m1" else "m1"
        assert set(owners_of(lab, sa["initiator-spi"]).values()) == {owner}
        status = statuses(lab)
        # Exactly one claim won anywhere. The other member either lost its own claim or, when
        # the director's announcement reached it first, never needed one: either way it
        # forwarded its copy to the owner.
        assert sum(s["counters"]["claims_won"] for s in status.values()) == 1
        assert status[owner]["counters"]["claims_won"] == 1
        assert status[other]["counters"]["claims_lost"] <= 1
        assert status[other]["counters"]["forwarded"] >= 1


def test_an_abandoned_negotiation_expires_and_a_deleted_sa_leaves_every_table_and_route():
    with Lab(LabSpec(members=3, peers=1, hash="split", expiry=2)) as lab:
        ispi = "5eed5eed5eed5eed"
        header = bytes.fromhex(ispi) + b"\0" * 8 + bytes([33, 0x20, 34, 0x08]) + \
            b"\0\0\0\0" + (28).to_bytes(4, "big")
        lab.node("p1").cmd(f"python3 -c \"import socket; s = socket.socket(socket.AF_INET, "
                           f"socket.SOCK_DGRAM); s.sendto(bytes.fromhex('{header.hex()}'), "
                           f"('203.0.113.1', 500))\"")
        assert poll(lambda: len(owners_of(lab, ispi)) == 3, deadline=5)
        assert poll(lambda: not owners_of(lab, ispi), deadline=10)
        assert all(s["counters"]["expired"] >= 1 for s in statuses(lab).values())

        sa = bring_up(lab)["p1"]
        assert poll(lambda: len(owners_of(lab, sa["initiator-spi"])) == 3, deadline=5)

        def steering_for_p1():
            return {m: (s["steering"]["holds"], s["steering"]["routes"])
                    for m, s in statuses(lab).items()
                    if "10.2.1.0/24" in s["steering"]["holds"] + list(s["steering"]["routes"])}
        assert poll(lambda: len(steering_for_p1()) == 3, deadline=10)
        strongswan.terminate(lab.node("p1").files.vici_socket, CLUSTER_CONNECTION, 5000)
        assert poll(lambda: not owners_of(lab, sa["initiator-spi"]), deadline=10)
        # The data plane's steering goes with the SA: no member routes p1's LAN any more.
        assert poll(lambda: not steering_for_p1(), deadline=10)


HOSTILE = [
    ("truncated on 500", 500, "00" * 10),
    ("garbage on 500", 500, "ab" * 100),
    ("bad length on 500", 500, "11" * 16 + "2120220800000000" + "0000ffff"),
    ("oversized on 500", 500, "11" * 16 + "21202208" + "00000000" + "00002af8" + "00" * 10972),
    ("garbage after the marker on 4500", 4500, "00000000" + "cd" * 50),
    ("truncated after the marker on 4500", 4500, "00000000" + "11" * 5),
]


def test_hostile_packets_are_counted_and_dropped_and_tunnels_still_come_up(tmp_path):
    with Lab(LabSpec(members=2, peers=1, hash="split")) as lab:
        send = ("python3 -c \"import socket, sys; s = socket.socket(socket.AF_INET, "
                "socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0)); "
                "s.sendto(open(sys.argv[1], 'rb').read(), ('203.0.113.1', int(sys.argv[2])))\"")
        for number, (_name, port, data) in enumerate(HOSTILE):
            path = tmp_path / f"hostile{number}"
            path.write_bytes(bytes.fromhex(data))
            lab.node("p1").cmd(f"{send} {path} {port}")
        poll(lambda: sum(s["counters"]["parse_errors"] for s in statuses(lab).values())
             >= len(HOSTILE), deadline=10)
        pids = {m: s["pid"] for m, s in statuses(lab).items()}
        bring_up(lab)
        assert {m: s["pid"] for m, s in statuses(lab).items()} == pids


def test_forged_and_replayed_sync_messages_are_dropped_and_counted(tmp_path):
    from scapy.all import UDP, rdpcap
    with Lab(LabSpec(members=2, peers=1)) as lab:
        m1 = lab.node("m1")
        # A real message: one of m2's heartbeats to m1, as it crossed the sync network.
        capture = tmp_path / "sync.pcap"
        m1.cmd(f"timeout 5 tcpdump -i m1-eth2 -c 1 -w {capture} udp and src 10.255.0.2 "
               f"and dst port {SYNC_PORT} 2>/dev/null")
        [packet] = rdpcap(str(capture))
        replayed = bytes(packet[UDP].payload)
        forged = Codec(b"\x00" * 32, 2, first_seq=time.time_ns()).encode(
            Message(ANNOUNCE, 0, ispi=b"\x66" * 8, owner=2, state="established"))
        send = ("python3 -c \"import socket, sys; s = socket.socket(socket.AF_INET, "
                "socket.SOCK_DGRAM); s.bind(('10.255.0.2', 0)); "
                f"s.sendto(bytes.fromhex(sys.argv[1]), ('10.255.0.1', {SYNC_PORT}))\"")
        before = query(m1.files.agent_socket)["counters"]
        for data in (forged, replayed):
            lab.node("m2").cmd(f"{send} {data.hex()}")
        # The copy is a replay (its sequence number was seen) or, once older than half of
        # dead_after, stale: how long tcpdump took to hand it over decides which.
        dropped = lambda c: c["sync_replayed"] + c["sync_stale"]  # noqa: E731
        counters = poll(lambda: (c := query(m1.files.agent_socket)["counters"])
                        and dropped(c) > dropped(before) and c, deadline=5)
        assert counters["sync_bad_mac"] == 1 and dropped(counters) == dropped(before) + 1
        # m2's own messages still count: its heartbeats keep arriving, it stays live.
        poll(lambda: query(m1.files.agent_socket)["counters"]["heartbeats_received"]
             > before["heartbeats_received"] + 4, deadline=5)
        assert query(m1.files.agent_socket, "state")["serving"] == ["m1", "m2"]
        assert "66" * 8 not in json.dumps(statuses(lab))


def test_ikelab_status_shows_the_running_labs_table_from_another_process():
    from .helpers import ikelab
    with Lab(LabSpec(members=2, peers=1, hash="split")) as lab:
        sa = bring_up(lab)["p1"]
        result = ikelab("status", "--json", timeout=30)
        assert result.returncode == 0, result.stderr + result.stdout[-4000:]
        status = json.loads(result.stdout)
        assert set(status) == {"m1", "m2"}
        for member in status.values():
            [row] = [r for r in member["table"] if r["key"] == f"{sa['initiator-spi']}/0/i"]
            assert row["state"] == "established"
        text = ikelab("status", timeout=30).stdout
        assert f"{sa['initiator-spi']}/0/i" in text and "2/2" in text
    result = ikelab("status", timeout=30)
    assert result.returncode == 1 and "no lab is running" in result.stderr
