"""The lab on the machine it runs on: what it needs (preflight), how it is installed (a real
wheel), what it leaves (nothing, and never a stranger's process), what it shows others (keys
stay root's), one lab at a time, and a teardown that no signal can cut short."""

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lab.net import preflight
from lab.run.lab import Lab
from lab.net.rundir import RunDirectory, runs_dir, start_time
from lab.plan.topology import LabSpec

from .helpers import (ROOT, bring_up, ikelab, interrupt, lab_bridges, leftovers, poll,
                      start_ikelab, wait_for_line)

pytestmark = pytest.mark.root


def test_a_missing_command_is_one_line_naming_its_package_and_nothing_is_built(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in [*preflight.COMMANDS, "python3"]:
        if command != "nft" and shutil.which(command):
            (bin_dir / command).symlink_to(shutil.which(command))
    result = subprocess.run([sys.executable, "-m", "lab", "run"], cwd=ROOT, text=True,
                            capture_output=True, timeout=60,
                            env=dict(os.environ, PATH=str(bin_dir)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "ikelab: missing nft (nftables); fix: apt-get install nftables (or ./scripts/setup.sh)")
    assert "Traceback" not in result.stderr
    assert not lab_bridges()


def test_a_wheel_installs_an_ikelab_that_runs_the_lab_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("ikelab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"lab/agent/__main__.py", "lab/templates/strongswan.conf.j2",
            "lab/templates/swanctl.conf.j2"} <= set(names)
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import lab; print(lab.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), "the test must run the installed copy"
    result = subprocess.run([str(venv / "bin" / "ikelab"), "run", "--members", "2", "--peers",
                             "1", "--hash", "split"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr  # the report says what failed
    assert "OK: every tunnel is up" in result.stdout


def test_clean_kills_only_what_a_run_provably_started():
    """A crashed run's record names a namespace inode and a PID that now belong to a stranger
    (both are reused once the run's own are gone); only the process that matches the record
    exactly, PID and start time, is killed."""
    stranger = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    ours = subprocess.Popen(["sleep", "300"])
    owner = subprocess.Popen(["true"])
    owner_start = start_time(owner.pid)
    owner.wait()
    try:
        own_netns = os.stat("/proc/self/ns/net").st_ino
        poll(lambda: os.stat(f"/proc/{stranger.pid}/ns/net").st_ino != own_netns, deadline=5)
        run = RunDirectory(runs_dir() / "20000101-000000-1")
        (run.path / "nodes" / "m1").mkdir(parents=True)
        (run.path / "nodes" / "m1" / "netns").write_text(
            f"{os.stat(f'/proc/{stranger.pid}/ns/net').st_ino}\n")
        (run.path / "nodes" / "m1" / "shell.pid").write_text(f"{stranger.pid}\n")
        run.write({"owner_pid": owner.pid, "owner_start": owner_start,
                   "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                   "description": "crashed", "keep": False, "bridges": [], "interfaces": [],
                   "state": "running"})
        (run.path / "processes").write_text(
            f"{stranger.pid} {int(start_time(stranger.pid)) + 1}\n"
            f"{ours.pid} {start_time(ours.pid)}\n")
        result = ikelab("clean", timeout=60)
        assert result.returncode == 0, result.stderr
        assert "killed 1 processes" in result.stdout
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None, "clean killed a process the run never started"
        assert not run.path.exists()
    finally:
        for process in (stranger, ours):
            if process.poll() is None:
                process.kill()
            process.wait()


def test_clean_removes_what_a_killed_run_left(leaves_nothing_behind):
    proc = start_ikelab("run", "--no-agent", "--hash", "split", "--timeout", "60")
    wait_for_line(proc.stderr, "initiating")
    assert interrupt(proc, signal.SIGKILL) == -signal.SIGKILL
    left = leftovers(leaves_nothing_behind)
    assert left["bridges"] and left["charons"] and left["run_dirs"]
    result = ikelab("clean")
    assert result.returncode == 0, result.stderr
    assert "removed bridge ikex" in result.stdout
    assert leftovers(leaves_nothing_behind) == {}


def test_keys_stay_roots_and_kept_runs_are_listed_and_removed_on_request():
    with Lab(LabSpec(members=2, peers=1, auth="pubkey"), keep=True) as lab:
        path = lab.run.path
        assert path.stat().st_mode & 0o777 == 0o700
        secrets = [path / "agent_m1.json", path / "swanctl_m1" / "swanctl.conf",
                   *path.glob("pki/*.key"), *path.glob("swanctl_*/ecdsa/*")]
        assert len(secrets) >= 6
        readable = [str(p) for p in secrets if p.stat().st_mode & 0o077]
        assert not readable, f"readable by others: {readable}"
        listing = json.loads(ikelab("runs", "--json", timeout=30).stdout)
        assert [(r["name"], r["state"]) for r in listing] == [(path.name, "running")]
    listing = json.loads(ikelab("runs", "--json", timeout=30).stdout)
    assert [(r["name"], r["state"]) for r in listing] == [(path.name, "kept")]
    assert "2 members, 1 peers" in listing[0]["options"]
    assert "1 kept runs: ikelab clean --kept" in ikelab("clean", timeout=30).stdout
    assert path.exists()
    result = ikelab("clean", "--kept", timeout=30)
    assert result.returncode == 0 and f"removed {path}" in result.stdout
    assert not path.exists()


def test_a_second_lab_is_refused_in_one_line_and_the_first_keeps_running():
    with Lab(LabSpec(members=2, peers=1)) as lab:
        bridges = lab_bridges()
        result = ikelab("run", timeout=60)
        assert result.returncode == 2
        [line] = [l for l in result.stderr.splitlines() if l.startswith("ikelab:")]
        assert line.startswith("ikelab: another lab is running on this machine (run "
                               f"{lab.run.name}, pid {os.getpid()})")
        mn = subprocess.run(["mn", "--custom", "topologies/ikecluster.py", "--topo",
                             "ikecluster"], cwd=ROOT, input="", capture_output=True, text=True,
                            timeout=60)
        assert mn.returncode == 2 and "another lab is running" in mn.stderr, mn.stderr
        assert "Traceback" not in result.stderr + mn.stderr
        assert lab_bridges() == bridges
        bring_up(lab)  # the first lab still works


def test_ctrl_c_tears_everything_down():
    proc = start_ikelab("run", "--no-agent", "--hash", "split", "--timeout", "60")
    wait_for_line(proc.stderr, "initiating")
    assert lab_bridges()
    assert interrupt(proc) == 130, proc.stderr.read()


def test_sigint_then_sigterm_still_tears_everything_down():
    """What a CI cancellation sends: Ctrl-C, and soon after SIGTERM, while tearing down."""
    proc = start_ikelab("run", "--no-agent", "--hash", "split", "--timeout", "60")
    wait_for_line(proc.stderr, "initiating")
    proc.send_signal(signal.SIGINT)
    wait_for_line(proc.stderr, "tearing down")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()


def test_swanctl_inside_a_node_talks_to_that_nodes_charon():
    result = subprocess.run([sys.executable, "-m", "lab", "run", "--members", "2", "--peers",
                             "1", "--cli"], cwd=ROOT, capture_output=True, text=True,
                            input="m1 swanctl --list-conns\np1 swanctl --list-sas\n"
                                  "m2 swanctl --stats\nexit\n", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr  # Mininet logs a node command's output to stderr
    assert "p1: IKEv2, no reauthentication" in out  # m1's connection to p1
    assert "cluster: #1, ESTABLISHED, IKEv2" in out  # p1's one IKE SA
    assert out.count("loaded plugins:") == 1  # m2's charon answered
    assert "connecting to" not in out and "Traceback" not in out

