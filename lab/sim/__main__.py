"""python -m lab.sim: run the cluster simulator (see lab/sim/__init__.py).

    python -m lab.sim --seed 7                    one seed, its story if it fails
    python -m lab.sim --seeds 200 --events 1000000 --json
    python -m lab.sim --seed 7 --shrink           a shorter run that fails the same way
    python -m lab.sim --self-test                 every planted bug must be caught
    python -m lab.sim --seeds 50 --bug grant-before-all-acks

Exit status: 0 no violation (self-test: every bug caught), 1 a violation (self-test: a bug
missed), 2 bad usage.
"""

import argparse
import json
import sys
import time

from lab.agent.names import Ownership

from . import bugs
from .runner import DEFAULT_EVENTS, run_seed, run_seeds, self_test, shrink


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _indexes(text: str) -> frozenset:
    try:
        return frozenset(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not fault numbers: {text!r}") from None


def parser() -> Parser:
    p = Parser(prog="python -m lab.sim", description="Deterministic simulation of the whole "
               "cluster: the real agents, model charons and peers, a faulty sync network and a "
               "hashing switch, on simulated time, from one seed.",
               epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run this one seed (replays it exactly)")
    which.add_argument("--seeds", type=_positive, help="run seeds 1..N (from --first-seed)")
    which.add_argument("--self-test", action="store_true",
                       help="run each planted bug until a seed catches it")
    p.add_argument("--events", type=_positive,
                   help=f"events of chaos: per seed with --seed (default {DEFAULT_EVENTS}), "
                        "in all with --seeds (spread over them)")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--shrink", action="store_true",
                   help="after a failure, search for a shorter run that fails the same way")
    p.add_argument("--bug", choices=sorted(bugs.BUGS), help="run a planted bug's core")
    p.add_argument("--jobs", type=_positive, help="processes (default: one per core)")
    p.add_argument("--without", type=_indexes, default=frozenset(),
                   help="leave these faults out (numbers as a failure lists them)")
    for name, kind in (("members", int), ("peers", int), ("flood", float)):
        p.add_argument(f"--{name}", type=kind, help=f"override the seed's {name}")
    p.add_argument("--ownership", choices=tuple(Ownership))
    return p


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.members is not None and not 1 <= args.members <= 8:
            raise UsageError("--members must be 1-8")
        if args.peers is not None and not 1 <= args.peers <= 16:
            raise UsageError("--peers must be 1-16")
    except UsageError as exc:
        print(f"python -m lab.sim: {exc}", file=sys.stderr)
        return 2
    options = {k: v for k, v in (("members", args.members), ("peers", args.peers),
                                 ("flood", args.flood), ("ownership", args.ownership))
               if v is not None}
    if args.without:
        options["without"] = args.without
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if args.self_test:
        caught = self_test(jobs=args.jobs, say=say)
        missed = [name for name, outcome in caught.items() if outcome is None]
        if args.json:
            print(json.dumps({"caught": {n: o.as_json() if o else None
                                         for n, o in caught.items()}, "missed": missed}))
        return 1 if missed else 0
    start = time.monotonic()
    if args.seed is not None:
        outcomes = [run_seed(args.seed, args.events or DEFAULT_EVENTS, options, args.bug)]
    else:
        seeds = list(range(args.first_seed, args.first_seed + (args.seeds or 1)))
        each = max(1, (args.events or DEFAULT_EVENTS * len(seeds)) // len(seeds))
        outcomes = run_seeds(seeds, each, options, args.bug, args.jobs,
                             on_outcome=None if args.json else _progress(len(seeds), start))
    wall = time.monotonic() - start
    failed = [o for o in outcomes if o.failed]
    if args.shrink and failed:
        failed[0] = shrink(failed[0], say=say)
    events = sum(o.events for o in outcomes)
    if args.json:
        print(json.dumps({"seeds": len(outcomes), "events": events,
                          "events_per_s": round(events / wall) if wall else None,
                          "sim_seconds": round(sum(o.sim_seconds for o in outcomes), 1),
                          "violations": [o.as_json() for o in failed]}))
    else:
        for outcome in failed:
            print(outcome.report())
        recovered = [o.recovered_after for o in outcomes if o.recovered_after is not None]
        print(f"{len(outcomes)} seeds, {events} events in {wall:.1f} s "
              f"({events / wall if wall else 0:.0f} events/s), "
              f"{sum(o.sim_seconds for o in outcomes):.0f} s simulated; "
              f"{len(failed)} violations" + (f"; tunnels whole again {max(recovered):.1f} s "
                                             "after the last fault at worst" if recovered
                                             else ""))
    return 1 if failed else 0


def _progress(total: int, start: float):
    done = [0]

    def show(outcome) -> None:
        done[0] += 1
        if outcome.failed:
            print(f"seed {outcome.seed}: {outcome.invariant}: {outcome.text}", flush=True)
        elif sys.stdout.isatty():
            print(f"\r{done[0]}/{total} seeds, {time.monotonic() - start:.0f} s", end="",
                  flush=True)
            if done[0] == total:
                print()
    return show


if __name__ == "__main__":
    sys.exit(main())
