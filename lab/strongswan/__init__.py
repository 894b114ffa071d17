"""strongSwan in the lab. This module: what the lab asks of a node's charon over vici, its
SAs, to initiate one, and to bring every peer's tunnel up. Beside it: every node's
configuration, rendered from `templates/` (`render`), and certificates (`pki`).

Each charon (started by `lab.net.daemons.Charon`) runs inside its node's namespaces with its own
vici socket in the run directory. Unix sockets are not bound to network namespaces, so the lab
talks to every charon from the root namespace. State is always read from the daemon, never
from logs.
"""

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import vici

from ..agent.io.vicilink import VICI_ERRORS, decode, session  # noqa: F401 - the lab's vici client
from ..agent.names import CLUSTER_CONNECTION
from ..net.daemons import DaemonConfigError


def tunnel_up(sa: dict) -> bool:
    """An IKE SA (as `list_sas` gives it) that carries traffic: ESTABLISHED, with an INSTALLED
    CHILD SA."""
    return sa.get("state") == "ESTABLISHED" and any(
        c.get("state") == "INSTALLED" for c in sa.get("child-sas", {}).values())


def list_sas(socket_path: Path) -> dict[str, dict]:
    """Every IKE SA the daemon holds, by its unique id, with its CHILD SAs."""
    result = {}
    with _signals_deferred(), session(socket_path) as sess:
        for entry in sess.list_sas():
            for name, sa in decode(dict(entry)).items():
                sa["name"] = name
                result[sa.get("uniqueid", name)] = sa
    return result


@contextmanager
def _signals_deferred():
    """Hold Ctrl-C and SIGTERM back until a streamed vici request is over.

    vici's streamed requests unregister their log stream in a `finally`: interrupted halfway
    through reading a message, that read continues on a stream out of step, takes the next
    bytes for a length (16 MB, say) and blocks for ever, so the lab is never torn down. The
    requests here return in milliseconds; the signal is raised again right after. Only the
    main thread may change signal handlers; elsewhere the call runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught:
            signal.raise_signal(sig)


def initiate(socket_path: Path, ike: str, child: str | None = None) -> None:
    """Ask the daemon to start `child` of `ike` (default: every CHILD SA the connection has,
    as charon lists them) and return at once; poll list_sas for the end."""
    try:
        with _signals_deferred(), session(socket_path) as sess:
            for name in [child] if child else children_of(sess, ike):
                for _ in sess.initiate({"ike": ike, "child": name, "timeout": -1}):
                    pass
    except vici.exception.CommandException as exc:
        raise DaemonConfigError(f"initiate {ike}/{child or '*'}: {exc}") from None


def terminate(socket_path: Path, ike: str, timeout_ms: int = 3000) -> None:
    """End every IKE SA of connection `ike` the daemon holds, waiting up to `timeout_ms` for
    each; holding none is not an error."""
    try:
        with _signals_deferred(), session(socket_path) as sess:
            for _ in sess.terminate({"ike": ike, "timeout": timeout_ms}):
                pass
    except vici.exception.CommandException:
        pass  # no IKE SA of that connection


def children_of(sess, connection: str) -> list[str]:
    """The CHILD SA names of `connection` as charon has it loaded (`list-conns`): one, or
    with IKEv1 and both IP versions, one per version (IKEv1 negotiates only the first pair of
    traffic selectors of a CHILD SA)."""
    return [name for conn in sess.list_conns({"ike": connection})
            for name in conn.get(connection, {}).get("children", {})]


def tunnel_spis(socket_path: Path) -> tuple[str, tuple[str, ...]] | None:
    """(IKE initiator SPI, inbound SPIs of its installed CHILD SAs) of the one established
    IKE SA this daemon holds; None while it holds none or more than one, or no CHILD SA."""
    sas = [s for s in list_sas(socket_path).values() if s.get("state") == "ESTABLISHED"]
    if len(sas) != 1:
        return None
    children = tuple(sorted(c["spi-in"] for c in sas[0].get("child-sas", {}).values()
                            if c.get("state") == "INSTALLED"))
    return (sas[0]["initiator-spi"], children) if children else None


class TunnelWatch:
    """Polls peers' charons until each tunnel is up or its negotiation was given up.

    `sockets` maps a peer's name to its vici socket. A tunnel is up when an IKE SA is
    ESTABLISHED with an INSTALLED CHILD SA and, if `complete` is given, it says the tunnel's
    data path is complete too (it takes the names of the peers charon calls up and returns
    those whose packets would get through now); it was given up when the IKE SA seen before
    is gone. `sa_up_after` is when charon said up, `up_after` when the tunnel was up;
    `on_up(peer)`, if given, is called then (the main job starts the tunnel's pings).
    """

    POLL_INTERVAL = 0.05  # also the resolution of up_after, which the benchmarks report

    def __init__(self, sockets: dict[str, Path], complete=None, on_up=None):
        self.sockets = sockets
        self.complete = complete
        self.on_up = on_up
        self.started = time.monotonic()
        self.sa_up_after: dict[str, float] = {}
        self.up_after: dict[str, float] = {}
        self.last_sa: dict[str, dict] = {}
        self.gave_up: set[str] = set()

    def peer_sas(self, peer: str) -> dict:
        """The IKE SAs `peer` holds now."""
        return list_sas(self.sockets[peer])

    def poll(self) -> bool:
        """Update every peer's state; True once none is still negotiating."""
        for peer in self.sockets:
            if peer in self.up_after or peer in self.gave_up:
                continue
            sas = self.peer_sas(peer)
            if not sas and peer in self.last_sa:
                self.gave_up.add(peer)
                continue
            for sa in sas.values():
                self.last_sa[peer] = sa
                if tunnel_up(sa):
                    self.sa_up_after.setdefault(peer, time.monotonic() - self.started)
        waiting = [p for p in self.sa_up_after if p not in self.up_after]
        for peer in (self.complete(waiting) if self.complete and waiting else waiting):
            self.up_after[peer] = time.monotonic() - self.started
            if self.on_up:
                self.on_up(peer)
        return len(self.up_after) + len(self.gave_up) == len(self.sockets)

    def wait(self, timeout: float, say=lambda message: None) -> None:
        """Poll until every tunnel is settled or `timeout` seconds have passed since creation."""
        deadline = self.started + timeout
        reported = -1
        while not self.poll() and time.monotonic() < deadline:
            if len(self.up_after) != reported:
                reported = len(self.up_after)
                say(f"tunnels up: {reported}/{len(self.sockets)}")
            time.sleep(self.POLL_INTERVAL)


def bring_up(sockets: dict[str, Path], timeout: float, say=lambda message: None,
             complete=None, on_up=None) -> TunnelWatch:
    """Have every peer (name -> vici socket) initiate its tunnel to the cluster and wait until
    each is up (its data path `complete`, if given; see TunnelWatch) or given up; the watch
    says which."""
    watch = TunnelWatch(sockets, complete, on_up)
    for sock in sockets.values():
        initiate(sock, CLUSTER_CONNECTION)
    watch.wait(timeout, say)
    return watch
