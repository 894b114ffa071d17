"""Run directories and the record of what each run created, for teardown and `ikelab clean`.

Every run owns one directory under the state directory (`/var/lib/ikelab/runs/`, or
`$IKELAB_STATE/runs/`): its rendered configs, logs, keys, each node's private `/run`, and
`record.json`, written before anything is created. Nodes add their shell's PID and network
namespace as they come up (`nodes/<node>/`). Cleaning a run removes exactly that: processes in
the recorded namespaces, the recorded bridges and interfaces, and the directory itself.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

RECORD = "record.json"


def state_dir() -> Path:
    return Path(os.environ.get("IKELAB_STATE", "/var/lib/ikelab"))


def runs_dir() -> Path:
    return state_dir() / "runs"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, to tell a live owner from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class RunDirectory:
    """One run's directory and record."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, bridges: list[str], interfaces: list[str], keep: bool,
               description: str) -> "RunDirectory":
        """Make a fresh run directory owned by this process and write its record."""
        runs_dir().mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = runs_dir() / f"{stamp}-{os.getpid()}"
        path.mkdir()
        run = cls(path)
        run.write({"owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()),
                   "created": time.time(), "description": description, "keep": keep,
                   "bridges": bridges, "interfaces": interfaces, "state": "running"})
        return run

    @property
    def name(self) -> str:
        return self.path.name

    def read(self) -> dict:
        return json.loads((self.path / RECORD).read_text())

    def write(self, record: dict) -> None:
        tmp = self.path / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path / RECORD)

    def owner_alive(self) -> bool:
        record = self.read()
        return (record["owner_start"] is not None
                and _start_time(record["owner_pid"]) == record["owner_start"])

    def finish(self) -> None:
        """After a clean teardown: keep the files if asked, else remove the directory."""
        record = self.read()
        if record.get("keep"):
            record["state"] = "stopped"
            self.write(record)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def recorded_runs() -> list[RunDirectory]:
    if not runs_dir().is_dir():
        return []
    runs = []
    for path in sorted(runs_dir().iterdir()):
        if (path / RECORD).is_file():
            runs.append(RunDirectory(path))
    return runs


def live_runs() -> list[RunDirectory]:
    """Runs whose owner process is still alive and that have not stopped."""
    result = []
    for run in recorded_runs():
        try:
            if run.read()["state"] != "stopped" and run.owner_alive():
                result.append(run)
        except (OSError, ValueError, KeyError):
            continue
    return result


def stale_runs() -> list[RunDirectory]:
    """Runs whose owner died without tearing down."""
    result = []
    for run in recorded_runs():
        try:
            if run.read()["state"] != "stopped" and not run.owner_alive():
                result.append(run)
        except (OSError, ValueError, KeyError):
            result.append(run)
    return result


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def run_processes(run: RunDirectory) -> list[int]:
    """PIDs the run created that are still alive: anything inside a recorded namespace, plus
    recorded node shells and daemons whose command line still matches."""
    root_ns = _netns(1)
    namespaces, pids = set(), set()
    nodes = run.path / "nodes"
    for node in (nodes.iterdir() if nodes.is_dir() else []):
        try:
            namespaces.add(int((node / "netns").read_text()))
        except (OSError, ValueError):
            pass
        for pidfile, marker in (("shell.pid", f"mininet:{node.name}"),
                                ("run/charon.pid", "charon"),
                                ("run/agent.pid", "lab.agent.daemon")):
            try:
                pid = int((node / pidfile).read_text())
            except (OSError, ValueError):
                continue
            if marker in _cmdline(pid):
                pids.add(pid)
    namespaces.discard(root_ns)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _netns(int(entry.name)) in namespaces:
            pids.add(int(entry.name))
    pids.discard(os.getpid())
    return sorted(pids)


def clean_run(run: RunDirectory, say=print) -> None:
    """Remove what `run` recorded: its processes, bridges, interfaces and (unless kept) files."""
    record = run.read()
    pids = run_processes(run)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # SIGKILL is delivered asynchronously: wait until they are gone before removing the
    # bridges and links they may still hold.
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pids:
        say(f"{run.name}: killed {len(pids)} processes")
    for bridge in record.get("bridges", []):
        exists = subprocess.run(["ovs-vsctl", "--timeout=10", "br-exists", bridge],
                                capture_output=True).returncode == 0
        if exists:
            subprocess.run(["ovs-vsctl", "--timeout=10", "del-br", bridge], capture_output=True)
            say(f"{run.name}: removed bridge {bridge}")
    for intf in record.get("interfaces", []):
        if Path(f"/sys/class/net/{intf}").exists():
            subprocess.run(["ip", "link", "del", intf], capture_output=True)
            say(f"{run.name}: removed interface {intf}")
    if record.get("keep"):
        record["state"] = "stopped"
        run.write(record)
    else:
        shutil.rmtree(run.path, ignore_errors=True)
        say(f"{run.name}: removed {run.path}")
