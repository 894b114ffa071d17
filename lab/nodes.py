"""Mininet node classes that own what runs on them.

A node configures its own IP stack from the plan in `config()`, starts its daemons there, and
stops them in `terminate()`; nothing else has to remember to clean up after it. Every process
a node starts (its shell, its daemons, a ping) is written into the run's record with its start
time, so that `ikelab clean` removes exactly what a crashed run left (`lab.rundir`).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mininet.log import error
from mininet.node import Host

from . import topology
from .agent.daemon import query
from .render import NodeFiles
from .rundir import RunDirectory
from .strongswan import Charon, DaemonConfigError


def node_dir(rundir: Path, name: str) -> Path:
    return Path(rundir) / "nodes" / name


class LabNode(Host):
    """A host whose addresses, routes and sysctls come from its `topology.Host`."""

    def __init__(self, name, plan_host: topology.Host = None, rundir=None, **params):
        self.plan_host = plan_host
        self.rundir = Path(rundir)
        self.run = RunDirectory(self.rundir)
        here = node_dir(self.rundir, name)
        (here / "run").mkdir(parents=True, exist_ok=True)
        # charon's PID file path (/run/charon.pid) is compiled in: every node gets its own /run.
        params.setdefault("privateDirs", [("/run", str(here / "run"))])
        super().__init__(name, **params)

    def _popen(self, cmd, **params):
        # Mininet starts the node's shell and every `popen` through here.
        process = super()._popen(cmd, **params)
        self.run.record_process(process.pid)
        return process

    def config(self, **params):
        # Mininet hands every host an automatic IP and MAC; the plan's addresses replace them.
        params.update(ip=None, mac=None, defaultRoute=None)
        result = super().config(**params)
        host = self.plan_host
        sysctls = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1,
                   "net.ipv4.ip_forward": int(host.forwarding),
                   "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}
        self.cmd("; ".join(f"sysctl -qw {k}={v}" for k, v in sysctls.items()))
        for intf in host.interfaces:
            dev = f"{self.name}-{intf.name}"
            # With OVS's userspace datapath, veth TX checksum offload leaves UDP checksums
            # unfilled and receivers drop the packets silently.
            self.cmd(f"ip addr flush dev {dev}; ip addr add {intf.address} dev {dev}; "
                     f"ip link set {dev} up; ethtool -K {dev} tx off >/dev/null 2>&1")
        for destination, gateway in host.routes:
            self.cmd(f"ip route replace {destination} via {gateway}")
        return result


class StrongSwanNode(LabNode):
    """A node running one charon, started and loaded in `config()`, stopped in `terminate()`.

    With `strict` (the `ikelab` lab) a rejected config raises DaemonConfigError so the lab can
    tear down and say which node failed; under plain `mn` it is printed instead, because an
    exception there would make `mn` run its own global cleanup.
    """

    def __init__(self, name, files: NodeFiles = None, strict=True, **params):
        self.files = files
        self.strict = strict
        self.charon = None
        self.startup_error = None
        super().__init__(name, **params)

    def config(self, **params):
        result = super().config(**params)
        # `m1 swanctl --list-sas` in the CLI: swanctl finds this node's charon through the
        # strongswan.conf it reads (its `swanctl.socket`).
        self.cmd(f"export STRONGSWAN_CONF={self.files.strongswan_conf}")
        self.charon = Charon(self, self.files)
        self.start_daemon(lambda: (self.charon.start(), self.charon.load()))
        return result

    def start_daemon(self, start) -> None:
        """Run `start`; a daemon that refuses raises (strict) or is reported (under mn)."""
        try:
            start()
        except DaemonConfigError as exc:
            self.startup_error = str(exc)
            if self.strict:
                raise
            error(f"*** {exc}\n")

    def terminate(self):
        if self.charon is not None:
            self.charon.stop()
        super().terminate()


class ClusterMember(StrongSwanNode):
    """A member of the load-sharing cluster: the shared virtual IPs plus its sync address, and
    (unless the lab runs without one) its forwarding agent, started after charon."""

    AGENT_DEADLINE = 10.0

    def __init__(self, name, **params):
        self.agent = None
        self.failed = None  # how `fail()` took it down, until `restore()`
        super().__init__(name, **params)

    def config(self, **params):
        result = super().config(**params)
        if self.startup_error is None and self.files.agent_config.exists():
            self.start_daemon(self.start_agent)
        return result

    def start_agent(self, join: bool = False) -> None:
        """Start the agent and return once it answers on its control socket; `join` makes it
        fetch the table from a serving member before it serves."""
        # The agent runs the lab's own modules with whatever Python runs the lab (the venv's,
        # or Debian's under plain mn with the venv on its path).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        with open(self.files.agent_log, "ab") as log:
            self.agent = self.popen([sys.executable, "-m", "lab.agent.daemon", "--config",
                                     str(self.files.agent_config)] + (["--join"] if join else []),
                                    env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        end = time.monotonic() + self.AGENT_DEADLINE
        while time.monotonic() < end:
            if self.agent.poll() is not None:
                tail = self.files.agent_log.read_text(errors="replace").strip().splitlines()
                raise DaemonConfigError(f"{self.name}: agent exited with status "
                                        f"{self.agent.returncode}: {(tail or ['no output'])[-1]}")
            try:
                query(self.files.agent_socket, timeout=1.0)
                return
            except (OSError, ValueError):
                time.sleep(0.05)
        raise DaemonConfigError(f"{self.name}: agent did not answer within "
                                f"{self.AGENT_DEADLINE:.0f} s")

    def fail(self, how: str = "daemons") -> None:
        """Make this member die: `daemons` kills its charon and agent outright (SIGKILL, as a
        crash would), `links` takes all its interfaces down and leaves the daemons running."""
        if how == "daemons":
            for process in (self.agent, self.charon.process if self.charon else None):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        elif how == "links":
            for intf in self.intfNames():
                if intf != "lo":
                    self.cmd(f"ip link set {intf} down")
        else:
            raise ValueError(f"how must be daemons or links (got {how!r})")
        self.failed = how

    def restore(self) -> None:
        """Undo `fail()`: restart the daemons (the agent joins, fetching the table first) or
        bring the links back up (the agent notices and rejoins by itself)."""
        if self.failed == "daemons":
            self.charon.start()
            self.charon.load()
            if self.files.agent_config.exists():  # not in a --no-agent lab
                self.start_agent(join=True)
        elif self.failed == "links":
            for intf in self.intfNames():
                if intf != "lo":
                    self.cmd(f"ip link set {intf} up")
        self.failed = None  # only once it is back: a failed restore can be tried again

    def terminate(self):
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(5)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        super().terminate()


class PeerGateway(StrongSwanNode):
    """A VPN peer gateway protecting one LAN."""


class NatRouter(LabNode):
    """Masquerades its inside network behind its internet address, so NAT-T is exercised."""

    def config(self, **params):
        result = super().config(**params)
        outside = f"{self.name}-{self.plan_host.interfaces[0].name}"
        self.cmd(f"iptables -t nat -A POSTROUTING -o {outside} -j MASQUERADE")
        return result


class SyncBridge(LabNode):
    """The sync network's switch: a kernel bridge inside a namespace of its own. Steered ESP
    and LAN traffic crosses it, so it must be fast (OVS's userspace datapath adds a fraction of
    a millisecond per hop), and it must stay out of the root namespace.

    The bridge answers pings on the sync network's witness address: a member that cannot
    reach it knows its own sync link is down (see `lab.agent.membership`). `partition(member)`
    silently drops every frame to and from that member's port (carrier stays up, as when a
    switch port or VLAN fails), `heal(member)` lets them through again.
    """

    PARTITION_TABLE = "ikelab_partition"

    def config(self, **params):
        result = super().config(**params)
        ports = " ".join(f"ip link set {intf} master br0 up;" for intf in self.intfNames()
                         if intf != "lo")
        self.cmd(f"ip link add br0 type bridge; ip link set br0 up; {ports} "
                 f"ip addr add {topology.SYNC_WITNESS} dev br0")
        self.partitioned: set[str] = set()
        return result

    def port_of(self, member: str) -> str:
        return f"{self.name}-eth{int(member.removeprefix('m'))}"

    def partition(self, member: str) -> None:
        """Cut `member` off the sync network."""
        self.partitioned.add(member)
        self._apply()

    def heal(self, member: str) -> None:
        """Let `member`'s sync traffic through again."""
        self.partitioned.discard(member)
        self._apply()

    def _apply(self) -> None:
        self.cmd(f"nft delete table bridge {self.PARTITION_TABLE} 2>/dev/null")
        if not self.partitioned:
            return
        ports = ", ".join(f'"{self.port_of(m)}"' for m in sorted(self.partitioned))
        script = (f"table bridge {self.PARTITION_TABLE} {{\n"
                  f"  chain in {{ type filter hook prerouting priority 0; "
                  f"iifname {{ {ports} }} drop; }}\n"
                  f"  chain out {{ type filter hook postrouting priority 0; "
                  f"oifname {{ {ports} }} drop; }}\n}}\n")
        result = subprocess.run(["mnexec", "-a", str(self.pid), "nft", "-f", "-"], input=script,
                                text=True, capture_output=True)
        if result.returncode:
            raise RuntimeError(f"{self.name}: nft: {result.stderr.strip()}")
