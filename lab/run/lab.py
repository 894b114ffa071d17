"""Bringing the lab up and down: preflight, run directory, rendering, Mininet, teardown.

`Lab` is a context manager. Whatever happens inside it (a rejected config, Ctrl-C, a failed
check), leaving it stops every node through Mininet and then cleans the run from its record,
so nothing the run created survives it unless `--keep` asked to keep its files.
"""

import os
import secrets
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from mininet.log import setLogLevel

from .. import strongswan
from ..agent.names import NodeFiles
from ..net import preflight
from ..net.cluster import ClusterNet
from ..net.mntopo import IkeClusterTopo, root_interfaces
from ..net.preflight import NotReady
from ..net.rundir import LabBusy, LabLock, RunDirectory, clean_run, runs_dir, stale_runs
from ..plan.topology import LabSpec, Plan, build_plan
from ..show import keytables
from ..show.captures import KEYS_DIR, Captures
from ..strongswan.pki import make_credentials
from ..strongswan.render import (TEMPLATE_DIR, agent_config, identities_of, render_node,
    witness_config)
from . import probes


class LabError(RuntimeError):
    """The lab cannot start or run; the message is one line for the user."""


REKEY_TIMEOUT = 30.0  # an IKEv1 reauthentication's old IKE SA goes after 10 s


class RekeyError(RuntimeError):
    """A rekey that did not happen; one line."""


def claim_machine(plan: Plan, say=print) -> LabLock:
    """Take the machine's one-lab lock, clean up after crashed runs, and check that none of the
    lab's bridges is there; raise NotReady otherwise."""
    try:
        lock = LabLock().acquire(f"starting, pid {os.getpid()}")
    except LabBusy as exc:
        raise NotReady(str(exc)) from None
    try:
        for run in stale_runs():
            say(f"cleaning up after crashed run {run.name}")
            clean_run(run, say=say)
        for bridge in plan.bridge_names():
            if subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", bridge],
                              capture_output=True).returncode == 0:
                raise NotReady(f"OVS bridge {bridge} exists but no run in {runs_dir()} "
                               f"recorded it; if it is a leftover, remove it yourself "
                               f"(ovs-vsctl del-br {bridge})")
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def _private_files():
    """Files made meanwhile are readable by root only: they hold the sync key, PSKs, keys."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def prepare(spec: LabSpec, keep: bool = False, template_dir: Path = TEMPLATE_DIR,
            say=print, keys: bool = False) -> tuple[Plan, RunDirectory]:
    """Check the machine, take it, create the run directory, make credentials and render every
    config; the run holds the machine's lock until it is cleaned. `keys`: the charons log
    their keys (--capture), into logs only root can read."""
    plan = build_plan(spec)
    preflight.check_machine(plan)
    lock = claim_machine(plan, say)
    description = (f"{spec.members} members, {spec.peers} peers, hash {spec.hash}, "
                   f"mode {spec.mode}, ike {spec.ike}, auth {spec.auth}"
                   + (", nat" if spec.nat else "")
                   + (f", crowd {spec.crowd}" if spec.crowd else "")
                   + (f", agent ({spec.ownership})" if spec.agent else ", no agent"))
    run = RunDirectory.create(plan.bridge_names(), root_interfaces(plan), keep, description,
                              lock, spec=asdict(spec))
    try:
        with _private_files():
            _render(plan, spec, run, template_dir, keys)
        misses = preflight.missing_plugins(_loaded_plugins(plan, run))
    except Exception as exc:
        clean_run(run, say=lambda _: None)
        raise LabError(f"rendering configs failed: {exc}") from None
    if misses:
        clean_run(run, say=lambda _: None)
        raise NotReady(preflight.describe(misses))
    return plan, run


def _render(plan: Plan, spec: LabSpec, run: RunDirectory, template_dir: Path,
            keys: bool = False) -> None:
    creds = make_credentials(plan, run.path, secrets.token_bytes(32))
    for name in plan.strongswan_nodes():
        files = NodeFiles(name, run.path)
        files.swanctl_dir.mkdir()
        for identity in identities_of(plan, name):
            creds.install(identity, files.swanctl_dir)
        for path, text in render_node(plan, name, files, creds, template_dir, keys).items():
            path.write_text(text)
        if keys:
            # charon appends to the log it finds: made here, it is root's alone (0600)
            files.log.touch(mode=0o600)
            files.log.chmod(0o600)
    if spec.agent:
        for member in plan.members:
            files = NodeFiles(member.name, run.path)
            files.agent_config.write_text(agent_config(plan, member, files, creds).dump())
        bridge = next(s.name for s in plan.switches if s.role == "sync")
        files = NodeFiles(bridge, run.path)
        files.witness_config.write_text(witness_config(plan, bridge, files, creds).dump())


def _loaded_plugins(plan: Plan, run: RunDirectory) -> list[str]:
    """Every plugin the rendered strongswan.conf files load (charon's and swanctl's)."""
    names = []
    for host in plan.strongswan_nodes():
        text = NodeFiles(host, run.path).strongswan_conf.read_text()
        names += [n for n in preflight.loaded_plugins(text) if n not in names]
    return names


class Lab:
    """A running lab: `with Lab(spec) as lab:` builds and starts it, leaving tears it down."""

    def __init__(self, spec: LabSpec, keep: bool = False, template_dir: Path = TEMPLATE_DIR,
                 say=lambda message: None, capture: bool = False):
        """`capture`: record pcaps from the start (`lab.show.captures`); it keeps the run."""
        self.spec = spec
        self.keep = keep or capture
        self.capture = capture
        self.template_dir = Path(template_dir)
        self.say = say
        self.plan = None
        self.run = None
        self.net = None

    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        """Build and start everything; on any failure tear down and raise LabError."""
        setLogLevel("error")
        self.plan, self.run = prepare(self.spec, self.keep, self.template_dir, self.say,
                                      keys=self.capture)
        self.say(f"run directory {self.run.path}")
        try:
            topo = IkeClusterTopo(plan=self.plan, rundir=self.run.path, strict=True)
            self.net = ClusterNet(topo=topo, controller=None, build=False, autoSetMacs=False)
            self.net.captures = Captures(self.net, self.plan, self.run)
            self.say(f"starting {len(self.plan.members)} members and {len(self.plan.peers)} "
                     "peers (charon per node, configs checked by loading them)")
            self.net.build()
            self.say("programming the hashing switches")
            self.net.start()
            if self.capture:
                files = self.net.captures.start()
                self.say(f"capturing into {files[0].parent} ({len(files)} files)")
        except BaseException as exc:
            self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, LabError):
                raise LabError(str(exc) or type(exc).__name__) from None
            raise

    def stop(self) -> None:
        """Stop every node and switch, then remove whatever the run's record still finds.

        Nothing interrupts this: a Ctrl-C followed by a SIGTERM (what a CI cancellation
        sends) would otherwise abort the teardown halfway and leave the lab behind."""
        main = threading.current_thread() is threading.main_thread()  # only it may
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM) if main}
        try:
            if self.net is not None or self.run is not None:
                self.say("tearing down")
            alive = self._sas_alive() if self.capture and self.net is not None else None
            if self.net is not None:
                try:
                    self.net.stop()
                except Exception as exc:  # the record-based clean below still runs
                    self.say(f"mininet stop: {exc}")
                self.net = None
            if self.run is not None:
                try:
                    if alive is not None:
                        self._write_key_tables(alive)
                finally:
                    clean_run(self.run, say=lambda _: None)
                    self.run = None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def node(self, name: str):
        return self.net[name]

    def _key_nodes(self) -> list[str]:
        """The nodes whose charon logs its keys in a --capture run: members and peers."""
        return [m.name for m in self.plan.members] + [p.name for p in self.plan.peers]

    def _sas_alive(self) -> dict[str, dict[str, tuple[int, str, str]]]:
        """node -> unique id -> (IKE version, initiator SPI, responder SPI) of the IKE SAs its
        charon holds now (read before the charons stop: a rekey's SPIs are nowhere in the log);
        a charon that does not answer holds none."""
        alive = {}
        for name in self._key_nodes():
            try:
                sas = strongswan.list_sas(self.node(name).files.vici_socket)
            except (KeyError, *strongswan.VICI_ERRORS):  # a node never built, a charon gone
                sas = {}
            alive[name] = {uid: (1 if sa.get("version") == "IKEv1" else 2,
                                 sa.get("initiator-spi", ""), sa.get("responder-spi", ""))
                           for uid, sa in sas.items()}
        return alive

    def _write_key_tables(self, alive: dict) -> None:
        """Wireshark's key tables from the charons' logs into `<run dir>/keys/`, root's alone."""
        logs = {}
        for name in self._key_nodes():
            log = NodeFiles(name, self.run.path).log
            text = log.read_text(errors="replace") if log.exists() else ""
            logs[name] = (text, alive.get(name, {}))
        directory = Path(self.run.path) / KEYS_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        for file, text in keytables.tables(logs).items():
            path = directory / file
            path.touch(mode=0o600)
            path.write_text(text)
        self.say(f"key tables for Wireshark in {directory} (`ikelab wireshark`)")

    def bring_up(self, peers=None, timeout: float = 20.0, say=lambda message: None,
                 on_up=None) -> strongswan.TunnelWatch:
        """Have these peers (names; default every peer) initiate their tunnels to the cluster
        and wait until each is up, data path complete in every kernel on its way (the first
        packet gets through), or given up, at most `timeout` seconds; the watch says which.
        `on_up(peer)` is called the moment each is up."""
        names = [p.name for p in self.plan.peers] if peers is None else list(peers)
        return strongswan.bring_up({p: self.node(p).files.vici_socket for p in names},
                                   timeout, say,
                                   complete=lambda up: probes.data_path_complete(self, up),
                                   on_up=on_up)

    def switch(self, role: str):
        return self.net[self.plan.switch(role).name]

    def rekey(self, peer: str, by: str, what: str, timeout: float = REKEY_TIMEOUT) -> float:
        """Have `by` ("peer", or "holder": the member holding its tunnel) rekey `peer`'s
        `what` ("ike" or "child") SA, once the peer and the holder each hold exactly one IKE
        SA with each other (an IKEv1 IKE SA reauthenticates: the old one lingers 10 s, and a
        rekey of both would be two reauthentications at once); wait until the peer holds one
        IKE SA again with a new SPI there. Seconds it took from the request; RekeyError when
        it did not happen within `timeout` s."""
        peer_sock = self.node(peer).files.vici_socket
        address = str(self.plan.peer(peer).seen_as)
        deadline = time.monotonic() + timeout
        while True:
            before = strongswan.tunnel_spis(peer_sock)
            holder = probes.tunnel_holder(self, peer)
            ours = [sa for sa in strongswan.list_sas(self.node(holder).files.vici_socket).values()
                    if sa.get("remote-host") == address] if holder else []
            theirs = list(strongswan.list_sas(peer_sock).values())
            if before and len(ours) == 1 and len(theirs) == 1:
                break
            if time.monotonic() > deadline:
                raise RekeyError(f"{peer}: no one tunnel to rekey within {timeout:g} s")
            time.sleep(0.02)
        sa = theirs[0] if by == "peer" else ours[0]
        sock = peer_sock if by == "peer" else self.node(holder).files.vici_socket
        children = [c for c in sa.get("child-sas", {}).values() if c.get("state") == "INSTALLED"]
        if what == "ike":
            request = {"ike-id": str(sa["uniqueid"])}
        elif children:
            request = {"child-id": str(children[0]["uniqueid"])}
        else:
            raise RekeyError(f"{peer}: {by} holds no installed CHILD SA to rekey")
        started = time.monotonic()
        with strongswan.session(sock) as session:
            session.rekey(request)
        index = 0 if what == "ike" else 1
        while time.monotonic() < deadline:
            now = strongswan.tunnel_spis(peer_sock)
            if now and now[index] != before[index]:
                return time.monotonic() - started
            time.sleep(0.01)
        raise RekeyError(f"{peer}: {by}'s {what} rekey not done within {timeout:g} s")
