"""Shared test setup: root-only tests are skipped with a reason when not root, and the suite
keeps its runs in a state directory of its own, so a user's kept or running labs never fail it
(and it never touches them). When the suite ends, interrupted or not, whatever its labs left
is torn down from their records first, and only then does the state directory go.

The fuzz tests (hypothesis) run under the "ci" profile: derandomized, so every run tries the
same inputs and a failure is a failure of the code, not of the draw; a fixed budget that keeps
them all to seconds; no example database (hypothesis still caches what it reads from the
sources in .hypothesis/, which git ignores by its own .gitignore). `--long` loads the "long"
profile instead, for a hunt: many more examples, drawn afresh from one seed that the run's
header prints, so a failure found once replays with `--long --hypothesis-seed=SEED`.
"""

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import settings

# print_blob: hypothesis also draws constants from the modules imported so far, so the
# inputs of one test depend a little on which tests ran before it; the blob a failure prints
# (@reproduce_failure) replays it on its own.
settings.register_profile("ci", derandomize=True, max_examples=150, deadline=None,
                          database=None, print_blob=True)
# Not derandomized: a hunt should try inputs the "ci" profile never does. One seed for the
# whole run keeps it repeatable all the same (see pytest_configure).
settings.register_profile("long", derandomize=False, max_examples=50_000, deadline=None,
                          database=None, print_blob=True)
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="fuzz tests: hypothesis's 'long' profile (50000 examples a test, "
                     "a fresh seed printed in the header) instead of 'ci'")


@pytest.hookimpl(tryfirst=True)  # before hypothesis's plugin reads --hypothesis-seed
def pytest_configure(config):
    if config.getoption("long"):
        settings.load_profile("long")
        if config.getoption("hypothesis_seed") is None:
            config.option.hypothesis_seed = str(random.SystemRandom().randrange(2**32))
    users = os.environ.get("IKELAB_STATE")
    os.environ["IKELAB_STATE"] = ours = tempfile.mkdtemp(prefix="ikelab-tests-")

    def restore():
        try:
            tear_down_what_is_left()
        finally:
            shutil.rmtree(ours, ignore_errors=True)
            os.environ.pop("IKELAB_STATE")
            if users is not None:
                os.environ["IKELAB_STATE"] = users
    config.add_cleanup(restore)


def tear_down_what_is_left() -> None:
    """Before the suite's state directory goes, and with it the records of what its labs
    created: remove what an interrupted test left (its processes, bridges, interfaces), as
    `ikelab clean --kept` would. A lab's own teardown runs first when a test is interrupted;
    this is for a lab whose process was killed before it could."""
    if os.geteuid() != 0:
        return
    from lab.net.rundir import clean_run, kept_runs, live_runs, stale_runs

    for run in stale_runs() + kept_runs() + live_runs():
        clean_run(run, say=lambda _message: None, remove_kept=True)


def pytest_report_header(config):
    if config.getoption("long"):
        seed = config.getoption("hypothesis_seed")
        return (f"fuzz: hypothesis profile 'long', seed {seed} "
                f"(replay: --long --hypothesis-seed={seed})")
    return None


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: builds a real lab (Mininet, OVS, strongSwan)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
