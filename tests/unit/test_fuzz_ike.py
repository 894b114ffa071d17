"""Fuzzing the agent's IKE parser: every packet NFQUEUE hands the agent comes from the
internet, so whatever its bytes, `parse_datagram`, `ike_payload` and `parse_header` must give
a value or raise `ike.ParseError` (the agent counts that and drops the packet); any other
exception would kill the agent's loop on one hostile packet. The encoders the lab and its
tools use (`IkeHeader.encode`, `Datagram.encode`) must give back, through the parser, exactly
what they were given.

Each outcome is an `event`, so `--hypothesis-show-statistics` shows how far the inputs got
(which check refused them, how many parsed).
"""

import re
import struct

import pytest
from hypothesis import event, given, strategies as st

from lab.agent.protocol.ike import (HEADER_LEN, MAX_IKE_LEN, NATT_PORT, NON_ESP_MARKER, ZERO_SPI,
    Datagram, IkeHeader, ParseError, ike_payload, parse_datagram, parse_header)

ports = st.integers(0, 0xFFFF)
spis = st.binary(min_size=8, max_size=8)
addresses = st.ip_addresses(v=4).map(str)
addresses6 = st.ip_addresses(v=6).map(str)


@st.composite
def headers(draw, max_body=MAX_IKE_LEN - HEADER_LEN):
    """(a well-formed IkeHeader, its body): the body's bytes matter nothing to the header, so
    a short random start padded to the drawn length reaches every length cheaply."""
    size = draw(st.integers(0, max_body))
    body = draw(st.binary(max_size=min(size, 32))).ljust(size, b"\xa5")
    header = IkeHeader(draw(spis.filter(lambda spi: spi != ZERO_SPI)), draw(spis),
                       draw(st.sampled_from([1, 2])), draw(st.integers(0, 0xFF)),
                       draw(st.integers(0, 0xFF)), draw(st.integers(0, 0xFFFFFFFF)),
                       HEADER_LEN + size)
    return header, body


@st.composite
def ike_like(draw):
    """Bytes that get past the parser's first checks often: a random header whose length
    field is, more often than chance, the real length, and whose version is 1 or 2."""
    data = bytearray(draw(st.binary(min_size=HEADER_LEN, max_size=HEADER_LEN + 64)))
    if draw(st.booleans()):
        data[24:28] = len(data).to_bytes(4, "big")
    if draw(st.booleans()):
        data[17] = draw(st.sampled_from([0x10, 0x20])) | data[17] & 0x0F
    return bytes(data)


@st.composite
def ipv4_like(draw):
    """Bytes that get past the datagram parser's checks often: version 4, protocol UDP and,
    more often than chance, a 20-byte header, no fragment bits, a UDP length that fits, a
    port of IKE's and an IKE-like payload (after a non-ESP marker or not)."""
    ihl = draw(st.one_of(st.just(5), st.integers(0, 15)))
    ip = bytearray(draw(st.binary(min_size=max(20, ihl * 4), max_size=max(20, ihl * 4))))
    ip[0], ip[9] = 0x40 | ihl, 17
    if draw(st.booleans()):
        ip[6:8] = b"\0\0"  # not a fragment
    payload = draw(st.one_of(st.binary(max_size=64), ike_like(),
                             ike_like().map(lambda ike: NON_ESP_MARKER + ike)))
    sport, dport = (draw(st.one_of(st.sampled_from([500, NATT_PORT]), ports)) for _ in "sd")
    length = draw(st.one_of(st.just(8 + len(payload)), st.integers(0, 0xFFFF)))
    return bytes(ip) + struct.pack("!HHHH", sport, dport, length, 0) + payload


@st.composite
def ipv6_like(draw):
    """Bytes that get past the IPv6 checks often: version 6, a payload length that fits more
    often than chance, and a chain of extension headers (Hop-by-Hop, Routing, Destination
    Options, AH, Fragment) with lengths that fit or not, before UDP or not."""
    chain = draw(st.lists(st.sampled_from([0, 43, 60, 51, 44]), max_size=10))
    last = draw(st.one_of(st.just(17), st.integers(0, 0xFF)))
    body = b""
    for kind, following in zip(chain, chain[1:] + [last]):
        units = draw(st.one_of(st.just(0), st.integers(0, 0xFF)))
        size = (units + 2) * 4 if kind == 51 else (units + 1) * 8
        size = min(size, draw(st.integers(2, max(2, size))))
        body += bytes([following, units]) + draw(st.binary(min_size=size - 2, max_size=size - 2))
    payload = draw(st.one_of(st.binary(max_size=64), ike_like(),
                             ike_like().map(lambda ike: NON_ESP_MARKER + ike)))
    sport, dport = (draw(st.one_of(st.sampled_from([500, NATT_PORT]), ports)) for _ in "sd")
    udp_length = draw(st.one_of(st.just(8 + len(payload)), st.integers(0, 0xFFFF)))
    body += struct.pack("!HHHH", sport, dport, udp_length, 0) + payload
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
    first = chain[0] if chain else last
    return (struct.pack("!IHBB", 6 << 28, length, first, 64) + bytes(range(32)) + body)


def refused(exc: ParseError) -> None:
    kind = re.sub(r"\b\d+\b", "N", str(exc).split(":")[0])  # as the agent counts it
    event(f"refused: {kind}")


def check_header(header: IkeHeader, data: bytes) -> None:
    """What the agent reads from a parsed header right away must be defined."""
    assert header.length == len(data) and header.major in (1, 2)
    assert header.ispi != ZERO_SPI
    assert isinstance(header.exchange_name, str)
    assert header.requester in ("i", "r", "-")
    assert all(isinstance(flag, bool) for flag in (
        header.is_response, header.can_start_negotiation, header.is_stateless_reply))
    assert all(spi is None or len(spi) == 8
               for spi in (header.cluster_spi(True), header.cluster_spi(False)))


@given(st.one_of(st.binary(max_size=200), ike_like()))
def test_any_bytes_parse_to_an_ike_header_or_a_parse_error(data):
    try:
        header = parse_header(data)
    except ParseError as exc:
        return refused(exc)
    event("parsed")
    check_header(header, data)


@given(ports, st.binary(max_size=64))
def test_any_udp_payload_on_any_port_is_ike_not_ike_or_a_parse_error(port, payload):
    try:
        ike = ike_payload(port, payload)
    except ParseError:
        assert port == NATT_PORT  # only the non-ESP marker can be cut short
        return
    if ike is not None:
        marker = port == NATT_PORT
        assert ike == (payload[4:] if marker else payload)
        assert not marker or payload.startswith(NON_ESP_MARKER)


@given(st.one_of(st.binary(max_size=120), ipv4_like(), ipv6_like()))
def test_any_bytes_parse_to_a_datagram_or_a_parse_error(packet):
    try:
        dgram = parse_datagram(packet)
    except ParseError as exc:
        return refused(exc)
    event(f"parsed IPv{dgram.version}")
    assert 0 <= dgram.sport <= 0xFFFF and 0 <= dgram.dport <= 0xFFFF
    header = 48 if dgram.version == 6 else 28
    assert dgram.payload in packet and len(packet) >= header + len(dgram.payload)


@given(st.one_of(st.binary(max_size=200), ipv4_like(), ipv6_like()), st.booleans())
def test_any_packet_through_the_agents_whole_path_gives_a_header_nothing_or_a_parse_error(
        packet, inbound):
    """The order core.Agent parses an NFQUEUE packet in."""
    try:
        dgram = parse_datagram(packet)
        data = ike_payload(dgram.dport if inbound else dgram.sport, dgram.payload)
        if data is None:
            return event("not IKE")
        check_header(parse_header(data), data)
        event("parsed")
    except ParseError as exc:
        refused(exc)


@given(headers(), st.integers(0, 0xFF), st.integers(0, 0x0F))
def test_an_encoded_ike_header_parses_to_the_same_header(header_body, next_payload, minor):
    header, body = header_body
    data = header.encode(next_payload, minor) + body
    assert len(data) == header.length
    assert parse_header(data) == header


@given(addresses, ports, addresses, ports, st.binary(max_size=300))
def test_an_encoded_datagram_parses_to_the_same_datagram(src, sport, dst, dport, payload):
    dgram = Datagram(src, sport, dst, dport, payload)
    packet = dgram.encode()
    assert parse_datagram(packet) == dgram
    # The parser ignores the IP checksum; a kernel would not (RFC 791: the ones' complement
    # sum of a correct header is all ones).
    words = sum(struct.unpack("!10H", packet[:20]))
    while words > 0xFFFF:
        words = (words & 0xFFFF) + (words >> 16)
    assert words == 0xFFFF


@given(addresses6, ports, addresses6, ports, st.binary(max_size=300))
def test_an_encoded_ipv6_datagram_parses_to_the_same_datagram(src, sport, dst, dport, payload):
    dgram = Datagram(src, sport, dst, dport, payload)
    assert parse_datagram(dgram.encode()) == dgram


@given(st.one_of(addresses, addresses6), ports, headers(max_body=1400), st.booleans())
def test_an_ike_message_in_an_encoded_datagram_reaches_the_header_parser_intact(
        src, sport, header_body, natt):
    dst = "2001:db8:0:1::1" if ":" in src else "203.0.113.1"
    header, body = header_body
    port = NATT_PORT if natt else 500
    ike = header.encode() + body
    packet = Datagram(src, sport, dst, port, (NON_ESP_MARKER if natt else b"") + ike).encode()
    dgram = parse_datagram(packet)
    assert parse_header(ike_payload(dgram.dport, dgram.payload)) == header


def test_a_datagram_too_big_for_one_ipv4_packet_is_refused_by_its_encoder():
    largest = Datagram("203.0.113.1", 500, "203.0.113.11", 500, b"\0" * (0xFFFF - 28))
    assert parse_datagram(largest.encode()) == largest
    with pytest.raises(ValueError, match="does not fit"):
        Datagram("203.0.113.1", 500, "203.0.113.11", 500, b"\0" * (0xFFFF - 27)).encode()
