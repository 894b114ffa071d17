"""Fuzzing the lab's options, from the three places a user types them: `ikelab`'s command line
(`lab.cli`), the option string of plain Mininet (`mn --custom topologies/ikecluster.py --topo
ikecluster,members=3,...`, `lab.run.mnlab`), and `LabSpec` itself, which both end in. Whatever is
typed, the answer is a lab that can be built or the documented error: `ikelab` prints one line
"ikelab: error: ..." and exits 2 (argparse's help, asked for, exits 0); the Mininet topology
logs one such line and raises SystemExit(2), never an exception for mn to catch (mn answers
those with a traceback banner and its cleanup); `LabSpec.validate` raises TopologyError, one
line naming the bad option; `_int` and `_seconds`, which read --members, --timeout and the
like, raise argparse's ArgumentTypeError.

Nothing here builds a lab: where an accepted option set would go on to check the machine, the
test stands in a check that records the plan and stops there.
"""

import argparse
import io
import math
import runpy
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import event, given, strategies as st
from mininet.util import splitArgs

import lab.run.lab
import lab.run.mnlab
import lab.net.preflight
from lab.cli import UsageError, _int, _seconds, main, parser
from lab.net.preflight import NotReady
from lab.plan.topology import (AUTH_METHODS, CLUSTER_MODES, HASH_MODES, IKE_CHOICES, MAX_CHAIN,
    MAX_MEMBERS, MAX_PEERS, OWNERSHIP_MODES, LabSpec, Plan, TopologyError, build_plan)

ROOT = Path(__file__).resolve().parents[2]
CHOICES = HASH_MODES + CLUSTER_MODES + IKE_CHOICES + AUTH_METHODS + OWNERSHIP_MODES
STOP = "stopped by the test before the machine check"

# What a user might type for a value: the lab's own words and numbers, near misses, anything.
numbers = st.one_of(st.integers(-3, MAX_PEERS + 3), st.floats(allow_nan=True),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "1_0", " 3 ", "3.0",
                                     "٣", "1e-400"]))
# Line breaks too: an error that quotes a word must still be one line.
words = st.one_of(st.sampled_from(CHOICES + ("L4", "spilt", "", "0", "1", "true", "yes",
                                            "two\nlines", "\r")),
                  numbers.map(str), st.text(max_size=12))


# ---- LabSpec.validate -----------------------------------------------------------------------

anything = st.one_of(st.none(), st.booleans(), st.integers(-3, MAX_PEERS + 3),
                     st.floats(allow_nan=True), st.text(max_size=8),
                     st.sampled_from(CHOICES))
specs = st.builds(LabSpec, members=anything, peers=anything, hash=anything, mode=anything,
                  ike=anything, auth=anything, ownership=anything, expiry=anything,
                  dead_after=anything, chain=anything)


@given(specs)
def test_any_spec_validates_and_builds_or_names_its_first_bad_option_in_one_line(spec):
    try:
        valid = spec.validate()
    except TopologyError as exc:
        message = str(exc)
        event(f"refused: {message.split()[0]}")
        assert "\n" not in message and message.split()[0] in (
            "members", "peers", "expiry", "dead-after", "chain", "hash", "mode", "ike", "auth",
            "ownership")
        return
    event("valid")
    assert valid is spec
    assert 1 <= spec.members <= MAX_MEMBERS and 1 <= spec.peers <= MAX_PEERS
    assert 0 <= spec.chain <= MAX_CHAIN and 0 < spec.expiry <= 3600
    assert 0.3 <= spec.dead_after <= 30
    plan = build_plan(spec)
    assert (len(plan.members), len(plan.peers)) == (spec.members, spec.peers)


# ---- the helpers behind --members, --timeout, ... -------------------------------------------

@given(st.one_of(st.text(max_size=20), numbers.map(str)))
def test_any_text_is_a_whole_number_or_an_argument_type_error(text):
    try:
        value = _int(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc) == f"not a whole number: {text!r}"
        return
    assert isinstance(value, int)


@given(st.integers(-10**30, 10**30))
def test_a_whole_number_written_out_reads_back_as_itself(n):
    assert _int(str(n)) == n


@given(st.one_of(st.text(max_size=20), numbers.map(str)))
def test_any_text_is_seconds_in_range_or_an_argument_type_error(text):
    try:
        value = _seconds(text)
    except argparse.ArgumentTypeError as exc:
        assert repr(text) in str(exc)
        return
    assert 0 < value <= 3600 and not math.isnan(value)


@given(st.floats(min_value=0, max_value=3600, exclude_min=True))
def test_seconds_in_range_written_out_read_back_as_themselves(seconds):
    assert _seconds(repr(seconds)) == seconds


# ---- ikelab's command line --------------------------------------------------------------------

def seconds(low, high):
    return st.floats(low, high).map(repr)


# Every option of `ikelab run` and what it takes: good values, so that most argument lists
# get through to the later checks (--chaos, --templates, the spec, the plan), not only to
# argparse's.
RUN_VALUES = {"--members": st.integers(1, MAX_MEMBERS).map(str),
              "--peers": st.integers(1, MAX_PEERS).map(str),
              "--hash": st.sampled_from(HASH_MODES), "--mode": st.sampled_from(CLUSTER_MODES),
              "--ike": st.sampled_from(IKE_CHOICES), "--auth": st.sampled_from(AUTH_METHODS),
              "--chain": st.integers(0, MAX_CHAIN).map(str),
              "--ownership": st.sampled_from(OWNERSHIP_MODES),
              "--timeout": seconds(0.1, 3600), "--expiry": seconds(0.1, 3600),
              "--dead-after": seconds(0.3, 30),
              "--templates": st.sampled_from([str(ROOT / "templates"), "/nonexistent", "",
                                              "t" * 300])}  # a name too long for the kernel
RUN_FLAGS = ["--nat", "--no-ike-fragmentation", "--no-agent", "--json", "--cli", "--keep",
             "--capture", "--no-trace", "--no-rebalance", "--chaos"]
RUN_OPTIONS = list(RUN_VALUES) + RUN_FLAGS
OTHER_OPTIONS = ["--watch", "--peer", "-o", "--output", "--kept", "-h", "--help", "--", "-"]


@st.composite
def run_arguments(draw):
    """Argument lists a user might give `ikelab run`: its options (abbreviated too, argparse
    allows it, or glued to their value with '='), mostly good values, and stray words."""
    argv = []
    for _ in range(draw(st.integers(0, 5))):
        option = draw(st.sampled_from(RUN_OPTIONS))
        typed = draw(st.one_of(st.just(option), st.integers(3, len(option)).map(
            lambda length: option[:length])))
        if option in RUN_VALUES:
            good = RUN_VALUES[option]
            value = draw(st.one_of(good, good, good, words))
            argv += draw(st.sampled_from([[typed, value], [f"{typed}={value}"], [typed]]))
        else:
            argv.append(typed)
    if draw(st.integers(0, 4)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(words))  # a stray word
    return argv


@pytest.fixture(scope="module")
def machine_check():
    """The plans `ikelab run` got as far as checking the machine for; the check itself is the
    test's, and stops the run there (as a machine not ready would: exit 2, one line). The
    lab's own builder is replaced too, so nothing here can ever start one."""
    plans = []

    def check_machine(plan):
        plans.append(plan)
        raise NotReady(STOP)

    def no_lab(*args, **kwargs):
        raise AssertionError("a fuzz test got as far as building a lab")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lab.net.preflight, "check_machine", check_machine)
        patch.setattr(lab.run.lab, "Lab", no_lab)
        yield plans


def run_main(argv):
    """(exit status, stdout, stderr) of `ikelab ARGV`; SystemExit's code is the status."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    return status, out.getvalue(), err.getvalue()


@given(run_arguments())
def test_any_ikelab_run_options_give_a_buildable_lab_or_one_line_and_exit_2(machine_check,
                                                                              argv):
    before = len(machine_check)
    status, out, err = run_main(["run", *argv])
    if status == 0:
        event("help")
        assert "usage: ikelab run" in out and err == ""
        return
    assert status == 2 and err.count("\n") == 1, err
    if len(machine_check) > before:
        event("reached the machine check")
        assert err == f"ikelab: {STOP}\n"
        assert isinstance(machine_check[-1], Plan)
        assert machine_check[-1].spec.validate() is machine_check[-1].spec
    else:
        event("usage error")
        assert err.startswith("ikelab: error: ")


PARSER = parser()  # parse_args leaves it as it was, and making one costs 15 ms


@given(st.sampled_from([None, "run", "status", "runs", "ladder", "graph", "clean", "launch"]),
       st.lists(st.one_of(st.sampled_from(RUN_OPTIONS + OTHER_OPTIONS), words), max_size=6))
def test_any_arguments_to_any_command_parse_or_are_a_usage_error(command, argv):
    argv = ([command] if command else []) + argv
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            args = PARSER.parse_args(argv)
    except UsageError:
        event("usage error")
        status, _, err = run_main(argv)  # fails the same parse, so it runs nothing
        assert status == 2 and err.startswith("ikelab: error: ") and err.count("\n") == 1
        return
    except SystemExit as exit:
        event("help")
        assert exit.code == 0 and "usage: ikelab" in out.getvalue()
        return
    event("parsed")
    assert args.command in (None, "run", "status", "runs", "ladder", "graph", "clean")


def test_an_argument_with_a_line_break_is_still_a_one_line_error():
    """Regression: argparse quotes unrecognized arguments as typed, so `ikelab run $'a\\nb'`
    printed an error of two lines."""
    status, _, err = run_main(["run", "a\nb"])
    assert status == 2 and err == "ikelab: error: unrecognized arguments: a\\nb\n"


def test_a_templates_path_too_long_for_the_kernel_is_a_usage_error(machine_check):
    """Regression: --templates whose name the kernel refuses (ENAMETOOLONG) raised OSError out
    of `ikelab run`, a traceback instead of the one line."""
    status, _, err = run_main(["run", "--templates", "t" * 300])
    assert status == 2
    assert err.startswith("ikelab: error: --templates ") and "no swanctl.conf.j2" in err


# ---- the Mininet topology's option string -----------------------------------------------------

TOPO_OPTIONS = ["members", "peers", "hash", "mode", "ike", "auth", "nat", "keep", "agent",
                "ownership", "dead_after", "chain", "ike_fragmentation", "rebalance"]
# Misspellings a user makes (the CLI's spelling, singulars, options mn's topology lacks).
TYPOS = ["member", "dead-after", "expiry", "Members", "peer", "hashing", ""]


class Prepared(Exception):
    """Raised by the test's `prepare`: the topology got as far as preparing a run for spec."""

    def __init__(self, spec):
        super().__init__(spec)
        self.spec = spec


@pytest.fixture(scope="module")
def ikecluster():
    """(mn's `topos` from topologies/ikecluster.py, the lines the topology logged as errors).
    The file is loaded as mn loads it; it puts the lab on sys.path, which is put back after.
    `prepare` (run directory, configs) stops with Prepared, after checking the spec."""
    logged = []

    def prepare(spec, keep=False, say=print):
        build_plan(spec)
        raise Prepared(spec)

    saved = list(sys.path)
    try:
        topos = runpy.run_path(str(ROOT / "topologies" / "ikecluster.py"))["topos"]
    finally:
        sys.path[:] = saved
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lab.run.mnlab, "prepare", prepare)
        patch.setattr(lab.run.mnlab, "error", logged.append)
        yield topos, logged


def build(ikecluster, options: str):
    """What `mn --topo ikecluster,OPTIONS` does with the string: mn's own split, then the
    call. Returns ('spec', LabSpec) or ('exit', status, the one line logged)."""
    topos, logged = ikecluster
    del logged[:]
    name, args, kwargs = splitArgs(f"ikecluster,{options}" if options else "ikecluster")
    try:
        topos[name](*args, **kwargs)
    except Prepared as done:
        return "spec", done.spec
    except SystemExit as exit:
        assert len(logged) == 1 and logged[0].count("\n") == 1, logged
        return "exit", exit.code, logged[0]
    raise AssertionError("the topology neither prepared a run nor exited")


# mn passes a bare value positionally; the lab documents key=value options only, and a key is
# never "self" (Python's, not a lab option).
option_items = st.tuples(st.one_of(st.sampled_from(TOPO_OPTIONS + TYPOS),
                                   st.text(st.characters(exclude_characters=",="), max_size=8)
                                   .filter(lambda key: key != "self")),
                         words.map(lambda value: value.replace(",", ""))).map("=".join)


@given(st.lists(option_items, max_size=5).map(",".join))
def test_any_mininet_option_string_gives_a_buildable_lab_or_one_line_and_exit_2(ikecluster,
                                                                                  options):
    outcome = build(ikecluster, options)
    event(outcome[0])
    if outcome[0] == "spec":
        assert outcome[1].validate() is outcome[1]
    else:
        assert outcome[1] == 2 and outcome[2].startswith("ikelab: error: ")


@pytest.mark.parametrize("options, words", [
    ("chain=inf", "chain a whole number"),      # was OverflowError (int(inf))
    ("chain=1e999", "chain a whole number"),    # mn makes it float('inf') too
    ("member=5", "no option 'member'"),         # was TypeError (unexpected keyword argument)
    ("dead-after=1", "no option 'dead-after'"),
    ("members=9", "members must be 1 to 8"),
])
def test_mininet_options_that_crashed_or_are_common_mistakes_are_one_line(ikecluster, options,
                                                                          words):
    kind, status, line = build(ikecluster, options)
    assert (kind, status) == ("exit", 2) and words in line


def test_the_documented_mininet_options_give_their_lab(ikecluster):
    kind, spec = build(ikecluster, "members=3,peers=2,hash=split,mode=ls,ike=2,auth=pubkey,"
                                   "nat=1,agent=0,ownership=stateless,dead_after=0.6,chain=3,"
                                   "ike_fragmentation=0,rebalance=0,ip=dual")
    assert spec == LabSpec(3, 2, "split", "ls", "2", "pubkey", nat=True, agent=False,
                           ownership="stateless", dead_after=0.6, chain=3,
                           ike_fragmentation=False, rebalance=False, ip="dual")
