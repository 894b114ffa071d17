"""Sync messages between members: a fixed layout, HMAC-SHA256, and a replay window.

Every message is `header | body | payload | MAC`:

    header  magic "IKLB", version 1, type, sender (member index), pad, sequence number (64 bit)
    body    initiator SPI (8), Message ID (4), requester (1), owner (member index, 0 = none),
            state (1), tag (4, matches answers to requests), responder SPI (8), the peer's
            IPv4 address (4, zero when unknown)
    payload FORWARD: arrival time (ns, 8) + the original IP packet; REKEY: the old initiator SPI;
            ROUTES: the prefixes the sender holds outbound CHILD SAs for, comma-separated
    MAC     HMAC-SHA256 over everything before it, under the cluster key

Types: CLAIM (member -> director; `owner` is the claimant when it must own the key because its
own charon sent the packet, 0 when the director may give it to the peer's existing owner), GRANT (director -> claimant, after every ACK), ANNOUNCE
(director -> all) and ACK, LOOKUP / ANSWER (owner unknown here), FORWARD (an IKE packet for its
owner), ESTABLISHED / REKEY / DELETE (the owner, from charon's events, to all), ROUTES (a member's
outbound CHILD SA prefixes, for the data plane's steering routes).

A receiver drops (and counts) a message that is short, foreign, forged, or replayed. Replay is
judged per sender with a 64-message sliding window over sequence numbers (as RFC 4303 3.4.3
does for ESP); a sender's numbers start from its start-up time in nanoseconds, so a restarted
member never reuses them.
"""

import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

MAGIC = b"IKLB"
VERSION = 1
HEADER = struct.Struct("!4sBBBxQ")
BODY = struct.Struct("!8sIcBBI8s4s")
MAC_LEN = 32
MIN_LEN = HEADER.size + BODY.size + MAC_LEN
WINDOW = 64

(CLAIM, GRANT, ANNOUNCE, ACK, LOOKUP, ANSWER, FORWARD, DELETE, REKEY, ESTABLISHED,
 ROUTES) = range(1, 12)
TYPE_NAMES = {CLAIM: "claim", GRANT: "grant", ANNOUNCE: "announce", ACK: "ack",
              LOOKUP: "lookup", ANSWER: "answer", FORWARD: "forward", DELETE: "delete",
              REKEY: "rekey", ESTABLISHED: "established", ROUTES: "routes"}
STATE_CODES = {"": 0, "negotiating": 1, "established": 2, "rekeyed": 3}
STATE_NAMES = {v: k for k, v in STATE_CODES.items()}


class SyncError(ValueError):
    """A message to drop; `reason` names the counter: short, foreign, mac, replay, type."""

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
    payload: bytes = b""

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type]


class Codec:
    """Encodes this member's messages and checks everyone's, under one cluster key."""

    def __init__(self, key: bytes, me: int, first_seq: int):
        self.key = key
        self.me = me
        self.next_seq = first_seq
        self.windows: dict[int, tuple[int, int]] = {}  # sender -> (highest seq, bitmap)

    def encode(self, msg: Message) -> bytes:
        """`msg` as bytes from this member, with the next sequence number and the MAC."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        data = (HEADER.pack(MAGIC, VERSION, msg.type, self.me, seq)
                + BODY.pack(msg.ispi, msg.msgid, msg.requester.encode(), msg.owner,
                            STATE_CODES[msg.state], msg.tag, msg.rspi,
                            IPv4Address(msg.peer).packed if msg.peer else b"\0" * 4)
                + msg.payload)
        return data + hmac.new(self.key, data, hashlib.sha256).digest()

    def decode(self, data: bytes) -> Message:
        """The message in `data`; raises SyncError (and advances no window) when it is bad."""
        if len(data) < MIN_LEN:
            raise SyncError("short")
        magic, version, mtype, sender, seq = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise SyncError("foreign")
        body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
        if not hmac.compare_digest(mac, hmac.new(self.key, body, hashlib.sha256).digest()):
            raise SyncError("mac")
        if mtype not in TYPE_NAMES:
            raise SyncError("type")
        ispi, msgid, requester, owner, state, tag, rspi, peer = BODY.unpack_from(data,
                                                                                HEADER.size)
        if state not in STATE_NAMES or requester not in (b"i", b"r", b"-"):
            raise SyncError("type")
        if not self._fresh(sender, seq):
            raise SyncError("replay")
        return Message(mtype, sender, seq, ispi, msgid, requester.decode(), owner,
                       STATE_NAMES[state], tag, rspi,
                       str(IPv4Address(peer)) if peer != b"\0" * 4 else None,
                       body[HEADER.size + BODY.size:])

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
