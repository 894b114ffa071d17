"""What goes into the agent's state machine and what comes out of it.

`Agent.handle(event, now)` takes one event and returns the actions it decided on, in order.
Events are facts the shell observed (a packet was queued, a sync datagram arrived, charon
said something, time passed); actions are what the shell must do (a verdict, a datagram to a
member, a packet written back into the stack, routes, a ping). Nothing here does I/O.
"""

from dataclasses import dataclass, field

# ---- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketQueued:
    """NFQUEUE holds an IKE packet until a verdict names `ref` (the shell's handle for it)."""

    ref: object
    data: bytes  # the IPv4 packet
    inbound: bool  # from a peer (PREROUTING), or from our own charon (OUTPUT)
    arrival_ns: int  # monotonic clock, for the forwarding latency


@dataclass(frozen=True, slots=True)
class SyncArrived:
    """A datagram on the sync port, not yet authenticated."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: timeouts, heartbeats, expiry, re-advertisement (each when it is due)."""


@dataclass(frozen=True, slots=True)
class CharonSaid:
    """A vici event of our own charon (`ike-updown`, `ike-rekey`, ...), decoded to str."""

    name: str
    message: dict


@dataclass(frozen=True, slots=True)
class HoldingsRead:
    """The remote prefixes of the CHILD SAs our charon has INSTALLED, read after its events;
    `installed`: (initiator SPI of their IKE SA, prefix) pairs."""

    prefixes: frozenset
    installed: frozenset = frozenset()


@dataclass(frozen=True, slots=True)
class DrainAsked:
    """The lab asks this member to hand all its tunnels over and then stop serving (`drain`
    True), or to serve again (False)."""

    drain: bool


@dataclass(frozen=True, slots=True)
class StaleSasEnded:
    """The shell ended the IKE SAs an `EndStaleSas` asked for: how many went, how many stale
    ones are still there (0 when charon is gone: it holds nothing to serve with anyway; -1
    when they could not be counted: the join is tried again), the initiator SPIs of the IKE
    SAs charon still holds (those it was asked to keep), and of those that are established,
    how many seconds ago each came up."""

    attempt: int
    dropped: int
    left: int
    held: frozenset = frozenset()
    up: dict = field(default_factory=dict)


# ---- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """Let the queued packet through: charon gets it (inbound) or the peer does (outbound)."""

    ref: object


@dataclass(frozen=True, slots=True)
class Drop:
    ref: object


@dataclass(frozen=True, slots=True)
class Send:
    """An encoded, authenticated sync message for member `to` (index)."""

    to: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Inject:
    """Write a packet another member forwarded into our own stack, as if it came from the peer
    (addresses and ports unchanged): charon answers the peer itself."""

    packet: bytes
    destination: str


@dataclass(frozen=True, slots=True)
class SteerRoutes:
    """Make the kernel's steering routes exactly these: prefix -> member index to route via."""

    routes: dict = field(hash=False)


@dataclass(frozen=True, slots=True)
class HoldEsp:
    """Queue ESP from exactly these peer addresses to us (PacketQueued, inbound), and no
    other ESP: a tunnel this member is bringing up may carry the peer's first packets before
    our charon has installed its CHILD SA."""

    addresses: frozenset


@dataclass(frozen=True, slots=True)
class EndStaleSas:
    """End every IKE SA our charon holds whose initiator SPI is not in `keep`, and answer
    with StaleSasEnded(attempt, ...)."""

    keep: frozenset
    attempt: int


@dataclass(frozen=True, slots=True)
class Initiate:
    """Have our charon initiate `connection` (its CHILD SA too) to `peer`, and return at once:
    the SA's events say how it went."""

    connection: str
    peer: str


@dataclass(frozen=True, slots=True)
class EndSa:
    """Have our charon end the IKE SA with this initiator SPI, telling the peer (DELETE)."""

    ispi: bytes


@dataclass(frozen=True, slots=True)
class Log:
    text: str


@dataclass(frozen=True, slots=True)
class Trace:
    """A decision for the member's trace (`trace`): `decision` (delivered, forwarded, claimed,
    ...), the IKE packet it was about, if any (the shell reads its header when it writes the
    line, off the packet's path), and the rest as (name, value) pairs: to whom, why, the key."""

    decision: str
    packet: bytes | None = None
    inbound: bool = True
    detail: tuple = ()
