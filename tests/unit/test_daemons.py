"""Daemons as objects: start waits for ready or says the daemon's last words, stop is SIGTERM
then SIGKILL, kill is a crash; the agent joins on every start after its first. Real processes,
no root: the node here runs them in this namespace."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.agent.names import NodeFiles
from lab.net.daemons import Charon, Daemon, DaemonConfigError, ForwardingAgent


class HereNode:
    """A node that runs its processes right here."""

    def popen(self, cmd, **params):
        return subprocess.Popen(cmd, **params)


class Script(Daemon):
    """A Python one-liner as a daemon: ready once it has created its marker file."""

    NAME = "script"
    SOCKET = "marker"
    READY_DEADLINE = 3.0

    def __init__(self, files: NodeFiles, code: str):
        super().__init__(HereNode(), files)
        self.code = code

    def command(self):
        return [sys.executable, "-c", self.code]

    @property
    def output(self) -> Path:
        return self.files.rundir / "script.out"

    @property
    def marker(self) -> Path:
        return self.files.rundir / "ready"

    def prepare(self):
        self.marker.unlink(missing_ok=True)

    def ready(self):
        return self.marker.exists()


def script(tmp_path, body: str) -> Script:
    files = NodeFiles("n1", tmp_path)
    marker = tmp_path / "ready"
    code = f"import pathlib, signal, time\n{body}".replace("MARKER", repr(str(marker)))
    return Script(files, code)


SERVES = "print('hello', flush=True)\npathlib.Path(MARKER).touch()\ntime.sleep(60)"


def test_start_returns_once_ready_and_stop_ends_it_with_sigterm(tmp_path):
    daemon = script(tmp_path, SERVES)
    daemon.start()
    assert daemon.running() and daemon.launches == 1
    daemon.stop()
    assert not daemon.running() and daemon.process.returncode == -signal.SIGTERM


def test_a_daemon_that_exits_first_raises_with_its_status_and_last_words(tmp_path):
    daemon = script(tmp_path, "print('one'); print(); print('two'); print('bad config')\n"
                              "raise SystemExit(3)")
    with pytest.raises(DaemonConfigError) as err:
        daemon.start()
    assert str(err.value) == "n1: script exited with status 3: one | two | bad config"


def test_a_daemon_never_ready_raises_naming_what_did_not_answer(tmp_path):
    daemon = script(tmp_path, "time.sleep(60)")
    daemon.READY_DEADLINE = 0.3
    with pytest.raises(DaemonConfigError) as err:
        daemon.start()
    assert str(err.value) == "n1: script's marker did not answer within 0.3 s: no output"
    daemon.kill()


def test_stop_kills_what_ignores_sigterm_after_the_grace_period(tmp_path):
    daemon = script(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SERVES)
    daemon.start()
    daemon.stop(grace=0.2)
    assert daemon.process.returncode == -signal.SIGKILL


def test_kill_is_a_crash_and_start_runs_it_again(tmp_path):
    daemon = script(tmp_path, SERVES)
    daemon.start()
    first = daemon.process
    daemon.kill()
    assert first.returncode == -signal.SIGKILL
    daemon.start()
    assert daemon.running() and daemon.process is not first and daemon.launches == 2
    daemon.stop()
    assert daemon.last_words() == "hello | hello"  # the output file is appended to


def test_the_agent_joins_on_every_start_after_its_first(tmp_path):
    agent = ForwardingAgent(HereNode(), NodeFiles("m2", tmp_path))
    config = str(tmp_path / "agent_m2.json")
    assert agent.command()[1:] == ["-m", "lab.agent", "--config", config]
    agent.launches = 1
    assert agent.command()[-1] == "--join"
    assert not agent.ready()  # nothing answers on its control socket


def test_charon_is_not_ready_until_a_new_vici_socket_answers(tmp_path):
    charon = Charon(HereNode(), NodeFiles("p1", tmp_path))
    stale = tmp_path / "vici_p1.sock"
    stale.touch()
    charon.prepare()
    assert not stale.exists() and not charon.ready()
    assert charon.environment()["STRONGSWAN_CONF"] == str(tmp_path / "strongswan_p1.conf")
    assert charon.logs() == [tmp_path / "charon_p1.out", tmp_path / "charon_p1.log"]
