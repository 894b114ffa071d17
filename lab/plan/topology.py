"""The lab's model: what a user asks for (`LabSpec`) and the address plan it implies (`Plan`).

Pure data, no Mininet and no sockets, so every size and option is checked in milliseconds.
Everything the lab builds, renders or reports is derived from a `Plan`; nothing else invents
a name, an address or a port number.

Address plan (documentation prefixes on the "internet" side, RFC 5737)::

    203.0.113.0/24    the internet segment behind the external hashing switch
                      .1 the cluster's external virtual IP (every member, one MAC)
                      .10+i peer i (or, with --nat, the NAT router in front of peer 1)
    198.51.100.0/24   the home network of the NATed peer (--nat): router .1, peer 1 .2
    10.1.0.0/24       the cluster's LAN: .1 internal virtual IP (the LAN's gateway), .10 its host
    10.2.i.0/24       peer i's protected LAN: .1 the peer gateway, .10 its host
    10.255.0.0/24     the sync network: .i member i (a kernel bridge in its own namespace, so
                      steered packets cross it at kernel speed); .254 the bridge itself, the
                      witness a member pings to know its own sync link works
    203.0.113.200+k   crowd node k (--crowd): one charon speaking for up to 1,000 sites
    10.128.0.0/18     the crowd sites' own outer addresses: crowd node k answers for the /22
                      10.128.4(k-1).0, site n of it is .n+1 there; the members route each /22
                      via its crowd node, as the internet routes each branch's address to it
    10.64.0.0/14      the crowd sites' protected LANs: site j's is the /28 at 10.64.0.0 + 16 j

IPv6 (`--ip 6`, or `--ip dual`: both families inside, half the peers outside over each),
documentation prefixes only (RFC 3849), each network mirroring its IPv4 twin::

    2001:db8:0:1::/64  the internet segment: ::1 the virtual IP, ::1x peer x (the IPv4 plan's
                       last octet, read as hex digits: peer 1 is ::11 as it is .11);
                       ::fffe the upstream router, a sink: to a member only the nodes are
                       on-link, anything else (a spoofed flood's sources) goes there, and the
                       switch drops it (`lab.plan.hashing`), as the switch's ARP answers do
    2001:db8:1::/64    the cluster's LAN: ::1 internal virtual IP, ::10 its host
    2001:db8:2:i::/64  peer i's protected LAN: ::1 the peer gateway, ::10 its host
    2001:db8:0:ff::/64 the sync network's IPv6 twin: ::i member i (IPv6 LAN traffic and ESP
                       are steered to an IPv6 next hop; the agents speak over IPv4)

Across the hashing switches and the sync network, the nodes know each other's MACs from the
plan (permanent neighbour entries), as the ARP answers of the switch do for IPv4: members
share one address and one MAC, so neighbour discovery through a hashing switch would ask all
of them, and on the sync network it would cost the first steered packets.

Crowd sites have addresses of their own, not ports of one address, so the hashing switch spreads
them over the members by their source address the way it spreads real branch gateways; the
outer plan is private (RFC 1918) because a /18 of documentation space does not exist.

192.0.2.0/24 is left alone: machines like this one use it for their own network. The lab
refuses to start if any of its prefixes overlaps an address or route of the host
(`overlaps_host`).
"""

from dataclasses import dataclass, field
from ipaddress import (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface,
                       IPv6Network)

from ..agent.names import Ownership

HASH_MODES = ("l3", "l4", "split")
# What `ikelab run --chaos PLAY` does to the running cluster (`lab.run.scenarios.plays`).
CHAOS_PLAYS = ("chaos", "owner-death", "drain", "flood", "rehash-mid-negotiation")
CLUSTER_MODES = ("ls", "ha")
IKE_CHOICES = ("1", "2", "mixed")
AUTH_METHODS = ("psk", "pubkey")
OWNERSHIP_MODES = tuple(Ownership)
IP_CHOICES = ("4", "6", "dual")
MAX_MEMBERS = 8
MAX_PEERS = 128
MAX_CHAIN = 4
MAX_CROWD = 10000
SITES_PER_CROWD_NODE = 1000  # one charon's share: its per-SA cost grows with the SAs it holds
DEFAULT_CROWD_RATE = 100.0  # sites initiating per second: what 2 cores sustain at 8 members
CROWD_NODE_BASE = 200  # crowd node k is 203.0.113.(200 + k)
CROWD_PORT_BASE = 400  # and sits on port 400 + k of the external switch
CROWD_BLOCK = 1024  # outer addresses per crowd node (a /22)
CROWD_OUTER = IPv4Network("10.128.0.0/18")
CROWD_LANS = IPv4Network("10.64.0.0/14")
CROWD_LAN_PREFIX = 28
CROWD_DOMAIN = "crowd.ikelab.test"

INTERNET = IPv4Network("203.0.113.0/24")
NAT_HOME = IPv4Network("198.51.100.0/24")
CLUSTER_LAN = IPv4Network("10.1.0.0/24")
SYNC_NET = IPv4Network("10.255.0.0/24")
EXTERNAL_VIP = IPv4Address("203.0.113.1")
INTERNAL_VIP = IPv4Address("10.1.0.1")
SYNC_WITNESS = IPv4Interface("10.255.0.254/24")
INTERNET6 = IPv6Network("2001:db8:0:1::/64")
CLUSTER_LAN6 = IPv6Network("2001:db8:1::/64")
SYNC_NET6 = IPv6Network("2001:db8:0:ff::/64")
EXTERNAL_VIP6 = IPv6Address("2001:db8:0:1::1")
INTERNAL_VIP6 = IPv6Address("2001:db8:1::1")
UPSTREAM6 = IPv6Address("2001:db8:0:1::fffe")  # the sink members route the rest of v6 to
CLUSTER_ID = "cluster.ikelab.test"

# Locally administered MACs; the shared ones are what every member answers with.
EXTERNAL_VMAC = "02:1c:00:00:00:01"
INTERNAL_VMAC = "02:1c:00:00:00:02"
SINK_MAC = "02:1c:ff:00:00:00"  # what the switch answers for addresses nobody holds

# Switch port numbers: members first (bucket i is port i), everything else from 100 up.
OTHER_PORT_BASE = 100


class TopologyError(ValueError):
    """A lab that cannot be built; the message is one line a user can act on."""


@dataclass(frozen=True)
class LabSpec:
    """What the user asked for, before any address is chosen."""

    members: int = 3
    peers: int = 2
    hash: str = "l4"
    mode: str = "ls"
    ike: str = "2"
    auth: str = "psk"
    nat: bool = False
    agent: bool = True
    ownership: str = Ownership.TABLE
    expiry: float = 30.0  # seconds a half-open negotiation's table entry lives
    dead_after: float = 0.6  # seconds of silence after which members count one dead
    chain: int = 0  # with pubkey: intermediate CAs between the lab CA and every certificate
    ike_fragmentation: bool = True  # RFC 7383; without it, big IKE messages are IP-fragmented
    rebalance: bool = True  # even the tunnels out over the members (make-before-break)
    trace: bool = True  # each agent writes its decisions to trace_<member>.jsonl
    crowd: int = 0  # emulated remote sites beside the peers, on crowd nodes (`Site`)
    crowd_rate: float = DEFAULT_CROWD_RATE  # sites per second starting their tunnels
    ip: str = "4"  # 4, 6 or dual: the IP versions inside the tunnels, and of the peers outside

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions the protected LANs carry (and the virtual IPs answer on)."""
        return {"4": (4,), "6": (6,), "dual": (4, 6)}[self.ip]

    def validate(self) -> "LabSpec":
        """Return self, or raise TopologyError naming the first bad option."""
        if not isinstance(self.members, int) or not 1 <= self.members <= MAX_MEMBERS:
            raise TopologyError(f"members must be 1 to {MAX_MEMBERS} (got {self.members!r})")
        if not isinstance(self.peers, int) or not 1 <= self.peers <= MAX_PEERS:
            raise TopologyError(f"peers must be 1 to {MAX_PEERS} (got {self.peers!r})")
        if not isinstance(self.expiry, (int, float)) or not 0 < self.expiry <= 3600:
            raise TopologyError(f"expiry must be 0 to 3600 seconds (got {self.expiry!r})")
        if not isinstance(self.dead_after, (int, float)) or not 0.3 <= self.dead_after <= 30:
            raise TopologyError(f"dead-after must be 0.3 to 30 seconds (got {self.dead_after!r})")
        if not isinstance(self.crowd, int) or not 0 <= self.crowd <= MAX_CROWD:
            raise TopologyError(f"crowd must be 0 to {MAX_CROWD} sites (got {self.crowd!r})")
        if not isinstance(self.crowd_rate, (int, float)) or not 1 <= self.crowd_rate <= 5000:
            raise TopologyError(f"crowd-rate must be 1 to 5000 sites per second "
                                f"(got {self.crowd_rate!r})")
        if self.crowd and not self.agent:
            raise TopologyError("crowd needs the agent: without it nothing steers a site's LAN "
                                "to the member that holds its tunnel")
        if not isinstance(self.chain, int) or not 0 <= self.chain <= MAX_CHAIN:
            raise TopologyError(f"chain must be 0 to {MAX_CHAIN} (got {self.chain!r})")
        if self.chain and self.auth != "pubkey":
            raise TopologyError("chain needs auth pubkey: it is a chain of certificates")
        for name, value, choices in (("hash", self.hash, HASH_MODES),
                                     ("mode", self.mode, CLUSTER_MODES),
                                     ("ike", self.ike, IKE_CHOICES),
                                     ("auth", self.auth, AUTH_METHODS),
                                     ("ownership", self.ownership, OWNERSHIP_MODES),
                                     ("ip", self.ip, IP_CHOICES)):
            if value not in choices:
                raise TopologyError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
        if self.nat and self.ip == "6":
            raise TopologyError("nat needs IPv4: NAT66 is not what IPv6 sites do (with --ip "
                                "dual, --nat puts the IPv4 half behind the NAT)")
        if self.crowd and self.ip != "4":
            raise TopologyError("crowd is IPv4 only: its sites' outer and LAN blocks have no "
                                "IPv6 plan yet")
        return self


@dataclass(frozen=True)
class Interface:
    """One interface of a node: Mininet's name, its addresses (with prefix) and MAC."""

    name: str
    address: IPv4Interface | None
    mac: str | None = None
    address6: IPv6Interface | None = None

    @property
    def addresses(self) -> list:
        """Its IPv4 and IPv6 addresses, those it has."""
        return [a for a in (self.address, self.address6) if a is not None]


@dataclass(frozen=True)
class Host:
    """A node of the lab and how its IP stack is configured."""

    name: str
    role: str  # member, peer, lan-host, nat-router
    interfaces: tuple[Interface, ...]
    routes: tuple[tuple[str, str], ...] = ()  # (destination, gateway)
    forwarding: bool = False
    # (IPv6 address, MAC, interface): neighbours across a hashing switch, known from the plan
    neighbours: tuple[tuple[str, str, str], ...] = ()
    # (interface, its IPv6 prefix is not on-link: only these IPv6 addresses are, each a /128
    # route to that interface). A member's internet: it must not ask the segment for an
    # address nobody holds (a spoofed flood's), only its upstream router.
    direct6: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def ipv6(self) -> bool:
        return any(i.address6 for i in self.interfaces)

    def interface(self, name: str) -> Interface:
        return next(i for i in self.interfaces if i.name == name)


@dataclass(frozen=True)
class Member:
    index: int
    name: str
    sync_address: IPv4Address
    host: Host
    sync_address6: IPv6Address | None = None


@dataclass(frozen=True)
class Peer:
    """A VPN peer gateway, its protected LAN and the host on it."""

    index: int
    name: str
    ike_version: int
    identity: str
    address: IPv4Address | IPv6Address  # its own external address
    seen_as: IPv4Address | IPv6Address  # the source address the cluster sees (behind NAT)
    lans: tuple  # its protected LAN of each family (IPv4 first)
    lan_host: str
    lan_hosts: tuple  # the LAN host's address in each of them
    behind_nat: bool
    host: Host

    @property
    def lan(self) -> IPv4Network | IPv6Network:
        """The first protected LAN: the one the cluster names the tunnel's holdings by."""
        return self.lans[0]

    @property
    def lan_host_address(self) -> IPv4Address | IPv6Address:
        return self.lan_hosts[0]

    @property
    def vip(self) -> IPv4Address | IPv6Address:
        """The cluster's virtual IP this peer speaks IKE to: of its outer family."""
        return EXTERNAL_VIP6 if self.address.version == 6 else EXTERNAL_VIP


@dataclass(frozen=True)
class Site:
    """An emulated remote site of the crowd: an outer address, an IKE identity and a protected
    /28 of its own, spoken for by its crowd node's charon (one connection per site)."""

    index: int  # 1..crowd, across all crowd nodes
    name: str  # s<index>
    node: str  # the crowd node that holds it
    ike_version: int
    identity: str
    address: IPv4Address
    lan: IPv4Network

    @property
    def lan_address(self) -> IPv4Address:
        """The site's own address in its LAN (the crowd node's; traffic starts and ends here)."""
        return self.lan.network_address + 1


@dataclass(frozen=True)
class CrowdNode:
    """A node of the crowd: its host, and the block of outer addresses it answers for."""

    index: int
    name: str
    outer: IPv4Network  # its sites' outer addresses (a /22 routed to it)
    sites: tuple[Site, ...]
    host: Host


@dataclass(frozen=True)
class SwitchPort:
    port: int
    node: str
    interface: str
    mac: str
    address: IPv4Address | None = None  # the node's address on the segment (not a member's)
    address6: IPv6Address | None = None


@dataclass(frozen=True)
class Switch:
    """A switch, its OVS bridge name and datapath id, and who sits on which port."""

    name: str
    dpid: str
    role: str  # external, internal (OVS hashing switches), sync (a kernel bridge)
    ports: tuple[SwitchPort, ...]
    vip: IPv4Address | None = None
    vmac: str | None = None

    def member_ports(self) -> list[SwitchPort]:
        return [p for p in self.ports if p.port < OTHER_PORT_BASE]

    def other_ports(self) -> list[SwitchPort]:
        return [p for p in self.ports if p.port >= OTHER_PORT_BASE]


@dataclass(frozen=True)
class HostLink:
    """A cable between two nodes that are not switches (peer and its LAN host, NAT router)."""

    a: str
    a_intf: str
    b: str
    b_intf: str


@dataclass(frozen=True)
class Plan:
    spec: LabSpec
    members: tuple[Member, ...]
    peers: tuple[Peer, ...]
    lan_host: Host
    nat_router: Host | None
    switches: tuple[Switch, ...]
    host_links: tuple[HostLink, ...] = field(default=())
    crowd: tuple[CrowdNode, ...] = field(default=())

    def hosts(self) -> list[Host]:
        """Every non-switch node, members first, in the order the lab builds them."""
        hosts = [m.host for m in self.members] + [p.host for p in self.peers]
        hosts += [self._peer_lan_host(p) for p in self.peers]
        hosts.append(self.lan_host)
        if self.nat_router:
            hosts.append(self.nat_router)
        return hosts + [c.host for c in self.crowd]

    @property
    def cluster_lans(self) -> list[IPv4Network | IPv6Network]:
        """The cluster's protected LAN in each family the lab carries."""
        return [{4: CLUSTER_LAN, 6: CLUSTER_LAN6}[v] for v in self.spec.families]

    def sites(self) -> list[Site]:
        """Every crowd site, in index order."""
        return [site for node in self.crowd for site in node.sites]

    def strongswan_nodes(self) -> list[str]:
        """Every node that runs a charon: members, peers, crowd nodes."""
        return ([m.name for m in self.members] + [p.name for p in self.peers]
                + [c.name for c in self.crowd])

    def switch(self, role: str) -> Switch:
        return next(s for s in self.switches if s.role == role)

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def peer(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)

    def prefixes(self) -> list[IPv4Network]:
        """Every network the lab uses, so none of them can be mistaken for the host's own."""
        nets = [INTERNET, CLUSTER_LAN, SYNC_NET] + [lan for p in self.peers for lan in p.lans]
        nets += [CROWD_OUTER, CROWD_LANS] if self.crowd else []
        nets += [INTERNET6, CLUSTER_LAN6, SYNC_NET6] if self.spec.ip != "4" else []
        return nets + ([NAT_HOME] if self.nat_router else [])

    def hashing_switches(self) -> list[Switch]:
        """The OVS bridges; the sync network is a kernel bridge inside a namespace of its own."""
        return [s for s in self.switches if s.role != "sync"]

    def bridge_names(self) -> list[str]:
        return [s.name for s in self.hashing_switches()]

    @staticmethod
    def _peer_lan_host(peer: Peer) -> Host:
        by_version = {lan.version: (lan, host) for lan, host in zip(peer.lans, peer.lan_hosts)}
        v4, v6 = by_version.get(4), by_version.get(6)
        return Host(peer.lan_host, "lan-host", (Interface(
            "eth0", IPv4Interface(f"{v4[1]}/{v4[0].prefixlen}") if v4 else None,
            _mac(4, peer.index, 0), IPv6Interface(f"{v6[1]}/{v6[0].prefixlen}") if v6 else None),),
            routes=tuple((DEFAULT[lan.version], str(lan.network_address + 1))
                         for lan in peer.lans))


DEFAULT = {4: "default", 6: "::/0"}


def _hex_host(network: IPv6Network, digits: int) -> IPv6Address:
    """The address in `network` whose last group reads as the decimal `digits`: ::11 for 11,
    so that an IPv6 address names its node as the IPv4 one does."""
    return network.network_address + int(str(digits), 16)


def _mac(kind: int, index: int, intf: int) -> str:
    return f"02:1c:{kind:02x}:{index >> 8:02x}:{index & 0xff:02x}:{intf:02x}"


def ike_version_of(spec: LabSpec, index: int) -> int:
    """IKE version of peer `index` (1-based): --ike mixed alternates, starting with IKEv2."""
    if spec.ike == "mixed":
        return 2 if index % 2 else 1
    return int(spec.ike)


def build_plan(spec: LabSpec) -> Plan:
    """Return the complete plan for `spec` (validated first)."""
    spec.validate()
    v4, v6 = 4 in spec.families, 6 in spec.families
    members = []
    for i in range(1, spec.members + 1):
        name = f"m{i}"
        sync = SYNC_NET.network_address + i
        sync6 = _hex_host(SYNC_NET6, i) if v6 else None
        members.append(Member(i, name, sync, Host(name, "member", (
            Interface("eth0", IPv4Interface(f"{EXTERNAL_VIP}/{INTERNET.prefixlen}")
                      if spec.ip != "6" else None, EXTERNAL_VMAC,
                      IPv6Interface(f"{EXTERNAL_VIP6}/{INTERNET6.prefixlen}") if v6 else None),
            Interface("eth1", IPv4Interface(f"{INTERNAL_VIP}/{CLUSTER_LAN.prefixlen}")
                      if v4 else None, INTERNAL_VMAC,
                      IPv6Interface(f"{INTERNAL_VIP6}/{CLUSTER_LAN6.prefixlen}") if v6 else None),
            Interface("eth2", IPv4Interface(f"{sync}/{SYNC_NET.prefixlen}"), _mac(1, i, 2),
                      IPv6Interface(f"{sync6}/{SYNC_NET6.prefixlen}") if v6 else None),
        ), forwarding=True), sync6))

    peers, host_links = [], []
    nat_router = None
    ext_ports = [SwitchPort(m.index, m.name, "eth0", EXTERNAL_VMAC) for m in members]
    for i in range(1, spec.peers + 1):
        name = f"p{i}"
        # --ip dual: odd peers reach the cluster over IPv4, even ones over IPv6.
        outer6 = spec.ip == "6" or (spec.ip == "dual" and i % 2 == 0)
        lans = tuple([IPv4Network(f"10.2.{i}.0/24")] if v4 else []) + tuple(
            [IPv6Network(f"2001:db8:2:{i}::/64")] if v6 else [])
        lan_hosts = tuple(lan.network_address + (10 if lan.version == 4 else 0x10)
                          for lan in lans)
        public = INTERNET.network_address + 10 + i
        behind_nat = spec.nat and i == 1
        lan_gw = {lan.version: f"{lan.network_address + 1}/{lan.prefixlen}" for lan in lans}
        lan_intf = Interface("eth1", IPv4Interface(lan_gw[4]) if 4 in lan_gw else None,
                             _mac(2, i, 1), IPv6Interface(lan_gw[6]) if 6 in lan_gw else None)
        neighbours = ()
        if outer6:
            address = public = _hex_host(INTERNET6, 10 + i)
            wan = Interface("eth0", None, _mac(2, i, 0),
                            IPv6Interface(f"{address}/{INTERNET6.prefixlen}"))
            routes = ()
            neighbours = ((str(EXTERNAL_VIP6), EXTERNAL_VMAC, "eth0"),)
            ext_ports.append(SwitchPort(OTHER_PORT_BASE + i, name, "eth0", _mac(2, i, 0),
                                        None, address))
        elif behind_nat:
            address = NAT_HOME.network_address + 2
            router_inside = NAT_HOME.network_address + 1
            wan = Interface("eth0", IPv4Interface(f"{address}/{NAT_HOME.prefixlen}"), _mac(2, i, 0))
            routes = (("default", str(router_inside)),)
            nat_router = Host("r1", "nat-router", (
                Interface("eth0", IPv4Interface(f"{public}/{INTERNET.prefixlen}"), _mac(3, 1, 0)),
                Interface("eth1", IPv4Interface(f"{router_inside}/{NAT_HOME.prefixlen}"), _mac(3, 1, 1)),
            ), forwarding=True)
            host_links.append(HostLink("r1", "eth1", name, "eth0"))
            ext_ports.append(SwitchPort(OTHER_PORT_BASE + i, "r1", "eth0", _mac(3, 1, 0), public))
        else:
            address = public
            wan = Interface("eth0", IPv4Interface(f"{address}/{INTERNET.prefixlen}"), _mac(2, i, 0))
            routes = ()
            ext_ports.append(SwitchPort(OTHER_PORT_BASE + i, name, "eth0", _mac(2, i, 0), public))
        host = Host(name, "peer", (wan, lan_intf), routes=routes, forwarding=True,
                    neighbours=neighbours)
        peers.append(Peer(i, name, ike_version_of(spec, i), f"{name}.ikelab.test", address, public,
                          lans, f"h{i}", lan_hosts, behind_nat, host))
        host_links.append(HostLink(name, "eth1", f"h{i}", "eth0"))

    crowd = build_crowd(spec)
    ext_ports += [SwitchPort(CROWD_PORT_BASE + c.index, c.name, "eth0", c.host.interfaces[0].mac,
                             c.host.interfaces[0].address.ip) for c in crowd]
    lan_host = Host("hc", "lan-host", (Interface(
        "eth0", IPv4Interface(f"{CLUSTER_LAN.network_address + 10}/{CLUSTER_LAN.prefixlen}")
        if v4 else None, _mac(5, 0, 0),
        IPv6Interface(f"{_hex_host(CLUSTER_LAN6, 10)}/{CLUSTER_LAN6.prefixlen}") if v6 else None),),
        routes=((("default", str(INTERNAL_VIP)),) if v4 else ()) + (
            (("::/0", str(INTERNAL_VIP6)),) if v6 else ()),
        neighbours=((str(INTERNAL_VIP6), INTERNAL_VMAC, "eth0"),) if v6 else ())
    hc = lan_host.interfaces[0]
    int_ports = [SwitchPort(m.index, m.name, "eth1", INTERNAL_VMAC) for m in members]
    int_ports.append(SwitchPort(OTHER_PORT_BASE + 1, "hc", "eth0", hc.mac,
                                hc.address.ip if hc.address else None,
                                hc.address6.ip if hc.address6 else None))

    # Every member routes each crowd node's block of outer addresses to it; with IPv6, it
    # knows the MAC of every IPv6 node across the switches, and routes the rest to the sink.
    routes = tuple((str(c.outer), str(c.host.interfaces[0].address.ip)) for c in crowd)
    neighbours, direct6 = (), ()
    if spec.ip != "4":
        routes += (("::/0", str(UPSTREAM6)),)
        neighbours = tuple((str(p.address6), p.mac, "eth0") for p in ext_ports
                           if p.address6 is not None) + ((str(UPSTREAM6), SINK_MAC, "eth0"),)
        direct6 = (("eth0", tuple(address for address, _mac, _intf in neighbours)),)
    if v6:
        neighbours += ((str(hc.address6.ip), hc.mac, "eth1"),)
    # The sync network's IPv6 neighbours too: steering hands ESP and LAN packets to the
    # holder's IPv6 address, and the first of them must not wait for (or be lost to)
    # neighbour discovery across the bridge (measured: the first forwarded packets were).
    members = [Member(m.index, m.name, m.sync_address,
                      Host(m.host.name, m.host.role, m.host.interfaces, routes,
                           m.host.forwarding, neighbours + tuple(
                               (str(o.sync_address6), o.host.interface("eth2").mac, "eth2")
                               for o in members if o is not m and o.sync_address6), direct6),
                      m.sync_address6) for m in members]
    sync_ports = [SwitchPort(m.index, m.name, "eth2", _mac(1, m.index, 2)) for m in members]
    switches = (
        Switch("ikex", "0000000000001c01", "external", tuple(ext_ports), EXTERNAL_VIP, EXTERNAL_VMAC),
        Switch("ikei", "0000000000001c02", "internal", tuple(int_ports), INTERNAL_VIP, INTERNAL_VMAC),
        Switch("ikes", "0000000000001c03", "sync", tuple(sync_ports)),
    )
    return Plan(spec, tuple(members), tuple(peers), lan_host, nat_router, switches,
                tuple(host_links), crowd)


def crowd_nodes_for(sites: int) -> int:
    """How many crowd nodes hold `sites` sites: one per SITES_PER_CROWD_NODE."""
    return -(-sites // SITES_PER_CROWD_NODE)


def build_crowd(spec: LabSpec) -> tuple[CrowdNode, ...]:
    """The crowd nodes for spec.crowd sites, each with its block of sites (the last one may
    hold fewer)."""
    nodes = []
    for k in range(1, crowd_nodes_for(spec.crowd) + 1):
        outer = IPv4Network(f"{CROWD_OUTER.network_address + CROWD_BLOCK * (k - 1)}/22")
        first = (k - 1) * SITES_PER_CROWD_NODE + 1
        last = min(spec.crowd, k * SITES_PER_CROWD_NODE)
        name = f"c{k}"
        sites = tuple(Site(j, f"s{j}", name, ike_version_of(spec, j), f"s{j}.{CROWD_DOMAIN}",
                           outer.network_address + (j - first) + 1,
                           IPv4Network(f"{CROWD_LANS.network_address + 16 * j}/"
                                       f"{CROWD_LAN_PREFIX}"))
                      for j in range(first, last + 1))
        address = INTERNET.network_address + CROWD_NODE_BASE + k
        host = Host(name, "crowd", (Interface(
            "eth0", IPv4Interface(f"{address}/{INTERNET.prefixlen}"), _mac(6, k, 0)),))
        nodes.append(CrowdNode(k, name, outer, sites, host))
    return tuple(nodes)


def overlaps_host(plan: Plan, host_networks: list[IPv4Network]) -> list[tuple[IPv4Network,
                                                                              IPv4Network]]:
    """(lab prefix, host network) pairs that overlap; a default route overlaps nothing."""
    return [(lab, host) for host in host_networks if host.prefixlen > 0
            for lab in plan.prefixes() if lab.version == host.version and lab.overlaps(host)]
