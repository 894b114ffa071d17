"""Sync messages between members: a fixed layout, HMAC-SHA256, and a replay window.

Every message is `header | body | payload | MAC`:

    header  magic "IKLB", version (VERSION), type, sender (member index), pad, sequence
            number (64 bit), when the sender sent it (wall clock, ms; 0: not said)
    body    initiator SPI (8), Message ID (4), requester (1), owner (member index, 0 = none),
            state (1), tag (4, matches answers to requests), responder SPI (8), the peer's
            address (16: IPv6, or IPv4 as IPv4-mapped ::ffff:a.b.c.d; zero when unknown),
            its UDP port (2) and flags (1: bit 0, the
            peer is behind a NAT): where a survivor finds the peer to take its tunnel over
    payload FORWARD: arrival time (ns, 8) + the original IP packet; REKEY: the old initiator SPI;
            ESTABLISHED: empty (the SA came up as it was sent) or when it came up (wall ms, 8);
            ROUTES: the prefixes the sender holds outbound CHILD SAs for, each its IP
            version (1), prefix length (1) and network address (4 or 16): a crowd member's
            thousands fit one datagram;
            HEARTBEAT: the sender's membership state, the members it hears (bitmap), its
            incarnation (its first sequence number: a restart changes it), the count and
            digest of the established IKE SAs it owns; WITNESS_PING: the same as a
            HEARTBEAT; WITNESS_ANSWER: the members the witness backs (bitmap); SNAPSHOT and
            OWNED: table entries (ENTRY each); SNAPSHOT_END and OWNED_END: how many entries
            were sent
    MAC     HMAC-SHA256 over everything before it, under the cluster key

Types: CLAIM (member -> director; `owner` is the claimant when it must own the key because its own
charon sent the packet, 0 when the director may give it to the peer's existing owner), GRANT
(director -> claimant, after every ACK), ANNOUNCE (director -> all) and ACK, LOOKUP / ANSWER (owner
unknown here), FORWARD (an IKE packet for its owner), ESTABLISHED / REKEY / DELETE (the owner, from
charon's events, to all), ROUTES (a member's outbound CHILD SA prefixes, for the data plane's
steering routes), HEARTBEAT (every member to all, `membership`), SNAPSHOT_REQUEST / SNAPSHOT /
SNAPSHOT_END (a joining member fetches the whole table; `tag` ties the answers to the request),
OWNED_REQUEST / OWNED / OWNED_END (a member whose table disagrees with a heartbeat's digest asks
the owner for the SAs it owns), WITNESS_PING / WITNESS_ANSWER (every member to the witness,
sender 0, and its answer: `tag` ties them; `owner` is 1 when the witness backs the member).
ACK carries the key and the acker's owner for it, so a director learns of a conflicting
announcement before it grants.

A receiver drops (and counts) a message that is short, foreign, forged, replayed or stale.
Replay is judged per sender with a 64-message sliding window over sequence numbers (as RFC 4303
3.4.3 does for ESP); a sender's numbers start from its start-up time in nanoseconds, so a
restarted member never reuses them. A window forgets with a restart, so the receiver also
refuses a message sent longer ago than it allows (`max_age`; the members' clocks agree, as NTP
makes them, or as one host's do in the lab): an old heartbeat replayed to a member that just
restarted cannot make a dead member look alive. The time a message says it was sent is also
when its sender was last heard of (`membership`), not when it happened to be read.
"""

import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import NamedTuple

from .ownership import Key

MAGIC = b"IKLB"
VERSION = 6  # 3: heartbeats carry the incarnation and the owned digest; OWNED_*; 4: ENTRY up;
# 5: ROUTES in binary; 6: addresses of either family (16 bytes)
PREFIX = struct.Struct("!BB")  # IP version, prefix length; the address follows
MAX_ROUTES = (65507 - 100) // (PREFIX.size + 4)  # IPv4 prefixes one ROUTES datagram carries
HEADER = struct.Struct("!4sBBBxQQ")
BODY = struct.Struct("!8sIcBBI8s16sHB")
NAT_FLAG = 0x01
MAC_LEN = 32
MIN_LEN = HEADER.size + BODY.size + MAC_LEN
WINDOW = 64

(CLAIM, GRANT, ANNOUNCE, ACK, LOOKUP, ANSWER, FORWARD, DELETE, REKEY, ESTABLISHED,
 ROUTES, HEARTBEAT, SNAPSHOT_REQUEST, SNAPSHOT, SNAPSHOT_END, OWNED_REQUEST, OWNED,
 OWNED_END, WITNESS_PING, WITNESS_ANSWER) = range(1, 21)
WITNESS = 0  # the witness's index on the sync network: it speaks sync messages too
TYPE_NAMES = {CLAIM: "claim", GRANT: "grant", ANNOUNCE: "announce", ACK: "ack",
              LOOKUP: "lookup", ANSWER: "answer", FORWARD: "forward", DELETE: "delete",
              REKEY: "rekey", ESTABLISHED: "established", ROUTES: "routes",
              HEARTBEAT: "heartbeat", SNAPSHOT_REQUEST: "snapshot-request",
              SNAPSHOT: "snapshot", SNAPSHOT_END: "snapshot-end",
              OWNED_REQUEST: "owned-request", OWNED: "owned", OWNED_END: "owned-end",
              WITNESS_PING: "witness-ping", WITNESS_ANSWER: "witness-answer"}
# One table entry in a SNAPSHOT: initiator SPI, Message ID, requester, owner, state,
# responder SPI (zero when unknown), the peer's address (16, as in the body), its port and flags
# (as in the body), age in milliseconds, and when the owner says the IKE SA came up (wall
# clock, ms; 0: not up).
ENTRY = struct.Struct("!8sIcBB8s16sHBIQ")
ENTRIES_PER_SNAPSHOT = 24  # 1.4 KB: one unfragmented datagram
# The sender's membership state code, bitmap of live members, incarnation, and the count and
# digest of the established IKE SAs it owns (`OwnershipTable.owned`).
HEARTBEAT_BODY = struct.Struct("!BIQIQ")
STATE_CODES = {"": 0, "negotiating": 1, "established": 2, "rekeyed": 3}
STATE_NAMES = {v: k for k, v in STATE_CODES.items()}


class SyncError(ValueError):
    """A message to drop; `reason` names the counter: short, foreign, mac, replay, stale,
    type."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    type: int
    sender: int
    seq: int = 0
    ispi: bytes = b"\0" * 8
    msgid: int = 0
    requester: str = "i"
    owner: int = 0
    state: str = ""
    tag: int = 0
    rspi: bytes = b"\0" * 8
    peer: str | None = None
    port: int = 0  # the peer's UDP port (0 when unknown)
    nat: bool = False  # the peer is behind a NAT
    payload: bytes = b""
    sent: float = 0.0  # when its sender sent it, wall clock seconds (0: not said)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type]

    @property
    def sent_ms(self) -> int:
        """`sent` in whole milliseconds, as the header carries it (0: not said)."""
        return round(self.sent * 1000)


class Codec:
    """Encodes this member's messages and checks everyone's, under one cluster key."""

    def __init__(self, key: bytes, me: int, first_seq: int):
        self.key = key
        self.me = me
        self.next_seq = first_seq
        self.windows: dict[int, tuple[int, int]] = {}  # sender -> (highest seq, bitmap)

    def encode(self, msg: Message, wall: float | None = None) -> bytes:
        """`msg` as bytes from this member, with the next sequence number, the time `wall`
        (the wall clock now, seconds) and the MAC."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        sent = int(wall * 1000) if wall else 0
        data = (HEADER.pack(MAGIC, VERSION, msg.type, self.me, seq, sent)
                + BODY.pack(msg.ispi, msg.msgid, msg.requester.encode(), msg.owner,
                            STATE_CODES[msg.state], msg.tag, msg.rspi,
                            pack_address(msg.peer),
                            msg.port, NAT_FLAG if msg.nat else 0)
                + msg.payload)
        return data + hmac.new(self.key, data, hashlib.sha256).digest()

    def decode(self, data: bytes, wall: float | None = None,
               max_age: float | None = None) -> Message:
        """The message in `data`; raises SyncError (and advances no window) when it is bad:
        with `wall` (the wall clock now) and `max_age`, also when it was sent longer ago than
        that (or as far in the future: a clock gone wrong)."""
        if len(data) < MIN_LEN:
            raise SyncError("short")
        magic, version, mtype, sender, seq, sent = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise SyncError("foreign")
        body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
        if not hmac.compare_digest(mac, hmac.new(self.key, body, hashlib.sha256).digest()):
            raise SyncError("mac")
        if mtype not in TYPE_NAMES:
            raise SyncError("type")
        (ispi, msgid, requester, owner, state, tag, rspi, peer, port,
         flags) = BODY.unpack_from(data, HEADER.size)
        if state not in STATE_NAMES or requester not in (b"i", b"r", b"-"):
            raise SyncError("type")
        if wall is not None and max_age is not None and sent and abs(
                wall - sent / 1000) > max_age:
            raise SyncError("stale")
        if not self._fresh(sender, seq):
            raise SyncError("replay")
        return Message(mtype, sender, seq, ispi, msgid, requester.decode(), owner,
                       STATE_NAMES[state], tag, rspi,
                       unpack_address(peer), port, bool(flags & NAT_FLAG), body[HEADER.size + BODY.size:], sent / 1000)

    def _fresh(self, sender: int, seq: int) -> bool:
        """Anti-replay: accept each sequence number once, within WINDOW of the highest seen."""
        top, bitmap = self.windows.get(sender, (0, 0))
        if seq > top:
            shift = seq - top
            bitmap = ((bitmap << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.windows[sender] = (seq, bitmap)
            return True
        offset = top - seq
        if offset >= WINDOW or bitmap >> offset & 1:
            return False
        self.windows[sender] = (top, bitmap | 1 << offset)
        return True


NO_ADDRESS = bytes(16)
MAPPED = bytes(10) + b"\xff\xff"  # RFC 4291 2.5.5.2: an IPv4 address inside an IPv6 one


def pack_address(address: str | None) -> bytes:
    """16 bytes for an address of either family (IPv4 mapped into IPv6); zero for None."""
    if not address:
        return NO_ADDRESS
    parsed = ip_address(address)
    return MAPPED + parsed.packed if parsed.version == 4 else parsed.packed


def unpack_address(data: bytes) -> str | None:
    """The address in 16 bytes, as text in its own family; None for zero."""
    if data == NO_ADDRESS:
        return None
    if data[:12] == MAPPED:
        return str(IPv4Address(data[12:]))
    return str(IPv6Address(data))


def encode_prefixes(prefixes) -> bytes:
    """ROUTES payload for prefixes of either family ("10.2.1.0/24", "2001:db8:2:1::/64"),
    in sorted order."""
    out = bytearray()
    for prefix in sorted(prefixes):
        address, _, length = prefix.partition("/")
        network = ip_address(address)
        out += PREFIX.pack(network.version, int(length or network.max_prefixlen))
        out += network.packed
    return bytes(out)


def decode_prefixes(payload: bytes) -> frozenset:
    """The prefixes in a ROUTES payload; SyncError when it is not a whole number of them or
    one is not a prefix."""
    result, offset = set(), 0
    while offset < len(payload):
        if offset + PREFIX.size > len(payload):
            raise SyncError("type")
        version, length = PREFIX.unpack_from(payload, offset)
        size = {4: 4, 6: 16}.get(version)
        if size is None or length > size * 8 or offset + PREFIX.size + size > len(payload):
            raise SyncError("type")
        packed = payload[offset + PREFIX.size:offset + PREFIX.size + size]
        address = IPv4Address(packed) if size == 4 else IPv6Address(packed)
        result.add(f"{address}/{length}")
        offset += PREFIX.size + size
    return frozenset(result)


def encode_entries(entries) -> bytes:
    """SNAPSHOT payload for (Key-like, owner index, state, rspi, peer, port, nat, age s,
    up ms) tuples."""
    out = bytearray()
    for key, owner, state, rspi, peer, port, nat, age, up_ms in entries:
        # round, not int: 1.001 * 1000 is 1000.9999999999999, and the age would lose a ms.
        out += ENTRY.pack(key.ispi, key.msgid, key.requester.encode(), owner,
                          STATE_CODES[state], rspi or b"\0" * 8,
                          pack_address(peer), port,
                          NAT_FLAG if nat else 0, min(round(age * 1000), 0xFFFFFFFF), up_ms)
    return bytes(out)


class SnapshotEntry(NamedTuple):
    """One table entry as a SNAPSHOT or OWNED message carries it."""

    ispi: bytes
    msgid: int
    requester: str
    owner: int  # member index
    state: str
    rspi: bytes | None
    peer: str | None
    port: int
    nat: bool
    age: float  # seconds since the sender first recorded it
    up_ms: int  # wall clock ms when its IKE SA came up, per its owner (0: not up)

    @property
    def key(self) -> Key:
        return Key(self.ispi, self.msgid, self.requester)


def decode_entries(payload: bytes) -> list[SnapshotEntry]:
    """The entries in a SNAPSHOT or OWNED payload; raises SyncError('malformed') for a
    payload that is not whole entries."""
    if len(payload) % ENTRY.size:
        raise SyncError("malformed")
    result = []
    for offset in range(0, len(payload), ENTRY.size):
        (ispi, msgid, requester, owner, state, rspi, peer, port, flags,
         age, up_ms) = ENTRY.unpack_from(payload, offset)
        if state not in STATE_NAMES or requester not in (b"i", b"r", b"-") or not owner:
            raise SyncError("malformed")
        result.append(SnapshotEntry(ispi, msgid, requester.decode(), owner, STATE_NAMES[state],
                                    rspi if rspi != b"\0" * 8 else None, unpack_address(peer),
                                    port, bool(flags & NAT_FLAG), age / 1000, up_ms))
    return result


class Heartbeat(NamedTuple):
    """What a HEARTBEAT says."""

    state: int  # membership state code
    live: set  # the member indexes the sender hears itself
    incarnation: int = 0  # the sender's first sequence number: new after every restart
    owned: int = 0  # how many established IKE SAs the sender owns
    digest: int = 0  # and their digest (`OwnershipTable.owned`)


def encode_heartbeat(state_code: int, live: set[int], incarnation: int = 0, owned: int = 0,
                     digest: int = 0) -> bytes:
    return HEARTBEAT_BODY.pack(state_code, encode_members(live), incarnation, owned, digest)


def decode_heartbeat(payload: bytes) -> Heartbeat:
    """The heartbeat in `payload`; SyncError('malformed') if it is not one."""
    if len(payload) != HEARTBEAT_BODY.size:
        raise SyncError("malformed")
    code, bitmap, incarnation, owned, digest = HEARTBEAT_BODY.unpack(payload)
    return Heartbeat(code, decode_members(bitmap), incarnation, owned, digest)


def encode_members(members: set[int]) -> int:
    """A set of member indexes (0-31) as a bitmap."""
    return sum(1 << i for i in members if 0 <= i < 32)


def decode_members(bitmap: int) -> set[int]:
    return {i for i in range(32) if bitmap >> i & 1}
