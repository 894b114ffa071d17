"""The crowd with the real lab: hundreds of sites, each on exactly one member as every charon
says over vici (the sites' own and the members'), through an owner's death, its return and a
drain; with IKEv1 and IKEv2 mixed, the split hash and each ownership mode; and the CLI's report
of it. Each site's truth is its crowd node's charon; who holds it, the members' charons."""

from collections import Counter

import pytest

from lab.run import crowd
from lab import strongswan
from lab.run.lab import Lab
from lab.run.probes import member_sas
from lab.plan.topology import LabSpec

from .helpers import ikelab_json, poll

pytestmark = pytest.mark.root

RATE = 100.0  # sites per second: what this machine sustains beside 4 members


def sas_per_site(lab) -> Counter:
    """site -> how many ESTABLISHED IKE SAs its crowd node's charon holds for it."""
    count = Counter()
    for node in lab.plan.crowd:
        for sa in strongswan.list_sas(lab.node(node.name).files.vici_socket).values():
            if sa.get("state") == "ESTABLISHED":
                count[sa["name"]] += 1
    return count


def whole(lab, among=None) -> dict | None:
    """The crowd when every site is up with one IKE SA, held by exactly one member (of
    `among`); None otherwise, so `poll` looks again."""
    states = crowd.site_states(lab)
    held = crowd.holders(member_sas(lab, among), lab.plan)
    per_site = sas_per_site(lab)
    if (all(s == "up" for s in states.values()) and all(len(h) == 1 for h in held.values())
            and all(per_site[s] == 1 for s in states)):
        return held
    return None


def test_500_sites_on_4_members_stay_on_exactly_one_through_death_return_and_drain():
    with Lab(LabSpec(members=4, peers=1, crowd=500)) as lab:
        watch = crowd.bring_up(lab, RATE, timeout=60, quiet=True)
        assert watch.up() == 500, f"{500 - watch.up()} sites did not come up"
        held = poll(lambda: whole(lab), deadline=30)
        assert set(Counter(h[0] for h in held.values())) == {"m1", "m2", "m3", "m4"}
        traffic = crowd.ping_sample(lab, crowd.sample(lab.plan))
        assert all(d["received"] == d["sent"] for t in traffic.values() for d in t.values()), \
            traffic

        # Owner death: every orphan back on exactly one survivor, none with two IKE SAs.
        lab.net.fail("m2")
        survivors = {"m1", "m3", "m4"}
        held = poll(lambda: whole(lab, survivors), deadline=60)
        assert {h[0] for h in held.values()} <= survivors

        # Its return: it rejoins (the table first) and gets its share, each site still once.
        lab.net.restore("m2")
        lab.net.wait_serving()
        # (Rebalancing moves 16 tunnels a round: about 50 s for a quarter of 500.)
        held = poll(lambda: (h := whole(lab)) and "m2" in {v[0] for v in h.values()} and h,
                    deadline=150)

        # A drain moves its tunnels make-before-break: it ends holding none.
        lab.net.drain("m3", timeout=120)
        held = poll(lambda: (h := whole(lab)) and "m3" not in {v[0] for v in h.values()}
                    and h, deadline=60)
        traffic = crowd.ping_sample(lab, crowd.sample(lab.plan, seed=2))
        assert all(d["received"] == d["sent"] for t in traffic.values() for d in t.values()), \
            traffic


@pytest.mark.parametrize("options", [("--ike", "mixed"), ("--hash", "split"),
                                     ("--ownership", "table+label"),
                                     ("--ownership", "stateless"), ("--auth", "pubkey")],
                         ids=lambda o: "-".join(o).strip("-"))
def test_the_report_of_a_crowd_counts_every_site_on_one_member(options):
    code, report = ikelab_json("--members", "3", "--peers", "1", "--crowd", "60",
                               *options)
    summary = report["crowd"]
    assert code == 0 and report["ok"], (summary["failures"], summary["bad_traffic"])
    assert summary["up"] == 60 and not summary["failures"]
    assert sum(summary["per_member"].values()) == 60
    assert all(len(s["held_by"]) == 1 and s["state"] == "up" for s in summary["site_list"])
    if "mixed" in options:
        assert {s["ike"] for s in summary["site_list"]} == {1, 2}


def test_the_clis_sites_shows_the_crowd_filters_it_and_refuses_bad_words():
    import subprocess
    import sys

    from .helpers import ROOT
    commands = ["sites", "sites m1", "sites down", "sites m9", "fail m2", "sites m2", "exit"]
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--members", "3", "--peers",
                             "1", "--crowd", "30", "--cli"], cwd=ROOT,
                            input="\n".join(commands) + "\n", capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout[-4000:]
    answers = result.stdout.split("ikelab> ")[1:]
    assert answers[0].startswith("30 sites: 30 up\nheld by: m1=")
    listed = answers[0].splitlines()[2:]
    assert len(listed) == 30 and all(line.split()[4] == "up" for line in listed)
    on_m1 = answers[1].splitlines()[2:]
    assert on_m1 and all(line.split()[-1] == "m1" for line in on_m1)
    assert answers[2].splitlines()[2:] == ["  (no site matches)"]
    assert answers[3] == "*** 'm9' is neither a member (m1, m2, m3) nor up, down or double\n"
    # m2's charon is dead: it holds no site any more (its sites are down until their DPD)
    assert all(line.split()[-1] != "m2" for line in answers[5].splitlines()[2:])
