"""The agent's control socket: one request line in, one JSON line out. The lab's switches ask
every agent for its `state` ten times a second; `ikelab status` and the CLI ask for `status`
and `owners`.

The server runs in a thread of its own, never in the packet loop: a slow or silent client
costs the loop nothing. One thread, one request at a time: a thread per request would cost
more CPU than the twenty health checks a second it answers. How an answer is made is the
daemon's business (`answer`).
"""

import json
import socket
import socketserver
import threading
from pathlib import Path

REQUESTS = ("state", "owners", "status", "reset-latency", "drain", "undrain", "trace-on",
            "trace-off")
REQUEST_TIMEOUT = 0.5  # a client that says nothing for this long is dropped


def query(control_socket: Path, request: str = "status", timeout: float = 5.0) -> dict:
    """Ask a running agent over its control socket; raises OSError if it does not answer, and
    ValueError if what it says is not JSON."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(control_socket))
        sock.sendall(request.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    return json.loads(data)


class ControlServer:
    """Serves `path` until `close()`, in one thread that calls `answer(request)` for a known
    request and sends the dict it returns."""

    def __init__(self, path: Path, answer):
        self.path = Path(path)
        self.path.unlink(missing_ok=True)
        server = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = REQUEST_TIMEOUT

            def handle(self):
                try:
                    request = self.rfile.readline(256).strip().decode(errors="replace")
                except OSError:
                    return  # a client that said nothing in time
                if request in REQUESTS:
                    reply = server.answer(request)
                else:
                    reply = {"error": f"unknown request {request[:40]!r}; one of "
                                      f"{', '.join(REQUESTS)}"}
                try:
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass  # the client left without its answer

        self.answer = answer
        self.server = socketserver.UnixStreamServer(str(self.path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="control",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)
