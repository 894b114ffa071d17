"""One peer's IKE negotiations across the cluster, as a ladder (sequence) diagram's model.

Lanes: the peer, the hashing switch, every member, and, beside the members, the sync network:
a lane per member (`sync:m1`, ...) for the cluster's own protocol. Arrows: every IKE message
between the peer and a member (through the switch), labelled with its exchange, request or
response, Message ID and, from the peer's charon log, its payloads (`[IDi AUTH SA TSi TSr]`);
every sync message of the peer's IKE SAs from member to member (CLAIM, ANNOUNCE, ACK, GRANT,
LOOKUP, ANSWER, FORWARD, ESTABLISHED, REKEY, DELETE); what went nowhere. Each arrow has a
`title` (SPIs, Message ID, what the agent decided) for a drawing's hover text. A packet that
waited for its claim is a `Span` on its member's lane, from its arrival to its release; a CHILD
SA a member installed is a `Mark`. The member that holds the IKE SA at the end is the `holder`.
`select` keeps some members and a time window of a ladder, for a readable picture of a big lab.

What each member saw comes from its agent's trace (`lab.agent.io.trace`: every IKE packet and
what the agent decided) or, for a member without one (`--no-agent`, `--no-trace`), from the
capture of its switch port (`lab.show.captures`). Without an agent a message can land on a member
that has no IKE SA for it: its charon ignores it and the peer retransmits into the void; the
ladder marks those (`VOID`).

`build` is pure (events in, lanes and arrows out); `load` reads a kept run's files.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

# Arrow kinds
REQUEST, RESPONSE, MESSAGE = "request", "response", "message"  # MESSAGE: IKEv1 (no R flag)
FORWARD = "forward"  # member to member over the sync network
PROTOCOL = "protocol"  # a sync message of the ownership protocol (CLAIM, GRANT, ...)
SYNC_LANE = "sync:"  # a member's lane on the sync network: "sync:m1"
# Trace lines drawn besides packets: sync messages, and what happened on a member's lane
PROTOCOL_DECISIONS = ("sync", "installed", "member-died", "takeover", "handover")
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
    """One IKE packet at one member: `fields` as `lab.agent.io.trace.packet_fields` gives them;
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
    title: str = ""  # hover text: SPIs, Message ID, the agent's decision


@dataclass(frozen=True)
class Span:
    """A packet waiting on `lane` from `t0` to `t1` (a claim's round, a lookup)."""

    lane: str
    t0: float
    t1: float
    text: str


@dataclass(frozen=True)
class Mark:
    """Something that happened on `lane` at `t` (a CHILD SA installed)."""

    lane: str
    t: float
    text: str
    title: str = ""


@dataclass
class Ladder:
    peer: str
    lanes: list[str]
    arrows: list[Arrow]
    holder: str | None
    spans: list[Span] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    @property
    def members(self) -> list[str]:
        return [lane for lane in self.lanes[2:] if not lane.startswith(SYNC_LANE)]

    @property
    def sync_lanes(self) -> list[str]:
        return [lane for lane in self.lanes if lane.startswith(SYNC_LANE)]


def sync_lane(member: str) -> str:
    return f"{SYNC_LANE}{member}"


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
        if first is not line:  # it waited: for its claim's GRANT, or a lookup's ANSWER
            detail.update(released=line["t"], waited=first["decision"])
        seen.append(Seen(first["t"], line["member"], _packet(line), decision, detail))
    for lines_left in waiting.values():  # still waiting when the trace ends
        for line in lines_left:
            seen.append(Seen(line["t"], line["member"], _packet(line), line["decision"],
                             {k: v for k, v in line.items() if k == "director"}))
    return seen


def _packet(line: dict) -> dict:
    return {k: line[k] for k in PACKET_FIELDS}


def build(peer: str, address: str, members: list[str], seen: list[Seen],
          protocol: list[dict] = (), payloads: list[tuple] = ()) -> Ladder:
    """`peer`'s ladder (its address as the cluster sees it) from what the members saw;
    `protocol`: the members' trace lines of sync messages and CHILD SA installs
    (`protocol_in_trace`); `payloads`: the peer's messages as its charon logged them
    (`payloads_in_log`), which name each arrow's payloads."""
    mine = sorted((s for s in seen if s.fields.get("peer") == address and "exchange" in s.fields
                   and s.member in members), key=lambda s: s.t)
    answered_by: dict[str, set[str]] = {}  # ispi -> members that sent something of that SA
    for s in mine:
        if not s.inbound and s.decision in (None, "sent"):
            answered_by.setdefault(s.fields["ispi"], set()).add(s.member)
    names = _PayloadNames(payloads)
    arrows, spans = [], []
    holder = None
    for s in mine:
        text = label(s.fields)
        payload = names.of(s)
        title = _title(s, payload)
        if payload:
            text += f" [{short_payloads(payload)}]"
        plain = (RESPONSE if s.fields["response"] else REQUEST) if s.fields["version"] == 2 \
            else MESSAGE
        if not s.inbound:
            if s.decision == "dropped":
                arrows.append(Arrow(s.t, s.member, peer, text, DROPPED, s.detail.get("why", ""),
                                    title))
            else:
                arrows.append(Arrow(s.t, s.member, peer, text, plain, title=title))
                holder = s.member
            continue
        if s.decision == "dropped":
            arrows.append(Arrow(s.t, peer, s.member, text, DROPPED, s.detail.get("why", ""),
                                title))
            continue
        answering = answered_by.get(s.fields["ispi"], set())
        if (s.decision is None and s.fields["rspi"] != ZERO_SPI and answering
                and s.member not in answering):
            arrows.append(Arrow(s.t, peer, s.member, text, VOID, "no IKE SA here", title))
            continue
        note = f"claimed from {s.detail['director']}" if s.decision in PARKED or (
            "director" in s.detail) else ""
        arrows.append(Arrow(s.t, peer, s.member, text, plain, note, title))
        if "released" in s.detail:
            waits = ("waits for ANSWER" if s.detail.get("waited") != "claimed" else
                     "waits for ACKs" if s.detail.get("director") == s.member else
                     "waits for GRANT")
            spans.append(Span(s.member, s.t, s.detail["released"], waits))
        if s.decision == "forwarded" and s.detail.get("to") in members:
            arrows.append(Arrow(s.detail.get("released", s.t), sync_lane(s.member),
                                sync_lane(s.detail["to"]), f"FORWARD {label(s.fields)}",
                                FORWARD, title=f"FORWARD to {s.detail['to']}: {title}"))
    ispis = {s.fields["ispi"] for s in mine}
    # A claim (or lookup) goes out as its packet is parked, traced a moment before the packet's
    # own line: drawn at the packet's time, it follows the arrow that caused it.
    parked_at: dict[str, float] = {}
    for s in mine:
        if "waited" in s.detail:
            parked_at.setdefault(s.fields["ispi"], s.t)
    marks = []
    for line in sorted(protocol, key=lambda line: line["t"]):
        member = line.get("member")
        if member not in members:
            continue
        if line["decision"] == "sync" and line.get("to") in members and str(
                line.get("key", "")).split("/")[0] in ispis:
            owner = f"owner {line['owner']}" if line.get("owner") else ""
            t = line["t"]
            if line.get("type") in ("claim", "lookup"):
                t = max(t, parked_at.get(str(line["key"]).split("/")[0], t))
            arrows.append(Arrow(t, sync_lane(member), sync_lane(line["to"]),
                                str(line.get("type", "?")).upper(), PROTOCOL, owner,
                                f"{str(line.get('type', '?')).upper()} {member} -> "
                                f"{line['to']}, key {line.get('key')}"
                                + (f", {owner}" if owner else "")))
        elif line["decision"] == "installed" and line.get("peer") == address:
            marks.append(Mark(member, line["t"], "CHILD SA installed",
                              f"{line.get('child')}: SPIs in {line.get('spi_in')}, out "
                              f"{line.get('spi_out')}; IKE SA {line.get('ispi')}"))
        elif line["decision"] == "member-died":
            marks.append(Mark(member, line["t"], f"{line.get('who')} dead",
                              f"{member}: {line.get('who')} {line.get('why')}"))
        elif line["decision"] in ("takeover", "handover") and line.get("peer") == address:
            what = ("takes the tunnel over (initiates, INITIAL_CONTACT)"
                    if line["decision"] == "takeover" else "takes the tunnel in a handover")
            marks.append(Mark(member, line["t"], what, f"{member} initiates to {peer}"))
    arrows.sort(key=lambda a: a.t)
    on_sync = {lane for a in arrows for lane in (a.src, a.dst) if lane.startswith(SYNC_LANE)}
    lanes = [peer, SWITCH] + list(members) + ([sync_lane(m) for m in members] if on_sync else [])
    return Ladder(peer, lanes, arrows, holder, spans, marks)


def _title(s: Seen, payloads: list[str] | None) -> str:
    """The hover text of a packet's arrow: what it is, its SPIs, what became of it."""
    verdict = {"delivered": "delivered to its charon (owned here)", "sent": "sent by its charon",
               "forwarded": f"forwarded to {s.detail.get('to')}",
               "dropped": f"dropped: {s.detail.get('why', '')}",
               None: "seen in the capture (no agent)"}.get(s.decision, s.decision)
    if "waited" in s.detail:
        verdict = f"{s.detail['waited']} from {s.detail.get('director')}, then {verdict}"
    return (f"{label(s.fields)}; SPIs {s.fields['ispi']} / {s.fields['rspi']}; Message ID "
            f"{s.fields['msgid']}; at {s.member}: {verdict}"
            + (f"; payloads {' '.join(payloads)}" if payloads else ""))


# Notifications every negotiation carries (capabilities, NAT detection): left out of a label,
# kept in its title.
ROUTINE = {"V", "N(MOBIKE_SUP)", "N(ADD_4_ADDR)", "N(ADD_6_ADDR)", "N(MULT_AUTH)", "N(EAP_ONLY)",
           "N(MSG_ID_SYN_SUP)", "N(ESP_TFC_PAD_N)", "N(NATD_S_IP)", "N(NATD_D_IP)", "N(FRAG_SUP)",
           "N(HASH_ALG)", "N(REDIR_SUP)", "N(CHDLESS_SUP)", "N(AUTH_LFT)", "N(IKE_FRAG_SUP)",
           "N(SIGN_HASH_ALGS)", "N(INT_SUP)", "N(USE_PPK)"}


def short_payloads(payloads: list[str]) -> str:
    """A message's payloads as a label shows them: the routine notifications left out."""
    return " ".join(p for p in payloads if p not in ROUTINE)


# charon's own words for a message (filelog, `enc` at its default level 1):
#   "generating IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr ]"
MESSAGE_LINE = re.compile(r"\] (?:<[^>]*> )?(?P<how>generating|parsed) (?P<exchange>[A-Z_0-9]+) "
                          r"(?P<kind>request|response) (?P<msgid>\d+) \[ (?P<payloads>.*?) ?\]$")
CHARON_EXCHANGES = {"ID_PROT": "Main Mode", "AGGRESSIVE": "Aggressive Mode",
                    "QUICK_MODE": "Quick Mode", "INFORMATIONAL_V1": "Informational",
                    "TRANSACTION": "Transaction"}


def payloads_in_log(text: str) -> list[tuple[str, str, bool, int, list[str]]]:
    """The IKE messages a peer's charon log names, in order: (direction as the ladder sees it,
    "in" for what the peer sent to the cluster, "out" for what it received; exchange as
    `label` names it; response; Message ID; payload names)."""
    result = []
    for line in text.splitlines():
        found = MESSAGE_LINE.search(line)
        if found:
            exchange = CHARON_EXCHANGES.get(found.group("exchange"), found.group("exchange"))
            result.append(("in" if found.group("how") == "generating" else "out", exchange,
                           found.group("kind") == "response", int(found.group("msgid")),
                           found.group("payloads").split()))
    return result


class _PayloadNames:
    """Hands each packet of the ladder the payloads the peer's log gave its message: IKEv2
    messages in order per (direction, exchange, R flag, Message ID), a retransmission (same
    SPI) the same as its first; IKEv1's (no R flag, one Message ID for all of Main Mode) in
    order per direction and exchange."""

    def __init__(self, payloads):
        self.queues: dict[tuple, list] = {}
        for direction, exchange, response, msgid, names in payloads:
            self.queues.setdefault((direction, exchange, response, msgid), []).append(names)
            self.queues.setdefault((direction, exchange, None, None), []).append(names)
        self.given: dict[tuple, list[str] | None] = {}

    def of(self, s: Seen) -> list[str] | None:
        f = s.fields
        if f["version"] == 2:
            once = (f["dir"], f["ispi"], f["exchange"], f["response"], f["msgid"])
            if once not in self.given:
                queue = self.queues.get((f["dir"], f["exchange"], f["response"], f["msgid"]))
                self.given[once] = queue.pop(0) if queue else None
            return self.given[once]
        queue = self.queues.get((f["dir"], f["exchange"], None, None))
        return queue.pop(0) if queue else None


def select(ladder: Ladder, members: list[str] | None = None, since: float | None = None,
           until: float | None = None) -> Ladder:
    """The part of `ladder` about `members` (default all) within [since, until] seconds after
    its first arrow: a readable picture of one corner of a big lab."""
    start = ladder.arrows[0].t if ladder.arrows else 0.0
    keep = set(members or ladder.members)
    lanes = [lane for lane in ladder.lanes[2:]
             if lane.removeprefix(SYNC_LANE) in keep]

    def inside(t: float) -> bool:
        return ((since is None or t - start >= since)
                and (until is None or t - start <= until))

    def shown(lane: str) -> bool:
        return lane in ladder.lanes[:2] or lane in lanes

    return Ladder(ladder.peer, ladder.lanes[:2] + lanes,
                  [a for a in ladder.arrows if inside(a.t) and shown(a.src) and shown(a.dst)],
                  ladder.holder if ladder.holder in keep else None,
                  [s for s in ladder.spans if shown(s.lane) and (inside(s.t0) or inside(s.t1))],
                  [m for m in ladder.marks if shown(m.lane) and inside(m.t)])


def protocol_in_trace(lines: list[dict]) -> list[dict]:
    """The trace lines a ladder draws besides packets: sync messages, CHILD SA installs, deaths,
    takeovers and handovers."""
    return [line for line in lines if line.get("decision") in PROTOCOL_DECISIONS]


# ---- reading a run --------------------------------------------------------------------------
def seen_in_capture(member: str, packets, vip: str | tuple[str, ...]) -> list[Seen]:
    """The IKE packets of one member port's capture: (time, IP packet bytes) pairs; inbound
    are those to `vip` (one virtual IP, or those of both IP versions)."""
    from ..agent.io.trace import packet_fields

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
    from ..agent.names import NodeFiles
    from ..agent.io.trace import read_trace

    seen = []
    for member in members:
        lines = read_trace(NodeFiles(member, run_path).trace)
        capture = Path(run_path) / "captures" / f"external-{member}.pcap"
        if lines:
            seen += seen_in_trace(lines)
        elif capture.exists():
            seen += seen_in_capture(member, read_pcap(capture), vip)
    return seen


def load_protocol(run_path: Path, members: list[str]) -> list[dict]:
    """The members' trace lines of sync messages and CHILD SA installs (`protocol_in_trace`)."""
    from ..agent.names import NodeFiles
    from ..agent.io.trace import read_trace

    return [line for member in members
            for line in protocol_in_trace(read_trace(NodeFiles(member, run_path).trace))]


def load_payloads(run_path: Path, peer: str) -> list[tuple]:
    """The messages `peer`'s charon logged (`payloads_in_log`); none without its log."""
    from ..agent.names import NodeFiles

    log = NodeFiles(peer, run_path).log
    try:
        return payloads_in_log(log.read_text(errors="replace"))
    except OSError:
        return []
