"""The Mininet CLI with the lab's own commands, for `ikelab run --cli` and plain `mn`.

The failover commands are one-liners over the net's own operations (`lab.net.cluster.ClusterNet`):
the CLI parses the line, the net acts, and a FailoverError is printed as its one line.
"""

import argparse
import shlex
from types import SimpleNamespace

from mininet.cli import CLI

from .. import strongswan
from ..agent.io.control import query
from ..agent.names import CLUSTER_CONNECTION, IKE_PORT
from ..net.cluster import FailoverError
from ..net.daemons import DaemonConfigError
from ..net.nodes import ClusterMember, PeerGateway, StrongSwanNode
from ..net.switch import HashingSwitch
from ..show.captures import CaptureError
from ..show.report import describe_membership, describe_ownership, describe_sas, describe_steering
from . import crowd
from .probes import member_sas


UP_TIMEOUT = 20.0


class LabCLI(CLI):
    """Mininet's CLI plus `sas`, `up`, `ownership`, `steering`, `hashing`, `sites`,
    `members`, `fail`, `restore`, `drain`, `undrain`, `stop`, `rehash`, `partition`, `heal`,
    `flood` and `capture`; `help <command>` shows what each does."""

    prompt = "ikelab> "

    def do_sas(self, line):
        """sas [node ...]: every IKE and CHILD SA of the members and peers (or the named
        nodes), read from each charon over vici."""
        wanted = set(line.split())
        for node in self.mn.hosts:
            if not isinstance(node, StrongSwanNode) or (wanted and node.name not in wanted):
                continue
            if node.charon is None or not node.charon.running():
                self.stdout.write(f"{node.name}: charon is not running "
                                  f"({node.startup_error or 'stopped'})\n")
                continue
            sas = strongswan.list_sas(node.files.vici_socket)
            self.stdout.write("\n".join(describe_sas(node.name, sas)) + "\n")

    def do_up(self, line):
        """up [peer ...]: have every peer (or the named ones) initiate its tunnel to the cluster,
        and wait (up to 20 s) until each is up or given up."""
        wanted = set(line.split())
        sockets = {}
        for node in self.mn.hosts:
            if isinstance(node, PeerGateway) and (not wanted or node.name in wanted):
                try:
                    strongswan.initiate(node.files.vici_socket, CLUSTER_CONNECTION)
                    sockets[node.name] = node.files.vici_socket
                except (OSError, DaemonConfigError) as exc:
                    self.stdout.write(f"{node.name}: {exc}\n")
        watch = strongswan.TunnelWatch(sockets)
        watch.wait(UP_TIMEOUT)
        for peer in sockets:
            if peer in watch.up_after:
                self.stdout.write(f"{peer}: up after {watch.up_after[peer]:.1f} s\n")
            else:
                state = watch.last_sa.get(peer, {}).get("state", "no IKE SA")
                verdict = "given up" if peer in watch.gave_up else "not up yet"
                self.stdout.write(f"{peer}: {verdict} (last state {state})\n")

    def _agents(self) -> dict[str, dict]:
        statuses = {}
        for node in self.mn.hosts:
            if isinstance(node, ClusterMember) and node.agent is not None:
                try:
                    statuses[node.name] = query(node.files.agent_socket)
                except (OSError, ValueError) as exc:
                    self.stdout.write(f"{node.name}: agent does not answer: {exc}\n")
        if not statuses:
            self.stdout.write("no agents in this lab\n")
        return statuses

    def do_ownership(self, line):
        """ownership: the cluster-wide IKE ownership table (key, owner, state, age, whether
        every member's replica agrees) and each agent's counters."""
        statuses = self._agents()
        if statuses:
            self.stdout.write("\n".join(describe_ownership(statuses)) + "\n")

    def do_steering(self, line):
        """steering: on each member, the prefixes it holds CHILD SAs for, its routes to the
        holders of the others, and the packet counters of its ESP and LAN steering rules."""
        statuses = self._agents()
        if statuses:
            self.stdout.write("\n".join(describe_steering(statuses)) + "\n")

    def do_hashing(self, line):
        """hashing: each hashing switch's select groups, which member each bucket feeds, and
        the packets each bucket has carried (from Open vSwitch)."""
        for switch in self.mn.switches:
            if not isinstance(switch, HashingSwitch) or switch.plan_switch.vip is None:
                continue
            self.stdout.write(f"{switch.name} ({switch.plan_switch.role}, virtual IP "
                              f"{switch.plan_switch.vip}):\n")
            for group, counts in sorted(switch.bucket_stats().items()):
                spread = "  ".join(f"{m}: {n}" for m, n in counts.items())
                self.stdout.write(f"  group {group}  {spread}\n")
            for definition in switch.group_definitions():
                self.stdout.write(f"  {definition}\n")

    # ---- failover: each takes effect at once; `members` shows what the cluster made of it --------
    def _act(self, usage: str, action, arguments: tuple | None) -> None:
        """`action(*arguments)`, or the usage when the line did not parse."""
        if arguments is None:
            self.stdout.write(f"*** usage: {usage}\n")
            return
        try:
            action(*arguments)
        except FailoverError as exc:
            self.stdout.write(f"*** {exc}\n")
            return
        self.stdout.write("done; `members` shows the cluster's view as it changes\n")

    def do_sites(self, line):
        """sites [MEMBER ...] [up|down|double]: the crowd (`--crowd`) in two lines, sites per
        state and tunnels per member, then its sites (40 at most) that are held by one of
        the MEMBERs, up, not up, or held by two members or more; from the crowd nodes' and
        the members' charons."""
        plan = getattr(self.mn.topo, "plan", None)
        if plan is None or not plan.crowd:
            self.stdout.write("*** this lab has no crowd (ikelab run --crowd N)\n")
            return
        keep = crowd.sites_filter(line.split(), [m.name for m in plan.members])
        if isinstance(keep, str):
            self.stdout.write(f"*** {keep}\n")
            return
        view = SimpleNamespace(plan=plan, node=lambda name: self.mn[name])
        states = crowd.site_states(view)
        held = crowd.holders(member_sas(view), plan)
        self.stdout.write("\n".join(crowd.describe_sites(plan, states, held, keep)) + "\n")

    def do_members(self, line):
        """members: each member's state (serving, joining, isolated, failed), the members it
        hears and sees serving, whether the sync witness backs it, its table size; whom the
        witness backs and whom each member told it it hears; and the members each hashing
        switch gives buckets to (and its health check errors, if any)."""
        self.stdout.write("\n".join(describe_membership(self.mn.membership())) + "\n")

    def do_fail(self, line):
        """fail MEMBER [--how daemons|links]: make a member die. daemons (default): its charon
        and agent are killed outright; links: its interfaces go down, its daemons keep running.
        Peers whose tunnels it held re-establish on survivors after their DPD gives up."""
        self._act("fail MEMBER [--how daemons|links]", self.mn.fail, fail_arguments(line))

    def do_restore(self, line):
        """restore MEMBER: undo `fail`. Its agent fetches the whole table from a serving member
        and serves (and gets switch buckets) only then; tunnels keep their owners."""
        self._act("restore MEMBER", self.mn.restore, one_member(line))

    def do_drain(self, line):
        """drain MEMBER: hand the member's tunnels over to the others, make-before-break (each
        peer gets its new SA before the old one ends: no packet lost), then stop serving it.
        `undrain MEMBER` (or `rehash ... ` over every member) brings it back."""
        self._act("drain MEMBER", self.mn.drain, one_member(line))

    def do_undrain(self, line):
        """undrain MEMBER: a drained member serves again; tunnels are evened out over it."""
        self._act("undrain MEMBER", self.mn.undrain, one_member(line))

    def do_stop(self, line):
        """stop MEMBER: planned maintenance: drain the member, then stop its daemons cleanly.
        `restore MEMBER` starts them again."""
        self._act("stop MEMBER", self.mn.stop_member, one_member(line))

    def do_partition(self, line):
        """partition MEMBER: silently drop everything between the member and the sync network.
        It stops serving once the sync witness stops backing it; the others count it dead."""
        self._act("partition MEMBER", self.mn.partition, one_member(line))

    def do_heal(self, line):
        """heal MEMBER: end a partition; the member rejoins with a fresh copy of the table."""
        self._act("heal MEMBER", self.mn.heal, one_member(line))

    def do_flood(self, line):
        """flood PEER [--rate 1000] [--seconds 30] [--ike 1|2] [--port 500|4500] [--spoof] |
        flood stop: have a peer flood the cluster with IKE first messages (fresh SPIs and
        ports), in the background; --spoof takes random sources from the lab's internet.
        Watch the agents hold with `ownership`, and bring another peer up with `up`."""
        if line.strip() == "stop":
            self.stdout.write(f"stopped {self.mn.stop_floods()} floods\n")
            return
        arguments = flood_arguments(line)
        try:
            if arguments is None:
                raise FailoverError("usage: flood PEER [--rate R] [--seconds S] [--ike 1|2] "
                                    "[--port 500|4500] [--spoof] | flood stop")
            flood = self.mn.flood(*arguments)
        except FailoverError as exc:
            self.stdout.write(f"*** {exc}\n")
            return
        self.stdout.write(f"flooding: {flood.description}; `flood stop` ends it\n")

    def do_capture(self, line):
        """capture start|stop [MEMBER|sync]: record pcaps of every member's port on the external
        hashing switch and of the sync network (or of one of them) into <run dir>/captures/,
        for Wireshark and `ikelab ladder`. Started with `ikelab run --capture`, they run from
        the start. A run that is not kept (--keep) loses its files at teardown."""
        arguments = capture_arguments(line)
        if arguments is None:
            self.stdout.write("*** usage: capture start|stop [MEMBER|sync]\n")
            return
        if self.mn.captures is None:
            self.stdout.write("*** captures need a lab started by ikelab (not plain mn)\n")
            return
        action, target = arguments
        try:
            files = (self.mn.captures.start if action == "start" else self.mn.captures.stop)(target)
        except CaptureError as exc:
            self.stdout.write(f"*** {exc}\n")
            return
        verb = "capturing into" if action == "start" else "complete:"
        for path in files:
            self.stdout.write(f"{verb} {path}\n")
        if not files:
            self.stdout.write("nothing to " + action + "\n")

    def do_rehash(self, line):
        """rehash l3|l4|split [MEMBER,...]: make the hashing switches hash on other fields,
        live, and (given members) spread traffic over those members only: the others are
        drained, their tunnels kept and their packets forwarded and steered to them."""
        self._act("rehash l3|l4|split [MEMBER,...]", self.mn.rehash, rehash_arguments(line))


def capture_arguments(line: str) -> tuple[str, str | None] | None:
    """(start|stop, target or None) from `start|stop [TARGET]`, else None."""
    words = line.split()
    if not 1 <= len(words) <= 2 or words[0] not in ("start", "stop"):
        return None
    return words[0], words[1] if len(words) == 2 else None


def one_member(line: str) -> tuple[str] | None:
    """(MEMBER,) from a line that is one word, else None."""
    words = line.split()
    return (words[0],) if len(words) == 1 else None


def fail_arguments(line: str) -> tuple[str, str] | None:
    """(MEMBER, how) from `MEMBER [--how daemons|links]`, else None."""
    parser = argparse.ArgumentParser(prog="fail", add_help=False, exit_on_error=False)
    parser.add_argument("member")
    parser.add_argument("--how", default="daemons")
    try:
        args = parser.parse_args(shlex.split(line))
    except (argparse.ArgumentError, SystemExit, ValueError):
        return None
    return args.member, args.how


def flood_arguments(line: str) -> tuple | None:
    """(peer, rate, seconds, ike, port, spoof) from the flood command's line, else None."""
    parser = argparse.ArgumentParser(prog="flood", add_help=False, exit_on_error=False)
    parser.add_argument("peer")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--ike", type=int, default=2)
    parser.add_argument("--port", type=int, default=IKE_PORT)
    parser.add_argument("--spoof", action="store_true")
    try:
        args = parser.parse_args(shlex.split(line))
    except (argparse.ArgumentError, SystemExit, ValueError):
        return None
    return args.peer, args.rate, args.seconds, args.ike, args.port, args.spoof


def rehash_arguments(line: str) -> tuple[str, list[str] | None] | None:
    """(mode, members or None) from `MODE [MEMBER,...]`, else None."""
    words = line.split()
    if len(words) not in (1, 2):
        return None
    return words[0], words[1].split(",") if len(words) == 2 else None
