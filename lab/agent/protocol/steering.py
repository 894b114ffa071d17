"""Steering the data plane in the kernel: how a packet reaches the member that holds its SA.

Only the member that negotiated a CHILD SA holds its keys (kernel-libipsec keeps them in
charon), but the hashing switches hand each packet to any member. Two paths, neither through
Python; the agent only writes the rules:

- ESP from a peer (UDP 4500, non-zero SPI). Each member's charon allocates its inbound SPIs
  from its own range (`charon.spi_min`/`spi_max`): member i uses 0x(c0+i)xxxxxx. An nftables
  netdev ingress chain on the external interface reads the SPI's top byte and, when it belongs
  to another member, forwards the frame unchanged (`fwd ip to <that member's sync address>`,
  and for ESP over IPv6 `fwd ip6 to` its IPv6 sync address) over the sync network; the holder
  receives a packet for the virtual IP, its charon decrypts it and writes it to ipsec0. These
  rules are static: the SPI says who holds the SA.
- Cleartext from the cluster's LAN towards a peer's protected network. kernel-libipsec routes
  the holder's traffic selectors to ipsec0 in routing table 220. Every other member gets a
  route for those prefixes via the holder's sync address in table 210 (looked up just before
  220; an IPv6 LAN via its IPv6 sync address), learned from the holder's CHILD SA events:
  the kernel forwards the packet to the
  holder, which encrypts it. A holder letting a tunnel go (a handover) steers its LAN to the
  new holder the same way, before its own SA ends. A rekey keeps the holder, so the route does
  not move; the holder re-advertises its prefixes every few seconds, so a lost message heals.

Counters on the nftables rules show how much was steered (the CLI's `steering`).
This module is pure: it writes nftables scripts and plans route changes; `daemon` and
`routes` run them.
"""

import functools
from ipaddress import ip_network

from ..names import NATT_PORT, esp_label

TABLE_ESP = "ikelab_esp"
TABLE_LAN = "ikelab_lan"


def family(address: str) -> str:
    """nftables' name for the family of an address or prefix: `ip` or `ip6`."""
    return "ip6" if ":" in address else "ip"


def ruleset(me: int, members: dict[int, str], external: str, lan: str, sync: str,
            peers: dict[str, tuple[str, ...]], crowd: tuple[str, str] | None = None,
            members6: dict[int, str] | None = None) -> str:
    """The nftables script for member `me`.

    `members`: index -> sync address (`members6`: its IPv6 one, in a lab with IPv6);
    `peers`: name -> (address as the cluster sees it, LAN, its other LANs); `crowd`: (outer
    prefix, LAN prefix) of the crowd's sites, counted by one rule each: a rule per site would
    make every packet walk 10,000 of them.
    """
    members6 = members6 or {}
    peers = dict(peers)
    if crowd is not None:
        peers["crowd"] = crowd
    others = sorted(i for i in members if i != me)
    lines = [f"table netdev {TABLE_ESP} {{", "  chain steer {",
             f'    type filter hook ingress device "{external}" priority 0; policy accept;']
    if others:
        labels = ", ".join(f"{esp_label(i):#04x}" for i in others)
        for name, (address, *_lans) in sorted(peers.items()):
            lines.append(f"    {family(address)} saddr {address} udp dport {NATT_PORT} "
                         f'@th,64,8 {{ {labels} }} counter comment "esp {name}"')
        for index in others:
            # `fwd ip` passes an IPv6 packet by (and `fwd ip6` an IPv4 one): one rule each.
            lines.append(f"    meta protocol ip udp dport {NATT_PORT} @th,64,8 "
                         f"{esp_label(index):#04x} counter fwd ip to {members[index]} "
                         f'device "{sync}" comment "to m{index}"')
            if index in members6:
                lines.append(f"    meta protocol ip6 udp dport {NATT_PORT} @th,64,8 "
                             f"{esp_label(index):#04x} counter fwd ip6 to {members6[index]} "
                             f'device "{sync}" comment "to m{index} over IPv6"')
    lines += ["  }", "}", f"table inet {TABLE_LAN} {{", "  chain forward {",
              "    type filter hook forward priority 0; policy accept;"]
    for name, (_address, *prefixes) in sorted(peers.items()):
        for prefix in prefixes:
            suffix = " over IPv6" if ":" in prefix and len(prefixes) > 1 else ""
            lines.append(f'    iifname "{lan}" oifname "{sync}" {family(prefix)} daddr {prefix} '
                         f'counter comment "lan {name}{suffix}"')
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def desired_routes(advertised: dict[int, set[str]], me: int) -> dict[str, int]:
    """prefix -> the member to route it to, for the prefixes other members hold (the lowest
    index wins if two ever advertise the same one); never a prefix this member holds."""
    mine = advertised.get(me, set())
    result = {}
    for member in sorted(advertised, reverse=True):
        if member != me:
            for prefix in advertised[member]:
                if prefix not in mine:
                    result[canonical(prefix)] = member
    return result


@functools.lru_cache(maxsize=65536)
def canonical(prefix: str) -> str:
    """`prefix` as the kernel spells it back (network address, length); remembered: a
    crowd's routes are recomputed from 10,000 prefixes a few times a second."""
    return str(ip_network(prefix))


def route_changes(current: dict[str, int], desired: dict[str, int]) -> tuple[dict, list]:
    """(prefix -> member to replace or add, prefixes to delete) to get from current to desired."""
    replace = {p: m for p, m in desired.items() if current.get(p) != m}
    delete = [p for p in current if p not in desired]
    return replace, delete


def route_batch(replace: dict[str, int], delete: list[str], gateways: dict[int, str],
                interface: str, proto: str, table: int,
                gateways6: dict[int, str] | None = None) -> str:
    """The `ip -batch` script that makes those changes: deletions first, then the routes
    to add or move. An IPv6 prefix goes via the member's IPv6 sync address (`gateways6`);
    without one it is not routed."""
    gateways6 = gateways6 or {}
    lines = [f"route del {prefix} proto {proto} table {table}" for prefix in delete]
    for prefix, member in sorted(replace.items()):
        via = (gateways6 if ":" in prefix else gateways).get(member)
        if via is not None:
            lines.append(f"route replace {prefix} via {via} dev {interface} proto {proto} "
                         f"table {table}")
    return "\n".join(lines) + "\n"


def counters(nft_json: dict) -> dict[str, int]:
    """comment -> packets, from `nft -j list ruleset` output."""
    result = {}
    for item in nft_json.get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                result[rule["comment"]] = expr["counter"]["packets"]
    return result
