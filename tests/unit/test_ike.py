"""The agent's IKE parser on real captures from the lab and on malformed bytes.

tests/data/ikev2.pcap and ikev1.pcap were captured on a peer of the lab (scripts in the
commit that added them): IKEv2 IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA (CHILD and IKE rekey),
INFORMATIONAL; IKEv1 Main Mode, Quick Mode, Informational; ESP in UDP on 4500.
"""

from pathlib import Path

import pytest
from scapy.all import IP, UDP, fragment as fragment_packet, rdpcap
from scapy.layers.isakmp import ISAKMP

from lab.agent.protocol.ike import ParseError, ike_payload, parse_datagram, parse_header

DATA = Path(__file__).resolve().parent.parent / "data"


def messages(name):
    """(datagram, IKE header or None for non-IKE) for every UDP packet of a capture."""
    result = []
    for pkt in rdpcap(str(DATA / name)):
        dgram = parse_datagram(bytes(pkt[IP]))
        ike = ike_payload(dgram.dport, dgram.payload)
        result.append((dgram, parse_header(ike) if ike is not None else None))
    return result


def test_ikev2_capture_yields_every_exchange_type_with_consistent_spis():
    found = messages("ikev2.pcap")
    headers = [h for _, h in found if h]
    names = [h.exchange_name for h in headers]
    assert names[:4] == ["IKE_SA_INIT", "IKE_SA_INIT", "IKE_AUTH", "IKE_AUTH"]
    assert {"CREATE_CHILD_SA", "INFORMATIONAL"} <= set(names)
    init = headers[0]
    assert init.major == 2 and init.can_start_negotiation and init.requester == "i"
    assert init.cluster_spi(sent_by_cluster=False) is None  # responder SPI still zero
    reply = headers[1]
    assert reply.is_response and reply.requester == "i" and not reply.can_start_negotiation
    assert reply.ispi == init.ispi and reply.cluster_spi(sent_by_cluster=True) == reply.rspi
    auth = headers[2]
    assert auth.msgid == 1 and auth.cluster_spi(sent_by_cluster=False) == reply.rspi
    assert all(not h.can_start_negotiation for h in headers[1:])
    esp = [d for d, h in found if h is None]
    assert esp and all(d.dport == 4500 or d.sport == 4500 for d in esp)


def test_ikev1_capture_main_mode_quick_mode_and_informational():
    headers = [h for _, h in messages("ikev1.pcap") if h]
    first = headers[0]
    assert first.major == 1 and first.exchange_name == "Main Mode"
    assert first.can_start_negotiation and first.requester == "i"
    assert first.cluster_spi(sent_by_cluster=False) is None  # IKEv1: side is ambiguous
    names = {h.exchange_name for h in headers}
    assert {"Main Mode", "Quick Mode", "Informational"} <= names
    quick = [h for h in headers if h.exchange_name == "Quick Mode"]
    assert all(h.msgid != 0 and not h.can_start_negotiation and h.requester == "-"
               for h in quick)
    # The IKEv1 reauthentication is a new Main Mode with new cookies: it may start one.
    starters = [h for h in headers if h.can_start_negotiation]
    assert len({h.ispi for h in starters}) == 2


def test_aggressive_mode_first_message_can_start_a_negotiation():
    raw = bytes(ISAKMP(init_cookie=b"\x11" * 8, exch_type=4))
    header = parse_header(raw)
    assert header.exchange_name == "Aggressive Mode" and header.can_start_negotiation


def test_non_esp_marker_keepalive_and_esp_on_4500():
    ike = bytes(ISAKMP(init_cookie=b"\x22" * 8, exch_type=2))
    assert ike_payload(4500, b"\0\0\0\0" + ike) == ike
    assert ike_payload(4500, b"\xff") is None
    assert ike_payload(500, b"\xff") is None  # charon keeps NAT mappings open from 500 too
    assert ike_payload(4500, b"\x12\x34\x56\x78" + b"\0" * 40) is None
    assert ike_payload(500, ike) == ike
    with pytest.raises(ParseError, match="truncated"):
        ike_payload(4500, b"\x01\x02")


@pytest.mark.parametrize("data, why", [
    (b"", "truncated"),
    (b"\x11" * 27, "truncated"),
    (bytes(ISAKMP(init_cookie=b"\x11" * 8, exch_type=2)) + b"\0", "length field"),
    (b"\x11" * 16 + b"\x00\x30\x22\x00" + b"\0\0\0\0" + b"\0\0\0\x1c", "major version 3"),
    (b"\x00" * 16 + b"\x00\x20\x22\x00" + b"\0\0\0\0" + b"\0\0\0\x1c", "zero initiator SPI"),
    (b"\x11" * 10001, "oversized"),
])
def test_malformed_headers_raise_parse_error(data, why):
    with pytest.raises(ParseError, match=why):
        parse_header(data)


def test_datagram_parsing_refuses_what_is_not_ipv4_udp():
    good = bytes(IP(src="203.0.113.11", dst="203.0.113.1") / UDP(sport=500, dport=500) / b"x")
    dgram = parse_datagram(good)
    assert (dgram.src, dgram.sport, dgram.dst, dgram.dport, dgram.payload) == (
        "203.0.113.11", 500, "203.0.113.1", 500, b"x")
    for bad in (b"", good[:20], bytes(IP(proto=6) / (b"\0" * 20)), b"\x60" + good[1:]):
        with pytest.raises(ParseError):
            parse_datagram(bad)


@pytest.mark.parametrize("major, exchange, name, starts", [
    (1, 6, "Transaction", False), (2, 38, "IKE_SESSION_RESUME", True),
    (2, 43, "IKE_INTERMEDIATE", False), (2, 44, "IKE_FOLLOWUP_KE", False),
    (2, 99, "exchange 99", False), (1, 240, "exchange 240", False)])
def test_unusual_and_future_exchange_types_are_parsed_for_routing(major, exchange, name, starts):
    version = 0x20 if major == 2 else 0x10
    msgid = 0 if starts else 7
    raw = (b"\x11" * 8 + b"\0" * 8 + bytes([0, version, exchange, 0x08])
           + msgid.to_bytes(4, "big") + (28).to_bytes(4, "big"))
    header = parse_header(raw)
    assert header.exchange_name == name and header.ispi == b"\x11" * 8
    assert header.can_start_negotiation == starts


def test_ip_fragments_are_refused_the_member_reassembles_before_the_agent():
    whole = IP(src="203.0.113.11", dst="203.0.113.1", id=7) / UDP(sport=4500, dport=4500) / (
        b"\0\0\0\0" + bytes(ISAKMP(init_cookie=b"\x33" * 8, exch_type=35)) + b"\0" * 2000)
    for fragment in fragment_packet(whole, 1480):
        with pytest.raises(ParseError, match="IP fragment"):
            parse_datagram(bytes(fragment))
    assert parse_datagram(bytes(whole)).dport == 4500  # reassembled, it is a datagram
