"""The hashing switch's OpenFlow program, as plain strings for `ovs-ofctl -O OpenFlow15`.

A load-sharing cluster sits behind a switch that spreads traffic for the virtual IP across the
members. Here that switch is an Open vSwitch bridge with an OpenFlow 1.5 *select* group,
`selection_method=hash` with explicit fields (OVS's default hash ignores UDP ports). Members
share one IP and one MAC, so the switch never learns MACs: every forwarding decision is an
explicit flow computed here from the plan.

Hash modes (`--hash`):

- ``l3``: IP source and destination; all of a peer's traffic lands on one member.
- ``l4``: adds the UDP/TCP ports; IKE on 500 and on 4500 may land on different members.
- ``split``: adversarial and deterministic. UDP 4500 goes through a second group whose buckets
  are the first group's rotated by one member. OVS picks a bucket by highest-random-weight over
  (bucket_id, hash of the fields); both groups hash the same fields and carry the same bucket
  ids, so a peer's 500 and 4500 traffic pick the same bucket id and thus different members.

IPv6 (`--ip 6|dual`): the same three groups again for IPv6 (``IKE6_GROUP``, ``NATT6_GROUP``,
``FRAGMENT6_GROUP``), hashing ``ipv6_src``/``ipv6_dst`` where IPv4 hashes ``ip_src``/``ip_dst``
(the ports alike), with the same bucket ids: ``l3``, ``l4`` and ``split`` mean what they mean
for IPv4. IPv6 fragments (a Fragment header) take the fragment group by their addresses. The
flow label is not hashed: Linux labels each socket's flow on its own (auto_flowlabels), and a
peer's IKE moves between sockets (500, 4500), so it would only split a peer's traffic further.
No neighbour discovery crosses the switch: the nodes know each other's MACs from the plan
(`topology`), and what a member sends to the upstream "router" goes to the sink MAC.

In ``--mode ha`` the group has a single bucket: the active member takes everything.

Addresses nobody holds: the switch answers a member's ARP request for any address of the
segment that no node owns, with a MAC whose frames it drops (as the upstream router of a real
cluster would answer for the whole internet). Without it, a flood from spoofed sources leaves
each member ARPing for hundreds of addresses, its replies queued behind resolutions that
never come, until charon's socket buffer is full and its answers to legitimate peers wait
seconds behind them. A member's request for an address a node does own goes to that node.

IP fragments: only a datagram's first fragment carries its UDP ports, so a switch that hashes
on ports would send the first fragment of a big IKE message to one member and the rest to
another, and neither could reassemble it. Like real switches, this one hashes every fragment
on its addresses alone (a group of its own, ``FRAGMENT_GROUP``): all fragments of a datagram
reach one member, which reassembles it and, if it is not the owner, forwards it whole.

The buckets are the *serving* members (`lab.net.switch` follows the members' agents), in plan
order; each bucket watches its port, so a member whose link goes down stops getting traffic
even before its agent's state says so. In HA the active member is the first serving one.
Every function takes the hash mode and the serving members explicitly where they can change
at run time (`rehash`, failover); by default they are the spec's mode and every member.
"""

from .topology import SINK_MAC, LabSpec, Switch
IKE_GROUP = 1
NATT_GROUP = 2
FRAGMENT_GROUP = 3
IKE6_GROUP, NATT6_GROUP, FRAGMENT6_GROUP = 4, 5, 6
BROADCAST = "ff:ff:ff:ff:ff:ff"
GROUP_NAMES = {IKE_GROUP: "ip", NATT_GROUP: "udp4500", FRAGMENT_GROUP: "fragments",
               IKE6_GROUP: "ipv6", NATT6_GROUP: "udp4500 ipv6", FRAGMENT6_GROUP: "fragments ipv6"}

L3_FIELDS = ("ip_src", "ip_dst")
L4_FIELDS = L3_FIELDS + ("udp_src", "udp_dst", "tcp_src", "tcp_dst")
L3_FIELDS6 = ("ipv6_src", "ipv6_dst")
L4_FIELDS6 = L3_FIELDS6 + L4_FIELDS[2:]


def hash_fields(switch: Switch, spec: LabSpec, mode: str | None = None,
                version: int = 4) -> tuple[str, ...]:
    """The header fields the switch's select group for IP `version` hashes on (`mode`
    overrides spec.hash)."""
    mode = mode or spec.hash
    if mode == "l3" or (mode == "split" and switch.role == "external"):
        return L3_FIELDS6 if version == 6 else L3_FIELDS
    return L4_FIELDS6 if version == 6 else L4_FIELDS


def ipv6(spec: LabSpec) -> bool:
    """True when the lab carries IPv6 (the switches get the IPv6 groups and flows)."""
    return spec.ip != "4"


def active_ports(switch: Switch, spec: LabSpec, serving=None) -> list[int]:
    """Ports of the members that receive traffic: every serving one in load sharing, the first
    serving one in HA. `serving` (member names) defaults to every member."""
    ports = [p.port for p in switch.member_ports() if serving is None or p.node in serving]
    return ports[:1] if spec.mode == "ha" else ports


def splits(switch: Switch, spec: LabSpec, mode: str | None = None) -> bool:
    """True when this switch sends UDP 4500 through the rotated group."""
    return ((mode or spec.hash) == "split" and spec.mode == "ls" and switch.role == "external"
            and len(switch.member_ports()) >= 2)


def groups(switch: Switch, spec: LabSpec, serving=None, mode: str | None = None) -> list[str]:
    """The select groups, as `ovs-ofctl add-group`/`mod-group` arguments."""
    ports = active_ports(switch, spec, serving)
    result = []
    for version, (ike, natt, fragments) in _families(spec):
        fields = ",".join(hash_fields(switch, spec, mode, version))
        l3 = ",".join(L3_FIELDS6 if version == 6 else L3_FIELDS)
        result += [_group(ike, fields, zip(ports, ports)), _group(fragments, l3, zip(ports, ports))]
        if splits(switch, spec, mode):
            result.append(_group(natt, fields, zip(ports, ports[1:] + ports[:1])))
    return result


def _families(spec: LabSpec) -> list[tuple[int, tuple[int, int, int]]]:
    """(IP version, (its IKE, NAT-T and fragment group ids)) for each version the switch
    hashes: IPv4 always (the peers behind a NAT, and the ARP-answered segment), IPv6 when the
    lab has it."""
    result = [(4, (IKE_GROUP, NATT_GROUP, FRAGMENT_GROUP))]
    if ipv6(spec):
        result.append((6, (IKE6_GROUP, NATT6_GROUP, FRAGMENT6_GROUP)))
    return result


def _group(group_id: int, fields: str, buckets) -> str:
    """`buckets`: (bucket id, output port) pairs. Bucket ids are member port numbers, not
    positions, so a member leaving does not renumber (and so re-hash) the flows of those that
    stay. No bucket at all: the group drops."""
    buckets = ",".join(f"bucket=bucket_id={bucket},watch_port:{port},output:{port}"
                       for bucket, port in buckets)
    return (f"group_id={group_id},type=select,selection_method=hash,fields({fields})"
            + (f",{buckets}" if buckets else ""))


def bucket_members(switch: Switch, spec: LabSpec, serving=None,
                   mode: str | None = None) -> dict[int, dict[int, str]]:
    """For each group, bucket id -> member name, matching what `groups()` installs."""
    names = {p.port: p.node for p in switch.member_ports()}
    ports = active_ports(switch, spec, serving)
    result = {}
    for _version, (ike, natt, fragments) in _families(spec):
        result[ike] = {p: names[p] for p in ports}
        result[fragments] = {p: names[p] for p in ports}
        if splits(switch, spec, mode):
            rotated = ports[1:] + ports[:1]
            result[natt] = {p: names[r] for p, r in zip(ports, rotated)}
    return result


def _arp_reply(mac: str) -> str:
    """Actions that turn an ARP request into the reply "the asked-for address is at `mac`",
    sent back where it came from."""
    return ("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
            f"mod_dl_src:{mac},"
            "load:0x2->NXM_OF_ARP_OP[],"
            "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],"
            "move:NXM_OF_ARP_TPA[]->NXM_NX_REG0[],"
            "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
            "move:NXM_NX_REG0[]->NXM_OF_ARP_SPA[],"
            f"load:{'0x' + mac.replace(':', '')}->NXM_NX_ARP_SHA[],"
            "in_port")


def flows(switch: Switch, spec: LabSpec, mode: str | None = None) -> list[str]:
    """The flow table of a hashing switch, as `ovs-ofctl add-flow` arguments; a miss drops."""
    others = switch.other_ports()
    to_others = ",".join(f"output:{p.port}" for p in others) or "drop"
    # ARP for the virtual IP is answered by the switch itself, always with the one shared MAC.
    result = [f"priority=400,arp,arp_op=1,arp_tpa={switch.vip},actions={_arp_reply(switch.vmac)}"]
    # A member asking for a node's address asks that node; for any other address, the switch
    # answers with a MAC it drops.
    for p in others:
        if p.address is not None:
            result.append(f"priority=390,arp,arp_op=1,dl_src={switch.vmac},arp_tpa={p.address},"
                          f"actions=output:{p.port}")
    result.append(f"priority=380,arp,arp_op=1,dl_src={switch.vmac},"
                  f"actions={_arp_reply(SINK_MAC)}")
    result.append(f"priority=370,dl_dst={SINK_MAC},actions=drop")
    for version, (ike, natt, fragments) in _families(spec):
        ip, udp = ("ipv6", "udp6") if version == 6 else ("ip", "udp")
        result.append(f"priority=350,{ip},nw_frag=yes,dl_dst={switch.vmac},"
                      f"actions=group:{fragments}")
        if splits(switch, spec, mode):
            result.append(f"priority=300,{udp},dl_dst={switch.vmac},tp_dst=4500,"
                          f"actions=group:{natt}")
        result.append(f"priority=200,{ip},dl_dst={switch.vmac},actions=group:{ike}")
    # IPv6 to the upstream router: the sink (`topology.UPSTREAM6`) drops it, as above.
    # Anything else for the shared MAC (ARP replies to a member's request) reaches every
    # member, so whichever member asked learns the answer.
    members = ",".join(f"output:{p.port}" for p in switch.member_ports())
    result.append(f"priority=150,dl_dst={switch.vmac},actions={members}")
    for p in switch.member_ports():
        result.append(f"priority=100,in_port={p.port},dl_dst={BROADCAST},actions={to_others}")
    for p in others:
        result.append(f"priority=100,dl_dst={p.mac},actions=output:{p.port}")
    result.append(f"priority=50,dl_dst={BROADCAST},actions={to_others}")
    return result
