"""Integration fixtures: every test must leave nothing of the lab on the machine."""

import pytest

from .helpers import charon_pids, ikelab, lab_bridges, leftovers


@pytest.fixture(autouse=True)
def leaves_nothing_behind():
    """Fail the test if it ends with a charon, bridge, interface or run directory left."""
    before = charon_pids()
    assert not lab_bridges(), "a lab is already running on this machine"
    yield before
    assert leftovers(before) == {}


@pytest.fixture
def kept():
    """The kept runs a test makes are removed after it, with `ikelab clean --kept`."""
    yield
    result = ikelab("clean", "--kept")
    assert result.returncode == 0, result.stderr
