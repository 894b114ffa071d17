"""The one vici client of the lab and its agents: a session with a charon, its answers as
`str`, and what a request to a charon that is gone, dying or mid-restart raises.

strongSwan's own Python `vici` speaks the protocol; this module only opens its socket with a
timeout (vici.Session would wait forever on a charon that hangs) and decodes its bytes. The
agents (`lab.agent.io.charon`) and the lab (`lab.strongswan`, `lab.run.crowd`) both use it, so a new
kind of failure is learned once.
"""

import socket
from contextlib import contextmanager
from pathlib import Path

import vici
import vici.exception

VICI_ERRORS = (OSError, vici.exception.SessionException, vici.exception.CommandException,
               vici.exception.DeserializationException, vici.exception.EventUnknownException)


def decode(value):
    """vici messages carry bytes; the same structure with str."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


@contextmanager
def session(socket_path: str | Path, timeout: float | None = 10.0):
    """A vici session with the charon listening on `socket_path` (each request waits at most
    `timeout` seconds; None: forever, for event listeners), closed on leaving."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        yield vici.Session(sock)
    finally:
        sock.close()
