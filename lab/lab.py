"""Bringing the lab up and down: preflight, run directory, rendering, Mininet, teardown.

`Lab` is a context manager. Whatever happens inside it (a rejected config, Ctrl-C, a failed
check), leaving it stops every node through Mininet and then cleans the run from its record,
so nothing the run created survives it unless `--keep` asked to keep its files.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
from ipaddress import IPv4Network, ip_interface, ip_network
from pathlib import Path

from mininet.log import setLogLevel
from mininet.net import Mininet

from .pki import make_credentials
from .render import TEMPLATE_DIR, NodeFiles, agent_config_data, identity_of, render_node
from .rundir import RunDirectory, clean_run, live_runs, stale_runs
from .topo import IkeClusterTopo, root_interfaces
from .topology import LabSpec, Plan, build_plan, overlaps_host

REQUIRED = ("mnexec", "ovs-vsctl", "ovs-ofctl", "swanctl", "pki", "ethtool", "iptables")


class LabError(RuntimeError):
    """The lab cannot start or run; the message is one line for the user."""


def host_networks() -> list[IPv4Network]:
    """The root namespace's own addresses and routes (all tables) as networks."""
    networks = []
    addrs = subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True, text=True).stdout
    for link in json.loads(addrs or "[]"):
        for info in link.get("addr_info", []):
            networks.append(ip_interface(f"{info['local']}/{info['prefixlen']}").network)
    routes = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"],
                            capture_output=True, text=True).stdout
    for route in json.loads(routes or "[]"):
        if route.get("dst", "default") != "default":
            networks.append(ip_network(route["dst"], strict=False))
    return networks


def preflight(plan: Plan, say=print) -> None:
    """Raise LabError unless this machine can build `plan` now; clean up after crashed runs."""
    if os.geteuid() != 0:
        raise LabError("must run as root: the lab creates namespaces, bridges and daemons")
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing or not Path("/usr/lib/ipsec/charon").exists():
        raise LabError(f"missing {' '.join(missing) or 'charon'}: run ./scripts/setup.sh")
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode:
        raise LabError("Open vSwitch is not running: start it with "
                       "/usr/share/openvswitch/scripts/ovs-ctl start (or ./scripts/setup.sh)")
    clashes = overlaps_host(plan, host_networks())
    if clashes:
        lab, host = clashes[0]
        raise LabError(f"the lab's {lab} overlaps the host's own {host}; the lab will not "
                       "share addresses with a real network")
    live = live_runs()
    if live:
        raise LabError(f"another lab is running (run {live[0].name}, pid "
                       f"{live[0].read()['owner_pid']}); stop it first")
    for run in stale_runs():
        say(f"cleaning up after crashed run {run.name}")
        clean_run(run, say=say)
    for bridge in plan.bridge_names():
        if subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", bridge],
                          capture_output=True).returncode == 0:
            raise LabError(f"OVS bridge {bridge} exists but no ikelab run recorded it; "
                           "remove it yourself if it is a leftover")


def prepare(spec: LabSpec, keep: bool = False, template_dir: Path = TEMPLATE_DIR,
            say=print) -> tuple[Plan, RunDirectory]:
    """Check the machine, create the run directory, make credentials and render every config."""
    plan = build_plan(spec)
    preflight(plan, say)
    description = (f"{spec.members} members, {spec.peers} peers, hash {spec.hash}, "
                   f"mode {spec.mode}, ike {spec.ike}, auth {spec.auth}"
                   + (", nat" if spec.nat else "")
                   + (f", agent ({spec.ownership})" if spec.agent else ", no agent"))
    run = RunDirectory.create(plan.bridge_names(), root_interfaces(plan), keep, description)
    try:
        creds = make_credentials(plan, run.path, secrets.token_bytes(32))
        for name in [m.name for m in plan.members] + [p.name for p in plan.peers]:
            files = NodeFiles(name, run.path)
            files.swanctl_dir.mkdir()
            creds.install(identity_of(plan, name), files.swanctl_dir)
            for path, text in render_node(plan, name, files, creds, template_dir).items():
                path.write_text(text)
        if spec.agent:
            for member in plan.members:
                files = NodeFiles(member.name, run.path)
                files.agent_config.write_text(json.dumps(
                    agent_config_data(plan, member, files, creds), indent=1) + "\n")
    except Exception as exc:
        clean_run(run, say=lambda _: None)
        raise LabError(f"rendering configs failed: {exc}") from None
    return plan, run


class Lab:
    """A running lab: `with Lab(spec) as lab:` builds and starts it, leaving tears it down."""

    def __init__(self, spec: LabSpec, keep: bool = False, template_dir: Path = TEMPLATE_DIR,
                 say=lambda message: None):
        self.spec = spec
        self.keep = keep
        self.template_dir = Path(template_dir)
        self.say = say
        self.plan = None
        self.run = None
        self.net = None

    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        """Build and start everything; on any failure tear down and raise LabError."""
        setLogLevel("error")
        self.plan, self.run = prepare(self.spec, self.keep, self.template_dir, self.say)
        self.say(f"run directory {self.run.path}")
        try:
            topo = IkeClusterTopo(plan=self.plan, rundir=self.run.path, strict=True)
            self.net = Mininet(topo=topo, controller=None, build=False, autoSetMacs=False)
            self.say(f"starting {len(self.plan.members)} members and {len(self.plan.peers)} "
                     "peers (charon per node, configs checked by loading them)")
            self.net.build()
            self.say("programming the hashing switches")
            self.net.start()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, LabError):
                raise LabError(str(exc) or type(exc).__name__) from None
            raise

    def stop(self) -> None:
        """Stop every node and switch, then remove whatever the run's record still finds."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.net is not None:
                try:
                    self.net.stop()
                except Exception as exc:  # the record-based clean below still runs
                    self.say(f"mininet stop: {exc}")
                self.net = None
            if self.run is not None:
                clean_run(self.run, say=lambda _: None)
                self.run = None
        finally:
            signal.signal(signal.SIGINT, previous)

    def node(self, name: str):
        return self.net[name]

    def switch(self, role: str):
        return self.net[self.plan.switch(role).name]
