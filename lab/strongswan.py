"""A charon per node, and what the lab asks of it over vici.

Each charon runs inside its node's namespaces with its own strongswan.conf (chosen through
`STRONGSWAN_CONF`), its own `/run` (charon's PID file path is compiled in) and its own vici
socket in the run directory. Unix sockets are not bound to network namespaces, so the lab talks
to every charon from the root namespace. State is always read from the daemon, never from logs.
"""

import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import vici

from .render import CHILD_NAME, CLUSTER_CONNECTION, NodeFiles

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"


class DaemonConfigError(RuntimeError):
    """A daemon refused its configuration or did not start; the message names the node."""


def decode(value):
    """vici messages carry bytes; return the same structure with str."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


@contextmanager
def session(socket_path: Path, timeout: float = 10.0):
    """A vici session with the charon listening on `socket_path`, closed on leaving."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        yield vici.Session(sock)
    finally:
        sock.close()


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


def initiate(socket_path: Path, ike: str, child: str) -> None:
    """Ask the daemon to start `child` of `ike` and return at once; poll list_sas for the end."""
    try:
        with _signals_deferred(), session(socket_path) as sess:
            for _ in sess.initiate({"ike": ike, "child": child, "timeout": -1}):
                pass
    except vici.exception.CommandException as exc:
        raise DaemonConfigError(f"initiate {ike}/{child}: {exc}") from None


def terminate(socket_path: Path, unique_id: str) -> None:
    """End one IKE SA at once, without waiting for the peer to confirm its DELETE."""
    with _signals_deferred(), session(socket_path) as sess:
        for _ in sess.terminate({"ike-id": str(unique_id), "force": "yes", "timeout": -1}):
            pass


class TunnelWatch:
    """Polls peers' charons until each tunnel is up or its negotiation was given up.

    `sockets` maps a peer's name to its vici socket. A tunnel is up when an IKE SA is
    ESTABLISHED with an INSTALLED CHILD SA; it was given up when the IKE SA seen before is gone.
    """

    POLL_INTERVAL = 0.05  # also the resolution of up_after, which the benchmarks report

    def __init__(self, sockets: dict[str, Path]):
        self.sockets = sockets
        self.started = time.monotonic()
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
                installed = any(c.get("state") == "INSTALLED"
                                for c in sa.get("child-sas", {}).values())
                if sa["state"] == "ESTABLISHED" and installed:
                    self.up_after[peer] = time.monotonic() - self.started
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


def bring_up(sockets: dict[str, Path], timeout: float, say=lambda message: None) -> TunnelWatch:
    """Have every peer (name -> vici socket) initiate its tunnel to the cluster and wait until
    each is up or given up; the watch says which."""
    watch = TunnelWatch(sockets)
    for sock in sockets.values():
        initiate(sock, CLUSTER_CONNECTION, CHILD_NAME)
    watch.wait(timeout, say)
    return watch


class Charon:
    """One charon process inside one Mininet node: `start()`, `load()`, `stop()`."""

    def __init__(self, node, files: NodeFiles):
        self.node = node
        self.files = files
        self.process = None

    @property
    def stdout_path(self) -> Path:
        return self.files.rundir / f"charon_{self.files.node}.out"

    def start(self, deadline: float = 15.0) -> None:
        """Start charon and return once its vici socket answers; raise DaemonConfigError if not."""
        self.files.vici_socket.unlink(missing_ok=True)
        env = dict(os.environ, STRONGSWAN_CONF=str(self.files.strongswan_conf))
        with open(self.stdout_path, "wb") as out:
            self.process = self.node.popen([CHARON], env=env, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise DaemonConfigError(f"{self.files.node}: charon exited with status "
                                        f"{self.process.returncode}: {self._last_words()}")
            try:
                with session(self.files.vici_socket, timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        raise DaemonConfigError(f"{self.files.node}: charon's vici socket did not answer within "
                                f"{deadline:.0f} s: {self._last_words()}")

    def load(self) -> None:
        """Load the rendered swanctl.conf; a rejected config raises with swanctl's own words."""
        env = dict(os.environ, STRONGSWAN_CONF=str(self.files.strongswan_conf))
        result = subprocess.run(
            [SWANCTL, "--load-all", "--noprompt", "--file", str(self.files.swanctl_conf),
             "--uri", f"unix://{self.files.vici_socket}"],
            capture_output=True, text=True, timeout=30, env=env)
        (self.files.swanctl_dir / "swanctl.out").write_text(
            result.stdout + result.stderr)
        # swanctl also scans credential folders beside the file; the lab names every
        # credential by path, so their absence is not a complaint.
        complaints = [line.strip() for line in (result.stdout + result.stderr).splitlines()
                      if any(w in line.lower() for w in ("fail", "error", "invalid"))
                      and not line.startswith("opening directory")]
        if result.returncode != 0 or complaints:
            message = "; ".join(complaints) or result.stderr.strip() or f"exit {result.returncode}"
            raise DaemonConfigError(f"{self.files.node}: swanctl rejected "
                                    f"{self.files.swanctl_conf.name}: {message}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Stop charon: SIGTERM, then SIGKILL after `grace` seconds."""
        if not self.running():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _last_words(self) -> str:
        lines = []
        for path in (self.stdout_path, self.files.log):
            if path.exists():
                lines += [line for line in path.read_text(errors="replace").splitlines()
                          if line.strip()]
        return " | ".join(lines[-3:]) or "no output"
