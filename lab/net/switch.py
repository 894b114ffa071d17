"""The lab's switches: Open vSwitch bridges on the userspace datapath, programmed by the lab.

There is no OpenFlow controller: `start()` installs the groups and flows that `lab.plan.hashing`
computes from the plan, and the switch answers questions about itself (per-bucket counters,
where it would send a given packet) straight from OVS.

Like a load balancer's health monitor, a hashing switch in front of agents asks each member's
agent for its membership state several times a second and keeps one bucket per *serving*
member: a member that dies, is cut off from the sync network, or is still fetching the table
after a restart gets no traffic. The members decide among themselves who serves (see
`lab.agent.protocol.membership`); the switch only follows. `rehash()` changes the hash fields live.
What the health thread cannot expect (a bug, not OVS or an agent being slow) is logged and
counted in `health_errors`, which the CLI's `members` shows: buckets that stop following the
members never freeze silently.
"""

import json
import re
import shlex
import subprocess
import threading
import time
import traceback
from pathlib import Path

from mininet.log import error
from mininet.node import OVSSwitch

from ..agent.io.control import query
from ..agent.names import SERVING_STATES, NodeFiles
from ..plan import hashing
from ..plan.topology import HASH_MODES, LabSpec, Switch

HEALTH_INTERVAL = 0.1
HEALTH_TIMEOUT = 0.3
HEALTH_MISSES = 3
BRIDGE_STALL = 15.0  # seconds without a newly attached port before the bridge counts dead


class SwitchError(RuntimeError):
    """OVS refused a group or flow; the message names the bridge."""


def ofctl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", *args], input=stdin,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SwitchError(f"ovs-ofctl {args[0]} {args[1]}: {result.stderr.strip()}")
    return result.stdout


class HashingSwitch(OVSSwitch):
    """An OVS bridge whose select group spreads the virtual IP's traffic across members."""

    def __init__(self, name, plan_switch: Switch = None, spec: LabSpec = None, rundir=None,
                 **params):
        self.plan_switch = plan_switch
        self.spec = spec
        members = [p.node for p in plan_switch.member_ports()]
        # Without agents there is nobody to ask: every member keeps its bucket.
        self.agent_sockets = ({m: NodeFiles(m, Path(rundir)).agent_socket for m in members}
                              if spec.agent and rundir else {})
        self.members = members
        # What the agents say. Nobody serves until an agent says so: a switch that started
        # with every member in its buckets would look ready before its health thread had
        # asked anyone, then drop everything while it caught up (measured: the first ping
        # each way lost, in about 1 HA run of 10, as the LAN switch went from all members to
        # none to the serving ones just after the lab counted itself up).
        self.serving = [] if self.agent_sockets else members
        self.allowed: set[str] | None = None  # what `rehash` allows (None: everyone)
        self.hash_mode = spec.hash
        self.program_lock = threading.Lock()
        self.health_stop = threading.Event()
        self.health_misses: dict[str, int] = {}
        self.health_thread = None
        self.health_errors = 0  # unexpected failures of the health thread (bugs), each logged
        self.health_errors_logged: set[str] = set()
        # batch=False: Mininet would otherwise defer add-br until after start() returns.
        params.update(datapath="user", protocols="OpenFlow15", failMode="secure", batch=False,
                      dpid=plan_switch.dpid)
        super().__init__(name, **params)

    def vsctl(self, *args, **kwargs):
        """Mininet's ovs-vsctl, but run directly: Mininet types it into the switch's shell,
        whose terminal cuts a line at 4095 bytes, and a bridge with 72 ports or more is one
        longer command than that (it was: "ikex is not a bridge")."""
        command = shlex.split(" ".join(str(arg).strip() for arg in args))
        result = subprocess.run(["ovs-vsctl", "--timeout=120", *command], capture_output=True,
                                text=True, timeout=150)
        if result.returncode:
            raise SwitchError(f"{self.name}: ovs-vsctl: {result.stderr.strip()}")
        return result.stdout

    def start(self, controllers):
        super().start([])
        self._wait_for_bridge()
        ofctl("del-flows", self.name)
        ofctl("del-groups", self.name)
        self.program()
        if self.agent_sockets and self.health_thread is None:
            self.health_thread = threading.Thread(target=self._follow_members, daemon=True,
                                                  name=f"{self.name}-health")
            self.health_thread.start()

    def stop(self, deleteIntfs=True):
        self.stop_following()
        super().stop(deleteIntfs)

    def terminate(self):
        # Mininet shuts OVS switches down in a batch and calls terminate(), not stop(): the
        # thread must end here too, or it would program the next lab's bridge of this name.
        self.stop_following()
        super().terminate()

    def stop_following(self) -> None:
        self.health_stop.set()
        if self.health_thread is not None:
            self.health_thread.join(5)
            self.health_thread = None

    @property
    def buckets(self) -> list[str]:
        """The members that get traffic: serving, and not drained by `rehash`."""
        return self._buckets(self.serving, self.allowed)

    @staticmethod
    def _buckets(serving, allowed) -> list[str]:
        return [m for m in serving if allowed is None or m in allowed]

    def program(self, serving: list[str] | None = None, mode: str | None = None,
                allowed: set[str] | None = None) -> None:
        """Install the groups and flows for these serving members, hash mode and allowed
        members (default: the current ones), in an order that never leaves a flow pointing
        at a missing group."""
        with self.program_lock:
            # The new settings count only once OVS has taken them all: a refused command
            # leaves the old ones in place, and the next round of `_follow_members` retries.
            new_serving = self.serving if serving is None else [
                p.node for p in self.plan_switch.member_ports() if p.node in serving]
            new_mode = mode or self.hash_mode
            new_allowed = self.allowed if allowed is None else (
                None if allowed == set(self.members) else set(allowed))
            buckets = self._buckets(new_serving, new_allowed)
            for group in hashing.groups(self.plan_switch, self.spec, buckets, new_mode):
                ofctl("--may-create", "mod-group", self.name, group)
            ofctl("replace-flows", self.name, "-", stdin="\n".join(
                hashing.flows(self.plan_switch, self.spec, new_mode)) + "\n")
            if not hashing.splits(self.plan_switch, self.spec, new_mode):
                for group in (hashing.NATT_GROUP, hashing.NATT6_GROUP):
                    ofctl("del-groups", self.name, f"group_id={group}")
            self.serving, self.hash_mode, self.allowed = new_serving, new_mode, new_allowed

    def rehash(self, mode: str, members: set[str] | None = None) -> None:
        """Hash on other fields from now on (`l3`, `l4`, `split`), and, given `members`, spread
        traffic over those members only (the others are drained: they keep their tunnels, whose
        packets the cluster forwards and steers to them). Tunnels stay up throughout."""
        if mode not in HASH_MODES:
            raise SwitchError(f"hash must be one of {', '.join(HASH_MODES)} (got {mode!r})")
        if members is not None and (not members or members - set(self.members)):
            raise SwitchError(f"members must be some of {', '.join(self.members)} "
                              f"(got {', '.join(sorted(members)) or 'none'})")
        self.program(mode=mode,
                     allowed=members if members is not None else set(self.members))

    def members_serving(self) -> list[str]:
        """The members whose agents say they serve, asked now. An agent that is gone (its
        socket refuses) is out at once; one that is merely slow to answer keeps its bucket
        until it has missed HEALTH_MISSES rounds in a row."""
        serving = []
        for member, sock in self.agent_sockets.items():
            try:
                answer = query(sock, "state", timeout=HEALTH_TIMEOUT).get("state")
                self.health_misses[member] = 0
                if answer in SERVING_STATES:
                    serving.append(member)
            except (ConnectionRefusedError, FileNotFoundError):
                self.health_misses[member] = HEALTH_MISSES
            except (OSError, ValueError):
                self.health_misses[member] = self.health_misses.get(member, 0) + 1
                if member in self.serving and self.health_misses[member] < HEALTH_MISSES:
                    serving.append(member)
        return serving

    def _follow_members(self) -> None:
        while not self.health_stop.wait(HEALTH_INTERVAL):
            try:
                serving = self.members_serving()
                if serving != self.serving and not self.health_stop.is_set():
                    self.program(serving)
            except (SwitchError, OSError, subprocess.TimeoutExpired):
                # The bridge going away with the lab, or OVS refusing or slow once: the
                # settings stay as they were and the next round retries.
                continue
            except Exception as exc:  # noqa: BLE001 - a bug: seen and counted, never hidden
                self._health_error(exc)

    def _health_error(self, exc: Exception) -> None:
        """Count a bug in the health thread, and log each distinct one (with its traceback)
        once: the thread runs ten times a second."""
        self.health_errors += 1
        what = f"{type(exc).__name__}: {exc}"
        if what not in self.health_errors_logged:
            self.health_errors_logged.add(what)
            error(f"*** {self.name}: health check failed: {what}\n"
                  + "".join(traceback.format_exception(exc)))

    def _wait_for_bridge(self, stall: float = BRIDGE_STALL) -> None:
        """Return once ovs-vswitchd has the bridge up with every port of the plan attached (an
        OpenFlow port number each) and answers OpenFlow on it. ovs-vswitchd attaches a
        userspace port at a time, so a 136-port bridge takes a while: the wait goes on as long
        as ports keep coming, and gives up only after `stall` seconds with none."""
        ports = {f"{self.name}-eth{p.port}" for p in self.plan_switch.ports}
        attached, last_progress = -1, time.monotonic()
        while True:
            now_attached = self._attached(ports)
            if now_attached == len(ports) and subprocess.run(
                    ["ovs-ofctl", "-O", "OpenFlow15", "show", self.name],
                    capture_output=True, timeout=10).returncode == 0:
                return
            if now_attached > attached:
                attached, last_progress = now_attached, time.monotonic()
            elif time.monotonic() - last_progress > stall:
                raise SwitchError(f"{self.name}: bridge did not come up: {attached} of "
                                  f"{len(ports)} ports attached, none more for {stall:g} s")
            time.sleep(0.1)

    def _attached(self, ports: set[str]) -> int:
        """How many of `ports` ovs-vswitchd has attached to the bridge (ofport assigned)."""
        result = subprocess.run(["ovs-vsctl", "--timeout=10", "--format=json", "--columns=name,"
                                 "ofport", "list", "Interface"], capture_output=True, text=True,
                                timeout=15)
        try:
            rows = json.loads(result.stdout)["data"]
        except (ValueError, KeyError):
            return 0
        return sum(1 for name, ofport in rows
                   if name in ports and isinstance(ofport, int) and ofport > 0)

    def group_definitions(self) -> list[str]:
        """The groups as OVS holds them (`dump-groups`)."""
        return [line.strip() for line in ofctl("dump-groups", self.name).splitlines()
                if "group_id=" in line]

    def bucket_stats(self) -> dict[int, dict[str, int]]:
        """For each group: member name -> packets its bucket has sent."""
        members = hashing.bucket_members(self.plan_switch, self.spec, self.buckets,
                                         self.hash_mode)
        result = {}
        for line in ofctl("dump-group-stats", self.name).splitlines():
            group = re.search(r"group_id=(\d+)", line)
            if not group or int(group.group(1)) not in members:
                continue
            gid = int(group.group(1))
            # OVS numbers bucket statistics by position (from 0), in installation order.
            counts = [int(n) for n in re.findall(r"bucket\d+:packet_count=(\d+)", line)]
            result[gid] = dict(zip(members[gid].values(), counts))
        return result

    def member_for(self, packet: str) -> str | None:
        """The member this switch would hand `packet` (an `ofproto/trace` flow) to, or None."""
        result = subprocess.run(["ovs-appctl", "ofproto/trace", self.name, packet],
                                capture_output=True, text=True, timeout=30)
        ports = {p.port: p.node for p in self.plan_switch.member_ports()}
        outputs = [int(n) for n in re.findall(r"output:(\d+)", result.stdout)]
        chosen = [ports[n] for n in outputs if n in ports]
        return chosen[-1] if chosen else None
