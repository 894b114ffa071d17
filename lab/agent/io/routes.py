"""The steering routes in the kernel, kept in step with what the agent asks for, in a thread
of its own: `ip` takes milliseconds, and the loop must keep answering claims while tunnels come
up. The kernel's own view is read before a change (a link that went down took its routes with
it) unless it was read in the last KERNEL_READ_INTERVAL seconds and every batch since took:
reading 10,000 routes costs more than the change.
"""

import json
import subprocess
import threading
import time
import traceback

from ..protocol import steering

PROTO = "static"  # the routes the agent owns, told apart from the member's own
# The steering routes' own table, looked up just before kernel-libipsec's table 220: a member
# letting a tunnel go steers its LAN to the new holder while its own SA (and route) still live.
TABLE = RULE_PRIORITY = 210
APPLY_SHARE = 3  # the pause after a change set is this many times as long as it took
KERNEL_READ_INTERVAL = 10.0  # seconds a read of the kernel's routes is trusted, batches applied


class RouteKeeper(threading.Thread):
    def __init__(self, gateways: dict[int, str], interface: str, errors, log=print,
                 gateways6: dict[int, str] | None = None):
        """`gateways`: member index -> its sync address (`gateways6`: its IPv6 one, in a lab
        with IPv6); `interface`: the sync interface."""
        super().__init__(name="routes", daemon=True)
        self.gateways = gateways
        self.gateways6 = gateways6 or {}
        self.families = ["-4", "-6"] if self.gateways6 else ["-4"]
        self.interface = interface
        self.errors = errors
        self.log = log
        self.applied: dict[str, int] = {}  # prefix -> member, as the kernel had them
        self.read_at = -KERNEL_READ_INTERVAL  # when the kernel's table was last read
        self.batch: subprocess.Popen | None = None  # `ip -batch -`, reading our changes
        self.desired: dict[str, int] | None = None
        self.changed = threading.Condition()
        self.stopping = False

    def want(self, desired: dict[str, int]) -> None:
        """Ask for exactly these routes; only the latest wish counts."""
        with self.changed:
            self.desired = dict(desired)
            self.changed.notify()

    def routes(self) -> dict[str, int]:
        with self.changed:
            return dict(self.applied)

    def run(self) -> None:
        for family in self.families:
            rules = subprocess.run(["ip", family, "rule", "show", "priority",
                                    str(RULE_PRIORITY)], capture_output=True, text=True).stdout
            if not rules.strip():
                subprocess.run(["ip", family, "rule", "add", "priority", str(RULE_PRIORITY),
                                "lookup", str(TABLE)], capture_output=True)
        while True:
            with self.changed:
                while self.desired is None and not self.stopping:
                    self.changed.wait()
                if self.stopping:
                    return
                desired, self.desired = self.desired, None
            started = time.monotonic()
            try:
                self.apply(desired)
            except Exception:  # noqa: BLE001 - a bug: seen and counted; the next wish retries
                self.errors.add()
                self.log(f"bug applying routes:\n{traceback.format_exc()}")
            # Wishes that come meanwhile merge into the latest: reading and parsing the
            # kernel's table takes tens of ms at 10,000 routes, and this thread must leave the
            # agent's loop (and the GIL) most of the time. A few routes take a millisecond.
            time.sleep(APPLY_SHARE * (time.monotonic() - started))

    def apply(self, desired: dict[str, int]) -> None:
        """One `ip -batch` for the whole change set: a crowd's takeover moves a thousand
        routes, and one process per route would take seconds. `-force` goes on past a line
        that fails (a route gone meanwhile); the kernel is read again afterwards."""
        if time.monotonic() >= self.read_at + KERNEL_READ_INTERVAL:
            self.applied, self.read_at = self.kernel_routes(), time.monotonic()
        current = dict(self.applied)
        replace, delete = steering.route_changes(current, desired)
        if not replace and not delete:
            return
        script = steering.route_batch(replace, delete, self.gateways, self.interface, PROTO,
                                      TABLE, self.gateways6)
        if not self.send(script):
            self.read_at = -KERNEL_READ_INTERVAL  # read what the kernel has before the next
            return
        for prefix in delete:
            current.pop(prefix, None)
        current.update(replace)
        with self.changed:
            self.applied = current

    def send(self, script: str) -> bool:
        """Hand `script` to our one `ip -batch` process (started if it is not running): a
        process per change set cost the agent a fork each time, its largest cost with a
        crowd. A line that fails is skipped (-force); the next read of the kernel's table
        shows what took. False if the process is gone."""
        if self.batch is None or self.batch.poll() is not None:
            self.batch = subprocess.Popen(["ip", "-force", "-batch", "-"], text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        try:
            self.batch.stdin.write(script)
            self.batch.stdin.flush()
            return True
        except OSError:
            return False

    def kernel_routes(self) -> dict[str, int]:
        """prefix -> member, for the steering routes the kernel has now."""
        members = {address: index for index, address in self.gateways.items()}
        members |= {address: index for index, address in self.gateways6.items()}
        routes = []
        for family in self.families:
            out = subprocess.run(["ip", family, "-j", "route", "show", "proto", PROTO, "table",
                                  str(TABLE)], capture_output=True, text=True).stdout
            try:
                routes += json.loads(out or "[]")
            except ValueError:
                return {}
        return {steering.canonical(r["dst"]): members[r["gateway"]] for r in routes
                if r.get("gateway") in members and r.get("dst", "default") != "default"}

    def flush(self) -> None:
        """Remove every steering route, ours or a killed predecessor's."""
        for family in self.families:
            subprocess.run(["ip", family, "route", "flush", "proto", PROTO], capture_output=True)

    def stop(self) -> None:
        """Stop, and take every steering route out of the kernel."""
        with self.changed:
            self.stopping = True
            self.changed.notify()
        if self.is_alive():
            self.join(5)
        if self.batch is not None and self.batch.poll() is None:
            self.batch.stdin.close()
            try:
                self.batch.wait(5)
            except subprocess.TimeoutExpired:
                self.batch.kill()
                self.batch.wait()
        self.flush()
