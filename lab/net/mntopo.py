"""The lab as a Mininet `Topo`: nodes, switches and cables, all taken from a `Plan`.

```
        h1      h2    ...  hP          peers' LAN hosts (10.2.i.10)
        |       |          |
        p1      p2    ...  pP          peer gateways, strongSwan (203.0.113.10+i)
        |       |          |           (--nat: p1 sits behind r1 on 198.51.100.0/24)
     +--+-------+----------+--+
     |  ikex  external hashing |       OVS, OpenFlow 1.5 select group on VIP 203.0.113.1
     +--+-------+----------+--+
        |       |          |
        m1      m2    ...  mN ---+     cluster members, strongSwan + agent, one VIP + one MAC
        |       |          |     |
     +--+-------+----------+--+  +--- ikes: sync 10.255.0.0/24, kernel bridge, witness .254
     |  ikei  internal hashing |       OVS select group on VIP 10.1.0.1
     +-----------+-------------+
                 |
                 hc                    the cluster's LAN host (10.1.0.10)
```
"""

from pathlib import Path

from mininet.topo import Topo

from ..agent.names import NodeFiles
from ..plan.topology import Host, Plan
from .nodes import ClusterMember, CrowdNode, LabNode, NatRouter, PeerGateway, SyncBridge
from .switch import HashingSwitch

ROLE_CLASSES = {"member": ClusterMember, "peer": PeerGateway, "lan-host": LabNode,
                "nat-router": NatRouter, "crowd": CrowdNode}


def _port(interface: str) -> int:
    return int(interface.removeprefix("eth"))


class IkeClusterTopo(Topo):
    """Every node of `plan`, with its run-directory files; `strict` as in LabNode."""

    def build(self, plan: Plan = None, rundir: Path = None, strict: bool = True):
        self.plan = plan  # the CLI's `sites` reads the crowd from it
        for host in plan.hosts():
            params = {"cls": ROLE_CLASSES[host.role], "plan_host": host, "rundir": str(rundir)}
            if host.role in ("member", "peer", "crowd"):
                params.update(files=NodeFiles(host.name, Path(rundir)), strict=strict)
            if host.role == "crowd":
                params.update(crowd=next(c for c in plan.crowd if c.name == host.name))
            self.addHost(host.name, **params)
        for switch in plan.switches:
            if switch.role == "sync":
                self.addHost(switch.name, cls=SyncBridge, rundir=str(rundir), strict=strict,
                             plan_host=Host(switch.name, "sync-bridge", ()))
            else:
                self.addSwitch(switch.name, cls=HashingSwitch, plan_switch=switch,
                               spec=plan.spec, rundir=str(rundir))
            for port in switch.ports:
                self.addLink(port.node, switch.name, port1=_port(port.interface),
                             port2=port.port, intfName1=f"{port.node}-{port.interface}",
                             intfName2=f"{switch.name}-eth{port.port}", addr1=port.mac)
        hosts = {h.name: h for h in plan.hosts()}
        for link in plan.host_links:
            self.addLink(link.a, link.b, port1=_port(link.a_intf), port2=_port(link.b_intf),
                         intfName1=f"{link.a}-{link.a_intf}", intfName2=f"{link.b}-{link.b_intf}",
                         addr1=hosts[link.a].interface(link.a_intf).mac,
                         addr2=hosts[link.b].interface(link.b_intf).mac)


def root_interfaces(plan: Plan) -> list[str]:
    """Names of the lab's interfaces that live in the root namespace (the OVS switch ports)."""
    return [f"{s.name}-eth{p.port}" for s in plan.hashing_switches() for p in s.ports]
