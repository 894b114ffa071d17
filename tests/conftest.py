"""Shared test setup: root-only tests are skipped with a reason when not root, and the suite
keeps its runs in a state directory of its own, so a user's kept or running labs never fail it
(and it never touches them)."""

import os
import shutil
import tempfile

import pytest


def pytest_configure(config):
    users = os.environ.get("IKELAB_STATE")
    os.environ["IKELAB_STATE"] = ours = tempfile.mkdtemp(prefix="ikelab-tests-")

    def restore():
        shutil.rmtree(ours, ignore_errors=True)
        os.environ.pop("IKELAB_STATE")
        if users is not None:
            os.environ["IKELAB_STATE"] = users
    config.add_cleanup(restore)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: builds a real lab (Mininet, OVS, strongSwan)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
