"""The `ikelab` commands that show a kept run: its ladder, its lab's picture, its page and
its captures decrypted (`lab.cli` parses their options and hands them here)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .cli import UsageError, _run_plan
from .plan.topology import LabSpec, build_plan


def cmd_ladder(args) -> int:
    from .show.ladder import LadderError, build, load, load_payloads, load_protocol, select
    from .show.plots import PlotError, check_format, draw_ladder
    from .plan.topology import EXTERNAL_VIP, EXTERNAL_VIP6

    try:
        check_format(args.output)
    except PlotError as exc:
        raise UsageError(str(exc)) from None
    run, plan = _run_plan(args.run)
    try:
        peer = plan.peer(args.peer)
    except StopIteration:
        raise UsageError(f"run {run.name} has no peer {args.peer!r}: it has "
                         f"{', '.join(p.name for p in plan.peers)}") from None
    members = [m.name for m in plan.members]
    try:
        seen = load(run.path, members, (str(EXTERNAL_VIP), str(EXTERNAL_VIP6)))
    except LadderError as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 1
    if not seen:
        print(f"ikelab: run {run.name} has neither agent traces nor captures to draw from "
              "(ikelab run --keep keeps traces; --capture adds pcaps)", file=sys.stderr)
        return 1
    shown = args.members.split(",") if args.members else members
    if set(shown) - set(members):
        raise UsageError(f"run {run.name} has no member {min(set(shown) - set(members))!r}"
                         f": it has {', '.join(members)}")
    ladder = select(build(peer.name, str(peer.seen_as), members, seen,
                          load_protocol(run.path, members), load_payloads(run.path, peer.name)),
                    shown, *args.window)
    try:
        draw_ladder(ladder, args.output, f"IKE of {peer.name} ({peer.seen_as}) across the "
                    f"cluster, run {run.name}: {run.read().get('description', '')}")
    except (PlotError, OSError) as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {len(ladder.arrows)} IKE messages of {peer.name}; "
          f"the IKE SA is held by {ladder.holder or 'no member'}")
    return 0


def cmd_graph(args) -> int:
    from .show.plots import PlotError, check_format, draw_topology

    try:
        check_format(args.output)
    except PlotError as exc:
        raise UsageError(str(exc)) from None
    if args.run:
        _, plan = _run_plan(args.run)
    else:
        plan = build_plan(LabSpec(args.members, args.peers, args.hash, args.mode,
                                  nat=args.nat, ip=args.ip).validate())
    try:
        draw_topology(plan, args.output)
    except OSError as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {len(plan.members)} members, {len(plan.peers)} peers")
    return 0


def cmd_open(args) -> int:
    from .show.page import PAGE

    run, _ = _run_plan(args.run)
    page = Path(run.path) / PAGE
    if not page.exists():
        print(f"ikelab: run {run.name} has no page (a kept run writes one: ikelab run --keep)",
              file=sys.stderr)
        return 1
    print(page)
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if display and shutil.which("xdg-open"):
        subprocess.run(["xdg-open", str(page)], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return 0


def cmd_wireshark(args) -> int:
    from .show.captures import SYNC, CaptureError, wireshark_commands
    from .net.preflight import VIEWERS

    if len(args.where) > 2:
        raise UsageError("wireshark takes at most a run and a capture point")
    run_name, node = (args.where + [None, None])[:2]
    if len(args.where) == 1 and re.fullmatch(rf"m\d+|{SYNC}", args.where[0]):
        run_name, node = None, args.where[0]  # a capture point of the latest run
    run, plan = _run_plan(run_name)
    targets = [m.name for m in plan.members] + [SYNC]
    if node is not None and node not in targets:
        raise UsageError(f"run {run.name} has no capture point {node!r}: it has "
                         f"{', '.join(targets)}")
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    program = "wireshark" if node and display and shutil.which("wireshark") else "tshark"
    try:
        commands = wireshark_commands(run.path, [node] if node else targets, program)
    except CaptureError as exc:
        print(f"ikelab: {exc}", file=sys.stderr)
        return 1
    if program == "wireshark":
        return subprocess.run(commands[0], shell=True, check=False).returncode
    print("\n".join(commands))
    if not shutil.which("tshark"):
        print(f"ikelab: tshark is missing; fix: apt-get install {VIEWERS['tshark']} (or "
              "./scripts/setup.sh)", file=sys.stderr)
    return 0


def cmd_gallery(args) -> int:
    from .run.gallery import EXHIBITS, GalleryError, chosen, make

    if args.list:
        for exhibit in EXHIBITS:
            print(f"{exhibit.name:20}  ikelab run {' '.join(exhibit.options)}")
        return 0
    if args.directory is None:
        raise UsageError("gallery needs a DIR for its runs and index.html")
    if os.geteuid() != 0:
        print("ikelab: gallery must run as root (it runs the lab)", file=sys.stderr)
        return 2
    try:
        exhibits = chosen(args.only)
        index, rows = make(args.directory, exhibits, say=lambda line: print(line, flush=True))
    except GalleryError as exc:
        raise UsageError(str(exc)) from None
    wrong = [r["name"] for r in rows if r["ok"] is None or r["ok"] != r["expected_ok"]]
    print(f"{index}: {len(rows)} exhibits" + (f"; NOT as they should: {', '.join(wrong)}"
                                              if wrong else ", each as it should be"))
    return 1 if wrong else 0
