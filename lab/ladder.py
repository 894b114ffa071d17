"""One peer's IKE negotiations across the cluster, as a ladder (sequence) diagram's model.

Lanes: the peer, the hashing switch, every member. Arrows: every IKE message between the peer
and a member (through the switch), labelled with its exchange, request or response, and
Message ID; a forward over the sync network from the member the switch chose to the owner;
what went nowhere. The member that holds the IKE SA at the end is the `holder`.

What each member saw comes from its agent's trace (`lab.agent.trace`: every IKE packet and
what the agent decided) or, for a member without one (`--no-agent`, `--no-trace`), from the
capture of its switch port (`lab.captures`). Without an agent a message can land on a member
that has no IKE SA for it: its charon ignores it and the peer retransmits into the void; the
ladder marks those (`VOID`).

`build` is pure (events in, lanes and arrows out); `load` reads a kept run's files.
"""

from dataclasses import dataclass, field
from pathlib import Path

# Arrow kinds
REQUEST, RESPONSE, MESSAGE = "request", "response", "message"  # MESSAGE: IKEv1 (no R flag)
FORWARD = "forward"  # member to member over the sync network
VOID = "void"  # landed on a member with no IKE SA for it, and nothing answered
DROPPED = "dropped"  # the agent dropped it (`note` says why)
SWITCH = "switch"
FINAL = ("delivered", "forwarded", "dropped", "sent")  # what becomes of a parked packet
PARKED = ("claimed", "lookup")
ZERO_SPI = "0" * 16
PACKET_FIELDS = ("dir", "peer", "port", "version", "exchange", "msgid", "response", "ispi",
                 "rspi", "key")


class LadderError(ValueError):
    """A run's files cannot be read into a ladder; one line."""


@dataclass(frozen=True)
class Seen:
    """One IKE packet at one member: `fields` as `lab.agent.trace.packet_fields` gives them;
    `decision` the agent's (None from a capture), `detail` the rest of its trace line."""

    t: float
    member: str
    fields: dict = field(hash=False)
    decision: str | None = None
    detail: dict = field(default_factory=dict, hash=False)

    @property
    def inbound(self) -> bool:
        return self.fields.get("dir") == "in"


@dataclass(frozen=True)
class Arrow:
    t: float
    src: str
    dst: str
    label: str
    kind: str
    note: str = ""


@dataclass
class Ladder:
    peer: str
    lanes: list[str]
    arrows: list[Arrow]
    holder: str | None

    @property
    def members(self) -> list[str]:
        return self.lanes[2:]


def label(fields: dict) -> str:
    """"IKE_AUTH request #1", or for IKEv1 (no request/response flag) "Main Mode #0"."""
    if fields.get("version") == 2:
        return (f"{fields['exchange']} {'response' if fields['response'] else 'request'} "
                f"#{fields['msgid']}")
    return f"{fields['exchange']} #{fields['msgid']}"


def _signature(line: dict) -> tuple:
    return (line["member"], line.get("key"), line.get("exchange"), line.get("msgid"),
            line.get("response"), line.get("dir"))


def seen_in_trace(lines: list[dict]) -> list[Seen]:
    """The IKE packets a trace's lines are about, one `Seen` each: a packet that waited for
    its owner (claimed, lookup) is one packet, seen when it arrived, decided when released."""
    waiting: dict[tuple, list[dict]] = {}
    seen = []
    for line in sorted(lines, key=lambda line: line["t"]):
        if (not all(k in line for k in PACKET_FIELDS) or line["decision"] == "injected"
                or line["dir"] not in ("in", "out")):
            continue  # not about an IKE packet (or a line written by hand, incomplete)
        decision = line["decision"]
        if decision in PARKED:
            waiting.setdefault(_signature(line), []).append(line)
            continue
        first = line
        if decision in FINAL and waiting.get(_signature(line)):
            first = waiting[_signature(line)].pop(0)
        detail = {k: v for k, v in {**first, **line}.items()
                  if k in ("to", "why", "director", "from")}
        seen.append(Seen(first["t"], line["member"], _packet(line), decision, detail))
    for lines_left in waiting.values():  # still waiting when the trace ends
        for line in lines_left:
            seen.append(Seen(line["t"], line["member"], _packet(line), line["decision"],
                             {k: v for k, v in line.items() if k == "director"}))
    return seen


def _packet(line: dict) -> dict:
    return {k: line[k] for k in PACKET_FIELDS}


def build(peer: str, address: str, members: list[str], seen: list[Seen]) -> Ladder:
    """`peer`'s ladder (its address as the cluster sees it) from what the members saw."""
    mine = sorted((s for s in seen if s.fields.get("peer") == address and "exchange" in s.fields
                   and s.member in members), key=lambda s: s.t)
    answered_by: dict[str, set[str]] = {}  # ispi -> members that sent something of that SA
    for s in mine:
        if not s.inbound and s.decision in (None, "sent"):
            answered_by.setdefault(s.fields["ispi"], set()).add(s.member)
    arrows = []
    holder = None
    for s in mine:
        text = label(s.fields)
        plain = (RESPONSE if s.fields["response"] else REQUEST) if s.fields["version"] == 2 \
            else MESSAGE
        if not s.inbound:
            if s.decision == "dropped":
                arrows.append(Arrow(s.t, s.member, peer, text, DROPPED, s.detail.get("why", "")))
            else:
                arrows.append(Arrow(s.t, s.member, peer, text, plain))
                holder = s.member
            continue
        if s.decision == "dropped":
            arrows.append(Arrow(s.t, peer, s.member, text, DROPPED, s.detail.get("why", "")))
            continue
        answering = answered_by.get(s.fields["ispi"], set())
        if (s.decision is None and s.fields["rspi"] != ZERO_SPI and answering
                and s.member not in answering):
            arrows.append(Arrow(s.t, peer, s.member, text, VOID, "no IKE SA here"))
            continue
        note = f"claimed from {s.detail['director']}" if s.decision in PARKED or (
            "director" in s.detail) else ""
        arrows.append(Arrow(s.t, peer, s.member, text, plain, note))
        if s.decision == "forwarded" and s.detail.get("to") in members:
            arrows.append(Arrow(s.t, s.member, s.detail["to"], f"FORWARD {text}", FORWARD))
    return Ladder(peer, [peer, SWITCH] + list(members), arrows, holder)


# ---- reading a run --------------------------------------------------------------------------
def seen_in_capture(member: str, packets, vip: str | tuple[str, ...]) -> list[Seen]:
    """The IKE packets of one member port's capture: (time, IP packet bytes) pairs; inbound
    are those to `vip` (one virtual IP, or those of both IP versions)."""
    from .agent.trace import packet_fields

    vips = {vip} if isinstance(vip, str) else set(vip)
    seen = []
    for t, data in packets:
        fields = packet_fields(data, inbound=True)  # "peer": the source, so far
        if fields.get("peer") in vips:  # sent by the cluster: the peer is the destination
            fields = packet_fields(data, inbound=False)
        if "exchange" in fields:
            seen.append(Seen(float(t), member, fields))
    return seen


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(time, IP packet) of every IPv4 and IPv6 packet in a capture file; a capture cut short
    (its tcpdump killed) gives what it holds. Raises LadderError if it is no capture at all."""
    from scapy.all import IP, IPv6, PcapReader  # slow to import: only when a capture is read

    packets = []
    try:
        reader = PcapReader(str(path))
    except Exception as exc:  # noqa: BLE001 - scapy raises its own, and OSError
        raise LadderError(f"{path}: not a readable capture ({exc})") from None
    with reader:
        try:
            for packet in reader:
                for layer in (IP, IPv6):
                    if layer in packet:
                        packets.append((float(packet.time), bytes(packet[layer])))
                        break
        except Exception:  # noqa: BLE001 - a truncated last record: keep what came before
            pass
    return packets


def load(run_path: Path, members: list[str], vip: str | tuple[str, ...]) -> list[Seen]:
    """What every member saw in a run: its trace if it has one, else its capture."""
    from .agent.names import NodeFiles
    from .agent.trace import read_trace

    seen = []
    for member in members:
        lines = read_trace(NodeFiles(member, run_path).trace)
        capture = Path(run_path) / "captures" / f"external-{member}.pcap"
        if lines:
            seen += seen_in_trace(lines)
        elif capture.exists():
            seen += seen_in_capture(member, read_pcap(capture), vip)
    return seen
