"""The lab's switches: Open vSwitch bridges on the userspace datapath, programmed by the lab.

There is no OpenFlow controller: `start()` installs the groups and flows that `lab.hashing`
computes from the plan, and the switch answers questions about itself (per-bucket counters,
where it would send a given packet) straight from OVS.
"""

import re
import subprocess
import time

from mininet.node import OVSSwitch

from . import hashing
from .topology import LabSpec, Switch


class SwitchError(RuntimeError):
    """OVS refused a group or flow; the message names the bridge."""


def ofctl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", *args], input=stdin,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SwitchError(f"ovs-ofctl {args[0]} {args[1]}: {result.stderr.strip()}")
    return result.stdout


class HashingSwitch(OVSSwitch):
    """An OVS bridge whose select group spreads the virtual IP's traffic across members."""

    def __init__(self, name, plan_switch: Switch = None, spec: LabSpec = None, **params):
        self.plan_switch = plan_switch
        self.spec = spec
        # batch=False: Mininet would otherwise defer add-br until after start() returns.
        params.update(datapath="user", protocols="OpenFlow15", failMode="secure", batch=False,
                      dpid=plan_switch.dpid)
        super().__init__(name, **params)

    def start(self, controllers):
        super().start([])
        self._wait_for_bridge()
        ofctl("del-flows", self.name)
        for group in hashing.groups(self.plan_switch, self.spec):
            ofctl("add-group", self.name, group)
        ofctl("add-flows", self.name, "-",
              stdin="\n".join(hashing.flows(self.plan_switch, self.spec)) + "\n")

    def _wait_for_bridge(self, deadline: float = 10.0) -> None:
        # ovs-vswitchd opens the bridge's OpenFlow socket a moment after ovs-vsctl returns.
        end = time.monotonic() + deadline
        while True:
            probe = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "show", self.name],
                                   capture_output=True, text=True, timeout=10)
            if probe.returncode == 0:
                return
            if time.monotonic() > end:
                raise SwitchError(f"{self.name}: bridge did not come up: {probe.stderr.strip()}")
            time.sleep(0.05)

    def group_definitions(self) -> list[str]:
        """The groups as OVS holds them (`dump-groups`)."""
        return [line.strip() for line in ofctl("dump-groups", self.name).splitlines()
                if "group_id=" in line]

    def bucket_stats(self) -> dict[int, dict[str, int]]:
        """For each group: member name -> packets its bucket has sent."""
        members = hashing.bucket_members(self.plan_switch, self.spec)
        result = {}
        for line in ofctl("dump-group-stats", self.name).splitlines():
            group = re.search(r"group_id=(\d+)", line)
            if not group or int(group.group(1)) not in members:
                continue
            gid = int(group.group(1))
            counts = [int(n) for n in re.findall(r"bucket\d+:packet_count=(\d+)", line)]
            result[gid] = {members[gid][i]: n for i, n in enumerate(counts, 1)}
        return result

    def member_for(self, packet: str) -> str | None:
        """The member this switch would hand `packet` (an `ofproto/trace` flow) to, or None."""
        result = subprocess.run(["ovs-appctl", "ofproto/trace", self.name, packet],
                                capture_output=True, text=True, timeout=30)
        ports = {p.port: p.node for p in self.plan_switch.member_ports()}
        outputs = [int(n) for n in re.findall(r"output:(\d+)", result.stdout)]
        chosen = [ports[n] for n in outputs if n in ports]
        return chosen[-1] if chosen else None
