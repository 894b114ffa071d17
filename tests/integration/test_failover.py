"""Membership and failover with the real lab: member death, a death mid-negotiation, rejoin,
live rehash, a sync partition, and two deaths in a row. Every wait polls a daemon (charon over
vici, the agents' state and tables, the switch's buckets) against a deadline."""

import time

import pytest

from lab import failover, strongswan
from lab.agent.daemon import query
from lab.chaos import Pinger, consistency, forgotten_by, holder
from lab.lab import Lab
from lab.render import IKEV1_DPD_TIMEOUT, PEER_DPD_DELAY, Retransmit
from lab.topology import LabSpec

from .helpers import bring_up, poll

pytestmark = pytest.mark.root

# How long a peer takes to give up on a dead cluster member: DPD delay, then the
# retransmissions of its liveness check (timeout * base**n for n = 0..tries).
# (IKEv1 gives up after IKEV1_DPD_TIMEOUT instead, which is no longer.)
RETRANSMIT = Retransmit()
DPD_TIMEOUT = float(PEER_DPD_DELAY.rstrip("s")) + max(
    sum(RETRANSMIT.timeout * RETRANSMIT.base ** n for n in range(RETRANSMIT.tries + 1)),
    float(IKEV1_DPD_TIMEOUT.rstrip("s")))
DETECTION = 3.0  # a dead member is detected within 3 s with the default --dead-after
LAN_HOST = "10.1.0.10"


def state(lab, member: str) -> dict:
    return query(lab.node(member).files.agent_socket, "state")


def owners(lab, member: str) -> dict[str, str]:
    return query(lab.node(member).files.agent_socket, "owners")


@pytest.mark.parametrize("hash, mode, ike", [("split", "ls", "2"), ("split", "ls", "1"),
                                             ("l4", "ha", "2")])
def test_owner_death_moves_the_tunnel_to_a_survivor_and_traffic_resumes(tmp_path, hash, mode,
                                                                        ike):
    with Lab(LabSpec(members=3, peers=1, hash=hash, mode=mode, ike=ike)) as lab:
        bring_up(lab)
        owner = holder(lab, "p1", {"m1", "m2", "m3"})
        survivors = {"m1", "m2", "m3"} - {owner}
        with Pinger(lab.node("h1"), LAN_HOST, tmp_path / "ping.txt") as ping:
            poll(lambda: ping.replied_since(time.time() - 1), deadline=5)
            killed = time.time()
            failover.fail(lab.net, owner, "daemons")
            poll(lambda: forgotten_by(lab, owner, survivors), deadline=DETECTION)
            assert not set(lab.switch("external").buckets) - survivors
            new_owner = poll(lambda: holder(lab, "p1", survivors),
                             deadline=DPD_TIMEOUT + 10)
            moved = time.time()
            poll(lambda: ping.replied_since(moved), deadline=5)
        assert new_owner in survivors
        assert consistency(lab, survivors) is None
        outage = ping.outage(killed, time.time())
        assert outage <= DPD_TIMEOUT + 10, f"LAN traffic was out for {outage} s"


def test_owner_killed_mid_negotiation_the_peers_retry_completes_on_a_survivor():
    with Lab(LabSpec(members=3, peers=1, hash="l3")) as lab:
        peer = lab.node("p1")
        # The peer's IKE_AUTH (UDP 4500 after IKE_SA_INIT) is held back: the negotiation stops
        # halfway, with its IKE_SA_INIT claimed by and answered from one member.
        peer.cmd("iptables -A OUTPUT -p udp --dport 4500 -j DROP")
        strongswan.initiate(peer.files.vici_socket, strongswan.CLUSTER_CONNECTION,
                            strongswan.CHILD_NAME)

        def halfway_owner():
            table = owners(lab, "m1")
            return next(iter(table.values()), None) if table else None
        owner = poll(halfway_owner, deadline=5)
        [sa] = strongswan.list_sas(peer.files.vici_socket).values()
        assert sa["state"] == "CONNECTING", "the negotiation was meant to stop halfway"
        survivors = {"m1", "m2", "m3"} - {owner}
        failover.fail(lab.net, owner, "daemons")
        peer.cmd("iptables -D OUTPUT -p udp --dport 4500 -j DROP")
        new_owner = poll(lambda: holder(lab, "p1", survivors), deadline=DPD_TIMEOUT + 20)
        assert new_owner in survivors
        poll(lambda: consistency(lab, survivors) is None, deadline=10)


def test_restored_member_gets_the_table_before_traffic_and_tunnels_keep_their_sas(tmp_path):
    with Lab(LabSpec(members=3, peers=2, hash="l4")) as lab:
        peers = bring_up(lab, ("p1", "p2"))
        busy = {holder(lab, p, {"m1", "m2", "m3"}) for p in peers}
        idle = sorted({"m1", "m2", "m3"} - busy)[0]  # two tunnels leave one member idle
        failover.fail(lab.net, idle, "daemons")
        others = {"m1", "m2", "m3"} - {idle}
        poll(lambda: forgotten_by(lab, idle, others), deadline=DETECTION)
        switch = lab.switch("external")
        with Pinger(lab.node("h1"), LAN_HOST, tmp_path / "p1.txt") as ping1, \
                Pinger(lab.node("h2"), LAN_HOST, tmp_path / "p2.txt") as ping2:
            poll(lambda: ping1.replied_since(time.time() - 1)
                 and ping2.replied_since(time.time() - 1), deadline=5)
            restored = time.time()
            failover.restore(lab.net, idle)
            # Until the agent serves, the switch gives it nothing; when it serves, its table is
            # the others'.
            def serving_yet():
                # Buckets first: the switch adds a member only after its agent said it
                # serves, so a bucket seen here with a state short of serving is a bug.
                in_buckets = idle in switch.buckets and idle in str(switch.group_definitions())
                seen = state(lab, idle)["state"]
                assert seen == "serving" or not in_buckets, f"{idle} got traffic while {seen}"
                return seen == "serving"
            poll(serving_yet, deadline=5, interval=0.01)
            assert owners(lab, idle) == owners(lab, sorted(others)[0])
            poll(lambda: idle in switch.buckets, deadline=2)
            poll(lambda: consistency(lab, {"m1", "m2", "m3"}) is None, deadline=5)
            # Traffic now crosses all three members; for two DPD periods no tunnel may be
            # renegotiated (same IKE SA, same CHILD SA) and the LANs keep talking.
            window = time.monotonic() + 2 * float(PEER_DPD_DELAY.rstrip("s"))
            while time.monotonic() < window:
                for p, sa in peers.items():
                    now = next(iter(strongswan.list_sas(lab.node(p).files.vici_socket).values()))
                    assert now["initiator-spi"] == sa["initiator-spi"], f"{p} renegotiated"
                    assert now["child-sas"].keys() == sa["child-sas"].keys()
                time.sleep(0.5)
            worst = max(ping1.outage(restored, time.time()), ping2.outage(restored, time.time()))
        assert worst < 1.0, f"a rejoin cost LAN traffic {worst} s"


def test_live_rehash_of_fields_and_members_takes_no_tunnel_down(tmp_path):
    with Lab(LabSpec(members=3, peers=2, hash="l4")) as lab:
        peers = bring_up(lab, ("p1", "p2"))
        # Drain the member holding p1's tunnel: its packets now all reach the others.
        drained = holder(lab, "p1", {"m1", "m2", "m3"})
        rest = sorted({"m1", "m2", "m3"} - {drained})
        with Pinger(lab.node("h1"), LAN_HOST, tmp_path / "p1.txt") as ping1, \
                Pinger(lab.node("h2"), LAN_HOST, tmp_path / "p2.txt") as ping2:
            poll(lambda: ping1.replied_since(time.time() - 1)
                 and ping2.replied_since(time.time() - 1), deadline=5)
            began = time.time()
            for mode, members in (("l3", None), ("split", None), ("l4", rest), ("l4", None)):
                failover.rehash(lab.net, mode, members)
                switch = lab.switch("external")
                assert switch.hash_mode == mode
                assert switch.buckets == (rest if members else ["m1", "m2", "m3"])
                mark = time.time()
                poll(lambda: ping1.replied_since(mark + 1) and ping2.replied_since(mark + 1),
                     deadline=5)
            worst = max(ping1.outage(began, time.time()), ping2.outage(began, time.time()))
        for p, sa in peers.items():
            now = next(iter(strongswan.list_sas(lab.node(p).files.vici_socket).values()))
            assert now["initiator-spi"] == sa["initiator-spi"] and now["state"] == "ESTABLISHED"
        assert consistency(lab, {"m1", "m2", "m3"}) is None
        assert worst < 1.0, f"rehashing cost LAN traffic {worst} s"
    # The switches' health threads end with their lab: a leftover would program the next
    # lab's bridges of the same name.
    import threading
    assert not [t.name for t in threading.enumerate() if t.name.endswith("-health")]


def test_sync_partition_never_gives_a_key_two_owners_and_heals():
    with Lab(LabSpec(members=3, peers=5, hash="l3")) as lab:
        bring_up(lab, ("p1",))
        members = ["m1", "m2", "m3"]
        # Cut off the member that most of the other peers' IKE hashes to, and have those
        # peers start negotiating at that moment: their first packets reach it while it
        # has not yet noticed, and the claims it makes must never be granted.
        switch = lab.switch("external")
        paths = {p.name: switch.member_for(
            f"in_port={100 + p.index},udp,dl_src={p.host.interfaces[0].mac},"
            f"dl_dst={switch.plan_switch.vmac},nw_src={p.seen_as},nw_dst=203.0.113.1,"
            "udp_src=500,udp_dst=500") for p in lab.plan.peers[1:]}
        victim = max(members, key=list(paths.values()).count)
        late = [p for p, m in paths.items() if m == victim]
        samples, doubles = 0, []

        def sample():
            nonlocal samples
            seen: dict[str, set] = {}
            for m in members:
                for key, owner in owners(lab, m).items():
                    seen.setdefault(key, set()).add(owner)
            doubles.extend((k, o) for k, o in seen.items() if len(o) > 1)
            samples += 1

        failover.partition(lab.net, victim)
        for p in late:
            strongswan.initiate(lab.node(p).files.vici_socket, strongswan.CLUSTER_CONNECTION,
                                strongswan.CHILD_NAME)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            sample()
            time.sleep(0.1)
        assert state(lab, victim)["state"] == "isolated"
        failover.heal(lab.net, victim)
        for p in {p.name for p in lab.plan.peers[1:]} - set(late):
            strongswan.initiate(lab.node(p).files.vici_socket, strongswan.CLUSTER_CONNECTION,
                                strongswan.CHILD_NAME)

        def whole():
            sample()
            return consistency(lab, set(members)) is None
        poll(whole, deadline=DPD_TIMEOUT + 10)
        assert samples > 50 and not doubles, doubles
        for p in lab.plan.peers:
            assert holder(lab, p.name, set(members))
        assert late, "no peer's IKE reached the cut-off member"
        drops = query(lab.node(victim).files.agent_socket)["counters"]
        assert drops["isolations"] == 1 and drops["snapshots_applied"] == 1


def test_five_members_losing_two_in_turn_end_with_every_tunnel_on_the_survivors():
    with Lab(LabSpec(members=5, peers=4, hash="split")) as lab:
        peers = bring_up(lab, ("p1", "p2", "p3", "p4"))
        alive = {"m1", "m2", "m3", "m4", "m5"}
        for _ in range(2):
            held = [holder(lab, p, alive) for p in peers]
            victim = max(alive, key=held.count)  # the busiest member dies
            failover.fail(lab.net, victim, "daemons")
            alive.discard(victim)
            poll(lambda: forgotten_by(lab, victim, alive), deadline=DETECTION)
            poll(lambda: consistency(lab, alive) is None, deadline=DPD_TIMEOUT + 10)
        assert all(holder(lab, p, alive) in alive for p in peers)


def test_cli_failover_commands_act_and_refuse_bad_input_in_one_line():
    import subprocess
    import sys

    from .helpers import ROOT
    commands = ["fail m9", "fail m2 --how sideways", "rehash l7", "restore m2", "heal",
                "fail m2", "members", "fail m2", "restore m2", "rehash l3", "members",
                "rehash l4 m1,m9", "rehash l4 m1,m2", "members", "rehash l4",
                "partition m3", "heal m3", "exit"]
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--members", "3", "--peers",
                             "1", "--cli"], cwd=ROOT, input="\n".join(commands) + "\n",
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert out.count("*** 'm9' is not a cluster member (members: m1, m2, m3)") == 2
    assert "*** how must be one of daemons, links (got 'sideways')" in out
    assert "*** hash must be one of l3, l4, split (got 'l7')" in out
    assert "*** m2 has not failed" in out
    assert "*** usage: heal MEMBER" in out
    assert "m2: failed (daemons killed)" in out
    assert "*** m2 has already failed (daemons); restore it first" in out
    assert "switch ikex: hash l3" in out
    assert out.count("done; `members` shows") == 7  # fail, restore, 3 rehash, partition, heal
    assert out.count(", drained m3") == 2  # both switches, in the one `members` after it
    assert "Traceback" not in out + result.stderr
