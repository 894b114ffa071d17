"""The simulated cluster: real agents (`lab.agent.protocol.core.Agent`, unchanged) on simulated
members, model charons (`charon`) on the members and the peers, the sync network and the
hashing switch (`network`), all on one clock, all choices drawn from one seed.

Time is a number. Everything that happens is an event on one queue, taken in time order (ties
in the order they were made), so a seed replays exactly. A member's agent gets what its shell
would give it (`PacketQueued`, `SyncArrived`, `CharonSaid`, `HoldingsRead`, `Tick`, ...) and
what it returns is carried out as the shell would: a verdict lets a queued packet through to
charon or to the peer, a `Send` crosses the sync network, an `Inject` puts a forwarded packet
into the member's own charon (never back through the agent: the lab writes it in through a raw
socket, past the queue), `Initiate` and `EndSa` become charon's work a moment later.

A member can crash (charon and agent gone, its switch port down) and come back empty (its agent
joins), stall (its agent handles nothing for a while, then everything that queued, with a late
clock), lose its links, be drained and undrained. `World.step()` takes one event; the checker
(`checker`) looks at the world after every one.
"""

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

from lab.agent.protocol import ike, sync
from lab.agent.config import AgentConfig
from lab.agent.protocol.core import TICK, Agent
from lab.agent.protocol.events import (Accept, CharonSaid, DrainAsked, Drop, EndSa, EndStaleSas,
    HoldEsp, HoldingsRead, Initiate, Inject, Log, PacketQueued, Send, StaleSasEnded, SteerRoutes,
    SyncArrived, Tick, Trace)
from lab.agent.names import (HANDOVER_SUFFIX, NATT_SUFFIX, SERVING_STATES, MemberState,
                            Ownership, member_name)
from lab.agent.protocol.witness import Witness

from .charon import IkeDaemon
from .network import HashingSwitch, SyncNetwork
from .sa import ESTABLISHED, NATT_PORT, Retransmit
from .traffic import (DUTIES, MEMBER_DPD_DELAY, PEER_DPD_DELAY, VIP, VIP6, Traffic,
                      peer_addresses)

WITNESS = "10.255.0.254"
CLUSTER_KEY = "5a" * 32
PROCESSING = 0.0005  # charon handles a message, vici hands an event over
EXTERNAL_DELAY = 0.0003
SWITCH_POLL = 0.1  # the switches ask every agent for its state (lab.net.switch)
HOLDINGS_SETTLE = 0.05  # the shell reads charon's CHILD SAs after a burst of events
BACKLOG = 4096  # what queues for a stalled agent (NFQUEUE and the socket buffer) at most
MAX_PEERS = 16


@dataclass(frozen=True)
class SimSpec:
    """The cluster one seed runs: its size, its options, how hard the world treats it."""

    members: int = 3
    peers: int = 4
    ownership: str = Ownership.TABLE
    mode: str = "ls"
    hash: str = "l4"
    versions: tuple = (2, 2, 2, 2)  # each peer's IKE version
    dead_after: float = 0.6
    rebalance: bool = True
    half_open_cap: int = 2048
    half_open_per_peer: int = 64
    flood: float = 0.0  # packets per second during a flood burst (0: no floods)
    external_loss: float = 0.0
    spray: float = 0.0  # share of peer packets a second copy of which reaches another member
    background_flood: float = 0.0  # first messages per second, all the time
    fault_rate: float = 0.3  # faults per simulated second
    rekey_rate: float = 0.05  # rekeys per SA per second, either side
    cookie_threshold: int = 10
    ip6: bool = False  # the peers, the virtual IP and the floods' sources are IPv6

    @classmethod
    def draw(cls, rng: random.Random, **overrides) -> "SimSpec":
        """A cluster chosen by `rng`: every option of the lab, sizes the simulator can run
        fast, faults often."""
        # Every value is drawn whatever the overrides say, so that overriding one (shrinking)
        # leaves the others as they were.
        values = dict(
            members=rng.choice((2, 3, 3, 4, 5)), peers=rng.randint(1, 6),
            ownership=rng.choice(tuple(Ownership)),
            mode="ha" if rng.random() < 0.15 else "ls", hash=rng.choice(("l3", "l4", "split")),
            dead_after=rng.choice((0.6, 0.6, 1.0, 2.0)), rebalance=rng.random() < 0.8,
            half_open_cap=rng.choice((2048, 64, 16)), half_open_per_peer=rng.choice((64, 4)),
            flood=rng.choice((0.0, 0.0, 50.0, 300.0)),
            external_loss=rng.choice((0.0, 0.0, 0.02, 0.1)),
            fault_rate=rng.choice((0.1, 0.3, 0.6)), rekey_rate=rng.choice((0.02, 0.05, 0.2)),
            cookie_threshold=rng.choice((10, 10, 2)), spray=rng.choice((0.0, 0.02, 0.2)),
            background_flood=rng.choice((0.0, 0.0, 10.0, 40.0)))
        versions = tuple(rng.choice((2, 2, 1)) for _ in range(MAX_PEERS))
        ip6 = rng.random() < 0.3  # drawn last: the seeds drawn before it keep their worlds
        values.update(overrides)
        values.setdefault("versions", versions[:values["peers"]])
        values.setdefault("ip6", ip6)
        return cls(**values)


@dataclass
class SimMember:
    index: int
    name: str
    config: AgentConfig
    agent: Agent | None = None
    charon: IkeDaemon | None = None
    up: bool = True
    links_up: bool = True
    generation: int = 0  # a new one each time it crashes: late work of the old one is void
    stalled_until: float | None = None
    backlog: list = field(default_factory=list)
    clock_offset: float = 0.0
    held: dict = field(default_factory=dict)  # NFQUEUE: ref -> (packet, inbound)
    esp_hold: frozenset = frozenset()
    holdings_due: bool = False
    published: str = MemberState.SERVING  # the state the switches last read from its agent
    last_clock: float = 0.0
    crashed_at: float | None = None
    resumed_at: float = 0.0  # when its last stall ended

    def clock(self, now: float) -> float:
        return now + self.clock_offset


@dataclass
class SimPeer:
    name: str
    address: str
    lan: str
    version: int
    daemon: IkeDaemon | None = None
    restart_due: bool = False


class ChannelHost:
    """The world as one IKE daemon sees it."""

    def __init__(self, world: "World", owner):
        self.world, self.owner = world, owner

    def now(self) -> float:
        return self.world.now

    def after(self, delay: float, action, *args) -> None:
        self.world.after(delay, self._guarded, self.generation(), action, args)

    def generation(self) -> int:
        return self.owner.generation if isinstance(self.owner, SimMember) else 0

    def _guarded(self, generation: int, action, args) -> None:
        if generation == self.generation():
            action(*args)

    def transmit(self, packet: bytes) -> None:
        if isinstance(self.owner, SimMember):
            self.world.member_sends(self.owner, packet)
        else:
            self.world.peer_sends(packet)

    def random_spi(self) -> bytes:
        return self.world.rng.getrandbits(64).to_bytes(8, "big")

    def random_nonce(self) -> int:
        return self.world.rng.getrandbits(32)

    def sa_changed(self, daemon: IkeDaemon, sa, event: str, **detail) -> None:
        self.world.sa_changed(self.owner, daemon, sa, event, detail)


class World(Traffic):
    """One seed's cluster. Drive it with `step()`; `checker` sees every step."""

    def __init__(self, seed: int, spec: SimSpec, core=Agent):
        self.seed = seed
        self.spec = spec
        self.core = core
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue: list = []
        self.serial = 0
        self.events = 0
        self.recent: deque = deque(maxlen=60)  # the last events, for a failure's story
        self.notes: deque = deque(maxlen=30)  # the agents' log lines
        self.net = SyncNetwork()
        self.external_loss = spec.external_loss
        names = [member_name(i) for i in range(1, spec.members + 1)]
        self.switch = HashingSwitch(names, spec.hash, spec.mode == "ha")
        self.vip = VIP6 if spec.ip6 else VIP
        self.peers = [SimPeer(f"p{i}", *peer_addresses(i, spec.ip6), spec.versions[i - 1])
                      for i in range(1, spec.peers + 1)]
        self.peer_at = {p.address: p for p in self.peers}
        self.lan_of = {p.address: p.lan for p in self.peers}
        self.members = {i: SimMember(i, member_name(i), self._config(i),
                                     clock_offset=self.rng.uniform(0, 1000))
                        for i in range(1, spec.members + 1)}
        self.checker = None  # set by the checker itself
        self.sa_listeners: list = []
        self.witness = Witness(list(self.members), spec.dead_after)
        self.witness_codec = sync.Codec(bytes.fromhex(CLUSTER_KEY), sync.WITNESS, 1 << 62)
        self.flooding_until = 0.0
        self.quiet = False  # the tail: no rekeys, no floods (the checker wants a still table)
        self.captured: deque = deque(maxlen=512)  # the last sync datagrams, for a replayer

    # ---- set-up -------------------------------------------------------------------------------
    def _config(self, index: int) -> AgentConfig:
        s = self.spec
        return AgentConfig(
            member=member_name(index), index=index, key=CLUSTER_KEY,
            members={member_name(i): f"10.255.0.{i}" for i in range(1, s.members + 1)},
            mode=s.mode, ownership=s.ownership, half_open_cap=s.half_open_cap,
            half_open_per_peer=s.half_open_per_peer, dead_after=s.dead_after,
            witness=WITNESS, rebalance=s.rebalance,
            peers={p.name: [p.address, p.lan] for p in self.peers})

    def start(self) -> None:
        """Every member starts serving together (as the lab brings a cluster up); each peer
        initiates its tunnel within the first seconds."""
        for member in self.members.values():
            self._boot(member, join=False)
        for peer in self.peers:
            peer.daemon = IkeDaemon(peer.name, peer.address, ChannelHost(self, peer),
                                    Retransmit(), PEER_DPD_DELAY)
            self.after(self.rng.uniform(0.05, 2.0), self.peer_connects, peer)
        self.after(SWITCH_POLL, self.poll_switch)
        self.after(DUTIES, self.duties)

    def _boot(self, member: SimMember, join: bool) -> None:
        label = member.index if self.spec.ownership != Ownership.TABLE else None
        member.charon = IkeDaemon(member.name, self.vip, ChannelHost(self, member), Retransmit(),
                                  MEMBER_DPD_DELAY, label=label,
                                  cookie_threshold=self.spec.cookie_threshold)
        # Sequence numbers from the boot time in ns, as the shell does: never reused.
        first_seq = (int(self.now * 1e9) + 1) << 8 | member.index
        member.agent = self.core(member.config, member.clock(self.now), first_seq, join,
                                 wall_offset=-member.clock_offset)
        member.published = member.agent.membership.state
        member.last_clock = member.clock(self.now)
        self.after(self.rng.uniform(0, TICK), self.tick, member, member.generation)

    # ---- the event queue ----------------------------------------------------------------------
    def after(self, delay: float, action, *args) -> None:
        self.serial += 1
        heapq.heappush(self.queue, (self.now + delay, self.serial, action, args))

    def step(self) -> bool:
        """Take the next event; False when there is none."""
        if not self.queue:
            return False
        when, _serial, action, args = heapq.heappop(self.queue)
        self.now = when
        self.events += 1
        self.recent.append((when, action, args))
        action(*args)
        if self.checker is not None:
            self.checker.after_step()
        return True

    # ---- agents -------------------------------------------------------------------------------
    def feed(self, member: SimMember, event) -> bool:
        """Give member's agent one event now (or queue it, while the agent stalls); False
        when it went nowhere (the member is down, or its queue is full)."""
        if not member.up:
            return False
        if member.stalled_until is not None:
            # The kernel's queues (NFQUEUE, the socket buffer) are bounded; the shell's queue
            # of charon's events is not.
            if len(member.backlog) < BACKLOG or not isinstance(event, (PacketQueued,
                                                                         SyncArrived)):
                member.backlog.append(event)
                return True
            if isinstance(event, PacketQueued):
                member.held.pop(event.ref, None)  # the queue is full: the kernel drops it
            return False
        clock = member.clock(self.now)
        member.last_clock = clock
        if self.checker is not None:
            self.checker.before_agent(member, event)
        actions = member.agent.handle(event, clock)
        if member.agent.membership.state != member.published:
            member.published = member.agent.membership.state
            self.storm()
        self.carry_out(member, actions)
        if self.checker is not None:
            self.checker.after_agent(member, event, actions)
        return True

    def carry_out(self, member: SimMember, actions: list) -> None:
        gen = member.generation
        for action in actions:
            kind = type(action)
            if kind is Accept:
                held = member.held.pop(action.ref, None)
                if held is None:
                    continue
                packet, inbound = held
                if inbound:
                    self.after(PROCESSING, self.to_charon, member, gen, packet)
                else:
                    self.after(EXTERNAL_DELAY, self.to_peer, member, packet)
            elif kind is Drop:
                member.held.pop(action.ref, None)
            elif kind is Send:
                self.sync_send(member, action.to, action.data)
            elif kind is Inject:
                self.after(PROCESSING, self.to_charon, member, gen, action.packet)
            elif kind is HoldEsp:
                member.esp_hold = action.addresses
            elif kind is EndStaleSas:
                self.after(0.01, self.end_stale_sas, member, gen, action.keep, action.attempt)
            elif kind is Initiate:
                self.after(0.002, self.initiate, member, gen, action.connection, action.peer)
            elif kind is EndSa:
                self.after(0.002, self.end_sa, member, gen, action.ispi)
            elif kind is Log:
                self.notes.append((self.now, action.text))
            elif kind in (SteerRoutes, Trace):
                continue
            else:
                raise TypeError(f"the simulator does not know the action {action!r}")

    def tick(self, member: SimMember, gen: int) -> None:
        if gen != member.generation or not member.up:
            return
        if member.stalled_until is None:
            self.feed(member, Tick())
            self.after(TICK + self.rng.random() * 0.002, self.tick, member, gen)
        # while stalled, `resume` ticks it again

    def poll_switch(self) -> None:
        self.switch.follow([m.name for m in self.members.values()
                            if m.up and m.links_up and m.published in SERVING_STATES])
        self.after(SWITCH_POLL, self.poll_switch)

    # ---- the sync network ---------------------------------------------------------------------
    def sync_send(self, member: SimMember, to: int, data: bytes) -> None:
        if not member.links_up or (to not in self.members and to != sync.WITNESS):
            return
        delays, late = self.net.deliveries(member.index, to, self.rng)
        for delay in delays:
            if to == sync.WITNESS:
                self.after(delay, self.witness_hears, data)
            else:
                self.after(delay, self.sync_arrives, self.members[to], data, late)
                late = None

    def witness_hears(self, data: bytes) -> None:
        """The witness (on the bridge: it never crashes here) answers a member's ping."""
        try:
            msg = self.witness_codec.decode(data, self.now, self.spec.dead_after / 2)
        except sync.SyncError:
            return
        backed, group = self.witness.report(msg.sender, frozenset(
            sync.decode_heartbeat(msg.payload).live), self.now)
        answer = self.witness_codec.encode(sync.Message(
            sync.WITNESS_ANSWER, sync.WITNESS, tag=msg.tag, owner=int(backed),
            payload=sync.encode_members(group).to_bytes(4, "big")), self.now)
        member = self.members[msg.sender]
        delays, late = self.net.deliveries(sync.WITNESS, msg.sender, self.rng)
        for delay in delays:
            self.after(delay, self.sync_arrives, member, answer, late)
            late = None

    def replay(self, count: int) -> None:
        """An attacker on the sync network sends `count` datagrams that members received
        earlier to them again (their MACs are genuine; only freshness tells them apart)."""
        recent = list(self.captured)[-64:]  # fresh ones: older ones are stale anyway
        for member, data in self.rng.sample(recent, min(count, len(recent))):
            if self.net.passes(sync.WITNESS, member.index):  # from the bridge, to its port
                self.after(self.rng.random() * 0.05, self.sync_arrives, member, data)

    def sync_arrives(self, member: SimMember, data: bytes, late: float | None = None) -> None:
        """A datagram reaches a member's port; `late`: a copy comes again that much later."""
        if member.links_up and self.feed(member, SyncArrived(data)):
            self.captured.append((member, data))
            if late is not None:
                self.after(late, self.sync_arrives, member, data)

    # ---- IKE on the external network ----------------------------------------------------------
    def arrival_ns(self, member: SimMember) -> int:
        self.serial += 1
        return int(member.clock(self.now) * 1e9) + self.serial % 1000

    def member_sends(self, member: SimMember, packet: bytes) -> None:
        """charon's packet leaves through the agent's outbound queue."""
        self.serial += 1
        ref = self.serial
        member.held[ref] = (packet, False)
        self.feed(member, PacketQueued(ref, packet, False, self.arrival_ns(member)))

    def to_peer(self, member: SimMember, packet: bytes) -> None:
        if not member.links_up or self.rng.random() < self.external_loss:
            return
        peer = self.peer_at.get(ike.parse_datagram(packet).dst)
        if peer is not None:  # a flood's spoofed source gets nothing
            self.after(EXTERNAL_DELAY, peer.daemon.receive, packet)

    def peer_sends(self, packet: bytes) -> None:
        if self.rng.random() < self.external_loss:
            return
        self.after(EXTERNAL_DELAY, self.switch_forwards, packet)

    def switch_forwards(self, packet: bytes) -> None:
        dgram = ike.parse_datagram(packet)
        name = self.switch.member_for(dgram.src, dgram.sport, dgram.dst, dgram.dport)
        if name is not None:
            self.member_receives(self.members[int(name[1:])], packet, dgram)
        if self.spec.spray and self.rng.random() < self.spec.spray:
            # A copy reaches another member, as if the switch had rehashed between the two:
            # the same first message claimed at two members at once.
            other = self.rng.choice(list(self.members.values()))
            self.after(self.rng.random() * 0.002, self.member_receives, other, packet, dgram)

    def member_receives(self, member: SimMember, packet: bytes, dgram: ike.Datagram) -> None:
        """The member's NFQUEUE rules: IKE is queued to the agent; ESP only from peers
        whose tunnel is coming up here (the hold)."""
        if not member.up or not member.links_up:
            return
        esp = dgram.dport == NATT_PORT and dgram.payload[:4] != ike.NON_ESP_MARKER
        if esp and dgram.src not in member.esp_hold:
            self.after(PROCESSING, self.to_charon, member, member.generation, packet)
            return
        self.serial += 1
        ref = self.serial
        member.held[ref] = (packet, True)
        self.feed(member, PacketQueued(ref, packet, True, self.arrival_ns(member)))

    def to_charon(self, member: SimMember, gen: int, packet: bytes) -> None:
        if gen == member.generation and member.up:
            member.charon.receive(packet)

    # ---- charon's side of the shell -----------------------------------------------------------
    def sa_changed(self, owner, daemon: IkeDaemon, sa, event: str, detail: dict) -> None:
        for listener in self.sa_listeners:
            listener(owner, sa, event, detail)
        if isinstance(owner, SimPeer):
            if event in ("down", "failed", "lost") and not owner.restart_due:
                owner.restart_due = True  # dpd_action = restart, keyingtries = 0
                self.after(self.rng.uniform(0.2, 1.0), self.peer_connects, owner)
            return
        member = owner
        name = self.peer_at[sa.remote].name if sa.remote in self.peer_at else "flood"
        spis = {"initiator-spi": sa.ispi.hex(), "responder-spi": sa.rspi.hex(),
                "remote-host": sa.remote, "remote-port": str(sa.port),
                "nat-remote": "no"}
        if event == "up":
            self._vici(member, CharonSaid("ike-updown", {"up": "yes", name: spis}))
        elif event == "down":
            self._vici(member, CharonSaid("ike-updown", {name: spis}))
        elif event == "rekeyed":
            old = detail["old"]
            self._vici(member, CharonSaid("ike-rekey", {name: {
                "old": {"initiator-spi": old.ispi.hex(), "responder-spi": old.rspi.hex()},
                "new": spis}}))
        if event in ("up", "down", "rekeyed", "child", "lost") and sa.remote in self.lan_of:
            self._holdings_changed(member)

    def _vici(self, member: SimMember, event) -> None:
        self.after(PROCESSING, self._vici_arrives, member, member.generation, event)

    def _vici_arrives(self, member: SimMember, gen: int, event) -> None:
        if gen == member.generation:
            self.feed(member, event)

    def _holdings_changed(self, member: SimMember) -> None:
        if not member.holdings_due and member.up:
            member.holdings_due = True
            self.after(HOLDINGS_SETTLE, self._read_holdings, member, member.generation)

    def _read_holdings(self, member: SimMember, gen: int) -> None:
        if gen != member.generation:
            return
        member.holdings_due = False
        installed = frozenset((sa.ispi, self.lan_of[sa.remote])
                              for sa in member.charon.sas.values()
                              if sa.child and sa.remote in self.lan_of)
        self.feed(member, HoldingsRead(frozenset(p for _spi, p in installed), installed))

    def initiate(self, member: SimMember, gen: int, connection: str, peer_name: str) -> None:
        if gen != member.generation:
            return
        peer = next((p for p in self.peers if p.name == peer_name), None)
        if peer is None or connection.endswith(NATT_SUFFIX):
            return
        # `<peer>-mbb` has unique = never: no INITIAL_CONTACT, the peer keeps its old SA.
        member.charon.initiate(peer.address, connection, peer.version,
                               initial_contact=not connection.endswith(HANDOVER_SUFFIX))

    def end_sa(self, member: SimMember, gen: int, ispi: bytes) -> None:
        if gen != member.generation:
            return
        for sa in list(member.charon.sas.values()):
            if sa.ispi == ispi:
                member.charon.terminate(sa)

    def end_stale_sas(self, member: SimMember, gen: int, keep: frozenset, attempt: int) -> None:
        if gen != member.generation:
            return
        stale = [sa for sa in member.charon.sas.values() if sa.ispi not in keep]
        for sa in stale:
            member.charon.terminate(sa, tell=True, force=True)  # as the shell does
        left = sum(1 for sa in member.charon.sas.values() if sa.ispi not in keep)
        held = frozenset(sa.ispi for sa in member.charon.sas.values() if sa.ispi in keep)
        # As vici's list-sas says it: whole seconds since the SA was established.
        up = {sa.ispi: float(int(self.now - sa.up_at)) for sa in member.charon.sas.values()
              if sa.ispi in keep and sa.state == ESTABLISHED and sa.up_at is not None}
        self.after(0.01, self._vici_arrives, member, gen,
                   StaleSasEnded(attempt, len(stale), left, held, up))

    # ---- faults -------------------------------------------------------------------------------
    def crash(self, member: SimMember) -> None:
        """charon and the agent are killed: what they held is gone; the switch's port
        watch takes the member's bucket away at once."""
        if not member.up:
            return
        member.up = False
        member.generation += 1
        member.charon.clear()
        member.agent = None
        member.held.clear()
        member.backlog.clear()
        member.stalled_until = None
        member.esp_hold = frozenset()
        member.holdings_due = False
        member.published = "dead"
        member.crashed_at = self.now
        self.switch.port_down(member.name, True)

    def restart(self, member: SimMember) -> None:
        """The member's daemons start afresh: an empty charon, an agent that joins."""
        if member.up:
            return
        member.up = True
        member.crashed_at = None
        self.switch.port_down(member.name, False)
        self._boot(member, join=True)

    def stall(self, member: SimMember, seconds: float) -> None:
        if member.up and member.stalled_until is None:
            member.stalled_until = self.now + seconds
            self.after(seconds, self.resume, member, member.generation)

    def resume(self, member: SimMember, gen: int) -> None:
        if gen != member.generation or member.stalled_until is None:
            return
        member.stalled_until = None
        member.resumed_at = self.now
        backlog, member.backlog = member.backlog, []
        for event in backlog:
            self.feed(member, event)
        self.tick(member, gen)

    def set_links(self, member: SimMember, up: bool) -> None:
        member.links_up = up
        self.switch.port_down(member.name, not up or not member.up)

    def drain(self, member: SimMember, drain: bool) -> None:
        self.feed(member, DrainAsked(drain))
