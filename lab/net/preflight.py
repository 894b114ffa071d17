"""Can this machine run the lab? One check per thing the lab uses, each naming its fix.

A brand-new Debian 12 taught this module its purpose: a package that nothing installed (the
`openssl` plugin's) surfaced only as charon refusing its config, after half the lab had been
built. Here every command, daemon file, strongSwan plugin, kernel facility and Python module
the lab uses is checked before any daemon starts, and what is missing comes back as one line
that names the Debian package (or the command) that fixes it.

`scripts/setup.sh` installs every package named here; a unit test keeps the two in step.
The checks read the filesystem and ask Open vSwitch whether it runs; they change nothing.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network
from pathlib import Path

from ..plan.topology import Plan, overlaps_host

# The commands the lab runs, with the Debian package that ships each.
COMMANDS = {
    "mnexec": "mininet",
    "ovs-vsctl": "openvswitch-switch", "ovs-ofctl": "openvswitch-switch",
    "ovs-appctl": "openvswitch-switch",
    "swanctl": "strongswan-swanctl", "pki": "strongswan-pki",
    "ip": "iproute2", "ss": "iproute2", "iptables": "iptables", "nft": "nftables",
    "ethtool": "ethtool", "tcpdump": "tcpdump", "iperf3": "iperf3", "ping": "iputils-ping",
    "sysctl": "procps", "stdbuf": "coreutils",
}
# What shows a run afterwards, with its package: a run needs none of them, so none is checked
# before one (`ikelab wireshark` names the package when it is missing; the tests check a
# run's page in a headless chromium).
VIEWERS = {"tshark": "tshark", "chromium": "chromium"}
CHARON = Path("/usr/lib/ipsec/charon")
CHARON_PACKAGE = "strongswan-charon"
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
# Which package ships each strongSwan plugin the templates may load; the rest are in the core
# library. (Debian 12: `dpkg -S /usr/lib/ipsec/plugins/libstrongswan-NAME.so`.)
PLUGIN_PACKAGES = {
    "openssl": "libstrongswan-standard-plugins",
    "kernel-libipsec": "libcharon-extra-plugins",
    "socket-default": "strongswan-libcharon",
    "vici": "strongswan-swanctl",
}
CORE_PLUGIN_PACKAGE = "libstrongswan"
# Python modules the lab imports, all installed into the venv by setup.sh.
PYTHON_MODULES = ("mininet", "jinja2", "vici", "netfilterqueue")
OVS_START = "/usr/share/openvswitch/scripts/ovs-ctl start"
SETUP = "./scripts/setup.sh"


class NotReady(RuntimeError):
    """This machine cannot run the lab as it is (missing software, another lab, a clash with
    the host's networks); the message is one line that names the fix. `ikelab` exits 2."""


@dataclass(frozen=True)
class Miss:
    """One thing the machine lacks: what, and the Debian package or the command that fixes it."""

    what: str
    package: str | None = None
    command: str | None = None


def plugin_package(plugin: str) -> str:
    return PLUGIN_PACKAGES.get(plugin, CORE_PLUGIN_PACKAGE)


def packages() -> set[str]:
    """Every Debian package a check here may name (setup.sh must install them all)."""
    return ({*COMMANDS.values(), *VIEWERS.values(), CHARON_PACKAGE, CORE_PLUGIN_PACKAGE,
             *PLUGIN_PACKAGES.values()})


def loaded_plugins(strongswan_conf: str) -> list[str]:
    """The plugin names of every `load =` list in a rendered strongswan.conf."""
    names = []
    for match in re.finditer(r"^\s*load\s*=\s*(.*)$", strongswan_conf, re.MULTILINE):
        names += [n for n in match.group(1).split() if n not in names]
    return names


def missing_plugins(plugins, plugin_dir: Path = PLUGIN_DIR) -> list[Miss]:
    return [Miss(f"strongSwan plugin {name}", plugin_package(name)) for name in plugins
            if not (plugin_dir / f"libstrongswan-{name}.so").is_file()]


def missing_software() -> list[Miss]:
    """Commands, charon and the Python modules the lab needs."""
    misses = [Miss(command, package) for command, package in COMMANDS.items()
              if shutil.which(command) is None]
    if not CHARON.is_file():
        misses.append(Miss(str(CHARON), CHARON_PACKAGE))
    for module in PYTHON_MODULES:
        if importlib.util.find_spec(module) is None:
            misses.append(Miss(f"Python module {module}", command=SETUP))
    return misses


def _kernel_module_available(name: str) -> bool:
    """Loaded, built in, or loadable from /lib/modules."""
    if Path(f"/sys/module/{name}").exists():
        return True
    modules = Path("/lib/modules") / os.uname().release
    for listing in ("modules.builtin", "modules.dep"):
        try:
            if re.search(rf"/{name}\.ko", (modules / listing).read_text()):
                return True
        except OSError:
            continue
    return False


def missing_kernel() -> list[Miss]:
    """The kernel facilities beyond namespaces: NFQUEUE for the agent, TUN for
    kernel-libipsec's user-space ESP."""
    misses = []
    if not (Path("/proc/net/netfilter/nfnetlink_queue").exists()
            or _kernel_module_available("nfnetlink_queue")):
        misses.append(Miss("kernel module nfnetlink_queue", command="modprobe nfnetlink_queue"))
    if not Path("/dev/net/tun").exists():
        misses.append(Miss("/dev/net/tun", command="modprobe tun"))
    if not Path("/proc/self/ns/net").exists():
        misses.append(Miss("network namespaces (a kernel with CONFIG_NET_NS)"))
    return misses


OVS_DAEMONS = (("ovsdb-server", ["ovs-vsctl", "--timeout=5", "show"]),
               ("ovs-vswitchd", ["ovs-appctl", "--timeout=5", "-t", "ovs-vswitchd", "version"]))


def missing_services() -> list[Miss]:
    """Open vSwitch's two daemons, each asked whether it answers."""
    for daemon, probe in OVS_DAEMONS:
        try:
            answered = subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            answered = False
        if not answered:
            return [Miss(f"Open vSwitch's {daemon} (not running)", command=OVS_START)]
    return []


def describe(misses: list[Miss]) -> str:
    """One line for the user: what is missing, then the fix (packages first)."""
    what = ", ".join(m.what + (f" ({m.package})" if m.package else "") for m in misses)
    fixes = []
    names = sorted({m.package for m in misses if m.package})
    if names:
        fixes.append(f"apt-get install {' '.join(names)} (or {SETUP})")
    for command in dict.fromkeys(m.command for m in misses if m.command and not m.package):
        if not (names and command == SETUP):  # already named with the packages
            fixes.append(command)
    return f"missing {what}; fix: {'; '.join(fixes) or 'a kernel that has it'}"


def host_networks() -> list[IPv4Network | IPv6Network]:
    """The root namespace's own addresses and routes (all tables, both IP versions) as
    networks; link-local and multicast ones are every host's and overlap nothing of the lab."""
    networks = []
    addrs = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout
    for link in json.loads(addrs or "[]"):
        for info in link.get("addr_info", []):
            if "local" in info and info.get("family") in ("inet", "inet6"):
                networks.append(ip_interface(f"{info['local']}/{info['prefixlen']}").network)
    for family in ("-4", "-6"):
        routes = subprocess.run(["ip", family, "-j", "route", "show", "table", "all"],
                                capture_output=True, text=True).stdout
        for route in json.loads(routes or "[]"):
            if route.get("dst", "default") not in ("default", "multicast") and route.get(
                    "type") not in ("multicast",):
                try:
                    networks.append(ip_network(route["dst"], strict=False))
                except ValueError:
                    continue  # a destination `ip` spells otherwise: not an address of ours
    return [n for n in networks if not (n.is_link_local or n.is_multicast)]


def check_machine(plan: Plan) -> None:
    """Raise NotReady unless this machine can build `plan`, before anything is created or
    Mininet is even imported: root, the software, the kernel, Open vSwitch up, and no clash
    between the lab's prefixes and the host's own."""
    if os.geteuid() != 0:
        raise NotReady("must run as root: the lab creates namespaces, bridges and daemons")
    misses = missing_software() + missing_kernel()
    if not misses:
        misses = missing_services()
    if misses:
        raise NotReady(describe(misses))
    clashes = overlaps_host(plan, host_networks())
    if clashes:
        lab, host = clashes[0]
        raise NotReady(f"the lab's {lab} overlaps the host's own {host}; the lab will not "
                       "share addresses with a real network (README: troubleshooting)")
    need, have = memory_needed(plan), memory_available()
    if have is not None and need > have:
        raise NotReady(f"{len(plan.sites())} crowd sites need about {need >> 20} MiB of memory "
                       f"and this machine has {have >> 20} MiB available; ask for fewer")


# Resident memory per tunnel, measured with 10,000 sites on one crowd charon and one member:
# the crowd charon 374 MB (about 40 KiB a site, kernel-libipsec's SA and policy included), the
# member's 307 MB (35 KiB), an agent's table and routes up to 8 KiB (bench_scale: 3.5 KB per
# entry); and each node's own start-up cost. A crowd past what the machine holds is refused.
MEMORY_PER_TUNNEL = (40 + 35 + 8) << 10
MEMORY_PER_NODE = 24 << 20


def memory_needed(plan: Plan) -> int:
    """Bytes the lab's daemons will hold, about: per node, plus per tunnel."""
    nodes = len(plan.strongswan_nodes()) + len(plan.members)  # charons, and the agents
    return nodes * MEMORY_PER_NODE + (len(plan.sites()) + len(plan.peers)) * MEMORY_PER_TUNNEL


def memory_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None if it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        return None
    return None
