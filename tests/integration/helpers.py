"""Integration helpers: run the real `ikelab`, read what the lab left, poll with deadlines."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.net.rundir import runs_dir
from lab.plan.topology import LabSpec, build_plan

ROOT = Path(__file__).resolve().parents[2]
BRIDGES = build_plan(LabSpec()).bridge_names()


def charon_pids() -> set[int]:
    """Live charon processes; a zombie (dead, not yet reaped by init) does not count."""
    out = subprocess.run(["pgrep", "-x", "charon"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split() if _state(int(p)) not in ("Z", None)}


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def lab_bridges() -> set[str]:
    out = subprocess.run(["ovs-vsctl", "--timeout=10", "list-br"], capture_output=True,
                         text=True).stdout
    return set(out.split()) & set(BRIDGES)


def lab_interfaces() -> set[str]:
    names = os.listdir("/sys/class/net")
    return {n for n in names if n.split("-")[0] in BRIDGES
            or (n.split("-")[0][:1] in "mphr" and "-eth" in n)}


def leftovers(before: set[int]) -> dict:
    """What the lab left on this machine, beyond the charons that ran before the test."""
    found = {"charons": sorted(charon_pids() - before), "bridges": sorted(lab_bridges()),
             "interfaces": sorted(lab_interfaces()),
             "run_dirs": sorted(p.name for p in runs_dir().glob("*")) if runs_dir().is_dir()
             else []}
    return {k: v for k, v in found.items() if v}


def ikelab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def ikelab_json(*args: str, timeout: float = 300) -> tuple[int, dict]:
    result = ikelab("run", "--json", *args, timeout=timeout)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def start_ikelab(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(stream, words: str, deadline: float = 60) -> list[str]:
    """Read `stream` until a line contains `words`; fail after `deadline` seconds."""
    end, seen = time.monotonic() + deadline, []
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if words in line:
            return seen
    pytest.fail(f"never saw {words!r}; got {seen}")


def poll(check, deadline: float = 20, interval: float = 0.1):
    """Return check()'s first truthy value, failing after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{getattr(check, '__name__', 'condition')} not met within {deadline} s")


def interrupt(proc: subprocess.Popen, sig=signal.SIGINT) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def bring_up(lab, peers=("p1",)) -> dict:
    """Initiate the named peers' tunnels; fail unless all come up. Returns each peer's IKE SA."""
    watch = lab.bring_up(peers, 20)
    assert set(watch.up_after) == set(peers), watch.last_sa
    return peer_sas(lab, peers)


def peer_sas(lab, peers) -> dict:
    """Each named peer's (first) IKE SA, as its charon says now."""
    from lab import strongswan
    return {p: next(iter(strongswan.list_sas(lab.node(p).files.vici_socket).values()))
            for p in peers}


def statuses(lab) -> dict:
    """Every member's agent status."""
    from lab.run.probes import ask_agent
    return {m.name: ask_agent(lab, m.name) for m in lab.plan.members}
