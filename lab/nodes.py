"""Mininet node classes that own what runs on them.

A node configures its own IP stack from the plan in `config()`, starts its daemons there, and
stops them in `terminate()`; nothing else has to remember to clean up after it. Each node also
writes down, in its directory of the run, the shell that holds its namespaces and the
namespace's identity, so that `ikelab clean` can remove exactly what a crashed run left.
"""

import os
from pathlib import Path

from mininet.log import error
from mininet.node import Host

from . import topology
from .render import NodeFiles
from .strongswan import Charon, DaemonConfigError


def node_dir(rundir: Path, name: str) -> Path:
    return Path(rundir) / "nodes" / name


class LabNode(Host):
    """A host whose addresses, routes and sysctls come from its `topology.Host`."""

    def __init__(self, name, plan_host: topology.Host = None, rundir=None, **params):
        self.plan_host = plan_host
        self.rundir = Path(rundir)
        here = node_dir(self.rundir, name)
        (here / "run").mkdir(parents=True, exist_ok=True)
        # charon's PID file path (/run/charon.pid) is compiled in: every node gets its own /run.
        params.setdefault("privateDirs", [("/run", str(here / "run"))])
        super().__init__(name, **params)
        (here / "shell.pid").write_text(f"{self.pid}\n")
        (here / "netns").write_text(f"{os.stat(f'/proc/{self.pid}/ns/net').st_ino}\n")

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
            # unfilled and receivers drop the packets silently (see PLATFORM.md).
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
        self.charon = Charon(self, self.files)
        try:
            self.charon.start()
            self.charon.load()
        except DaemonConfigError as exc:
            self.startup_error = str(exc)
            if self.strict:
                raise
            error(f"*** {exc}\n")
        return result

    def terminate(self):
        if self.charon is not None:
            self.charon.stop()
        super().terminate()


class ClusterMember(StrongSwanNode):
    """A member of the load-sharing cluster: the shared virtual IPs plus its sync address."""


class PeerGateway(StrongSwanNode):
    """A VPN peer gateway protecting one LAN."""


class NatRouter(LabNode):
    """Masquerades its inside network behind its internet address, so NAT-T is exercised."""

    def config(self, **params):
        result = super().config(**params)
        outside = f"{self.name}-{self.plan_host.interfaces[0].name}"
        self.cmd(f"iptables -t nat -A POSTROUTING -o {outside} -j MASQUERADE")
        return result
