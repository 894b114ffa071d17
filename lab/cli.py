"""`ikelab`: the lab's command line.

    ikelab run [options]   build the lab, bring every tunnel up, test traffic, report, tear down
    ikelab status          the running lab's ownership table and agent counters
    ikelab runs            the recorded runs: running, kept or crashed
    ikelab clean [--kept]  remove what crashed runs left behind (and kept runs), from records

Exit status of `run`: 0 when every tunnel is up on exactly one member and carries traffic both
ways; 1 when the lab ran and something failed (the report says what), or could not be built;
2 for bad usage, or a machine not ready for the lab (the line names the fix); 130 when
interrupted (Ctrl-C, SIGTERM), after a complete teardown.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .topology import (AUTH_METHODS, CLUSTER_MODES, HASH_MODES, IKE_CHOICES, OWNERSHIP_MODES,
                       LabSpec, TopologyError, build_plan)


class UsageError(Exception):
    """Bad options; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds: {text!r}")
    return value


def parser() -> Parser:
    top = Parser(prog="ikelab", description="IKE forwarding lab: VPN peers and a "
                 "load-sharing cluster behind an Open vSwitch hashing switch.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    run = sub.add_parser("run", help="build the lab, bring the tunnels up, test, report")
    run.add_argument("--members", type=_int, default=3, help="cluster members, 1-8 (3)")
    run.add_argument("--peers", type=_int, default=2, help="VPN peer gateways, 1-128 (2)")
    run.add_argument("--hash", choices=HASH_MODES, default="l4",
                     help="what the hashing switch hashes on (l4)")
    run.add_argument("--mode", choices=CLUSTER_MODES, default="ls",
                     help="ls: load sharing; ha: one active member (ls)")
    run.add_argument("--ike", choices=IKE_CHOICES, default="2",
                     help="IKE version of the peers; mixed alternates (2)")
    run.add_argument("--auth", choices=AUTH_METHODS, default="psk", help="psk or pubkey (psk)")
    run.add_argument("--chain", type=_int, default=0,
                     help="with --auth pubkey: intermediate CAs above every certificate, 0-4, "
                     "all sent in IKE_AUTH (0)")
    run.add_argument("--no-ike-fragmentation", dest="ike_fragmentation", action="store_false",
                     help="no RFC 7383 IKE fragmentation: a big IKE message crosses the wire "
                     "as IP fragments")
    run.add_argument("--nat", action="store_true", help="put the first peer behind a NAT router")
    run.add_argument("--no-agent", dest="agent", action="store_false",
                     help="run the members without the forwarding agent (the reference's "
                     "problem, unsolved)")
    run.add_argument("--ownership", choices=OWNERSHIP_MODES, default="table",
                     help="table: the reference's table; table+label: read the owner from "
                     "SPI labels when it can; stateless: no state for a first packet, the "
                     "member it reaches answers it (table)")
    run.add_argument("--timeout", type=_seconds, default=30.0,
                     help="seconds to wait for the tunnels (30)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--cli", action="store_true",
                     help="open the Mininet CLI on the running lab before teardown")
    run.add_argument("--keep", action="store_true", help="keep the run's configs and logs")
    run.add_argument("--templates", type=Path, default=None,
                     help="render configs from this template directory (the lab's own)")
    run.add_argument("--expiry", type=_seconds, default=30.0,
                     help="seconds before a half-open negotiation's entry expires (30)")
    run.add_argument("--dead-after", type=_seconds, default=0.6,
                     help="seconds of silence after which members count one dead and take its "
                     "tunnels over, 0.3-30 (0.6)")
    run.add_argument("--no-rebalance", dest="rebalance", action="store_false",
                     help="do not even the tunnels out over the members after a member returns "
                     "(drains still move tunnels, make-before-break)")
    run.add_argument("--chaos", action="store_true",
                     help="after the traffic test, fail, restore, rehash and partition members "
                     "while the LANs ping each other, and report each outage")
    status = sub.add_parser("status", help="the running lab's ownership table and agent "
                            "counters")
    status.add_argument("--json", action="store_true", help="print what the agents said as JSON")
    runs = sub.add_parser("runs", help="the recorded runs: name, state, path, options")
    runs.add_argument("--json", action="store_true", help="print them as JSON")
    clean = sub.add_parser("clean", help="remove what crashed runs left, from their records")
    clean.add_argument("--kept", action="store_true",
                       help="also remove the runs kept with --keep")
    return top


def _say(start: float, quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)
    return say


class Interrupted:
    """Whether Ctrl-C or SIGTERM arrived: a library may turn the KeyboardInterrupt raised
    mid-call into an error of its own (vici does, mid-request), so the flag decides."""

    seen = False

    @classmethod
    def handler(cls, signum, frame):
        cls.seen = True
        raise KeyboardInterrupt


def cmd_run(args) -> int:
    from .preflight import NotReady, check_machine

    spec = LabSpec(args.members, args.peers, args.hash, args.mode, args.ike, args.auth, args.nat,
                   args.agent, args.ownership, args.expiry, args.dead_after, args.chain,
                   args.ike_fragmentation, args.rebalance)
    spec.validate()
    if args.chaos and not spec.agent:
        raise UsageError("--chaos needs the agent: without it no tunnel survives a member")
    if args.chaos and spec.members < 2:
        raise UsageError("--chaos needs at least 2 members: one fails, another takes over")
    if args.templates is not None and not (args.templates / "swanctl.conf.j2").is_file():
        raise UsageError(f"--templates {args.templates}: no swanctl.conf.j2 there")
    try:
        # Before anything imports Mininet, jinja2 or vici: a missing piece is one line.
        check_machine(build_plan(spec))
    except NotReady as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 2
    from .job import run_main_job
    from .lab import Lab, LabError
    from .render import TEMPLATE_DIR
    from .report import format_text
    # Ctrl-C and SIGTERM both mean "tear down and leave", even when started from a context that
    # ignores SIGINT (a background job inherits SIG_IGN, and Python then keeps it).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, Interrupted.handler)
    start = time.monotonic()
    say = _say(start, quiet=False)
    say(f"building the lab: {spec.members} members, {spec.peers} peers, hash {spec.hash}, "
        f"mode {spec.mode}, " + (f"agent ({spec.ownership})" if spec.agent else "no agent"))
    try:
        with Lab(spec, keep=args.keep, template_dir=args.templates or TEMPLATE_DIR,
                 say=say) as lab:
            lab_up = time.monotonic() - start
            say(f"lab up in {lab_up:.1f} s")
            report = run_main_job(lab, args.timeout, lab_up, say)
            if args.chaos and report["ok"]:
                from .report import with_chaos
                from .scenarios import run_chaos
                report = with_chaos(report, run_chaos(lab, say))
            print(json.dumps(report, indent=2) if args.json else format_text(report), flush=True)
            if args.cli:
                from mininet.log import setLogLevel

                from .mncli import LabCLI
                setLogLevel("output")  # a node command's output (`m1 swanctl ...`) is logged
                LabCLI(lab.net)
    except NotReady as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Exception) as exc:
        if Interrupted.seen:
            print("ikelab: interrupted; the lab was torn down", file=sys.stderr)
            return 130
        print(f"ikelab: the lab failed and was torn down: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    return 0 if report["ok"] else 1


def cmd_status(args) -> int:
    from .agent.control import query
    from .agent.names import NodeFiles
    from .report import describe_ownership
    from .rundir import live_runs

    runs = live_runs()
    if not runs:
        print("ikelab: no lab is running", file=sys.stderr)
        return 1
    agents = NodeFiles.agents(runs[0].path)
    if not agents:
        print(f"ikelab: run {runs[0].name} has no agents (--no-agent)", file=sys.stderr)
        return 1
    statuses, silent = {}, []
    for files in agents:
        try:
            statuses[files.node] = query(files.agent_socket)
        except (OSError, ValueError) as exc:
            # A member failed on purpose (`fail m2`) or crashed: say so, show the others.
            print(f"ikelab: agent {files.node} does not answer: {exc}", file=sys.stderr)
            silent.append(files.node)
    if not statuses:
        return 1
    if args.json:
        print(json.dumps(statuses, indent=2))
    else:
        print(f"run {runs[0].name}: {runs[0].read()['description']}")
        print("\n".join(describe_ownership(statuses)))
    return 1 if silent else 0


def cmd_runs(args) -> int:
    from .rundir import recorded_runs, runs_dir

    listing = []
    for run in recorded_runs():
        try:
            description = run.read().get("description", "")
        except (OSError, ValueError):
            description = "(record unreadable)"
        listing.append({"name": run.name, "state": run.status(), "path": str(run.path),
                        "options": description})
    if args.json:
        print(json.dumps(listing, indent=2))
    elif not listing:
        print(f"no runs recorded in {runs_dir()}")
    else:
        width = max(len(r["name"]) for r in listing)
        for r in listing:
            hint = "  (ikelab clean)" if r["state"] == "crashed" else ""
            print(f"{r['name']:{width}}  {r['state']:8}  {r['path']}  {r['options']}{hint}")
    return 0


def cmd_clean(args) -> int:
    from .rundir import clean_run, kept_runs, live_runs, stale_runs

    if os.geteuid() != 0:
        print("ikelab: clean must run as root", file=sys.stderr)
        return 2
    for run in live_runs():
        print(f"ikelab: run {run.name} is still running (pid {run.read()['owner_pid']}); "
              "left alone", file=sys.stderr)
    doomed = stale_runs() + (kept_runs() if args.kept else [])
    for run in doomed:
        clean_run(run, remove_kept=args.kept)
    kept = 0 if args.kept else len(kept_runs())
    if not doomed:
        print("nothing to clean" + (f" ({kept} kept runs: ikelab clean --kept)" if kept else ""))
    return 0


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "clean":
            return cmd_clean(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "runs":
            return cmd_runs(args)
        raise UsageError("a command is required: run, status, runs or clean "
                         "(see ikelab --help)")
    except (UsageError, TopologyError) as exc:
        print(f"ikelab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
