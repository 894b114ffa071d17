"""Hostile load with the real lab: an IKE_SA_INIT flood of 1000 packets/s for 30 s (lab.net.flood),
unspoofed from a peer or spoofed across the lab's internet, IKEv1 Main Mode or IKEv2, on 500 or
on 4500 behind the non-ESP marker, against every --ownership mode. While it runs, another peer
brings a new tunnel up about as fast as when calm, an established tunnel rekeys its IKE and
CHILD SAs, no key ever has two owners and the agents' memory stays put; when it ends, every
peer can negotiate again at once."""

import itertools
import time

import pytest

from lab import strongswan
from lab.agent.io.control import query
from lab.agent.names import CHILD_NAME, CLUSTER_CONNECTION
from lab.run.lab import Lab
from lab.strongswan.render import Retransmit
from lab.plan.topology import LabSpec

from .helpers import poll

pytestmark = pytest.mark.root

RATE, SECONDS = 1000, 30
VARIANTS = list(itertools.product(("unspoofed", "spoofed"), (2, 1), (500, 4500)))
MODES = ("table", "table+label", "stateless")
MEMORY_GROWTH_KB = 16 * 1024


def agents(lab) -> dict[str, dict]:
    return {m.name: query(lab.node(m.name).files.agent_socket) for m in lab.plan.members}


def terminate(lab, peer: str) -> None:
    strongswan.terminate(lab.node(peer).files.vici_socket, CLUSTER_CONNECTION)


def up_after(lab, peer: str) -> float:
    """Seconds `peer` took to bring its tunnel up (fails the test if it did not)."""
    watch = lab.bring_up([peer], 20)
    if peer not in watch.up_after:  # what the agents saw, for the one run in many this fails
        counters = {m: {k: v for k, v in a["counters"].items() if v}
                    for m, a in agents(lab).items()}
        raise AssertionError(f"{peer} did not come up: {watch.last_sa.get(peer)}; "
                             f"agents' counters: {counters}")
    return watch.up_after[peer]


def rekeyed(lab, peer: str, what: dict) -> None:
    """Rekey `peer`'s IKE SA or CHILD SA (vici `rekey` from the peer) and wait until the
    peer's one established IKE SA has a new SPI where it was rekeyed."""
    sock = lab.node(peer).files.vici_socket

    def current():
        sas = [s for s in strongswan.list_sas(sock).values() if s["state"] == "ESTABLISHED"]
        children = [c["spi-in"] for s in sas for c in s["child-sas"].values()
                    if c["state"] == "INSTALLED"]
        return (sas[0]["initiator-spi"], children[0]) if len(sas) == 1 and children else None
    before = poll(current, deadline=10)
    with strongswan.session(sock) as session:
        session.rekey(what)
    index = 0 if "ike" in what else 1
    poll(lambda: (now := current()) and now[index] != before[index], deadline=15)


def two_owners(lab) -> list:
    """Keys that two members' tables give to different owners, now."""
    seen: dict[str, set] = {}
    for member in lab.plan.members:
        for key, owner in query(lab.node(member.name).files.agent_socket, "owners").items():
            seen.setdefault(key, set()).add(owner)
    return [(key, owners) for key, owners in seen.items() if len(owners) > 1]


@pytest.mark.parametrize("ownership", MODES)
@pytest.mark.parametrize("source, ike, port", VARIANTS,
                         ids=[f"{s}-ikev{i}-{p}" for s, i, p in VARIANTS])
def test_a_flood_never_locks_legitimate_peers_out(ownership, source, ike, port):
    # p1 floods; p2 (IKEv1) negotiates during the flood; p3 (IKEv2) rekeys during it; after
    # it, all three negotiate again at once.
    with Lab(LabSpec(members=3, peers=3, hash="l4", ike="mixed", ownership=ownership)) as lab:
        up_after(lab, "p3")
        calm = up_after(lab, "p2")
        terminate(lab, "p2")
        before = agents(lab)
        # IKEv1 has no cookies: a spoofed flood that also impersonates p2 (1 packet in 253 of
        # this /24, 4 a second) soon holds charon's per-IP limit of half-open SAs from p2's
        # address (`block_threshold`, 5), and p2 is refused until they time out (measured:
        # "ignoring IKE_SA setup from 203.0.113.12, per-IP half-open IKE_SA limit of 5
        # reached", 115 times on one member in 30 s). No responder can tell that MM1 from the
        # real one; IKEv2's cookies can, so the IKEv2 floods impersonate every peer.
        flood = lab.net.flood("p1", RATE, SECONDS, ike, port, spoof=source == "spoofed",
                              impersonating=ike == 2)
        poll(lambda: sum(a["counters"]["seen_in"] for a in agents(lab).values())
             > sum(a["counters"]["seen_in"] for a in before.values()) + RATE, deadline=10)

        during = up_after(lab, "p2")
        assert during <= 2 * calm + 1, f"p2 took {during:.2f} s under the flood ({calm:.2f} calm)"
        rekeyed(lab, "p3", {"ike": CLUSTER_CONNECTION})
        rekeyed(lab, "p3", {"child": CHILD_NAME})
        samples = 0
        while flood.running():
            assert not two_owners(lab)
            samples += 1
            time.sleep(0.5)
        report = flood.wait()
        after = agents(lab)
        for peer in ("p2", "p3"):
            terminate(lab, peer)
        again = lab.bring_up(None, 20)  # the flooder too

    assert sorted(again.up_after) == ["p1", "p2", "p3"], again.last_sa
    # Within one negotiation, before charon would give up: right after a spoofed IKEv1 flood
    # (no cookies in IKEv1) a member's charon can still be busy with its own half-open SAs for
    # a few seconds and answer a retransmission rather than the first packet (seen once in CI:
    # 4.4 s). That is charon's load, not lockout; a locked-out peer never comes up.
    assert max(again.up_after.values()) <= 2 * calm + 1 + Retransmit().gives_up_after, \
        again.up_after

    assert report["sent"] >= RATE * SECONDS * 0.95, report
    assert samples >= 20
    for member, status in after.items():
        growth = status["rss_kb"] - before[member]["rss_kb"]
        assert growth < MEMORY_GROWTH_KB, f"{member} grew {growth} KiB"
        assert status["half_open"] <= 2048 and len(status["table"]) <= 2048 + 10
        assert status["pending"]["claims"] <= 1024 and status["pending"]["lookups"] <= 1024
    sent = sum(a["counters"]["sync_sent"] for a in after.values()) - sum(
        a["counters"]["sync_sent"] for a in before.values())
    if ownership == "stateless":
        assert sent < report["sent"] * 0.01, f"{sent} sync messages for a stateless flood"

