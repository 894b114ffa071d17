"""Membership and failover with the real lab: member death, a death mid-negotiation, rejoin,
live rehash, a sync partition, and two deaths in a row. The scenarios are `lab.run.scenarios`'
own, the ones `--chaos` and scripts/bench_failover.py run; every wait polls a daemon (charon
over vici, the agents' state and tables, the switch's buckets) against a deadline."""

import threading
import time
from dataclasses import replace

import pytest

from lab import strongswan
from lab.agent.names import CHILD_NAME, CLUSTER_CONNECTION
from lab.run.lab import Lab
from lab.run.probes import ask_agent, tunnel_holder
from lab.strongswan.render import PEER_DPD_DELAY, peer_gives_up_after
from lab.run.scenarios import SCENARIOS, ScenarioRun, Step, staged
from lab.plan.topology import LabSpec

from .helpers import bring_up, peer_sas

pytestmark = pytest.mark.root

GIVE_UP = peer_gives_up_after()  # a peer's DPD gives up on a dead member (either IKE version)
DETECTION = 3.0  # a dead member is detected within 3 s with the default --dead-after


def assert_recovered(result, within: float) -> None:
    assert result.recovered, f"{result.name}: never consistent ({result.problem})"
    assert result.consistent_after_s <= within, result


def assert_forgotten(result) -> None:
    assert result.forgotten_after_s is not None, f"{result.name}: never forgotten"
    assert result.forgotten_after_s <= DETECTION, result


@pytest.mark.parametrize("hash, mode, ike", [("split", "ls", "2"), ("split", "ls", "1"),
                                             ("l4", "ha", "2")])
def test_owner_death_moves_the_tunnel_to_a_survivor_and_traffic_resumes(tmp_path, hash, mode,
                                                                        ike):
    scenario = SCENARIOS["owner-death"]
    with staged(scenario, tmp_path, replace(scenario.spec, hash=hash, mode=mode, ike=ike)) as run:
        [death] = run.run(scenario.steps)
        survivors = run.serving
        assert_forgotten(death)
        assert_recovered(death, GIVE_UP + 10)
        assert death.traffic_resumed
        assert tunnel_holder(run.lab, "p1", survivors) in survivors
        assert not set(run.lab.switch("external").buckets) - survivors
    assert death.outage_s <= GIVE_UP + 10, f"LAN traffic was out for {death.outage_s} s"


def test_owner_killed_mid_negotiation_the_peers_retry_completes_on_a_survivor(tmp_path):
    scenario = SCENARIOS["mid-negotiation"]
    with staged(scenario, tmp_path) as run:
        [death] = run.run(scenario.steps)
        assert_recovered(death, GIVE_UP + 20)
        assert tunnel_holder(run.lab, "p1", run.serving) in run.serving


class Watcher(threading.Thread):
    """Calls `look()` every EVERY seconds while its with-block runs."""

    EVERY = 0.1

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.EVERY):
            try:
                self.look()
            except (OSError, ValueError):
                continue  # an agent that does not answer (yet)

    def look(self):
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(5)


class JoinWatch(Watcher):
    """Every 10 ms while a member rejoins: the switch may give it a bucket only once its agent
    serves, and when it first serves, its table must already be the others'."""

    EVERY = 0.01

    def __init__(self, lab, member: str, other: str):
        super().__init__(lab)
        self.member, self.other = member, other
        self.switch = lab.switch("external")
        self.wrong: list[str] = []
        self.served = False

    def look(self):
        # Buckets first: the switch adds a member only after its agent said it serves, so a
        # bucket seen here with a state short of serving is a bug.
        in_buckets = (self.member in self.switch.buckets
                      and self.member in str(self.switch.group_definitions()))
        seen = ask_agent(self.lab, self.member, "state")["state"]
        if in_buckets and seen != "serving":
            self.wrong.append(f"{self.member} got traffic while {seen}")
        if seen == "serving" and not self.served:
            self.served = True
            mine, theirs = (ask_agent(self.lab, m, "owners") for m in (self.member, self.other))
            if mine != theirs:
                self.wrong.append(f"{self.member} served with table {mine}, not {theirs}")


def test_restored_member_gets_the_table_before_traffic_and_tunnels_keep_their_sas(tmp_path):
    scenario = SCENARIOS["rejoin"]
    death, rejoin = scenario.steps
    with staged(scenario, tmp_path) as run:
        before = peer_sas(run.lab, scenario.tunnels)
        left = run.step(death)
        assert_forgotten(left)
        assert_recovered(left, GIVE_UP + 10)
        restored = time.time()
        with JoinWatch(run.lab, left.member, min(run.serving)) as watch:
            back = run.step(rejoin)
        assert watch.served and not watch.wrong, watch.wrong
        assert_recovered(back, 5)
        # Traffic now crosses all three members; for two DPD periods no tunnel may be
        # renegotiated (same IKE SA, same CHILD SA) and the LANs keep talking.
        window = time.monotonic() + 2 * PEER_DPD_DELAY
        while time.monotonic() < window:
            for p, now in peer_sas(run.lab, scenario.tunnels).items():
                assert now["initiator-spi"] == before[p]["initiator-spi"], f"{p} renegotiated"
                assert now["child-sas"].keys() == before[p]["child-sas"].keys()
            time.sleep(0.5)
        worst = max(run.outages(restored, time.time()).values())
    assert worst < 1.0, f"a rejoin cost LAN traffic {worst} s"


def test_live_rehash_of_fields_and_members_takes_no_tunnel_down(tmp_path):
    # New hash fields move no tunnel; a rehash without a member drains it (its tunnels handed
    # over make-before-break) and one over every member takes it back: no ping lost either way.
    scenario = SCENARIOS["rehash"]
    with staged(scenario, tmp_path) as run:
        members = sorted(run.serving)
        switch = run.lab.switch("external")
        moved = False
        for step in scenario.steps:
            before = peer_sas(run.lab, scenario.tunnels)
            result = run.step(step)
            assert_recovered(result, 5)
            assert switch.hash_mode == step.act.mode
            assert switch.buckets == ([m for m in members if m != result.member]
                                      if step.act.drain else members)
            assert result.traffic_resumed
            assert result.outage_s < 1.0, f"{result.name} cost LAN traffic {result.outage_s} s"
            assert result.lost == 0, f"{result.name} lost {result.lost} pings"
            moved = moved or step.act.drain
            for p, now in peer_sas(run.lab, scenario.tunnels).items():
                assert now["state"] == "ESTABLISHED"
                if not moved:
                    assert now["initiator-spi"] == before[p]["initiator-spi"], result.name
    # The switches' health threads end with their lab: a leftover would program the next
    # lab's bridges of the same name.
    assert not [t.name for t in threading.enumerate() if t.name.endswith("-health")]


class OwnerSampler(Watcher):
    """Reads every member's table every 100 ms; any key with two owners is kept."""

    def __init__(self, lab, members):
        super().__init__(lab)
        self.members = members
        self.samples, self.doubles = 0, []

    def look(self):
        seen: dict[str, set] = {}
        for m in self.members:
            for key, owner in ask_agent(self.lab, m, "owners").items():
                seen.setdefault(key, set()).add(owner)
        self.doubles.extend((k, o) for k, o in seen.items() if len(o) > 1)
        self.samples += 1


def test_sync_partition_never_gives_a_key_two_owners_and_heals(tmp_path):
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
        rest = sorted(set(paths) - set(late))

        def initiate(peers):
            for p in peers:
                strongswan.initiate(lab.node(p).files.vici_socket, CLUSTER_CONNECTION,
                                    CHILD_NAME)

        def cut_off_as_negotiations_start(net, member):
            net.partition(member)
            initiate(late)

        def heal_and_start_the_rest(net, member):
            assert ask_agent(lab, member, "state")["state"] == "isolated"
            net.heal(member)
            initiate(rest)

        step = Step("partition {member} as the peers hashed to it start negotiating; 10 s",
                    cut_off_as_negotiations_start, lambda run: victim, hold=10.0,
                    undo=heal_and_start_the_rest)
        with OwnerSampler(lab, members) as sampler, ScenarioRun(lab, [], tmp_path) as run:
            result = run.step(step)
        assert_recovered(result, GIVE_UP + 10)
        assert sampler.samples > 50 and not sampler.doubles, sampler.doubles
        for p in lab.plan.peers:
            assert tunnel_holder(lab, p.name, set(members))
        assert late, "no peer's IKE reached the cut-off member"
        drops = ask_agent(lab, victim)["counters"]
        assert drops["isolations"] == 1 and drops["snapshots_applied"] == 1


def test_five_members_losing_two_in_turn_end_with_every_tunnel_on_the_survivors(tmp_path):
    scenario = SCENARIOS["two-deaths"]
    with staged(scenario, tmp_path) as run:
        results = run.run(scenario.steps)
        assert len(results) == 2 and len({r.member for r in results}) == 2
        for death in results:
            assert_forgotten(death)
            assert_recovered(death, GIVE_UP + 10)
        assert all(tunnel_holder(run.lab, p, run.serving) in run.serving
                   for p in scenario.tunnels)


def test_cli_failover_commands_act_and_refuse_bad_input_in_one_line():
    import subprocess
    import sys

    from .helpers import ROOT
    commands = ["fail m9", "fail m2 --how sideways", "rehash l7", "restore m2", "heal",
                "fail m2", "members", "fail m2", "restore m2", "rehash l3", "members",
                "rehash l4 m1,m9", "rehash l4 m1,m2", "members", "drain m3", "undrain m1",
                "rehash l4",
                "partition m3", "heal m3", "exit"]
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--members", "3", "--peers",
                             "1", "--cli"], cwd=ROOT, input="\n".join(commands) + "\n",
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, result.stderr + result.stdout[-4000:]
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
    assert "*** m3 cannot drain: it is drained, not serving" in out  # refused at once
    assert "*** m1 cannot undrain: it is serving, not drained" in out
    assert "health check errors" not in out
    assert "Traceback" not in out + result.stderr
