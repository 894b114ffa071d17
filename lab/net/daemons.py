"""The daemons a lab node runs, as objects: charon, on a member its forwarding agent, and on
the sync bridge the witness.

A daemon is one process inside its node's namespaces, started through the node's `popen` (so
the run records it for `ikelab clean`), with a sign that it is ready (its socket answers) and
its last words when it is not. A node holds its daemons in start order (`StrongSwanNode.
daemons`): `config()` starts them in that order, `terminate()` stops them in reverse, and a
member's failover kills and starts the same objects again. Stopping a process has one path,
`end()`: SIGTERM, then SIGKILL after a grace period.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..agent.io.control import query
from ..agent.names import NodeFiles

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
READY_POLL = 0.05
LAST_WORDS = 3  # lines of a daemon's output quoted when it fails


class DaemonConfigError(RuntimeError):
    """A daemon refused its configuration or did not start; the message names the node."""


def end(process: subprocess.Popen | None, grace: float = 5.0) -> None:
    """Stop `process` if it still runs: SIGTERM, then SIGKILL after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Daemon:
    """One daemon of one node. A subclass says what it is (NAME, the SOCKET that tells it is
    ready), how to run it (`command`, `environment`), where its output goes and when it is
    ready; starting, stopping, killing and last words are the same for every daemon."""

    NAME = "daemon"
    SOCKET = "socket"
    READY_DEADLINE = 15.0  # seconds from the start until it must be ready

    def __init__(self, node, files: NodeFiles):
        self.node = node
        self.files = files
        self.process: subprocess.Popen | None = None
        self.launches = 0  # how many times it was started

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def output(self) -> Path:
        """The file its stdout and stderr are appended to."""
        raise NotImplementedError

    def logs(self) -> list[Path]:
        """The files its last words are read from, in order."""
        return [self.output]

    def ready(self) -> bool:
        """True once it answers on its socket."""
        raise NotImplementedError

    def prepare(self) -> None:
        """What must be true before each start (nothing, unless a subclass says so)."""

    def start(self) -> None:
        """Start the daemon and return once it is ready; raise DaemonConfigError, with its
        last words, if it exits first or is not ready within READY_DEADLINE seconds."""
        self.launch()
        while not self.started():
            time.sleep(READY_POLL)
        self.settle()

    def launch(self) -> None:
        """Start the process, and return at once: `started()` says when it is ready. A lab
        launches every node's daemons first and waits for them together."""
        self.prepare()
        with open(self.output, "ab") as out:
            self.process = self.node.popen(self.command(), env=self.environment(), stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.launches += 1
        self.deadline = time.monotonic() + self.READY_DEADLINE

    def started(self) -> bool:
        """True once the launched daemon is ready; raises DaemonConfigError, with its last
        words, if it has exited or missed READY_DEADLINE."""
        if self.process.poll() is not None:
            raise DaemonConfigError(f"{self.files.node}: {self.NAME} exited with status "
                                    f"{self.process.returncode}: {self.last_words()}")
        if self.ready():
            return True
        if time.monotonic() > self.deadline:
            raise DaemonConfigError(f"{self.files.node}: {self.NAME}'s {self.SOCKET} did not "
                                    f"answer within {self.READY_DEADLINE:g} s: "
                                    f"{self.last_words()}")
        return False

    def settle(self) -> None:
        """What a ready daemon still needs before it counts as started (nothing, unless a
        subclass says so); raises DaemonConfigError."""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Stop it: SIGTERM, then SIGKILL after `grace` seconds."""
        end(self.process, grace)

    def kill(self) -> None:
        """SIGKILL now, as a crash would: nothing gets to say goodbye."""
        if self.running():
            self.process.kill()
            self.process.wait()

    def last_words(self) -> str:
        """Its last few non-empty output lines, joined by ' | ' (or 'no output')."""
        lines = []
        for path in self.logs():
            if path.exists():
                lines += [line for line in path.read_text(errors="replace").splitlines()
                          if line.strip()]
        return " | ".join(lines[-LAST_WORDS:]) or "no output"


class Charon(Daemon):
    """The node's charon, with its own strongswan.conf (`STRONGSWAN_CONF`) and vici socket;
    `start()` also loads the rendered swanctl.conf, so a rejected config fails the start."""

    NAME = "charon"
    SOCKET = "vici socket"

    def command(self) -> list[str]:
        return [CHARON]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, STRONGSWAN_CONF=str(self.files.strongswan_conf))

    @property
    def output(self) -> Path:
        return self.files.rundir / f"charon_{self.files.node}.out"

    def logs(self) -> list[Path]:
        return [self.output, self.files.log]

    def prepare(self) -> None:
        # A socket left by the previous charon would answer `ready()` for the new one.
        self.files.vici_socket.unlink(missing_ok=True)

    def ready(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(str(self.files.vici_socket))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def settle(self) -> None:
        self.load()

    def load(self) -> None:
        """Load the rendered swanctl.conf; a rejected config raises with swanctl's own words."""
        result = subprocess.run(
            [SWANCTL, "--load-all", "--noprompt", "--file", str(self.files.swanctl_conf),
             "--uri", f"unix://{self.files.vici_socket}"],
            capture_output=True, text=True, timeout=30, env=self.environment())
        (self.files.swanctl_dir / "swanctl.out").write_text(result.stdout + result.stderr)
        # swanctl also scans credential folders beside the file; the lab names every
        # credential by path, so their absence is not a complaint.
        complaints = [line.strip() for line in (result.stdout + result.stderr).splitlines()
                      if any(w in line.lower() for w in ("fail", "error", "invalid"))
                      and not line.startswith("opening directory")]
        if result.returncode != 0 or complaints:
            message = "; ".join(complaints) or result.stderr.strip() or f"exit {result.returncode}"
            raise DaemonConfigError(f"{self.files.node}: swanctl rejected "
                                    f"{self.files.swanctl_conf.name}: {message}")


class ForwardingAgent(Daemon):
    """The member's forwarding agent (`python -m lab.agent`), ready once its control socket
    answers. Every start after the first joins (`--join`): the agent fetches the table from a
    serving member before it serves."""

    NAME = "agent"
    SOCKET = "control socket"
    READY_DEADLINE = 10.0

    def command(self) -> list[str]:
        return ([sys.executable, "-m", "lab.agent", "--config", str(self.files.agent_config)]
                + (["--join"] if self.launches else []))

    def environment(self) -> dict[str, str]:
        # The agent runs the lab's own modules with whatever Python runs the lab (the venv's,
        # or Debian's under plain mn with the venv on its path).
        return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

    @property
    def output(self) -> Path:
        return self.files.agent_log

    def ready(self) -> bool:
        try:
            query(self.files.agent_socket, timeout=1.0)
            return True
        except (OSError, ValueError):
            return False


class WitnessDaemon(Daemon):
    """The sync network's witness (`python -m lab.agent.io.witnessd`) on the sync bridge: it
    decides which members may act when the sync network splits. Ready once its control socket
    answers."""

    NAME = "witness"
    SOCKET = "control socket"
    READY_DEADLINE = 10.0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lab.agent.io.witnessd", "--config",
                str(self.files.witness_config)]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

    @property
    def output(self) -> Path:
        return self.files.witness_log

    def ready(self) -> bool:
        try:
            query(self.files.witness_socket, timeout=1.0)
            return True
        except (OSError, ValueError):
            return False
