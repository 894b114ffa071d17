"""Mininet node classes that own what runs on them.

A node configures its own IP stack from the plan in `config()`, starts its daemons there
(`lab.net.daemons`), and stops them in `terminate()`; nothing else has to remember to clean up
after it. Every process a node starts (its shell, its daemons, a ping) is written into the
run's record with its start time, so that `ikelab clean` removes exactly what a crashed run
left (`lab.net.rundir`).
"""

import subprocess
from pathlib import Path

from mininet.log import error
from mininet.node import Host

from ..agent.names import NodeFiles, member_index
from ..plan import topology
from .daemons import Charon, Daemon, DaemonConfigError, ForwardingAgent, WitnessDaemon
from .rundir import RunDirectory


def node_dir(rundir: Path, name: str) -> Path:
    return Path(rundir) / "nodes" / name


class LabNode(Host):
    """A host whose addresses, routes and sysctls come from its `topology.Host`, and that owns
    its daemons (`daemon_list()`, none unless a subclass says so): `config()` launches them in
    order, and the net waits for every node's daemons together (`lab.net.cluster.ClusterNet.
    build`): a 128-peer lab has 136 charons to start. A restart (`start_daemons`) starts each
    and waits for it before the next. `terminate()` stops them in reverse.

    With `strict` (the `ikelab` lab) a daemon that refuses its config raises DaemonConfigError
    so the lab can tear down and say which node failed; under plain `mn` it is printed instead,
    because an exception there would make `mn` run its own global cleanup.
    """

    def __init__(self, name, plan_host: topology.Host = None, rundir=None,
                 files: NodeFiles = None, strict=True, **params):
        self.plan_host = plan_host
        self.files = files or NodeFiles(name, Path(rundir))
        self.strict = strict
        self.daemons: list[Daemon] = []
        self.startup_error = None
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
        ipv6 = host.ipv6
        # IPv6 only where the plan has it. No duplicate address detection: members share
        # their virtual addresses (and so their link-local ones) by design, and the hashing
        # switch carries no neighbour discovery (`topology`: the plan's neighbours instead).
        sysctls = {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
                   "net.ipv6.conf.all.accept_ra": 0, "net.ipv6.conf.default.accept_ra": 0,
                   "net.ipv6.conf.all.forwarding": int(host.forwarding and ipv6),
                   "net.ipv6.conf.all.disable_ipv6": int(not ipv6),
                   "net.ipv6.conf.default.disable_ipv6": int(not ipv6),
                   "net.ipv4.ip_forward": int(host.forwarding),
                   "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}
        devices = [f"{self.name}-{intf.name}" for intf in host.interfaces]
        if ipv6:
            sysctls |= {f"net.ipv6.conf.{dev}.accept_dad": 0 for dev in devices}
        self.cmd("; ".join(f"sysctl -qw {k}={v}" for k, v in sysctls.items()))
        commands = []
        direct6 = dict(host.direct6)
        for intf, dev in zip(host.interfaces, devices):
            # With OVS's userspace datapath, veth TX checksum offload leaves UDP checksums
            # unfilled and receivers drop the packets silently.
            flags = {4: "", 6: " nodad" + (" noprefixroute" if intf.name in direct6 else "")}
            # Global addresses only: an interface without its IPv6 link-local address does
            # not answer neighbour solicitations (measured: p1 never resolved h1).
            commands.append(f"ip addr flush dev {dev} scope global; "
                            + "".join(f"ip addr add {address} dev {dev}{flags[address.version]}; "
                                      for address in intf.addresses)
                            + f"ip link set {dev} up; ethtool -K {dev} tx off >/dev/null 2>&1")
        commands += [f"ip neigh replace {address} lladdr {mac} nud permanent "
                     f"dev {self.name}-{intf}" for address, mac, intf in host.neighbours]
        commands += [f"ip route replace {address}/128 dev {self.name}-{intf}"
                     for intf, addresses in direct6.items() for address in addresses]
        commands += [f"ip route replace {destination} via {gateway}"
                     for destination, gateway in host.routes]
        if commands:  # one round trip to the node's shell: a 128-peer lab has 266 nodes
            self.cmd("; ".join(commands))
        self.launch_daemons()
        return result

    def daemon_list(self) -> list[Daemon]:
        """The daemons this node runs, in start order."""
        return []

    def launch_daemons(self) -> None:
        self.daemons = self.daemon_list()
        for daemon in self.daemons:
            daemon.launch()

    def failed_to_start(self, exc: DaemonConfigError) -> None:
        """A daemon of this node refused to start: raise (strict) or say so (under mn)."""
        self.startup_error = str(exc)
        if self.strict:
            raise exc
        error(f"*** {exc}\n")

    def start_daemons(self) -> None:
        """Start each daemon in order; the first that refuses raises DaemonConfigError."""
        for daemon in self.daemons:
            daemon.start()

    def terminate(self):
        for daemon in reversed(self.daemons):
            daemon.stop()
        super().terminate()

    def _daemon(self, kind: type) -> Daemon | None:
        return next((d for d in self.daemons if isinstance(d, kind)), None)


class StrongSwanNode(LabNode):
    """A node with charon (and, on a cluster member, its forwarding agent after it)."""

    def daemon_list(self) -> list[Daemon]:
        return [Charon(self, self.files)]

    def config(self, **params):
        # `m1 swanctl --list-sas` in the CLI: swanctl finds this node's charon through the
        # strongswan.conf it reads (its `swanctl.socket`).
        self.cmd(f"export STRONGSWAN_CONF={self.files.strongswan_conf}")
        return super().config(**params)

    @property
    def charon(self) -> Charon | None:
        return self._daemon(Charon)


class ClusterMember(StrongSwanNode):
    """A member of the load-sharing cluster: the shared virtual IPs plus its sync address, and
    (unless the lab runs without one) its forwarding agent, started after charon."""

    def __init__(self, name, **params):
        self.failed = None  # how `fail()` took it down, until `restore()`
        super().__init__(name, **params)

    def daemon_list(self) -> list[Daemon]:
        if not self.files.agent_config.exists():  # a --no-agent lab
            return super().daemon_list()
        return super().daemon_list() + [ForwardingAgent(self, self.files)]

    @property
    def agent(self) -> ForwardingAgent | None:
        return self._daemon(ForwardingAgent)

    def fail(self, how: str = "daemons") -> None:
        """Make this member die: `daemons` kills its agent and charon outright (SIGKILL, as a
        crash would), `links` takes all its interfaces down and leaves the daemons running,
        `stopped` stops the daemons in order (planned maintenance, after a drain)."""
        if how == "daemons":
            for daemon in reversed(self.daemons):
                daemon.kill()
        elif how == "stopped":
            for daemon in reversed(self.daemons):
                daemon.stop()
        elif how == "links":
            self._set_links("down")
        else:
            raise ValueError(f"how must be daemons or links (got {how!r})")
        self.failed = how

    def restore(self) -> None:
        """Undo `fail()`: start the daemons again (the agent joins, fetching the table first)
        or bring the links back up (the agent notices and rejoins by itself)."""
        if self.failed in ("daemons", "stopped"):
            self.start_daemons()
        elif self.failed == "links":
            self._set_links("up")
        self.failed = None  # only once it is back: a failed restore can be tried again

    def _set_links(self, state: str) -> None:
        for intf in self.intfNames():
            if intf != "lo":
                self.cmd(f"ip link set {intf} {state}")


class PeerGateway(StrongSwanNode):
    """A VPN peer gateway protecting one LAN."""


class CrowdNode(StrongSwanNode):
    """Up to a thousand remote sites behind one charon (`topology.CrowdNode`). Each site's
    outer address is this node's by an AnyIP route (`local <block> dev lo`: the kernel
    answers for the whole block, no address per site), and each site's LAN address sits on a
    veth pair inside the node: kernel-libipsec routes a CHILD SA's traffic from an address of
    its local traffic selector, and charon does not count addresses on `lo` as its own. One
    `ip -batch` adds them all; they go with the node's namespace."""

    def __init__(self, name, crowd: topology.CrowdNode = None, **params):
        self.crowd = crowd
        super().__init__(name, **params)

    def launch_daemons(self) -> None:
        sites = f"{self.name}-sites"
        lines = [f"link add {sites} type veth peer name {sites}p", f"link set {sites} up",
                 f"link set {sites}p up", f"route add local {self.crowd.outer} dev lo"]
        lines += [f"addr add {site.lan_address}/32 dev {sites}" for site in self.crowd.sites]
        batch = node_dir(self.rundir, self.name) / "sites.batch"
        batch.write_text("\n".join(lines) + "\n")
        out = self.cmd(f"ip -batch {batch} 2>&1 && echo ok")
        if not out.strip().endswith("ok"):
            raise DaemonConfigError(f"{self.name}: could not address its sites: "
                                    f"{out.strip().splitlines()[-1] if out.strip() else '?'}")
        super().launch_daemons()


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

    The witness runs here, on the bridge's own address (`lab.agent.protocol.witness`): it decides
    which members may act when the sync network splits, and a member that cannot reach it
    knows its own sync link is down (`lab.agent.protocol.membership`). `partition(member)`
    silently drops every frame to and from that member's port (carrier stays up, as when a
    switch port or VLAN fails), `heal(member)` lets them through again.
    """

    PARTITION_TABLE = "ikelab_partition"

    def config(self, **params):
        self.partitioned: set[str] = set()
        return super().config(**params)

    def launch_daemons(self) -> None:
        ports = " ".join(f"ip link set {intf} master br0 up;" for intf in self.intfNames()
                         if intf != "lo")
        self.cmd(f"ip link add br0 type bridge; ip link set br0 up; {ports} "
                 f"ip addr add {topology.SYNC_WITNESS} dev br0")
        super().launch_daemons()

    def daemon_list(self) -> list[Daemon]:
        if not self.files.witness_config.exists():  # a --no-agent lab
            return []
        return [WitnessDaemon(self, self.files)]

    @property
    def witness(self) -> WitnessDaemon | None:
        return self._daemon(WitnessDaemon)

    def port_of(self, member: str) -> str:
        return f"{self.name}-eth{member_index(member)}"

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
