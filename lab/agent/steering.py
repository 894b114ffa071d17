"""Steering the data plane in the kernel: how a packet reaches the member that holds its SA.

Only the member that negotiated a CHILD SA holds its keys (kernel-libipsec keeps them in
charon), but the hashing switches hand each packet to any member. Two paths, neither through
Python; the agent only writes the rules:

- ESP from a peer (UDP 4500, non-zero SPI). Each member's charon allocates its inbound SPIs
  from its own range (`charon.spi_min`/`spi_max`): member i uses 0x(c0+i)xxxxxx. An nftables
  netdev ingress chain on the external interface reads the SPI's top byte and, when it belongs
  to another member, forwards the frame unchanged (`fwd ip to <that member's sync address>`)
  over the sync network; the holder receives a packet for the virtual IP, its charon decrypts
  it and writes it to ipsec0. These rules are static: the SPI says who holds the SA.
- Cleartext from the cluster's LAN towards a peer's protected network. kernel-libipsec routes
  the holder's traffic selectors to ipsec0 in routing table 220. Every other member gets a
  route for those prefixes via the holder's sync address in table 210 (looked up just before
  220), learned from the holder's CHILD SA events: the kernel forwards the packet to the
  holder, which encrypts it. A holder letting a tunnel go (a handover) steers its LAN to the
  new holder the same way, before its own SA ends. A rekey keeps the holder, so the route does
  not move; the holder re-advertises its prefixes every few seconds, so a lost message heals.

Counters on the nftables rules show how much was steered (the CLI's `steering`).
This module is pure: it writes nftables scripts and plans route changes; `daemon` and
`routes` run them.
"""

import functools
from ipaddress import IPv4Network

from .names import esp_label

TABLE_ESP = "ikelab_esp"
TABLE_LAN = "ikelab_lan"


def ruleset(me: int, members: dict[int, str], external: str, lan: str, sync: str,
            peers: dict[str, tuple[str, str]], crowd: tuple[str, str] | None = None) -> str:
    """The nftables script for member `me`.

    `members`: index -> sync address; `peers`: name -> (address as the cluster sees it, LAN);
    `crowd`: (outer prefix, LAN prefix) of the crowd's sites, counted by one rule each: a rule
    per site would make every packet walk 10,000 of them.
    """
    peers = dict(peers)
    if crowd is not None:
        peers["crowd"] = crowd
    others = sorted(i for i in members if i != me)
    lines = [f"table netdev {TABLE_ESP} {{", "  chain steer {",
             f'    type filter hook ingress device "{external}" priority 0; policy accept;']
    if others:
        labels = ", ".join(f"{esp_label(i):#04x}" for i in others)
        for name, (address, _lan) in sorted(peers.items()):
            lines.append(f"    ip saddr {address} udp dport 4500 @th,64,8 {{ {labels} }} "
                         f'counter comment "esp {name}"')
        for index in others:
            lines.append(f"    udp dport 4500 @th,64,8 {esp_label(index):#04x} counter "
                         f'fwd ip to {members[index]} device "{sync}" comment "to m{index}"')
    lines += ["  }", "}", f"table inet {TABLE_LAN} {{", "  chain forward {",
              "    type filter hook forward priority 0; policy accept;"]
    for name, (_address, prefix) in sorted(peers.items()):
        lines.append(f'    iifname "{lan}" oifname "{sync}" ip daddr {prefix} counter '
                     f'comment "lan {name}"')
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
    return str(IPv4Network(prefix))


def route_changes(current: dict[str, int], desired: dict[str, int]) -> tuple[dict, list]:
    """(prefix -> member to replace or add, prefixes to delete) to get from current to desired."""
    replace = {p: m for p, m in desired.items() if current.get(p) != m}
    delete = [p for p in current if p not in desired]
    return replace, delete


def route_batch(replace: dict[str, int], delete: list[str], gateways: dict[int, str],
                interface: str, proto: str, table: int) -> str:
    """The `ip -batch` script that makes those changes: deletions first, then the routes
    to add or move."""
    lines = [f"route del {prefix} proto {proto} table {table}" for prefix in delete]
    lines += [f"route replace {prefix} via {gateways[member]} dev {interface} proto {proto} "
              f"table {table}" for prefix, member in sorted(replace.items())]
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
