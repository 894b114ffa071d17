"""The agent's parser on IPv6: UDP behind extension headers, fragments, truncations, and the
datagrams it builds itself (scapy checks what it writes)."""

import pytest
from scapy.all import (IPv6, UDP, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, fragment6)
from scapy.layers.ipsec import AH
from scapy.layers.isakmp import ISAKMP

from lab.agent.protocol.ike import Datagram, ParseError, ike_payload, parse_datagram, parse_header
from lab.agent.protocol.sync import (Codec, Message, SyncError, decode_entries, decode_prefixes,
    encode_entries, encode_prefixes)

PEER, VIP = "2001:db8:0:1::11", "2001:db8:0:1::1"
IKE = bytes(ISAKMP(init_cookie=b"\x33" * 8, exch_type=34, flags=0x08, version=0x20))


def packet(*extensions, sport=500, dport=500, payload=IKE):
    layers = IPv6(src=PEER, dst=VIP)
    for extension in extensions:
        layers = layers / extension
    return bytes(layers / UDP(sport=sport, dport=dport) / payload)


@pytest.mark.parametrize("extensions", [
    (), (IPv6ExtHdrHopByHop(),), (IPv6ExtHdrDestOpt(),),
    (IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=[VIP]), IPv6ExtHdrDestOpt()),
    (AH(nh=17, payloadlen=4, spi=7, icv=b"\0" * 12),),  # 24 bytes: 4 words - 2
], ids=["plain", "hop-by-hop", "dest-opts", "three", "ah"])
def test_udp_behind_extension_headers_is_found(extensions):
    dgram = parse_datagram(packet(*extensions))
    assert (dgram.src, dgram.sport, dgram.dst, dgram.dport) == (PEER, 500, VIP, 500)
    assert dgram.version == 6
    assert parse_header(ike_payload(dgram.dport, dgram.payload)).exchange_name == "IKE_SA_INIT"


def test_ike_on_4500_over_ipv6_sheds_its_non_esp_marker():
    dgram = parse_datagram(packet(sport=4500, dport=4500, payload=b"\0" * 4 + IKE))
    assert ike_payload(dgram.dport, dgram.payload) == IKE


def test_ipv6_fragments_are_refused_the_member_reassembles_before_the_agent():
    whole = IPv6(src=PEER, dst=VIP) / IPv6ExtHdrFragment(id=9) / UDP(sport=4500, dport=4500) / (
        b"\0" * 4 + IKE + b"\0" * 3000)
    fragments = fragment6(whole, 1280)
    assert len(fragments) >= 3
    for fragment in fragments:
        with pytest.raises(ParseError, match="IPv6 fragment"):
            parse_datagram(bytes(fragment))


@pytest.mark.parametrize("data, why", [
    (packet()[:47], "truncated IPv6 packet"),
    (packet()[:4] + b"\0\0" + packet()[6:], "jumbogram"),
    (packet()[:4] + b"\x10\x00" + packet()[6:], "beyond the packet"),
    (bytes(IPv6(src=PEER, dst=VIP, nh=0, plen=8) / (b"\x11\x09" + b"\0" * 6)) + b"\0" * 8,
     "truncated IPv6 extension header"),
    (bytes(IPv6(src=PEER, dst=VIP, nh=6) / (b"\0" * 20)), "not a UDP datagram"),
    (bytes(IPv6(src=PEER, dst=VIP, nh=0, plen=80) / (b"\x00\x00" + b"\0" * 78)),
     "too many IPv6 extension headers"),
    (bytes(IPv6(src=PEER, dst=VIP, nh=17, plen=8) / b"\x01\xf4\x01\xf4\x00\x40\x00\x00"),
     "bad UDP length"),
], ids=["short", "jumbo", "plen", "ext-truncated", "tcp", "ext-loop", "udp-length"])
def test_malformed_ipv6_packets_raise_parse_error(data, why):
    with pytest.raises(ParseError, match=why):
        parse_datagram(data)


def test_datagrams_the_agent_builds_are_what_scapy_reads_with_a_good_checksum():
    built = Datagram(PEER, 4500, VIP, 4500, b"\0" * 4 + IKE).encode()
    assert parse_datagram(built) == Datagram(PEER, 4500, VIP, 4500, b"\0" * 4 + IKE)
    seen = IPv6(built)
    claimed = seen[UDP].chksum
    del seen[UDP].chksum
    assert IPv6(bytes(seen))[UDP].chksum == claimed != 0
    assert Datagram("203.0.113.11", 500, "203.0.113.1", 500, IKE).encode()[0] >> 4 == 4


def test_sync_messages_carry_peers_of_either_family():
    codec, reader = Codec(b"k" * 32, 1, 1), Codec(b"k" * 32, 2, 1)
    for peer in (PEER, "203.0.113.11", None):
        msg = reader.decode(codec.encode(Message(1, 1, peer=peer, port=4500)))
        assert msg.peer == peer and msg.port == 4500
    prefixes = {"10.2.1.0/24", "2001:db8:2:1::/64", "0.0.0.0/0", "::/0"}
    assert decode_prefixes(encode_prefixes(prefixes)) == prefixes
    for bad in (b"\x06\x81" + bytes(16), b"\x04\x21" + bytes(4), b"\x05\x08" + bytes(4),
                b"\x06\x40" + bytes(8), b"\x04"):
        with pytest.raises(SyncError):
            decode_prefixes(bad)


def test_snapshot_entries_carry_peers_of_either_family():
    from lab.agent.protocol.ownership import Key
    entries = [(Key(b"\x01" * 8, 0, "i"), 2, "established", b"\x02" * 8, PEER, 4500, False,
                1.5, 7), (Key(b"\x03" * 8, 0, "i"), 1, "negotiating", None, "203.0.113.12",
                          500, True, 0.25, 0)]
    decoded = decode_entries(encode_entries(entries))
    assert [(e[5], e[6], e[7], e[8]) for e in decoded] == [
        (b"\x02" * 8, PEER, 4500, False), (None, "203.0.113.12", 500, True)]
