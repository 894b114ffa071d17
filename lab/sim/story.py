"""A failing run's last events in words: which member got which IKE message or sync message,
what a fault did. Only a failure pays for this; a run keeps the raw events."""

from lab.agent.protocol import ike, sync
from lab.agent.protocol.events import PacketQueued, SyncArrived

from .sa import KIND_NAMES, Body
from .world import CLUSTER_KEY, SimMember, SimPeer

_CODEC = sync.Codec(bytes.fromhex(CLUSTER_KEY), 0, 0)


def ike_words(packet: bytes) -> str:
    """`203.0.113.11:500 -> 203.0.113.1:500 IKE_SA_INIT request 0 i=0b90.. r=0000..`"""
    try:
        dgram = ike.parse_datagram(packet)
        data = ike.ike_payload(dgram.dport, dgram.payload)
        if data is None:
            return f"{dgram.src}:{dgram.sport} -> {dgram.dst}:{dgram.dport} ESP"
        header = ike.parse_header(data)
    except ike.ParseError as exc:
        return f"malformed packet ({exc})"
    body = Body.decode(data[ike.HEADER_LEN:])
    kind = KIND_NAMES.get(body.kind, "?") if body else "?"
    if body and body.step:
        kind += f" #{body.step}"
    direction = "response" if header.is_response else "request"
    return (f"{dgram.src}:{dgram.sport} -> {dgram.dst}:{dgram.dport} IKEv{header.major} "
            f"{header.exchange_name} ({kind}) {direction} {header.msgid} "
            f"i={header.ispi.hex()[:8]} r={header.rspi.hex()[:8]}")


def sync_words(data: bytes) -> str:
    try:
        msg = _CODEC.decode(data)
    except sync.SyncError as err:
        return f"sync datagram dropped as {err.reason}"
    finally:
        _CODEC.windows.clear()
    fields = [f"m{msg.sender} {msg.type_name.upper()}"]
    if msg.type not in (sync.HEARTBEAT, sync.ROUTES, sync.SNAPSHOT, sync.SNAPSHOT_END,
                        sync.SNAPSHOT_REQUEST):
        fields.append(f"{msg.ispi.hex()[:8]}/{msg.msgid}/{msg.requester}")
    if msg.owner:
        fields.append(f"owner m{msg.owner}")
    if msg.tag:
        fields.append(f"tag {msg.tag}")
    if msg.type == sync.FORWARD:
        fields.append(ike_words(msg.payload[8:]))
    return " ".join(fields)


def _arg(value) -> str:
    if isinstance(value, SimMember):
        return value.name
    if isinstance(value, SimPeer):
        return value.name
    if isinstance(value, (bytes, bytearray)):
        if value[:4] == sync.MAGIC:
            return sync_words(bytes(value))
        if value[:1] and value[0] >> 4 == 4:
            return ike_words(bytes(value))
        return value.hex()[:16]
    if isinstance(value, PacketQueued):
        return ("in " if value.inbound else "out ") + ike_words(value.data)
    if isinstance(value, SyncArrived):
        return sync_words(value.data)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return repr(value)
    return type(value).__name__


def describe(world, when: float, action, args: tuple) -> str:
    name = getattr(action, "__name__", type(action).__name__)
    if name == "_guarded" and len(args) == 3:  # a charon's timer
        name, args = getattr(args[1], "__name__", "timer"), args[2]
    shown = ", ".join(_arg(a) for a in args if not isinstance(a, int) or isinstance(a, bool))
    return f"{when:10.4f}  {name}({shown})"
