"""The preflight and the setup script agree: every package a check may name is installed by
setup.sh, every package setup.sh installs is checked (or only builds the venv), and a miss
reads as one line that names the fix. Also: the wheel's package list covers the code."""

import re
import tomllib
from pathlib import Path

from lab.net import preflight
from lab.agent.names import NodeFiles
from lab.strongswan.render import PLUGINS, SWANCTL_PLUGINS, Credentials, render_node
from lab.plan.topology import LabSpec, build_plan

ROOT = Path(__file__).resolve().parents[2]
# Needed only while setup.sh builds the venv (netfilterqueue compiles against its C library);
# setup.sh names them itself if that build fails.
BUILD_ONLY = {"python3-venv", "python3-dev", "gcc", "libnetfilter-queue-dev"}


def setup_packages() -> set[str]:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    listing = re.search(r"^packages=\((.*?)\)", text, re.MULTILINE | re.DOTALL).group(1)
    return set(listing.split())


def test_every_package_a_check_names_is_installed_by_setup():
    assert preflight.packages() - setup_packages() == set()


def test_every_package_setup_installs_is_checked_or_only_builds_the_venv():
    assert setup_packages() - preflight.packages() == BUILD_ONLY


def test_every_plugin_the_templates_load_is_checked_and_its_package_set_up(tmp_path):
    plan = build_plan(LabSpec(members=2, peers=1))
    files = NodeFiles("m1", tmp_path)
    rendered = render_node(plan, "m1", files, Credentials("psk", b"k" * 32))
    loaded = preflight.loaded_plugins(rendered[files.strongswan_conf])
    assert set(loaded) == set(PLUGINS) | set(SWANCTL_PLUGINS)
    assert {preflight.plugin_package(p) for p in loaded} <= setup_packages()


def test_a_missing_plugin_reads_as_one_line_naming_its_package(tmp_path):
    for plugin in PLUGINS:
        if plugin != "openssl":
            (tmp_path / f"libstrongswan-{plugin}.so").write_bytes(b"")
    misses = preflight.missing_plugins(PLUGINS, tmp_path)
    line = preflight.describe(misses)
    assert misses == [preflight.Miss("strongSwan plugin openssl",
                                     "libstrongswan-standard-plugins")]
    assert "\n" not in line
    assert "apt-get install libstrongswan-standard-plugins" in line


def test_several_misses_still_make_one_line_with_every_package_and_command_once():
    line = preflight.describe([preflight.Miss("nft", "nftables"),
                               preflight.Miss("iperf3", "iperf3"),
                               preflight.Miss("Python module vici", command=preflight.SETUP),
                               preflight.Miss("kernel module nfnetlink_queue",
                                              command="modprobe nfnetlink_queue")])
    assert "\n" not in line
    assert line.endswith("fix: apt-get install iperf3 nftables (or ./scripts/setup.sh); "
                         "modprobe nfnetlink_queue")


def test_the_wheel_lists_every_package_of_the_lab():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lab").rglob("*.py")}
    assert on_disk <= listed
    assert project["tool"]["setuptools"]["package-dir"]["lab.templates"] == "templates"
