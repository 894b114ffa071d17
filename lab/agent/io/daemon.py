"""The agent's I/O shell: one selector loop that feeds `core.Agent` events and carries out the
actions it returns. The protocol lives in `core`; this module only moves bytes and time.

The loop waits on the two NFQUEUE queues (`nfqueue`), the sync socket (the other members and
the witness, `witness`) and a wake-up pipe through which threads post their news: charon's vici
events and SA reads (`charon`), and control requests (`control`). Nothing slow runs in it:
routes are applied by a thread (`routes`), stale SAs ended by another, and a `status` request
reads the nftables counters in the control thread, after the loop has answered its part.

A bug in the core or in a thread is logged with its traceback and counted (`errors` in the
status), never swallowed; the loop goes on with the next event.

Run: python -m lab.agent --config agent_<member>.json [--join]
"""

import argparse
import json
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from ..config import AgentConfig
from ..names import CHILD_NAME, SYNC_PORT, handover_connection
from ..protocol import crowd, steering, sync
from ..protocol.core import TICK, Agent
from ..protocol.events import (Accept, DrainAsked, Drop, EndSa, EndStaleSas, HoldEsp, Initiate,
    Inject, Log, PacketQueued, Send, SteerRoutes, SyncArrived, Tick, Trace)
from .charon import CharonListener
from .control import ControlServer
from .nfqueue import EspHold, PacketQueues
from .routes import RouteKeeper
from .trace import TraceFile, trace_line

ANSWER_TIMEOUT = 2.0  # a control request the loop has not answered by then gets an error
TRACE_BATCH = 32  # trace lines pending at most before they are written (a short burst)
TRACE_DELAY = 0.25  # seconds a trace line waits at most for a quiet turn of the loop
SYNC_BUFFER = 4 << 20  # a snapshot of a full table is a burst of 250 datagrams


def resident_kb() -> int:
    """This process's resident memory (VmRSS), in KiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class ErrorCount:
    """Bugs seen, from any thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self.lock:
            self.value += 1


@dataclass
class Request:
    """A control request handed to the loop; the control thread waits for `reply`."""

    kind: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict | None = None


class AgentDaemon:
    """One member's agent process; `run()` until SIGTERM."""

    def __init__(self, config: AgentConfig, join: bool = False):
        self.config = config
        now = time.monotonic()
        self.agent = Agent(config, now, time.time_ns(), join, wall_offset=time.time() - now)
        self.errors = ErrorCount()
        self.posted: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.gateways = {config.index_of(n): a for n, a in config.members.items()}
        # Where a sync message goes: a member, or the witness (index 0).
        self.addresses = {**self.gateways, **({sync.WITNESS: config.witness}
                                              if config.witness else {})}
        self.gateways6 = {config.index_of(n): a for n, a in config.members6.items()}
        self.routes = RouteKeeper(self.gateways, config.sync_interface, self.errors, self.log,
                                  self.gateways6)
        self.esp_hold = EspHold(self.errors, self.log, ipv6=bool(self.gateways6))
        self.charon = CharonListener(config.vici_socket, self.post, self.errors, self.log)
        self.stopping = False
        # Decisions to trace, stamped as they are carried out and written when the loop has
        # nothing waiting (or TRACE_BATCH are pending, or TRACE_DELAY passed): formatting
        # them must not delay the packets they are about, nor the next ones.
        self.traced: list = []
        self.trace_written_at = 0.0
        self.trace_file = TraceFile(config.trace) if config.trace else None
        self.sync_sock = self.raw_sock = self.raw_sock6 = None
        # The membership view as of the last tick: the switches ask for it twenty times a
        # second, and a reference read needs no hand-off to the loop.
        self.state_view = self.agent.membership_view(time.monotonic())
        self.published_at = 0.0

    def log(self, text: str) -> None:
        # Stamped like charon's log lines (time_add_ms), so the two read side by side.
        now = time.time()
        print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} "
              f"{text}", flush=True)

    # ---- events in ------------------------------------------------------------------------
    def post(self, item) -> None:
        """From any thread: an event (or a Request) for the loop."""
        self.posted.put(item)
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def feed(self, event) -> list:
        try:
            actions = self.agent.handle(event, time.monotonic())
        except Exception:  # noqa: BLE001 - a bug: seen and counted, the loop goes on
            self.errors.add()
            self.log(f"bug handling {type(event).__name__}:\n{traceback.format_exc()}")
            actions = [Drop(event.ref)] if isinstance(event, PacketQueued) else []
        self.carry_out(actions)
        return actions

    def on_packet(self, packet, inbound: bool) -> None:
        """NFQUEUE's callback: the packet stays queued until an action names it."""
        event = PacketQueued(packet, packet.get_payload(), inbound, time.monotonic_ns())
        try:
            actions = self.agent.handle(event, time.monotonic())
        except Exception:  # noqa: BLE001 - a bug: seen and counted, the packet dropped
            self.errors.add()
            self.log(f"bug handling a packet:\n{traceback.format_exc()}")
            actions = [Drop(packet)]
        if not any(isinstance(a, (Accept, Drop)) and a.ref is packet for a in actions):
            packet.retain()  # parked: its verdict comes with a later event
        self.carry_out(actions)

    def read_sync(self) -> None:
        while True:
            try:
                data = self.sync_sock.recv(70000)
            except BlockingIOError:
                return
            self.feed(SyncArrived(data))

    def read_posted(self) -> None:
        os.read(self.wake_r, 4096)
        while True:
            try:
                item = self.posted.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Request):
                item.reply = self.view(item.kind)
                item.done.set()
            else:
                self.feed(item)

    def view(self, kind: str) -> dict:
        now = time.monotonic()
        if kind == "owners":
            return self.agent.table.owners()
        if kind == "reset-latency":
            self.agent.latencies_us.clear()
            return {"ok": True}
        if kind in ("trace-on", "trace-off"):
            # For benchmarks: the trace's cost, on and off in one lab (no file, no trace).
            self.agent.tracing = kind == "trace-on" and self.trace_file is not None
            return {"tracing": self.agent.tracing}
        if kind in ("drain", "undrain"):
            self.feed(DrainAsked(kind == "drain"))
            return self.agent.membership_view(now)
        return self.agent.status_view(now)

    # ---- actions out ----------------------------------------------------------------------
    def carry_out(self, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is Accept:
                action.ref.accept()
            elif kind is Drop:
                action.ref.drop()
            elif kind is Send:
                try:
                    self.sync_sock.sendto(action.data, (self.addresses[action.to], SYNC_PORT))
                except OSError:
                    pass  # a member that cannot be reached answers nothing; timeouts take over
            elif kind is Inject:
                try:
                    if ":" in action.destination:
                        self.raw_sock6.sendto(action.packet, (action.destination, 0))
                    else:
                        self.raw_sock.sendto(action.packet, (action.destination, 0))
                except OSError as exc:
                    self.log(f"writing a forwarded packet back: {exc}")
            elif kind is SteerRoutes:
                self.routes.want(action.routes)
            elif kind is HoldEsp:
                self.esp_hold.want(action.addresses)
            elif kind is EndStaleSas:
                self.charon.end_stale_sas(action.keep, action.attempt)
            elif kind is Initiate:
                self.charon.initiate(action.connection, CHILD_NAME,
                                     self.site_connection(action.connection, action.peer))
            elif kind is EndSa:
                self.charon.end_sa(action.ispi)
            elif kind is Trace:
                self.traced.append((action, time.time()))
            elif kind is Log:
                self.log(action.text)

    def write_trace(self) -> None:
        if self.trace_file is None:
            return
        for action, t in self.traced:
            self.trace_file.add(trace_line(action.decision, action.packet, action.inbound,
                                           action.detail, self.config.member, t))
        self.traced.clear()
        try:
            self.trace_file.flush()
        except OSError as exc:  # a full disk: the agent goes on without its trace
            self.log(f"trace: {exc}; tracing stops")
            self.trace_file = None

    # ---- control requests (in the control server's threads) -------------------------------
    def answer(self, kind: str) -> dict:
        if kind == "state":
            return self.state_view
        request = Request(kind)
        self.post(request)
        if not request.done.wait(ANSWER_TIMEOUT):
            return {"error": f"the agent's loop did not answer within {ANSWER_TIMEOUT} s"}
        reply = request.reply
        if kind == "status":
            # Slow parts, here and not in the loop: nft, and the routes the kernel has.
            reply["pid"] = os.getpid()
            reply["cpu_s"] = sum(os.times()[:2])
            reply["rss_kb"] = resident_kb()
            reply["counters"]["errors"] = self.errors.value
            if self.trace_file is not None:
                reply["trace"] = {"path": self.trace_file.path, "lines": self.trace_file.lines,
                                  "rotations": self.trace_file.rotations}
            reply["steering"]["counters"] = self.steering_counters() if self.config.peers else {}
            reply["steering"]["routes"] = {p: self.config.name_of(m)
                                           for p, m in sorted(self.routes.routes().items())}
        return reply

    def site_connection(self, connection: str, peer: str) -> dict | None:
        """The vici connection to load before initiating `connection`, if `peer` is a crowd
        site (members render no connection per site: `crowd`); None for a real peer."""
        if peer not in self.config.sites:
            return None
        identity, version = self.config.sites[peer]
        address, lan = self.config.peers[peer][:2]
        _name, message = crowd.site_connection(
            self.config.site_connection, peer, address, lan, identity, version,
            handover=connection == handover_connection(peer))
        return message

    def steering_counters(self) -> dict[str, int]:
        result = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
        try:
            return steering.counters(json.loads(result.stdout))
        except ValueError:
            return {}

    # ---- set-up and loop ------------------------------------------------------------------
    def install_steering(self) -> None:
        peers = {name: tuple(value) for name, value in self.config.peers.items()
                 if name not in self.config.sites}
        crowd = tuple(self.config.crowd_prefixes) if self.config.crowd_prefixes else None
        script = steering.ruleset(self.config.index, self.gateways,
                                  self.config.external_interface, self.config.lan_interface,
                                  self.config.sync_interface, peers, crowd, self.gateways6)
        self.remove_steering()
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)

    def remove_steering(self) -> None:
        for family, table in (("netdev", steering.TABLE_ESP), ("inet", steering.TABLE_LAN)):
            subprocess.run(["nft", "delete", "table", family, table], capture_output=True)

    def open_sockets(self) -> None:
        self.sync_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sync_sock.bind((self.config.members[self.config.member], SYNC_PORT))
        # A small buffer would drop a snapshot's tail, and the joiner would ask again forever.
        self.sync_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SYNC_BUFFER)
        self.sync_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SYNC_BUFFER)
        self.sync_sock.setblocking(False)
        self.raw_sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        if self.gateways6:  # IPPROTO_RAW: the kernel takes our IPv6 header as it is, too
            self.raw_sock6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        self.open_sockets()
        queues = PacketQueues(self.config.external_interface, self.on_packet,
                              ipv6=bool(self.gateways6))
        queues.install()
        self.esp_hold.start()
        if self.config.peers:
            self.install_steering()
            self.routes.flush()  # a predecessor killed on this member left its routes
            self.routes.start()
        control = ControlServer(self.config.control_socket, self.answer)
        control.start()
        self.charon.start(read_holdings=bool(self.config.peers))
        selector = selectors.DefaultSelector()
        for fd, read in queues.readers():
            selector.register(fd, selectors.EVENT_READ, read)
        selector.register(self.sync_sock, selectors.EVENT_READ, self.read_sync)
        selector.register(self.wake_r, selectors.EVENT_READ, self.read_posted)
        self.log(f"agent {self.config.member}: running, {self.agent.membership.state}")
        try:
            while not self.stopping:
                ready = selector.select(TICK)
                for key, _ in ready:
                    key.data()
                self.feed(Tick())
                now = time.monotonic()
                if self.traced and (not ready or len(self.traced) >= TRACE_BATCH
                                    or now - self.trace_written_at >= TRACE_DELAY):
                    self.write_trace()
                    self.trace_written_at = now
                if now - self.published_at >= TICK:
                    self.state_view = self.agent.membership_view(now)
                    self.published_at = now
        finally:
            self.write_trace()
            control.close()
            self.charon.stop()
            queues.close()
            self.remove_steering()
            self.routes.stop()


REALTIME_PRIORITY = 10  # SCHED_RR, low among real-time tasks: above every ordinary process


def run_ahead_of_the_data_plane() -> str:
    """Put this process (and the threads it starts later) under SCHED_RR, so that bulk
    traffic through charon and the switch cannot starve the heartbeats: a member late by
    `dead_after` is counted dead, and its tunnels are taken over (Check Point's CCP runs in the
    kernel for the same reason). The kernel's real-time throttling still leaves 5 % of every
    second to the rest. Commands it forks (`ip`, `nft`) run as ordinary processes. Returns
    what it got, for the log."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                              os.sched_param(REALTIME_PRIORITY))
        return f"SCHED_RR {REALTIME_PRIORITY}"
    except (OSError, AttributeError) as exc:
        return f"ordinary scheduling ({exc})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="ikelab forwarding agent for one member")
    parser.add_argument("--config", required=True)
    parser.add_argument("--join", action="store_true",
                        help="fetch the table from a serving member before serving (a member "
                             "that comes back); without it the member starts with the cluster")
    args = parser.parse_args(argv)
    try:
        config = AgentConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        print(f"agent: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    scheduling = run_ahead_of_the_data_plane()
    daemon = AgentDaemon(config, join=args.join)
    daemon.log(f"agent {config.member}: {scheduling}")
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
