"""Agents wired together in memory, as h11's tests wire a client and a server: every agent is
a real `core.Agent`; what one sends, the wire carries to another when the test lets it (lost,
held back or reordered at will); time is the test's. Packets come from real captures."""

from collections import deque
from pathlib import Path

from scapy.all import IP, rdpcap

from lab.agent.protocol import sync
from lab.agent.config import AgentConfig
from lab.agent.protocol.core import Agent
from lab.agent.protocol.events import (Accept, Drop, EndStaleSas, PacketQueued, Send,
    StaleSasEnded, SyncArrived, Tick)
from lab.agent.protocol.witness import Witness
from lab.agent.names import member_name

DATA = Path(__file__).resolve().parent.parent / "data"
VIP = "203.0.113.1"
WITNESS = "10.255.0.254"
START = 1000.0
STEP = 0.05


def capture(name: str) -> list[bytes]:
    """The IP packets of a capture in tests/data, in order."""
    return [bytes(p[IP]) for p in rdpcap(str(DATA / name))]


def config(index: int, members: int = 3, **options) -> AgentConfig:
    return AgentConfig(member=member_name(index), index=index, key="00" * 32,
                       members={member_name(i): f"10.255.0.{i}" for i in range(1, members + 1)},
                       witness=WITNESS, **options)


class Cluster:
    """`n` agents on one in-memory sync network; `agents[i]` is member i's core."""

    def __init__(self, n: int = 3, **options):
        self.now = START
        self.options = options
        self.n = n
        self.agents = {i: Agent(config(i, n, **options), self.now, first_seq=i << 40)
                       for i in range(1, n + 1)}
        self.wire: deque = deque()  # (sender, receiver, data)
        self.done: dict[int, list] = {i: [] for i in self.agents}  # every non-Send action
        self.dead: set[int] = set()  # killed: they neither run nor hear
        self.cut: set[int] = set()  # partitioned: no sync traffic and no witness either way
        self.lose = lambda sender, receiver, message: False
        # The witness: the real decision, speaking sync messages as sync index 0.
        self.witness = Witness(list(range(1, n + 1)), options.get("dead_after", 0.6), self.now)
        self.witness_codec = sync.Codec(b"\0" * 32, sync.WITNESS, 1 << 60)
        self.answer_stale_sas = True  # stand in for the shell's charon thread

    # ---- driving ------------------------------------------------------------------------
    def handle(self, index: int, event) -> list:
        """Give member `index` one event now; Sends go on the wire, the rest is kept."""
        actions = self.agents[index].handle(event, self.now)
        for action in actions:
            if isinstance(action, Send):
                self.wire.append((index, action.to, action.data))
            else:
                self.done[index].append(action)
        for action in actions:
            if isinstance(action, EndStaleSas) and self.answer_stale_sas:
                self.handle(index, StaleSasEnded(action.attempt, 0, 0, action.keep))
        return actions

    def deliver(self) -> int:
        """Carry everything on the wire (and what it causes) until the wire is empty; how many
        messages arrived."""
        arrived = 0
        while self.wire:
            sender, receiver, data = self.wire.popleft()
            message = sync_message(data)
            if (receiver in self.dead or {sender, receiver} & self.cut
                    or (message is not None and self.lose(sender, receiver, message))):
                continue
            arrived += 1
            if receiver == sync.WITNESS:
                self.witness_answers(data)
            else:
                self.handle(receiver, SyncArrived(data))
        return arrived

    def witness_answers(self, data: bytes) -> None:
        msg = self.witness_codec.decode(data, self.now, self.witness.dead_after / 2)
        backed, group = self.witness.report(msg.sender, frozenset(
            sync.decode_heartbeat(msg.payload).live), self.now)
        self.wire.append((sync.WITNESS, msg.sender, self.witness_codec.encode(sync.Message(
            sync.WITNESS_ANSWER, sync.WITNESS, tag=msg.tag, owner=int(backed),
            payload=sync.encode_members(group).to_bytes(4, "big")), self.now)))

    def run(self, seconds: float) -> None:
        """Let time pass in ticks: every live member ticks, and the wire is emptied after each."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += STEP
            for index in self.agents:
                if index not in self.dead:
                    self.handle(index, Tick())
            self.deliver()

    def restart(self, index: int) -> None:
        """Member `index` comes back as a new process: an agent that joins."""
        self.agents[index] = Agent(config(index, self.n, **self.options), self.now,
                                   first_seq=(index << 40) + int(self.now * 1e6), join=True)
        self.dead.discard(index)
        self.done[index] = []

    def start(self) -> "Cluster":
        """Run until every member hears every other (heartbeats go out every dead_after/8)."""
        self.run(1.0)
        return self

    def packet(self, index: int, data: bytes, ref=None) -> list:
        """Member `index` gets `data` from NFQUEUE (inbound when addressed to the VIP); the
        packet's own bytes are its ref unless one is given."""
        ref = data if ref is None else ref
        return self.handle(index, PacketQueued(ref, data, data[16:20] == bytes([203, 0, 113, 1]),
                                               int(self.now * 1e9)))

    # ---- reading ------------------------------------------------------------------------
    def verdict(self, index: int, ref) -> str | None:
        """"accept", "drop" or None for a packet member `index` was given."""
        for action in self.done[index]:
            if isinstance(action, (Accept, Drop)) and action.ref is ref:
                return "accept" if isinstance(action, Accept) else "drop"
        return None

    def owners(self, key: str) -> dict[int, str]:
        """member -> the owner its table names for `key` ("ispi/msgid/requester")."""
        return {i: a.table.owners()[key] for i, a in self.agents.items()
                if key in a.table.owners()}

    def of_kind(self, index: int, kind) -> list:
        return [a for a in self.done[index] if isinstance(a, kind)]

    def say_as(self, sender: int, to: int, message: sync.Message) -> None:
        """Put a message on the wire as member `sender` would have sent it (its own codec, so
        its sequence numbers stay in order)."""
        self.wire.append((sender, to, self.agents[sender].codec.encode(message)))


def sync_message(data: bytes) -> sync.Message | None:
    """What a datagram on the wire says, read without any receiver's replay window (None for
    one the cluster key did not sign: a test's forgery)."""
    try:
        return sync.Codec(b"\0" * 32, 0, 0).decode(data)
    except sync.SyncError:
        return None


def tick_cost(entries: int) -> float:
    """Microseconds per tick (median) of a real Agent core whose table holds `entries`
    established IKE SAs, on simulated time (a Cluster of three cores): bench_scale's."""
    import os
    import time

    from lab.agent.protocol.events import Tick
    from lab.agent.protocol.ownership import ESTABLISHED, ike_sa_key
    cluster = Cluster(n=3).start()
    agent = cluster.agents[1]
    for i in range(entries):
        agent.table.record(ike_sa_key(os.urandom(8)), f"m{1 + i % 3}", ESTABLISHED,
                           cluster.now, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i)
    times = []
    for _ in range(200):
        cluster.now += 0.05
        agent.next_tick = 0.0
        start = time.perf_counter()
        agent.handle(Tick(), cluster.now)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e6
