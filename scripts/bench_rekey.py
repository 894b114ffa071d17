#!/usr/bin/env python3
"""Packets lost to rekeys: a tunnel rekeys its IKE and CHILD SAs again and again under 1,000
datagrams/s each way, in each --ownership mode, and every lost datagram is placed in time.

    .venv/bin/python scripts/bench_rekey.py [--rekeys 50] [--rate 1000] [--ike 2]
                                            [--ip 4] [--modes table,stateless] [--json FILE]
                                            [--members 3]

The lab: 3 members (`--members 1`: the same without a cluster around it, for comparison),
1 peer, --hash split (IKE_SA_INIT and the rest reach different members). The rekeys take turns: the peer rekeys the CHILD SA, the holder rekeys the IKE SA,
the holder rekeys the CHILD SA, the peer rekeys the IKE SA; each is done once the peer's
charon holds one IKE SA with the new SPI (`Lab.rekey`; an IKEv1 IKE SA reauthenticates, and
its old one lingers 10 s), then 0.5 s pass. The flows are `lab.net.seqflow` (sequence numbers and
send times), h1 -> hc and hc -> h1. Each line: the mode, the rekeys done, datagrams sent each
way, lost each way, and each gap with the rekey it followed. Issue 19's target: 0 lost.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.run.lab import Lab, RekeyError  # noqa: E402
from lab.plan.topology import OWNERSHIP_MODES, LabSpec  # noqa: E402

GAP = 0.5  # seconds between one rekey's end and the next one's start
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def flow(node, *args):
    return node.popen([sys.executable, "-m", "lab.net.seqflow", *args], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True, env=ENV)


KINDS = (("peer", "child"), ("holder", "ike"), ("holder", "child"), ("peer", "ike"))


def rekey(lab, turn: int) -> tuple[str, float, float]:
    """Rekey number `turn`; (what, started, done) in monotonic seconds."""
    by, what = KINDS[turn % len(KINDS)]
    name = f"{by} {what.upper()}"
    started = time.monotonic()
    try:
        lab.rekey("p1", by, what)
    except RekeyError as exc:
        return f"{name} (not done: {exc})", started, time.monotonic()
    return name, started, time.monotonic()


def measure(mode: str, args) -> dict:
    spec = LabSpec(members=args.members, peers=1, hash="split", ike=args.ike, ownership=mode,
                   ip=args.ip, agent=args.agent)
    with Lab(spec) as lab:
        watch = lab.bring_up(["p1"], 20)
        if "p1" not in watch.up_after:
            return {"error": f"p1 did not come up: {watch.last_sa.get('p1')}"}
        plan = lab.plan
        family = 6 if args.ip == "6" else 4
        hc = next(a.ip for a in plan.lan_host.interfaces[0].addresses if a.version == family)
        h1 = next(a for a in plan.peers[0].lan_hosts if a.version == family)
        seconds = args.rekeys * (GAP + 1.5) + 30
        receivers = {"to_lan": flow(lab.node("hc"), "receive", "--port", "5300", "--seconds",
                                    str(seconds + 10), "--ip", str(family)),
                     "to_peer": flow(lab.node("h1"), "receive", "--port", "5301", "--seconds",
                                     str(seconds + 10), "--ip", str(family))}
        for proc in receivers.values():
            proc.stdout.readline()  # "listening"
        senders = {"to_lan": flow(lab.node("h1"), "send", "--to", str(hc), "--port", "5300",
                                  "--rate", str(args.rate), "--seconds", str(seconds)),
                   "to_peer": flow(lab.node("hc"), "send", "--to", str(h1), "--port", "5301",
                                   "--rate", str(args.rate), "--seconds", str(seconds))}
        time.sleep(2.0)  # traffic flowing before the first rekey: a baseline without any
        rekeys = []
        for turn in range(args.rekeys):
            rekeys.append(rekey(lab, turn))
            time.sleep(GAP)
        time.sleep(2.0)
        result = {"rekeys": len(rekeys), "unfinished": [r[0] for r in rekeys if "not done" in r[0]]}
        for name, proc in senders.items():
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
            result[f"sent_{name}"] = json.loads(out.strip().splitlines()[-1])["sent"]
        for name, proc in receivers.items():
            out, err = proc.communicate(timeout=seconds + 30)
            got = json.loads(out.strip().splitlines()[-1])
            result[f"lost_{name}"] = result[f"sent_{name}"] - got["received"]
            result[f"gaps_{name}"] = [dict(g, rekey=_near(g, rekeys)) for g in got["gaps"]]
        return result


def _near(gap: dict, rekeys) -> str:
    """The rekey a gap follows (the last one started before its first lost datagram)."""
    at = gap["after"] or gap["before"]
    started = [r for r in rekeys if r[1] <= at + 0.05]
    if not started:
        return "before any rekey"
    what, start, done = started[-1]
    return f"{what} +{at - start:.3f} s (rekey took {done - start:.3f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rekeys", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--ike", choices=("1", "2"), default="2")
    parser.add_argument("--ip", choices=("4", "6"), default="4")
    parser.add_argument("--modes", default=",".join(OWNERSHIP_MODES))
    parser.add_argument("--members", type=int, choices=range(1, 9), default=3)
    parser.add_argument("--no-agent", dest="agent", action="store_false",
                        help="with --members 1: charon alone, for comparison")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.json and not args.json.parent.is_dir():
        print(f"bench_rekey: no directory for {args.json}", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    if not args.agent and args.members != 1:
        print("bench_rekey: --no-agent needs --members 1 (without an agent the split hash "
              "breaks every negotiation)", file=sys.stderr)
        return 2
    if set(modes) - set(OWNERSHIP_MODES) or not 1 <= args.rekeys <= 1000:
        print(f"bench_rekey: --modes from {', '.join(OWNERSHIP_MODES)}; --rekeys 1-1000",
              file=sys.stderr)
        return 2
    def interrupted(*_):
        raise KeyboardInterrupt  # the lab tears down in its `with`, as after Ctrl-C
    signal.signal(signal.SIGTERM, interrupted)
    results = {}
    for mode in modes:
        result = results[mode] = measure(mode, args)
        if "error" in result:
            print(f"{mode}: {result['error']}", flush=True)
            continue
        print(f"{mode}: {result['rekeys']} rekeys (IKEv{args.ike}, IPv{args.ip}, "
              f"{args.members} members), "
              f"{result['sent_to_lan']}/{result['sent_to_peer']} datagrams to LAN/peer, "
              f"lost {result['lost_to_lan']}/{result['lost_to_peer']}"
              + (f", unfinished: {', '.join(result['unfinished'])}" if result["unfinished"]
                 else ""), flush=True)
        for way in ("to_lan", "to_peer"):
            for gap in result[f"gaps_{way}"]:
                print(f"  {way}: lost {gap['last'] - gap['first'] + 1} after {gap['rekey']}",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
