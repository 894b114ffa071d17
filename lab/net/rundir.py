"""Run directories, the record of what each run created, and the machine's one-lab lock.

Every run owns one directory under the state directory (`/var/lib/ikelab/runs/`, or
`$IKELAB_STATE/runs/`): its rendered configs, logs, keys, each node's private `/run`, and
`record.json`, written before anything is created. The directory is readable by root only: it
holds the sync key, the PSKs and private keys.

Cleaning a run removes exactly what it created, and nothing that merely looks like it:

- processes: every process the lab starts (node shells, charons, agents, pings, iperf3) is
  written down with its PID *and its start time* (`/proc/PID/stat`, clock ticks since boot)
  and the boot it ran in. A process is killed only if a live process still matches both, or
  descends from one that does. A PID or a namespace inode reused by a stranger after the run
  died does not match; after a reboot nothing does.
- the OVS bridges and root-namespace interfaces it recorded, by their lab names (the lab
  refuses to start when such a bridge exists without a record).
- the directory itself, unless the run was kept (`--keep`).

Only one lab can exist on a machine (bridge and interface names live in the root network
namespace), whatever state directory it uses: `LabLock` is an exclusive `flock` on
`/run/ikelab.lock` held by the process that owns the lab, and released by the kernel when
that process dies.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

RECORD = "record.json"
PROCESSES = "processes"  # "PID START" per line: every process the run started
LOCK_PATH = Path("/run/ikelab.lock")
KEPT, RUNNING = "stopped", "running"


class LabBusy(RuntimeError):
    """Another lab holds the machine; the message says which."""


def state_dir() -> Path:
    return Path(os.environ.get("IKELAB_STATE", "/var/lib/ikelab"))


def runs_dir() -> Path:
    return state_dir() / "runs"


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the boot, it tells the
    process we started from a later one that reuses its PID."""
    stat = _stat(pid)
    return stat[19] if stat else None


class LabLock:
    """The machine's one lab. `acquire` raises LabBusy naming the holder; the lock is released
    by `release`, or by the kernel when the holding process exits. Its file descriptor is not
    inherited by the lab's children, so a crashed lab's daemons never hold it."""

    def __init__(self, path: Path = LOCK_PATH):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, holder: str) -> "LabLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.read(fd, 512).decode(errors="replace").strip() or "a process"
            os.close(fd)
            raise LabBusy(f"another lab is running on this machine ({who}); stop it first "
                          "(`ikelab runs` lists the runs)") from None
        self.fd = fd
        self.describe(holder)
        return self

    def describe(self, holder: str) -> None:
        """What `acquire` tells a second lab about this one."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{holder}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


class RunDirectory:
    """One run's directory and record."""

    def __init__(self, path: Path, lock: LabLock | None = None):
        self.path = Path(path)
        self.lock = lock

    @classmethod
    def create(cls, bridges: list[str], interfaces: list[str], keep: bool,
               description: str, lock: LabLock | None = None,
               spec: dict | None = None) -> "RunDirectory":
        """Make a fresh run directory (root only) owned by this process and write its record."""
        runs_dir().mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = runs_dir() / f"{stamp}-{os.getpid()}"
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # whatever the umask: it will hold keys
        run = cls(path, lock)
        run.write({"owner_pid": os.getpid(), "owner_start": start_time(os.getpid()),
                   "boot_id": boot_id(), "created": time.time(), "description": description,
                   "keep": keep, "bridges": bridges, "interfaces": interfaces,
                   "state": RUNNING, "spec": spec or {}})
        if lock is not None:
            lock.describe(f"run {run.name}, pid {os.getpid()}")
        return run

    @property
    def name(self) -> str:
        return self.path.name

    def read(self) -> dict:
        return json.loads((self.path / RECORD).read_text())

    def write(self, record: dict) -> None:
        tmp = self.path / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.chmod(0o600)
        tmp.replace(self.path / RECORD)

    def record_process(self, pid: int) -> None:
        """Note a process this run started, so that only it is ever killed for this run."""
        start = start_time(pid)
        if start is not None:
            with open(self.path / PROCESSES, "a") as out:
                out.write(f"{pid} {start}\n")

    def owner_alive(self) -> bool:
        record = self.read()
        return (record.get("boot_id") == boot_id() and record["owner_start"] is not None
                and start_time(record["owner_pid"]) == record["owner_start"])

    def status(self) -> str:
        """running, kept (stopped with its files), or crashed (its owner died)."""
        try:
            record = self.read()
        except (OSError, ValueError):
            return "crashed"
        if record.get("state") == KEPT:
            return "kept"
        return "running" if self.owner_alive() else "crashed"


def recorded_runs() -> list[RunDirectory]:
    if not runs_dir().is_dir():
        return []
    return [RunDirectory(p) for p in sorted(runs_dir().iterdir()) if (p / RECORD).is_file()]


def find_run(name: str | None) -> RunDirectory:
    """A recorded run by name or directory, or the latest one when `name` is None; raises
    LookupError with one line saying what there is."""
    if name is None:
        runs = recorded_runs()
        if not runs:
            raise LookupError(f"no runs recorded in {runs_dir()}: ikelab run --keep (or "
                              "--capture) keeps one")
        return runs[-1]
    path = Path(name) if "/" in name else runs_dir() / name
    if not (path / RECORD).is_file():
        raise LookupError(f"no run {name!r} (ikelab runs lists them)")
    return RunDirectory(path)


def live_runs() -> list[RunDirectory]:
    """Runs whose owner process is still alive and that have not stopped."""
    return [run for run in recorded_runs() if run.status() == "running"]


def stale_runs() -> list[RunDirectory]:
    """Runs whose owner died without tearing down."""
    return [run for run in recorded_runs() if run.status() == "crashed"]


def kept_runs() -> list[RunDirectory]:
    return [run for run in recorded_runs() if run.status() == "kept"]


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live (non-zombie) process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and stat[0] != "Z":
                table[int(entry.name)] = (int(stat[1]), stat[19])
    return table


def run_processes(run: RunDirectory) -> list[int]:
    """Live PIDs the run provably started: recorded with this PID and start time in this boot,
    and their descendants."""
    try:
        if run.read().get("boot_id") != boot_id():
            return []  # another boot: everything the run started died with it
        lines = (run.path / PROCESSES).read_text().splitlines()
    except (OSError, ValueError):
        return []
    table = _process_table()
    recorded = {}
    for line in lines:
        try:
            pid, start = line.split()
            recorded[int(pid)] = start
        except ValueError:
            continue
    found = {pid for pid, start in recorded.items() if table.get(pid, (0, None))[1] == start}
    children: dict[int, list[int]] = {}
    for pid, (parent, _start) in table.items():
        children.setdefault(parent, []).append(pid)
    pending = list(found)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    found.discard(os.getpid())
    return sorted(found)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def clean_run(run: RunDirectory, say=print, remove_kept: bool = False) -> None:
    """Remove what `run` recorded: its processes, bridges, interfaces and (unless kept, or with
    `remove_kept`) its files; then let the next lab have the machine."""
    try:
        record = run.read()
    except (OSError, ValueError):
        record = {}
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
    if record.get("keep") and not remove_kept:
        record["state"] = KEPT
        run.write(record)
    else:
        shutil.rmtree(run.path, ignore_errors=True)
        say(f"{run.name}: removed {run.path}")
    if run.lock is not None:
        run.lock.release()
        run.lock = None
