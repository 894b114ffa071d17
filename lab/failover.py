"""What the lab can do to its cluster while it runs: fail and restore a member, cut one off
the sync network and heal it, rehash the switches. The Mininet CLI, `ikelab run --chaos` and
the tests all go through here, so each action means the same thing everywhere.

Every function takes the running Mininet network; a bad name or option raises FailoverError
with one line for the user.
"""

from .agent.daemon import query
from .nodes import ClusterMember, SyncBridge
from .strongswan import DaemonConfigError
from .switch import HashingSwitch, SwitchError
from .topology import HASH_MODES

HOW = ("daemons", "links")


class FailoverError(ValueError):
    """An action the lab cannot take; the message is one line."""


def _member(net, name: str) -> ClusterMember:
    node = net.nameToNode.get(name)
    if not isinstance(node, ClusterMember):
        members = ", ".join(n.name for n in net.hosts if isinstance(n, ClusterMember))
        raise FailoverError(f"{name!r} is not a cluster member (members: {members})")
    return node


def _sync_bridge(net) -> SyncBridge:
    return next(n for n in net.hosts if isinstance(n, SyncBridge))


def _switches(net) -> list[HashingSwitch]:
    return [s for s in net.switches if isinstance(s, HashingSwitch)]


def fail(net, name: str, how: str = "daemons") -> None:
    """Kill `name`'s daemons (`daemons`) or take its links down (`links`)."""
    if how not in HOW:
        raise FailoverError(f"how must be one of {', '.join(HOW)} (got {how!r})")
    member = _member(net, name)
    if member.failed:
        raise FailoverError(f"{name} has already failed ({member.failed}); restore it first")
    member.fail(how)


def restore(net, name: str) -> None:
    """Bring a failed member back; it rejoins (full table first) before it takes traffic."""
    member = _member(net, name)
    if not member.failed:
        raise FailoverError(f"{name} has not failed")
    try:
        member.restore()
    except (DaemonConfigError, OSError) as exc:
        raise FailoverError(f"{name} did not come back: {exc}") from None


def partition(net, name: str) -> None:
    """Drop every frame between `name` and the sync network."""
    _sync_port(net, name, cut=True)


def heal(net, name: str) -> None:
    """Let `name`'s sync traffic through again."""
    _sync_port(net, name, cut=False)


def _sync_port(net, name: str, cut: bool) -> None:
    _member(net, name)
    bridge = _sync_bridge(net)
    try:
        (bridge.partition if cut else bridge.heal)(name)
    except RuntimeError as exc:
        raise FailoverError(str(exc)) from None


def rehash(net, mode: str, members: list[str] | None = None) -> None:
    """Make both hashing switches hash on `mode`'s fields from now on, over `members` (default:
    every serving member); the members left out are drained, not failed."""
    if mode not in HASH_MODES:
        raise FailoverError(f"hash must be one of {', '.join(HASH_MODES)} (got {mode!r})")
    for name in members or []:
        _member(net, name)
    try:
        for switch in _switches(net):
            switch.rehash(mode, set(members) if members else None)
    except SwitchError as exc:
        raise FailoverError(str(exc)) from None


def membership(net) -> dict[str, dict]:
    """Each member's own view (state, live, serving), or why it cannot say; plus what each
    hashing switch gives buckets to, under the key `switches`."""
    result = {}
    for node in net.hosts:
        if isinstance(node, ClusterMember):
            if node.failed == "daemons":
                result[node.name] = {"state": "failed (daemons killed)"}
                continue
            try:
                result[node.name] = query(node.files.agent_socket, "state", timeout=1.0)
            except (OSError, ValueError) as exc:
                result[node.name] = {"state": f"no agent ({exc.__class__.__name__})"}
            if node.failed == "links":
                result[node.name]["failed"] = "links down"
    result["switches"] = {s.name: {"buckets": s.buckets, "hash": s.hash_mode,
                                   "drained": sorted(set(s.members) - s.allowed)
                                   if s.allowed is not None else []}
                          for s in _switches(net)}
    return result
