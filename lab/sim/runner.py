"""Running seeds: one (`run_seed`), many (`run_seeds`, over processes), a failing one made
shorter (`shrink`), and the planted bugs (`self_test`).

A seed's run has two phases. Chaos: faults and traffic until the run has taken its share of
events (`events`). Then the tail: every fault is undone, crashed members come back, and the
cluster must put every tunnel on exactly one member within `checker.LIVENESS_BOUND` simulated
seconds and keep it so for `checker.STABLE_FOR`; then the tables must agree. Safety is
checked after every event of both.

A failure names its seed, the invariant, the faults that were applied and the last events
before it, and the command that replays it exactly: the seed, its share of events, and any
option that shrinking changed.
"""

import os
import random
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing import get_context

from lab.agent.protocol.core import Agent

from . import bugs
from .checker import LIVENESS_BOUND, STABLE_FOR, Checker, Violation
from .faults import FaultPlan
from .story import describe
from .world import SimSpec, World

DEFAULT_EVENTS = 20000
TAIL_CHECK = 0.25


@dataclass
class Outcome:
    """What one seed's run found."""

    seed: int
    events_asked: int
    spec: SimSpec
    events: int = 0
    sim_seconds: float = 0.0
    recovered_after: float | None = None  # the tail: seconds until every tunnel was whole
    invariant: str | None = None
    text: str = ""
    at_event: int = 0
    faults: list = field(default_factory=list)
    story: list = field(default_factory=list)
    options: dict = field(default_factory=dict)  # what shrinking changed
    bug: str | None = None

    @property
    def failed(self) -> bool:
        return self.invariant is not None

    def command(self) -> str:
        parts = ["python -m lab.sim", f"--seed {self.seed}", f"--events {self.events_asked}"]
        for name, value in sorted(self.options.items()):
            if name == "without":
                parts.append(f"--without {','.join(map(str, sorted(value)))}")
            else:
                parts.append(f"--{name.replace('_', '-')} {value}")
        if self.bug:
            parts.append(f"--bug {self.bug}")
        return " ".join(parts)

    def report(self) -> str:
        lines = [f"seed {self.seed}: {self.invariant} broke at event {self.at_event} "
                 f"({self.sim_seconds:.3f} s simulated)", f"  {self.text}",
                 f"  cluster: {describe_spec(self.spec)}", "  faults applied:"]
        lines += [f"    {f}" for f in self.faults] or ["    none"]
        lines += ["  the last events:"] + [f"    {line}" for line in self.story]
        lines.append(f"  replay: {self.command()}")
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {"seed": self.seed, "invariant": self.invariant, "text": self.text,
                "at_event": self.at_event, "sim_seconds": round(self.sim_seconds, 3),
                "replay": self.command()}


def describe_spec(spec: SimSpec) -> str:
    versions = "".join(str(v) for v in spec.versions)
    return (f"{spec.members} members, {spec.peers} peers (IKEv{versions}), {spec.ownership}, "
            f"--mode {spec.mode}, --hash {spec.hash}, dead_after {spec.dead_after}, "
            f"flood {spec.flood:g}/s, half-open cap {spec.half_open_cap}"
            f"/{spec.half_open_per_peer}, external loss {spec.external_loss:g}, faults "
            f"{spec.fault_rate:g}/s, rekeys {spec.rekey_rate:g}/s"
            + (", IPv6" if spec.ip6 else ""))


def spec_for(seed: int, options: dict) -> SimSpec:
    overrides = {k: v for k, v in options.items() if k in (
        "members", "peers", "ownership", "mode", "hash", "flood", "fault_rate", "ip6")}
    return SimSpec.draw(random.Random(seed ^ 0xC1A5), **overrides)


def run_seed(seed: int, events: int = DEFAULT_EVENTS, options: dict | None = None,
             bug: str | None = None, story_length: int = 40) -> Outcome:
    """Run one seed: `events` events of chaos, then the quiet tail."""
    options = dict(options or {})
    spec = spec_for(seed, options)
    core = bugs.BUGS[bug] if bug else Agent
    world = World(seed, spec, core)
    checker = Checker(world)
    plan = FaultPlan(world, seed, frozenset(options.get("without", ())))
    outcome = Outcome(seed, events, spec, options=options, bug=bug)
    world.start()
    plan.start()
    try:
        while world.events < events and world.step():
            pass
        plan.heal_all()
        healed = world.now
        stable_since, next_check = None, world.now
        while world.step():
            if world.now < next_check:
                continue
            next_check = world.now + TAIL_CHECK
            problems = checker.tunnels_whole()
            if problems:
                stable_since = None
            elif stable_since is None:
                stable_since = world.now
                outcome.recovered_after = world.now - healed
            elif world.now - stable_since >= STABLE_FOR:
                break
            if world.now - healed > LIVENESS_BOUND:
                raise Violation("liveness", f"{LIVENESS_BOUND:g} s after the last fault "
                                            "healed: " + "; ".join(problems[:4]))
        problems = checker.tables_agree()
        if problems:
            raise Violation("convergence", "; ".join(problems[:4]))
    except Violation as violation:
        outcome.invariant, outcome.text = violation.invariant, violation.text
    except Exception:  # noqa: BLE001 - the core (or the model) raised: that is a finding
        outcome.invariant = "exception"
        outcome.text = traceback.format_exc().strip().splitlines()[-1]
        outcome.story.append(traceback.format_exc())
    outcome.events, outcome.sim_seconds = world.events, world.now
    if outcome.failed:
        outcome.at_event = world.events
        outcome.faults = [str(f) for f in plan.applied]
        recent = list(world.recent)[-story_length:]
        outcome.story = [describe(world, *entry) for entry in recent] + [
            f"{t:10.4f}  log: {text}" for t, text in list(world.notes)[-8:]] + outcome.story
    return outcome


def _run(job: tuple) -> Outcome:
    seed, events, options, bug = job
    return run_seed(seed, events, options, bug)


def run_seeds(seeds: list[int], events_each: int, options: dict | None = None,
              bug: str | None = None, jobs: int | None = None, on_outcome=None) -> list:
    """Run every seed (in `jobs` processes); outcomes in seed order."""
    work = [(seed, events_each, options or {}, bug) for seed in seeds]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(work) == 1:
        results = []
        for job in work:
            results.append(_run(job))
            if on_outcome:
                on_outcome(results[-1])
        return results
    pool = get_context("fork").Pool(jobs)
    try:
        results = []
        for outcome in pool.imap(_run, work, chunksize=1):
            results.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        return results
    finally:
        pool.close()  # workers end on their own (a coverage run writes down what they ran)
        pool.join()


def shrink(outcome: Outcome, budget_s: float = 120.0, say=print) -> Outcome:
    """A shorter run that breaks the same invariant: fewer events, fewer faults, a smaller
    cluster. Greedy, one change at a time, each kept only if the invariant still breaks."""
    deadline = time.monotonic() + budget_s
    best = outcome

    def attempt(events: int, options: dict) -> Outcome | None:
        if time.monotonic() > deadline:
            return None
        result = run_seed(best.seed, events, options, best.bug)
        return result if result.invariant == best.invariant else None

    def shorter_events(result: Outcome) -> int:
        safety = result.invariant not in ("liveness", "convergence")
        return min(result.events_asked, result.at_event) if safety else result.events_asked

    events = shorter_events(best)
    again = attempt(events, best.options)
    if again:
        best = again
        say(f"shrink: {events} events")
    for name, smaller in (("members", 2), ("peers", 1), ("flood", 0.0)):
        current = getattr(best.spec, name)
        if current != smaller:
            result = attempt(best.events_asked, {**best.options, name: smaller})
            if result:
                best = result
                say(f"shrink: {name} {smaller}")
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        applied = [int(f.split()[0][1:]) for f in best.faults]
        for index in reversed(applied):
            without = set(best.options.get("without", ())) | {index}
            result = attempt(best.events_asked, {**best.options, "without": frozenset(without)})
            if result:
                result = attempt(shorter_events(result), result.options) or result
                best, improved = result, True
                say(f"shrink: without fault #{index} ({len(best.faults)} faults left, "
                    f"{best.events_asked} events)")
                break
    return best


def self_test(seeds: int = 60, events_each: int = 6000, jobs: int | None = None,
              say=print) -> dict[str, Outcome | None]:
    """Each planted bug against `seeds` seeds: the first outcome that caught it by the
    invariant it breaks (`BREAKS`), or None. A planted bug that only crashes the core, or
    trips another invariant, is not caught: the plant itself is broken."""
    caught = {}
    for name in bugs.BUGS:
        found = None
        for start in range(1, seeds + 1, jobs or os.cpu_count() or 1):
            batch = list(range(start, min(start + (jobs or os.cpu_count() or 1), seeds + 1)))
            for outcome in run_seeds(batch, events_each, bug=name, jobs=jobs):
                if outcome.failed and found is None and (
                        outcome.invariant == bugs.BUGS[name].BREAKS):
                    found = outcome
            if found:
                break
        caught[name] = found
        say(f"{name}: " + (f"caught by seed {found.seed} ({found.invariant}: {found.text})"
                           if found else f"NOT caught in {seeds} seeds"))
    return caught
