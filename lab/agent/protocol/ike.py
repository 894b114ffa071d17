"""IKE packets as the agent sees them: which UDP payloads are IKE, and their fixed header.

On the agent's per-packet path, so it uses `struct`, never scapy.

- RFC 7296 3.1: the IKEv2 header. RFC 2408 3.1: the ISAKMP (IKEv1) header. Same layout:

      IKE SA Initiator's SPI (8) | IKE SA Responder's SPI (8) | Next Payload (1) |
      MjVer/MnVer (1) | Exchange Type (1) | Flags (1) | Message ID (4) | Length (4)

- RFC 3948 2.2: on UDP 4500, IKE is preceded by a 4-byte zero non-ESP marker; anything else
  starting with a non-zero SPI is ESP. RFC 3948 2.3: a single 0xFF byte is a NAT-keepalive.

The agent routes every IKE message by its SPIs and Message ID, whatever its exchange type: the
list of types below only names them (an unknown or future type is routed, not dropped). An IKE
message too big for one IP packet arrives as IP fragments; the member reassembles them before
the agent sees the message (lab.agent.io.nfqueue), so a fragment here is a fault to count.

Both IP versions: RFC 791 IPv4, and RFC 8200 IPv6, whose extension headers (Hop-by-Hop,
Routing, Destination Options; RFC 4302 AH with its own length rule) are walked to find the UDP
header. An IPv6 Fragment header is, as an IPv4 fragment, a fault: the kernel reassembles
before the queue.
"""

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ..names import NATT_PORT

HEADER = struct.Struct("!8s8sBBBBII")
HEADER_LEN = HEADER.size  # 28
# charon drops anything larger (charon.max_packet, 10000 bytes by default); bigger IKE
# messages are fragmented (RFC 7383).
MAX_IKE_LEN = 10000
NON_ESP_MARKER = b"\x00\x00\x00\x00"
ZERO_SPI = b"\x00" * 8

# Exchange types: RFC 7296 3.1, RFC 5723 (IKE_SESSION_RESUME), RFC 9242 (IKE_INTERMEDIATE),
# RFC 9370 (IKE_FOLLOWUP_KE); IKEv1: RFC 2408 3.1, RFC 2409, draft-ietf-ipsec-isakmp-mode-cfg
# (Transaction: XAUTH, Mode Config).
IKEV2_EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
                   38: "IKE_SESSION_RESUME", 43: "IKE_INTERMEDIATE", 44: "IKE_FOLLOWUP_KE"}
IKEV1_EXCHANGES = {2: "Main Mode", 4: "Aggressive Mode", 5: "Informational", 6: "Transaction",
                   32: "Quick Mode", 33: "New Group Mode"}
IKE_SA_INIT, IKE_SESSION_RESUME, MAIN_MODE, AGGRESSIVE_MODE = 34, 38, 2, 4

# RFC 7296 3.1 flags.
FLAG_INITIATOR = 0x08
FLAG_RESPONSE = 0x20


class ParseError(ValueError):
    """Not a well-formed IKE packet; the message says why (for the drop counter's log)."""


@dataclass(frozen=True, slots=True)
class IkeHeader:
    ispi: bytes
    rspi: bytes
    major: int
    exchange: int
    flags: int
    msgid: int
    length: int

    @property
    def exchange_name(self) -> str:
        names = IKEV2_EXCHANGES if self.major == 2 else IKEV1_EXCHANGES
        return names.get(self.exchange, f"exchange {self.exchange}")

    @property
    def is_response(self) -> bool:
        """IKEv2 only (RFC 7296 3.1 R flag); IKEv1 has no such flag."""
        return self.major == 2 and bool(self.flags & FLAG_RESPONSE)

    @property
    def from_original_initiator(self) -> bool | None:
        """IKEv2: whether the sender started the IKE SA (I flag); IKEv1: unknown (None)."""
        return bool(self.flags & FLAG_INITIATOR) if self.major == 2 else None

    @property
    def requester(self) -> str:
        """Who started this exchange: 'i' the IKE SA's original initiator, 'r' its responder;
        '-' for an IKEv1 Phase 2 exchange, whose random Message ID is not per direction.
        IKEv1 Phase 1 (Message ID 0) is always the initiator's, like IKEv2's IKE_SA_INIT."""
        sender = self.from_original_initiator
        if sender is None:
            return "i" if self.msgid == 0 else "-"
        return "i" if sender != self.is_response else "r"

    @property
    def can_start_negotiation(self) -> bool:
        """Only these may create an ownership entry: an IKEv2 IKE_SA_INIT (or, resuming a
        session, IKE_SESSION_RESUME) request or an IKEv1 first Main/Aggressive Mode message,
        each with a zero responder SPI and Message ID 0."""
        if self.rspi != ZERO_SPI or self.msgid != 0:
            return False
        if self.major == 2:
            return self.exchange in (IKE_SA_INIT, IKE_SESSION_RESUME) and not self.is_response
        return self.exchange in (MAIN_MODE, AGGRESSIVE_MODE)

    @property
    def is_stateless_reply(self) -> bool:
        """An IKEv2 IKE_SA_INIT response with a zero responder SPI: a responder that keeps no
        state answers this way (RFC 7296 2.6 COOKIE, 1.3 INVALID_KE_PAYLOAD, errors)."""
        return (self.major == 2 and self.is_response and self.msgid == 0
                and self.rspi == ZERO_SPI)

    def encode(self, next_payload: int = 0, minor: int = 0) -> bytes:
        """The 28-byte header as it goes on the wire (`length` counts it); `parse_header` of
        it and `length - 28` bytes of body gives this header back."""
        return HEADER.pack(self.ispi, self.rspi, next_payload, self.major << 4 | minor,
                           self.exchange, self.flags, self.msgid, self.length)

    def cluster_spi(self, sent_by_cluster: bool) -> bytes | None:
        """The SPI the cluster allocated, when the header says which side that is (IKEv2)."""
        if self.major != 2:
            return None
        sender_initiated = self.from_original_initiator
        cluster_initiated = sender_initiated == sent_by_cluster
        spi = self.ispi if cluster_initiated else self.rspi
        return None if spi == ZERO_SPI else spi


def parse_header(data: bytes) -> IkeHeader:
    """The IKE header at the start of `data` (UDP payload without the non-ESP marker)."""
    if len(data) < HEADER_LEN:
        raise ParseError(f"truncated: {len(data)} bytes, an IKE header needs {HEADER_LEN}")
    ispi, rspi, _next, version, exchange, flags, msgid, length = HEADER.unpack_from(data)
    if max(length, len(data)) > MAX_IKE_LEN:
        raise ParseError(f"oversized: {max(length, len(data))} bytes")
    major = version >> 4
    if major not in (1, 2):
        raise ParseError(f"unknown IKE major version {major}")
    if length != len(data):
        raise ParseError(f"length field says {length}, datagram holds {len(data)}")
    if ispi == ZERO_SPI:
        raise ParseError("zero initiator SPI")
    return IkeHeader(ispi, rspi, major, exchange, flags, msgid, length)


def ike_payload(port: int, udp_payload: bytes) -> bytes | None:
    """The IKE message inside a UDP payload on `port` (500 or 4500), or None when it is not
    IKE: ESP, or a NAT-keepalive (charon also sends those from 500, to a peer whose NAT it has
    seen before the IKE SA moved to 4500)."""
    if udp_payload == b"\xff":
        return None
    if port != NATT_PORT:
        return udp_payload
    if udp_payload[:4] == NON_ESP_MARKER:
        return udp_payload[4:]
    if len(udp_payload) < 4:
        raise ParseError(f"truncated: {len(udp_payload)} bytes on UDP 4500")
    return None


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP datagram over IPv4 or IPv6 as NFQUEUE hands it over."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes

    @property
    def version(self) -> int:
        """The IP version it travels in: 6 when its addresses are IPv6."""
        return 6 if ":" in self.src else 4

    def encode(self) -> bytes:
        """The packet carrying `payload`: IPv4 (TTL 64, no options, a UDP checksum of zero:
        none, RFC 768) or IPv6 (hop limit 64, no extension header, the UDP checksum IPv6
        requires, RFC 8200 8.1); `parse_datagram` of it gives this datagram back."""
        if self.version == 6:
            return self._encode6()
        total = 28 + len(self.payload)
        if total > 0xFFFF:
            raise ValueError(f"a {total}-byte datagram does not fit into one IPv4 packet")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                         IPv4Address(self.src).packed, IPv4Address(self.dst).packed)
        checksum = internet_checksum(ip)
        udp = struct.pack("!HHHH", self.sport, self.dport, 8 + len(self.payload), 0)
        return ip[:10] + checksum.to_bytes(2, "big") + ip[12:] + udp + self.payload

    def _encode6(self) -> bytes:
        length = 8 + len(self.payload)
        if length > 0xFFFF:
            raise ValueError(f"a {length}-byte datagram does not fit into one IPv6 packet")
        src, dst = IPv6Address(self.src).packed, IPv6Address(self.dst).packed
        udp = struct.pack("!HHHH", self.sport, self.dport, length, 0) + self.payload
        pseudo = src + dst + struct.pack("!IxxxB", length, UDP)
        checksum = internet_checksum(pseudo + udp) or 0xFFFF  # RFC 768: zero is sent as ones
        ip = struct.pack("!IHBB", 6 << 28, length, UDP, 64) + src + dst
        return ip + udp[:6] + checksum.to_bytes(2, "big") + udp[8:]


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


MORE_FRAGMENTS, FRAGMENT_OFFSET = 0x2000, 0x1FFF
UDP = 17
# RFC 8200 4: extension headers whose length is (8-octet units beyond the first 8) at byte 1
# (Hop-by-Hop 0, Routing 43, Destination Options 60; RFC 7401 HIP 139, RFC 6275 Mobility 135,
# RFC 5533 Shim6 140), and AH (51), whose length counts 4-octet units beyond the first 8.
IPV6_EXTENSIONS = {0, 43, 60, 135, 139, 140}
IPV6_FRAGMENT, IPV6_AH = 44, 51
MAX_EXTENSIONS = 8  # more than any real packet carries: a chain of them is a lever, not a path


def parse_datagram(packet: bytes) -> Datagram:
    """IPv4 or IPv6 + UDP headers (RFC 791, RFC 8200, RFC 768); raises ParseError, for an
    IP fragment too."""
    if packet and packet[0] >> 4 == 6:
        return _parse6(packet)
    if len(packet) < 28 or packet[0] >> 4 != 4:
        raise ParseError("not an IP packet")
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + 8 or packet[9] != UDP:
        raise ParseError("not a UDP datagram")
    if int.from_bytes(packet[6:8], "big") & (MORE_FRAGMENTS | FRAGMENT_OFFSET):
        raise ParseError("an IP fragment: the member should have reassembled it")
    sport, dport, ulen = struct.unpack_from("!HHH", packet, ihl)
    if ulen < 8 or ihl + ulen > len(packet):
        raise ParseError("bad UDP length")
    src = ".".join(str(b) for b in packet[12:16])
    dst = ".".join(str(b) for b in packet[16:20])
    return Datagram(src, sport, dst, dport, packet[ihl + 8:ihl + ulen])


def _parse6(packet: bytes) -> Datagram:
    if len(packet) < 48:
        raise ParseError("truncated IPv6 packet")
    payload_length = int.from_bytes(packet[4:6], "big")
    if payload_length == 0:
        raise ParseError("IPv6 jumbogram or empty payload")
    if 40 + payload_length > len(packet):
        raise ParseError("IPv6 payload length beyond the packet")
    end = 40 + payload_length
    header, offset = packet[6], 40
    for _ in range(MAX_EXTENSIONS + 1):
        if header == UDP:
            break
        if header == IPV6_FRAGMENT:
            raise ParseError("an IPv6 fragment: the member should have reassembled it")
        if header not in IPV6_EXTENSIONS and header != IPV6_AH:
            raise ParseError("not a UDP datagram")
        if offset + 8 > end:
            raise ParseError("truncated IPv6 extension header")
        length = (packet[offset + 1] + 2) * 4 if header == IPV6_AH else (packet[offset + 1] + 1) * 8
        header, offset = packet[offset], offset + length
    else:
        raise ParseError("too many IPv6 extension headers")
    if offset + 8 > end:
        raise ParseError("truncated IPv6 extension header")
    sport, dport, ulen = struct.unpack_from("!HHH", packet, offset)
    if ulen < 8 or offset + ulen > end:
        raise ParseError("bad UDP length")
    return Datagram(str(IPv6Address(packet[8:24])), sport, str(IPv6Address(packet[24:40])),
                    dport, packet[offset + 8:offset + ulen])
