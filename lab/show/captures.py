"""Packet captures of a running lab, for Wireshark and for `ikelab ladder`.

One tcpdump per member port of the external hashing switch (`external-<member>.pcap`: what
the switch handed that member, and what the member sent back, so the hashing switch's split
shows file by file) and one for the sync network (`sync.pcap`: FORWARD and the other agent
messages, and the ESP and LAN traffic steered between members), all under
`<run dir>/captures/`. The switch ports are OVS ports in the root namespace; the sync network
is a kernel bridge in a namespace of its own, captured there on every port (`-i any`, inbound
only, so that a frame crossing the bridge is there once).

The tcpdumps are the run's processes like any other: recorded, so `ikelab clean` finds them
after a crash; `stop` ends them (and the lab's teardown does) so the files are complete.
"""

import shlex
import signal
import subprocess
import time
from pathlib import Path

SYNC = "sync"
KEYS_DIR = "keys"  # Wireshark's key tables of a --capture run (`lab.show.keytables`)
STOP_GRACE = 3.0


class CaptureError(ValueError):
    """A capture that cannot start or stop (an unknown node, tcpdump refusing); one line."""


class Captures:
    """The captures of one running lab (`net`: its ClusterNet)."""

    def __init__(self, net, plan, run):
        self.net = net
        self.plan = plan
        self.run = run
        self.dir = Path(run.path) / "captures"
        self.running: dict[str, subprocess.Popen] = {}  # target -> its tcpdump

    def targets(self) -> list[str]:
        """What can be captured: every member (its external switch port), and `sync`."""
        return [m.name for m in self.plan.members] + [SYNC]

    def file(self, target: str) -> Path:
        return self.dir / (f"{SYNC}.pcap" if target == SYNC else f"external-{target}.pcap")

    def _chosen(self, target: str | None) -> list[str]:
        if target is None:
            return self.targets()
        if target not in self.targets():
            raise CaptureError(f"no capture point {target!r}: choose one of "
                               f"{', '.join(self.targets())}")
        return [target]

    def start(self, target: str | None = None) -> list[Path]:
        """Start capturing at `target` (default: everywhere); returns the files written."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        started = []
        for name in self._chosen(target):
            if name in self.running:
                continue
            # -Z root: Debian's tcpdump otherwise drops to its own user, who may not write
            # into a run directory (0700, it holds keys). --immediate-mode: without it the
            # kernel hands packets over a block at a time, up to a second late, and a capture
            # stopped within that second loses them. -U: each packet hits the file at once,
            # so a file is readable while the capture runs.
            options = ["-n", "-s", "0", "--immediate-mode", "-U", "-Z", "root", "-w",
                       str(self.file(name))]
            if name == SYNC:
                sync_bridge = self.net[self.plan.switch(SYNC).name]
                process = sync_bridge.popen(["tcpdump", "-i", "any", "-Q", "in"] + options,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
            else:
                process = subprocess.Popen(["tcpdump", "-i", self._switch_port(name)] + options,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                           start_new_session=True)
                self.run.record_process(process.pid)
            self.running[name] = process
            started.append(self.file(name))
        self._wait_listening(started)
        return started

    def stop(self, target: str | None = None) -> list[Path]:
        """Stop capturing at `target` (default: everywhere); returns the files now complete."""
        stopped = []
        for name in self._chosen(target):
            process = self.running.pop(name, None)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # tcpdump flushes and closes its file
                try:
                    process.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            stopped.append(self.file(name))
        return stopped

    def _switch_port(self, member: str) -> str:
        switch = self.plan.switch("external")
        port = next(p for p in switch.member_ports() if p.node == member)
        return f"{switch.name}-eth{port.port}"

    def _wait_listening(self, files: list[Path], deadline: float = 5.0) -> None:
        """tcpdump writes its file's header once it listens: wait for every one, so that the
        first packets after `start` are in the files; a tcpdump that exits says why."""
        end = time.monotonic() + deadline
        waiting = {name: p for name, p in self.running.items() if self.file(name) in files}
        while waiting and time.monotonic() < end:
            for name, process in list(waiting.items()):
                if process.poll() is not None:
                    self.running.pop(name, None)
                    why = process.stderr.read().decode(errors="replace").strip().splitlines()
                    raise CaptureError(f"tcpdump for {name} exited: "
                                       f"{why[-1] if why else process.returncode}")
                path = self.file(name)
                if path.exists() and path.stat().st_size >= 24:  # the pcap file header
                    del waiting[name]
            time.sleep(0.02)
        if waiting:
            raise CaptureError(f"tcpdump did not start within {deadline:.0f} s for "
                               f"{', '.join(waiting)}")


def capture_file(run_path: Path, target: str) -> Path:
    """Where a run's capture at `target` (a member, or `sync`) is."""
    name = f"{SYNC}.pcap" if target == SYNC else f"external-{target}.pcap"
    return Path(run_path) / "captures" / name


def wireshark_commands(run_path: Path, targets: list[str], program: str = "tshark") -> list[str]:
    """The shell commands that show a kept run's captures at `targets` decrypted: `program`
    (tshark or wireshark) with the run's key tables as its configuration directory. A run
    without key tables, or a target never captured, is a CaptureError (one line)."""
    keys = Path(run_path) / KEYS_DIR
    if not (keys / "esp_sa").exists():
        raise CaptureError(f"{run_path} has no key tables: only `ikelab run --capture` "
                           "writes them")
    commands = []
    for target in targets:
        pcap = capture_file(run_path, target)
        if not pcap.exists():
            raise CaptureError(f"{run_path} has no capture at {target} ({pcap.name} missing)")
        commands.append(f"WIRESHARK_CONFIG_DIR={shlex.quote(str(keys))} {program} -r "
                        f"{shlex.quote(str(pcap))}")
    return commands
