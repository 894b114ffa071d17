"""The agent's trace and the ladder built from it, without root: real agents (`agents.Cluster`)
decide on real captured packets, their Trace actions become trace lines as the shell writes
them, and the ladder model turns lines (or a capture, without an agent) into lanes and arrows.
The drawings are checked for what a reader looks for: every member and IKE_AUTH named."""

import json

import pytest

from lab.agent.protocol.events import Trace
from lab.agent.io.trace import TraceFile, packet_fields, read_trace, trace_line
from lab.show.ladder import (DROPPED, FORWARD, PROTOCOL, REQUEST, RESPONSE, SWITCH, VOID,
    LadderError, Seen, build, payloads_in_log, protocol_in_trace, read_pcap, seen_in_capture,
    seen_in_trace, select)
from lab.show.plots import draw_ladder

from .agents import Cluster, capture

V2 = capture("ikev2.pcap")
INIT, INIT_REPLY, AUTH, AUTH_REPLY = V2[:4]
PEER, VIP = "203.0.113.11", "203.0.113.1"
MEMBERS = ["m1", "m2", "m3"]


class TracedCluster(Cluster):
    """Agents with tracing on, whose Trace actions become trace lines as the shell writes
    them: stamped when carried out, in the order they were decided."""

    def __init__(self, **options):
        super().__init__(trace="on", **options)
        self.lines: list[dict] = []

    def handle(self, index: int, event) -> list:
        actions = super().handle(index, event)
        for a in actions:
            if isinstance(a, Trace):
                stamp = self.now + len(self.lines) * 1e-6
                self.lines.append(json.loads(trace_line(a.decision, a.packet, a.inbound,
                                                        a.detail, f"m{index}", stamp)))
        return actions


def split_hash_negotiation() -> TracedCluster:
    """p1's IKE_SA_INIT reaches m1, its IKE_AUTH m2 (UDP 4500 hashed elsewhere)."""
    c = TracedCluster().start()
    c.packet(1, INIT)
    c.deliver()
    c.packet(1, INIT_REPLY)
    c.now += 0.01
    c.packet(2, AUTH)
    c.deliver()
    c.now += 0.01
    c.packet(1, AUTH_REPLY)
    return c


def test_the_agents_decisions_become_trace_lines_naming_packet_key_and_where_it_went():
    lines = split_hash_negotiation().lines
    by = {(line["member"], line["decision"], line.get("exchange")): line for line in lines}
    forwarded = by[("m2", "forwarded", "IKE_AUTH")]
    assert forwarded["to"] == "m1" and forwarded["peer"] == PEER and forwarded["msgid"] == 1
    assert forwarded["response"] is False and forwarded["key"].endswith("/1/i")
    assert by[("m1", "injected", "IKE_AUTH")]["from"] == "m2"
    assert by[("m1", "sent", "IKE_AUTH")]["response"] is True
    assert ("m1", "delivered", "IKE_SA_INIT") in by
    director = next(line for line in lines if line["decision"] == "announced")
    assert director["owner"] == "m1" and director["key"].endswith("/0/i")


def test_no_trace_configured_means_no_trace_actions():
    c = Cluster().start()
    c.packet(1, INIT)
    c.deliver()
    assert not [a for actions in c.done.values() for a in actions if isinstance(a, Trace)]


def test_a_split_negotiation_with_the_agent_is_a_ladder_with_a_forward_to_the_holder():
    ladder = build("p1", PEER, MEMBERS, seen_in_trace(split_hash_negotiation().lines))
    assert ladder.lanes == ["p1", SWITCH, "m1", "m2", "m3", "sync:m1", "sync:m2", "sync:m3"]
    assert ladder.members == MEMBERS and ladder.holder == "m1"
    assert [(a.src, a.dst, a.kind, a.label) for a in ladder.arrows] == [
        ("p1", "m1", REQUEST, "IKE_SA_INIT request #0"),
        ("m1", "p1", RESPONSE, "IKE_SA_INIT response #0"),
        ("p1", "m2", REQUEST, "IKE_AUTH request #1"),
        ("sync:m2", "sync:m1", FORWARD, "FORWARD IKE_AUTH request #1"),
        ("m1", "p1", RESPONSE, "IKE_AUTH response #1"),
    ]
    assert ladder.arrows[0].note.startswith("claimed from m")  # one packet, not two arrows
    assert "SPIs" in ladder.arrows[2].title and "forwarded to m1" in ladder.arrows[2].title


def test_the_claims_round_is_drawn_member_to_member_on_the_sync_lanes_with_its_wait():
    lines = split_hash_negotiation().lines
    ladder = build("p1", PEER, MEMBERS, seen_in_trace(lines), protocol_in_trace(lines))
    protocol = [(a.src, a.dst, a.label, a.note) for a in ladder.arrows if a.kind == PROTOCOL]
    # m1 directs its own claim here: it announces the owner to the others, who acknowledge
    assert protocol == [("sync:m1", "sync:m2", "ANNOUNCE", "owner m1"),
                        ("sync:m1", "sync:m3", "ANNOUNCE", "owner m1"),
                        ("sync:m2", "sync:m1", "ACK", "owner m1"),
                        ("sync:m3", "sync:m1", "ACK", "owner m1")]
    [span] = ladder.spans
    assert (span.lane, span.text) == ("m1", "waits for ACKs") and span.t1 > span.t0
    # another peer's claims stay off p1's ladder
    assert not [a for a in build("p2", "203.0.113.12", MEMBERS, seen_in_trace(lines),
                                 protocol_in_trace(lines)).arrows]


def test_a_child_sa_installed_is_a_mark_on_its_members_lane():
    line = {"t": 1001.5, "member": "m1", "decision": "installed", "peer": PEER,
            "ispi": "0b90528146a9a791", "child": "lan", "spi_in": "c1000001",
            "spi_out": "0aaaaaaa"}
    lines = split_hash_negotiation().lines + [line, dict(line, peer="203.0.113.12")]
    ladder = build("p1", PEER, MEMBERS, seen_in_trace(lines), protocol_in_trace(lines))
    [mark] = ladder.marks
    assert (mark.lane, mark.text) == ("m1", "CHILD SA installed")
    assert "c1000001" in mark.title


def test_payload_names_come_from_the_peers_charon_log_retransmissions_alike():
    log = """10:00:00.001 05[ENC] <cluster|1> generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) ]
10:00:00.003 06[ENC] <cluster|1> parsed IKE_SA_INIT response 0 [ SA KE No N(MULT_AUTH) ]
10:00:00.004 06[ENC] <cluster|1> generating IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr N(MOBIKE_SUP) ]
10:00:00.010 07[ENC] <cluster|1> parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr N(AUTH_LFT) ]
"""
    payloads = payloads_in_log(log)
    assert payloads[2] == ("in", "IKE_AUTH", False, 1, ["IDi", "N(INIT_CONTACT)", "IDr",
                                                         "AUTH", "SA", "TSi", "TSr",
                                                         "N(MOBIKE_SUP)"])
    c = split_hash_negotiation()
    c.now += 1.0
    c.packet(2, AUTH)  # the peer retransmits its IKE_AUTH: the same payloads
    ladder = build("p1", PEER, MEMBERS, seen_in_trace(c.lines), payloads=payloads)
    labels = [a.label for a in ladder.arrows if a.kind in (REQUEST, RESPONSE, DROPPED)]
    assert labels == ["IKE_SA_INIT request #0 [SA KE No]", "IKE_SA_INIT response #0 [SA KE No]",
                      "IKE_AUTH request #1 [IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr]",
                      "IKE_AUTH response #1 [IDr AUTH SA TSi TSr]",
                      "IKE_AUTH request #1 [IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr]"]
    assert "N(MOBIKE_SUP)" in ladder.arrows[2].title  # the routine ones: in the title only


def test_a_selection_keeps_some_members_and_a_time_window():
    lines = split_hash_negotiation().lines
    ladder = build("p1", PEER, MEMBERS, seen_in_trace(lines), protocol_in_trace(lines))
    part = select(ladder, members=["m1", "m3"])
    assert part.lanes == ["p1", SWITCH, "m1", "m3", "sync:m1", "sync:m3"]
    assert all("m2" not in a.src + a.dst for a in part.arrows) and part.holder == "m1"
    late = select(ladder, since=0.005)
    assert [a.label for a in late.arrows][0].startswith("IKE_AUTH request")
    assert select(ladder, members=["m2"]).holder is None


def test_without_the_agent_ike_auth_at_a_member_without_the_ike_sa_goes_into_the_void():
    seen = (seen_in_capture("m1", [(1.0, INIT), (1.001, INIT_REPLY)], VIP)
            + seen_in_capture("m2", [(1.01, AUTH), (2.01, AUTH), (4.01, AUTH)], VIP))
    ladder = build("p1", PEER, MEMBERS, seen)
    assert ladder.holder == "m1"
    void = [a for a in ladder.arrows if a.kind == VOID]
    assert [(a.dst, a.label) for a in void] == [("m2", "IKE_AUTH request #1")] * 3
    assert all(a.note == "no IKE SA here" for a in void)


def test_another_peers_packets_and_non_ike_lines_stay_off_the_ladder():
    lines = split_hash_negotiation().lines
    assert build("p2", "203.0.113.12", MEMBERS, seen_in_trace(lines)).arrows == []
    assert all(s.fields.get("peer") == PEER for s in seen_in_trace(lines))


def test_a_packet_the_agent_dropped_is_drawn_as_dropped_with_why():
    line = json.loads(trace_line("dropped", AUTH, True, (("why", "claim timed out"),), "m3", 5.0))
    ladder = build("p1", PEER, MEMBERS, [Seen(5.0, "m3", {k: v for k, v in line.items()
                                                          if k not in ("t", "member")},
                                              "dropped", {"why": "claim timed out"})])
    assert [(a.dst, a.kind, a.note) for a in ladder.arrows] == [("m3", DROPPED, "claim timed out")]


def test_the_drawings_name_every_member_and_ike_auth(tmp_path):
    lines = split_hash_negotiation().lines
    ladder = build("p1", PEER, MEMBERS, seen_in_trace(lines), protocol_in_trace(lines))
    svg = draw_ladder(ladder, tmp_path / "l.svg").read_text()
    for text in MEMBERS + ["IKE_AUTH request #1", "FORWARD", "holds the IKE SA", "ANNOUNCE",
                           "ACK", "sync network", "waits for ACKs"]:
        assert text in svg
    # every arrow has a hover title, SPIs and the agent's decision in it
    assert svg.count("<title>") >= 2 * len(ladder.arrows)
    assert "<title>IKE_AUTH request #1; SPIs " in svg and "forwarded to m1" in svg
    png = draw_ladder(ladder, tmp_path / "l.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10000


def test_the_trace_file_is_bounded_and_read_back_across_its_rotation(tmp_path):
    path = tmp_path / "trace_m1.jsonl"
    trace = TraceFile(str(path), max_bytes=4000)
    for n in range(300):
        trace.add(trace_line("expired", None, True, (("key", f"{n:016x}/0/i"),), "m1", n))
        trace.flush()
    trace.add('{"t": 1, "decis')  # a member killed mid-line
    trace.close()
    assert trace.rotations >= 1 and path.stat().st_size <= 4000
    lines = read_trace(path)
    assert 0 < len(lines) < 300 and lines[-1]["key"] == f"{299:016x}/0/i"
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)


def test_bad_run_files_are_skipped_or_one_clear_error(tmp_path):
    trace = tmp_path / "trace_m1.jsonl"
    trace.write_text('[1]\n{"t": "soon", "decision": "sent", "member": "m1"}\n'
                     '{"t": 1, "decision": "sent", "member": "m1", "exchange": "IKE_AUTH"}\n')
    lines = read_trace(trace)
    assert len(lines) == 1 and seen_in_trace(lines) == []  # no packet fields: not drawn
    garbage = tmp_path / "external-m1.pcap"
    garbage.write_bytes(b"not a capture at all" * 10)
    with pytest.raises(LadderError) as error:
        read_pcap(garbage)
    assert "not a readable capture" in str(error.value) and "\n" not in str(error.value)


def test_a_negotiation_the_member_starts_is_one_arrow_per_packet_claimed_or_not():
    """Our charon's IKE_SA_INIT waits for its claim (claimed, then sent): one arrow."""
    out = json.loads(trace_line("claimed", INIT, True, (("director", "m2"),), "m1", 1.0))
    out.update(dir="out")  # the same packet as our charon would send it, for the model
    sent = dict(out, decision="sent", t=1.002)
    del sent["director"]
    ladder = build("p1", PEER, MEMBERS, seen_in_trace([out, sent]))
    assert [(a.src, a.dst, a.t) for a in ladder.arrows] == [("m1", "p1", 1.0)]
    assert ladder.holder == "m1"


def test_a_trace_line_says_of_a_packet_exactly_what_packet_fields_says():
    """trace_line reads header offsets by hand (it runs per IKE packet); packet_fields is the
    reference, with ike.IkeHeader's rules."""
    for packet in capture("ikev2.pcap") + capture("ikev1.pcap"):
        for inbound in (True, False):
            line = json.loads(trace_line("x", packet, inbound, (("why", 'a "b"'),), "m1", 1.5))
            assert line == {"t": 1.5, "member": "m1", "decision": "x",
                            **packet_fields(packet, inbound), "why": 'a "b"'}


def test_a_flood_of_sync_messages_is_traced_up_to_a_budget_a_second_and_the_rest_counted():
    from lab.agent.protocol import sync
    from lab.agent.protocol.synctrace import PER_SECOND as SYNC_TRACE_PER_SECOND
    c = TracedCluster().start()
    agent = c.agents[1]
    before = len([a for a in agent.actions if isinstance(a, Trace)])
    for n in range(SYNC_TRACE_PER_SECOND + 50):
        agent.send(2, sync.Message(sync.ANNOUNCE, 1, ispi=n.to_bytes(8, "big"), owner=1))
    traced = [a for a in agent.actions if isinstance(a, Trace)][before:]
    assert len(traced) == SYNC_TRACE_PER_SECOND
    assert agent.counters["sync_trace_skipped"] == 50
