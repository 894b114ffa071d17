"""The cluster simulator (`lab.sim`) in the suite: a million events over many seeds with no
violation, every planted bug caught, the seeds that once found a bug clean, a failure that
replays exactly and shrinks, and the command line. `--long` runs twenty times the events."""

import json
import subprocess
import sys
import time

import pytest

from lab.sim import bugs
from lab.sim.runner import run_seed, run_seeds, self_test, shrink

# Every seed that made the simulator report a bug in the core, with the events it needed:
# each is fixed, and tests/unit/test_agent_found_by_sim.py says what was wrong in words.
FOUND = [(3, 10000), (4, 10000), (5, 10000), (7, 10000), (21, 5000), (25, 10000),
         (28, 5000), (35, 5000), (46, 6000), (59, 5000), (64, 5000), (73, 5000),
         (105, 5000), (132, 5000), (144, 5000), (180, 5000), (181, 5000), (183, 5000),
         (1068, 10000), (1102, 10000), (1128, 10000), (2247, 10000), (2533, 10000),
         (2714, 10000), (2832, 10000), (2895, 10000), (2993, 10000), (3283, 10000),
         (3735, 10000), (4222, 10000), (4636, 10000), (5476, 10000), (5589, 10000),
         (5693, 10000), (6074, 10000), (6674, 10000)]


def test_a_million_events_over_two_hundred_seeds_break_no_invariant(request):
    long = request.config.getoption("long")
    seeds, events = (2000, 20_000_000) if long else (200, 1_000_000)
    start = time.monotonic()
    outcomes = run_seeds(list(range(1, seeds + 1)), events // seeds)
    wall = time.monotonic() - start
    total = sum(o.events for o in outcomes)
    print(f"simulator: {seeds} seeds, {total} events in {wall:.1f} s, "
          f"{total / wall:.0f} events/s")
    assert total >= events
    assert [o.report() for o in outcomes if o.failed] == []


def test_every_planted_bug_is_caught_within_sixty_seeds():
    caught = self_test(seeds=60, say=lambda _text: None)
    assert [name for name, outcome in caught.items() if outcome is None] == []


@pytest.mark.parametrize("seed, events", FOUND)
def test_a_seed_that_once_found_a_bug_runs_clean(seed, events):
    # In the IPv4 world it was found in: the draw learned IPv6 later (`SimSpec.ip6`).
    outcome = run_seed(seed, events, {"ip6": False})
    assert not outcome.failed, outcome.report()


def test_a_failure_replays_exactly_from_its_seed_and_shrinks():
    first = run_seed(1, 6000, bug="keep-dead-members-entries")
    again = run_seed(1, 6000, bug="keep-dead-members-entries")
    assert first.failed and first.invariant == "no-dead-owner"
    assert (again.invariant, again.text, again.at_event, again.story) == (
        first.invariant, first.text, first.at_event, first.story)
    shorter = shrink(first, budget_s=30, say=lambda _text: None)
    assert shorter.invariant == first.invariant
    assert shorter.at_event <= first.at_event and len(shorter.faults) <= len(first.faults)
    replayed = run_seed(shorter.seed, shorter.events_asked, shorter.options, shorter.bug)
    assert replayed.invariant == first.invariant


def sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.sim", *args], capture_output=True,
                          text=True, timeout=300)


def test_the_command_line_prints_json_and_says_so_in_its_status():
    result = sim("--seeds", "3", "--events", "6000", "--json", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"seeds", "events", "events_per_s", "violations"}
    assert report["seeds"] == 3 and report["events"] >= 6000 and report["violations"] == []
    failing = sim("--seed", "1", "--events", "6000", "--bug", "grant-before-all-acks")
    assert failing.returncode == 1
    assert "claim-discipline" in failing.stdout and "replay: python -m lab.sim --seed 1" in \
        failing.stdout


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0"], "must be at least 1"), (["--seeds", "x"], "not a whole number"),
    (["--bug", "nonsense"], "invalid choice"), (["--members", "9", "--seed", "1"], "1-8"),
    (["--seed", "1", "--seeds", "2"], "not allowed with")])
def test_bad_options_are_one_line_and_exit_2(args, words):
    result = sim(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_planted_bugs_are_variants_of_the_real_core():
    from lab.agent.protocol.core import Agent
    assert all(issubclass(variant, Agent) and variant is not Agent
               for variant in bugs.BUGS.values())
