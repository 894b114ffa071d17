"""Shared test setup: root-only tests are skipped with a reason when not root."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: builds a real lab (Mininet, OVS, strongSwan)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
