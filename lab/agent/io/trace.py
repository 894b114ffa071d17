"""The agent's decision trace: one JSON object per line in `trace_<member>.jsonl`.

Every line has `t` (wall clock, seconds, like a pcap's timestamps, so a trace and a capture
line up), `member` and `decision`:

    delivered   an IKE packet went to our own charon (we own its key)
    sent        our charon's IKE packet went out to the peer
    forwarded   the packet went over the sync network to its owner (`to`)
    injected    a packet another member forwarded (`from`) went into our stack
    claimed     an unknown key's first packet waits for its director's grant (`director`)
    lookup      a packet of an unknown key waits for its director's answer (`director`)
    dropped     the packet went nowhere (`why`)
    announced   as a key's director: who owns it (`key`, `owner`)
    granted     as a key's director: a claimant learns the owner (`key`, `owner`, `to`)
    expired     a half-open or rekeyed entry's time ran out (`key`, `owner`)
    installed   our charon installed a CHILD SA (`peer`, `ispi` of its IKE SA, `child`,
                `spi_in`, `spi_out`)
    member-died another member left the live set (`who`, `why`)
    takeover    we re-initiate a dead owner's tunnel to a peer (`peer`: its address, `name`)
    handover    we initiate a draining or overloaded member's tunnel to a peer (the same)
    sync        a sync message of one IKE SA's ownership went out (`type`: claim, grant,
                announce, ack, lookup, answer, established, rekey, delete; `to`, `key`,
                `owner`): with the other members' lines, the cluster's own protocol

A line about a packet also has `dir` ("in" from the peer, "out" from our charon), `peer` (its
address as the cluster sees it), `port`, and, when it is IKE: `version`, `exchange`, `msgid`,
`response` (IKEv2's R flag; IKEv1 has none), `ispi`, `rspi` and `key` (the table's key).

A flood makes lines as fast as it makes packets: the file is bounded (`TraceFile`).
"""

import json
import os
import struct

from ..protocol import ike
from ..protocol.ownership import Key

PORTS = struct.Struct("!HH")

MAX_BYTES = 32 << 20  # then the file starts afresh, the old one kept as `<name>.1`


def packet_fields(packet: bytes, inbound: bool) -> dict:
    """What a trace line (or a ladder) says about an IKE packet over UDP, IPv4 or IPv6; {}
    when the packet is not one (a malformed one was dropped for that reason, and its line
    says why)."""
    try:
        dgram = ike.parse_datagram(packet)
        port = dgram.dport if inbound else dgram.sport
        fields = {"dir": "in" if inbound else "out", "peer": dgram.src if inbound else dgram.dst,
                  "port": port}
        data = ike.ike_payload(port, dgram.payload)
        if data is None:
            return fields
        header = ike.parse_header(data)
    except ike.ParseError:
        return {}
    fields.update(version=header.major, exchange=header.exchange_name, msgid=header.msgid,
                  response=header.is_response, ispi=header.ispi.hex(), rspi=header.rspi.hex(),
                  key=str(Key(header.ispi, header.msgid, header.requester)))
    return fields


def trace_line(decision: str, packet: bytes | None, inbound: bool, detail: tuple,
               member: str, t: float) -> str:
    """One line of the trace (with its newline). Built by hand, not by json.dumps over
    `packet_fields`: it runs for every IKE packet, and this is a third of the cost; only the
    free-text details go through json."""
    line = f'{{"t":{t:.6f},"member":"{member}","decision":"{decision}"'
    if packet is not None:
        line += _packet_json(packet, inbound)
    for name, value in detail:
        if value is not None:
            line += f',"{name}":{json.dumps(value)}'
    return line + "}\n"


def _packet_json(packet: bytes, inbound: bool) -> str:
    """`packet_fields` as JSON members (each with its leading comma), for a packet the agent
    has parsed already: only offsets are read here; anything odd falls back."""
    try:
        ihl = (packet[0] & 0x0F) * 4
        sport, dport = PORTS.unpack_from(packet, ihl)
        port = dport if inbound else sport
        start = ihl + 8 + (4 if port == ike.NATT_PORT else 0)
        if len(packet) < start + ike.HEADER_LEN or (
                port == ike.NATT_PORT and packet[ihl + 8:start] != ike.NON_ESP_MARKER):
            raise ValueError("not IKE")
        ispi, rspi, _next, version, exchange, flags, msgid, _length = \
            ike.HEADER.unpack_from(packet, start)
    except (IndexError, struct.error, ValueError):
        return "".join(f',"{k}":{json.dumps(v)}' for k, v in packet_fields(packet,
                                                                             inbound).items())
    # ike.IkeHeader's rules, inline: building the object costs more than the rest here.
    major = version >> 4
    if major == 2:
        name = ike.IKEV2_EXCHANGES.get(exchange)
        response = bool(flags & ike.FLAG_RESPONSE)
        requester = "i" if bool(flags & ike.FLAG_INITIATOR) != response else "r"
    else:
        name = ike.IKEV1_EXCHANGES.get(exchange)
        response = False
        requester = "i" if msgid == 0 else "-"
    peer = packet[12:16] if inbound else packet[16:20]
    spi = ispi.hex()
    return (f',"dir":"{"in" if inbound else "out"}","peer":"{peer[0]}.{peer[1]}.{peer[2]}.'
            f'{peer[3]}","port":{port},"version":{major},'
            f'"exchange":"{name or f"exchange {exchange}"}","msgid":{msgid},'
            f'"response":{"true" if response else "false"},"ispi":"{spi}",'
            f'"rspi":"{rspi.hex()}","key":"{spi}/{msgid}/{requester}"')


def read_trace(path) -> list[dict]:
    """A trace file's lines (its rotated predecessor's first), skipping any line that is not
    a JSON object (a member killed mid-write leaves half a line)."""
    lines = []
    for name in (f"{path}.1", str(path)):
        try:
            text = open(name, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        for raw in text.splitlines():
            try:
                value = json.loads(raw)
            except ValueError:
                continue
            if (isinstance(value, dict) and isinstance(value.get("t"), (int, float))
                    and isinstance(value.get("decision"), str)
                    and isinstance(value.get("member"), str)):
                lines.append(value)
    return lines


class TraceFile:
    """Appends trace lines, at most MAX_BYTES per file: past it the file is renamed to
    `<name>.1` (replacing the previous one) and a new one begins."""

    def __init__(self, path: str, max_bytes: int = MAX_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self.pending: list[str] = []
        self.lines = 0
        self.rotations = 0
        self.file = open(path, "a", encoding="utf-8")
        self.size = self.file.tell()

    def add(self, line: str) -> None:
        self.pending.append(line)

    def flush(self) -> None:
        """Write what was added since the last flush."""
        if not self.pending:
            return
        text = "".join(self.pending)
        self.lines += len(self.pending)
        self.pending.clear()
        if self.size + len(text) > self.max_bytes:
            self.file.close()
            os.replace(self.path, f"{self.path}.1")
            self.rotations += 1
            self.file = open(self.path, "a", encoding="utf-8")
            self.size = 0
        self.file.write(text)
        self.file.flush()
        self.size += len(text)

    def close(self) -> None:
        self.flush()
        self.file.close()
