"""`ikelab`: the lab's command line.

    ikelab run [options]   build the lab, bring every tunnel up, test traffic, report, tear down
    ikelab status          the running lab's ownership table and agent counters (--watch)
    ikelab runs            the recorded runs: running, kept or crashed
    ikelab ladder          one peer's IKE across the members, as a sequence diagram
    ikelab wireshark       the command that shows a --capture run's pcaps decrypted
    ikelab open            a kept run's page: report.html, everything the run made
    ikelab gallery DIR     named runs (the failure, the agent's modes, NAT, ...) and an index
    ikelab graph           the lab's nodes, links, addresses and switch ports, as a picture
    ikelab clean [--kept]  remove what crashed runs left behind (and kept runs), from records

Exit status of `run`: 0 when every tunnel is up on exactly one member and carries traffic both
ways; 1 when the lab ran and something failed (the report says what), or could not be built;
2 for bad usage, or a machine not ready for the lab (the line names the fix); 130 when
interrupted (Ctrl-C, SIGTERM), after a complete teardown.
"""

# PYTHON_ARGCOMPLETE_OK  (bash completion: argcomplete, registered by scripts/setup.sh)
import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .agent.names import Ownership
from .plan.topology import (AUTH_METHODS, CHAOS_PLAYS, CLUSTER_MODES, DEFAULT_CROWD_RATE,
    HASH_MODES, IKE_CHOICES, IP_CHOICES, OWNERSHIP_MODES, LabSpec, TopologyError, build_plan)


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


def _window(text: str) -> tuple[float | None, float | None]:
    """FROM:TO seconds, either side empty: a ladder's time window."""
    try:
        since, until = (float(part) if part.strip() else None for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be FROM:TO in seconds, e.g. 2.5:10 or :3, "
                                         f"not {text!r}") from None
    if since is not None and until is not None and until < since:
        raise argparse.ArgumentTypeError(f"TO must not come before FROM: {text!r}")
    return since, until


BIG_CROWD = 1000  # sites; above it, --dead-after defaults to CROWD_DEAD_AFTER
CROWD_DEAD_AFTER = 2.0

EXAMPLES = {
    None: """examples:
  ikelab run                              the main job: 3 members, 2 peers; exit 0 if all is well
  ikelab run --hash split --no-agent      the reference's problem: IKE_AUTH lands on the wrong member
  ikelab run --hash split --capture       the agent mends it; pcaps and traces kept for `ladder`
  ikelab ladder -o ladder.svg             the latest run's p1, hop by hop across the members
  ikelab status --watch                   (while a lab runs) the ownership table, every second
  ikelab <command> --help                 each command's options and examples""",
    "run": """examples:
  ikelab run --members 5 --peers 8 --ike mixed
  ikelab run --ip dual --hash split       IPv4 and IPv6 in every tunnel, half the peers over each
  ikelab run --hash split --capture       keep pcaps per switch port (Wireshark) and traces
  ikelab run --hash split --cli           then: ownership, sas, fail m2, capture start, ...
  ikelab run --chaos --keep               fail, rehash, partition members; writes chaos.png
  ikelab run --json | jq .tunnels         the report as JSON (run_dir when kept)""",
    "status": """examples:
  ikelab status                           once
  ikelab status --watch                   every second until Ctrl-C
  ikelab status --json | jq '.m1.counters'""",
    "runs": """examples:
  ikelab runs
  ikelab runs --json""",
    "ladder": """examples:
  ikelab ladder -o ladder.svg                       the latest run, peer p1
  ikelab ladder 20261128-101500-4242 --peer p2 -o p2.png
  ikelab ladder --members m1,m4 --window 0:2 -o first-2s.svg   8 members: two lanes, 2 s
  ikelab ladder /var/lib/ikelab/runs/20261128-101500-4242 -o l.svg""",
    "wireshark": """examples:
  ikelab wireshark                                  the latest run, every capture
  ikelab wireshark m2                               the latest run, member m2's switch port
  ikelab wireshark 20261128-101500-4242 sync        that run, the sync network
  eval "$(ikelab wireshark m1) -Y 'esp && icmp'"    the LAN pings inside ESP""",
    "open": """examples:
  ikelab open                                       the latest run's page
  ikelab open 20261128-101500-4242""",
    "gallery": """examples:
  ikelab gallery /tmp/gallery                       every exhibit (README: how long it takes)
  ikelab gallery /tmp/g --only split-without-agent,agent-table
  ikelab gallery /tmp/g --list""",
    "graph": """examples:
  ikelab graph -o lab.svg                           the default lab (3 members, 2 peers)
  ikelab graph --members 5 --peers 4 --nat -o lab.png
  ikelab graph 20261128-101500-4242 -o lab.svg      the lab a kept run had""",
    "clean": """examples:
  ikelab clean                            what crashed runs left
  ikelab clean --kept                     and the runs kept with --keep or --capture""",
}


def _add(sub, name: str, help: str) -> "Parser":
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _topology_options(parser) -> None:
    parser.add_argument("--members", type=_int, default=3, help="cluster members, 1-8 (3)")
    parser.add_argument("--peers", type=_int, default=2, help="VPN peer gateways, 1-128 (2)")
    parser.add_argument("--hash", choices=HASH_MODES, default="l4",
                        help="what the hashing switch hashes on (l4)")
    parser.add_argument("--mode", choices=CLUSTER_MODES, default="ls",
                        help="ls: load sharing; ha: one active member (ls)")
    parser.add_argument("--nat", action="store_true",
                        help="put the first peer behind a NAT router")
    parser.add_argument("--ip", choices=IP_CHOICES, default="4",
                        help="IP version inside the tunnels and of the peers outside: 6, or "
                        "dual (both inside one CHILD SA, half the peers reach the cluster "
                        "over each) (4)")


def parser() -> Parser:
    top = Parser(prog="ikelab", description="IKE forwarding lab: VPN peers and a "
                 "load-sharing cluster behind an Open vSwitch hashing switch.",
                 epilog=EXAMPLES[None], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    run = _add(sub, "run", "build the lab, bring the tunnels up, test, report")
    _topology_options(run)
    run.add_argument("--ike", choices=IKE_CHOICES, default="2",
                     help="IKE version of the peers; mixed alternates (2)")
    run.add_argument("--auth", choices=AUTH_METHODS, default="psk", help="psk or pubkey (psk)")
    run.add_argument("--chain", type=_int, default=0,
                     help="with --auth pubkey: intermediate CAs above every certificate, 0-4, "
                     "all sent in IKE_AUTH (0)")
    run.add_argument("--no-ike-fragmentation", dest="ike_fragmentation", action="store_false",
                     help="no RFC 7383 IKE fragmentation: a big IKE message crosses the wire "
                     "as IP fragments")
    run.add_argument("--no-agent", dest="agent", action="store_false",
                     help="run the members without the forwarding agent (the reference's "
                     "problem, unsolved)")
    run.add_argument("--ownership", choices=OWNERSHIP_MODES, default=Ownership.TABLE,
                     help="table: the reference's table; table+label: read the owner from "
                     "SPI labels when it can; stateless: no state for a first packet, the "
                     "member it reaches answers it (table)")
    run.add_argument("--crowd", type=_int, default=0,
                     help="emulated remote sites beside the peers, 0-10000, each with its own "
                     "address, IKE SA and LAN, on crowd nodes of 1,000 sites (0)")
    run.add_argument("--crowd-rate", type=_seconds, default=DEFAULT_CROWD_RATE,
                     help="crowd sites starting their tunnels per second, 1-5000 "
                     f"({DEFAULT_CROWD_RATE:g})")
    run.add_argument("--timeout", type=_seconds, default=30.0,
                     help="seconds to wait for the tunnels (30)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--cli", action="store_true",
                     help="open the Mininet CLI on the running lab before teardown")
    run.add_argument("--keep", action="store_true", help="keep the run's configs and logs")
    run.add_argument("--capture", action="store_true",
                     help="record pcaps of every member's switch port and of the sync network "
                     "under <run dir>/captures/ (keeps the run, as --keep)")
    run.add_argument("--no-trace", dest="trace", action="store_false",
                     help="agents write no decision trace (trace_<member>.jsonl); for "
                     "benchmarks")
    run.add_argument("--templates", type=Path, default=None,
                     help="render configs from this template directory (the lab's own)")
    run.add_argument("--expiry", type=_seconds, default=30.0,
                     help="seconds before a half-open negotiation's entry expires (30)")
    run.add_argument("--dead-after", type=_seconds, default=None,
                     help="seconds of silence after which members count one dead and take its "
                     f"tunnels over, 0.3-30 (0.6; {CROWD_DEAD_AFTER:g} with a crowd of more "
                     f"than {BIG_CROWD} sites)")
    run.add_argument("--no-rebalance", dest="rebalance", action="store_false",
                     help="do not even the tunnels out over the members after a member returns "
                     "(drains still move tunnels, make-before-break)")
    run.add_argument("--chaos", nargs="?", const="chaos", choices=CHAOS_PLAYS,
                     metavar="PLAY",
                     help="after the traffic test, act on the running cluster while the LANs "
                     "ping each other, and report each outage: chaos (default: fail, restore, "
                     "rehash and partition members), owner-death, drain, flood, or "
                     "rehash-mid-negotiation")
    status = _add(sub, "status", "the running lab's ownership table and agent counters")
    status.add_argument("--json", action="store_true", help="print what the agents said as JSON")
    status.add_argument("--watch", action="store_true",
                        help="print it again every second until Ctrl-C")
    runs = _add(sub, "runs", "the recorded runs: name, state, path, options")
    runs.add_argument("--json", action="store_true", help="print them as JSON")
    ladder = _add(sub, "ladder", "draw one peer's IKE negotiations across the cluster "
                  "members as a sequence diagram, from a run's traces and captures")
    ladder.add_argument("run", nargs="?", metavar="RUN",
                        help="a run's name or directory (default: the latest run)")
    ladder.add_argument("--peer", default="p1", help="the peer to draw (p1)")
    ladder.add_argument("--members", metavar="M1,M2",
                        help="draw only these members' lanes (default: every member)")
    ladder.add_argument("--window", type=_window, default=(None, None), metavar="FROM:TO",
                        help="draw only seconds FROM to TO after the first message (either "
                        "may be left out: 2.5: or :10)")
    ladder.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                        help="the picture: FILE.svg or FILE.png")
    wireshark = _add(sub, "wireshark", "print the tshark command that shows a --capture "
                     "run's captures decrypted (runs wireshark where a display exists)")
    wireshark.add_argument("where", nargs="*", metavar="RUN NODE",
                           help="a run's name or directory (default: the latest run) and a "
                           "capture point: a member, or sync (default: every one)")
    page = _add(sub, "open", "print the path of a kept run's page, report.html (and open it "
                "where a display exists)")
    page.add_argument("run", nargs="?", metavar="RUN",
                      help="a run's name or directory (default: the latest run)")
    gallery = _add(sub, "gallery", "run the gallery's named scenarios, each kept with its "
                   "page, and write DIR/index.html linking them")
    gallery.add_argument("directory", type=Path, nargs="?", metavar="DIR",
                         help="where the runs and index.html go (made if missing)")
    gallery.add_argument("--only", metavar="NAME,NAME",
                         help="only these exhibits (default: every one; --list names them)")
    gallery.add_argument("--list", action="store_true", help="list the exhibits and stop")
    graph = _add(sub, "graph", "draw the lab: nodes, links, addresses, and which switch port "
                 "feeds which member")
    graph.add_argument("run", nargs="?", metavar="RUN",
                       help="a run's name or directory: the lab it had (default: the lab "
                       "these options give)")
    _topology_options(graph)
    graph.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                       help="the picture: FILE.svg or FILE.png")
    clean = _add(sub, "clean", "remove what crashed runs left, from their records")
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
    from .net.preflight import NotReady, check_machine

    if args.dead_after is None:
        # A big crowd keeps both cores busy for minutes: a member's heartbeats then come late
        # by more than 0.6 s, and the others would count a live member dead (measured: 10,000
        # sites on 8 members collapsed into rejoin cascades after 4,000).
        args.dead_after = CROWD_DEAD_AFTER if args.crowd > BIG_CROWD else 0.6
    spec = LabSpec(args.members, args.peers, args.hash, args.mode, args.ike, args.auth, args.nat,
                   args.agent, args.ownership, args.expiry, args.dead_after, args.chain,
                   args.ike_fragmentation, args.rebalance, args.trace, args.crowd,
                   args.crowd_rate, args.ip)
    spec.validate()
    if args.chaos and not spec.agent:
        raise UsageError("--chaos needs the agent: without it no tunnel survives a member")
    if args.chaos and spec.members < 2:
        raise UsageError("--chaos needs at least 2 members: one fails, another takes over")
    # os.path.isfile: a path the kernel refuses (too long, say) is just not a template dir.
    if args.templates is not None and not os.path.isfile(args.templates / "swanctl.conf.j2"):
        raise UsageError(f"--templates {args.templates}: no swanctl.conf.j2 there")
    try:
        # Before anything imports Mininet, jinja2 or vici: a missing piece is one line.
        check_machine(build_plan(spec))
    except NotReady as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 2
    from .show.captures import CaptureError
    from .net.cluster import FailoverError
    from .net.daemons import DaemonConfigError
    from .run.job import run_main_job
    from .run.lab import Lab, LabError
    from .show.plots import PlotError
    from .net.switch import SwitchError
    LAB_FAILURES = (LabError, DaemonConfigError, SwitchError, FailoverError, CaptureError,
                    PlotError, OSError)
    from .strongswan.render import TEMPLATE_DIR
    from .show.report import format_text
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
                 say=say, capture=args.capture) as lab:
            lab_up = time.monotonic() - start
            say(f"lab up in {lab_up:.1f} s")
            report = run_main_job(lab, args.timeout, lab_up, say, quiet=args.json)
            if args.chaos and report["ok"]:
                from .show.report import with_chaos
                from .run.scenarios import run_chaos
                report = with_chaos(report, *run_chaos(lab, say, args.chaos), args.chaos)
            print(json.dumps(report, indent=2) if args.json else format_text(report), flush=True)
            if args.cli:
                from mininet.log import setLogLevel

                from .run.mncli import LabCLI
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
        if isinstance(exc, LAB_FAILURES):  # the lab's own, expected failures: one line
            print(f"ikelab: the lab failed and was torn down: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1
        # Anything else is a bug in the lab: torn down all the same (the `with` has ended),
        # then shown whole, not dressed up as a failure of the lab.
        traceback.print_exc()
        print("ikelab: that is a bug in the lab (the traceback above); the lab was torn down",
              file=sys.stderr)
        return 1
    if report.get("run_dir"):
        from .show.page import write_page
        try:
            say(f"the run's page: {write_page(Path(report['run_dir']), lab.plan, report)}")
        except (OSError, PlotError) as exc:
            print(f"ikelab: the run's page was not written: {exc}", file=sys.stderr)
    return 0 if report["ok"] else 1


def cmd_status(args) -> int:
    if not args.watch:
        return _status_once(args)
    try:
        while True:
            # Clear the screen and home the cursor, as watch(1) does.
            print("\033[H\033[2J" + time.strftime("%H:%M:%S"), flush=True)
            if _status_once(args) and not _live():
                return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0


def _live() -> bool:
    from .net.rundir import live_runs
    return bool(live_runs())


def _status_once(args) -> int:
    from .agent.io.control import query
    from .agent.names import NodeFiles
    from .show.report import describe_ownership
    from .net.rundir import live_runs

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
    from .net.rundir import recorded_runs, runs_dir

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


def _run_plan(name: str | None):
    """(run, plan) of a recorded run; UsageError when there is none or it is too old."""
    from .net.rundir import find_run

    try:
        run = find_run(name)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    try:
        spec = LabSpec(**run.read()["spec"]).validate()
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"run {run.name} does not say which lab it had (made by an older "
                         "ikelab?)") from None
    return run, build_plan(spec)


def cmd_clean(args) -> int:
    from .net.rundir import clean_run, kept_runs, live_runs, stale_runs

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


def _showing(name: str):
    """A command of `lab.showing`, imported when it runs (it imports this module)."""
    def command(args) -> int:
        from . import showing
        return getattr(showing, f"cmd_{name}")(args)
    return command


COMMANDS = {"run": cmd_run, "status": cmd_status, "runs": cmd_runs, "clean": cmd_clean,
            **{name: _showing(name) for name in ("ladder", "wireshark", "open", "gallery",
                                                 "graph")}}


def main(argv=None) -> int:
    top = parser()
    try:
        import argcomplete
        argcomplete.autocomplete(top)  # answers a completion request and exits; else nothing
    except ImportError:
        pass
    try:
        args = top.parse_args(argv)
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        raise UsageError("a command is required: run, status, runs, ladder, wireshark, open, "
                         "gallery, graph or clean (see ikelab --help)")
    except (UsageError, TopologyError) as exc:
        # One line even when a typed argument holds a line break (argparse quotes some raw).
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"ikelab: error: {message}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # the run directories are root's (they hold keys)
        print(f"ikelab: {exc.filename or exc}: permission denied; run it as root (sudo)",
              file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the pictures' libraries, without setup.sh
        print(f"ikelab: Python module {exc.name} is missing; fix: ./scripts/setup.sh",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
