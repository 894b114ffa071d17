"""The simulated wires: the sync network between members and the hashing switch in front of
them. Both decide only where and when a packet arrives; what it says is the endpoints' affair.

The sync network is one bridge (the lab's `ikes`) with a witness, the bridge's own address.
Each member's port can lose its sending or its receiving half, and any directed pair of members
can be cut while both still reach the witness: partitions of any shape, asymmetric links
included. Every datagram that gets through may be lost, duplicated (a copy of one that was
delivered sometimes comes again seconds later, as a replay would), and is delayed by `delay`
plus up to `jitter`, so datagrams overtake each other.

The hashing switch is an OpenFlow select group as `lab.plan.hashing` programs it: highest random
weight over the serving members' buckets, on the fields of `--hash` (`l3`: addresses; `l4`:
and ports; `split`: addresses, with UDP 4500 sent to the next bucket's member), one bucket in
HA mode. A rehash changes the fields, the members allowed, or the hash function itself (its
salt), at any moment.
"""

import zlib
from dataclasses import dataclass, field

from lab.agent.names import NATT_PORT


@dataclass
class LinkWeather:
    """What every datagram on the sync network suffers, until the weather changes."""

    loss: float = 0.0
    duplicate: float = 0.0
    late_copy: float = 0.0  # of the duplicates, the share that arrives seconds later
    delay: float = 0.0002
    jitter: float = 0.0001


@dataclass
class SyncNetwork:
    """Who can send to whom on the sync bridge, and how long it takes."""

    weather: LinkWeather = field(default_factory=LinkWeather)
    tx_down: set = field(default_factory=set)  # members whose port sends nothing
    rx_down: set = field(default_factory=set)  # members whose port receives nothing
    cut: set = field(default_factory=set)  # (sender, receiver) pairs that cannot talk
    slow: dict = field(default_factory=dict)  # (sender, receiver) -> extra delay (asymmetry)
    sent: int = 0
    lost: int = 0
    duplicated: int = 0

    def passes(self, sender: int, receiver: int) -> bool:
        return (sender not in self.tx_down and receiver not in self.rx_down
                and (sender, receiver) not in self.cut)

    def reaches_witness(self, member: int) -> bool:
        """The member's ping reaches the bridge's address and the answer comes back."""
        return member not in self.tx_down and member not in self.rx_down

    def deliveries(self, sender: int, receiver: int, rng) -> tuple[list[float], float | None]:
        """The delays after which copies of one datagram arrive (none: it is lost), and, for
        a late copy, how long after the first copy arrived it comes again (a replay of what
        was delivered: a datagram held back for seconds would be a delivery, not a replay,
        and no bridge holds one that long)."""
        self.sent += 1
        if not self.passes(sender, receiver) or rng.random() < self.weather.loss:
            self.lost += 1
            return [], None
        base = self.weather.delay + self.slow.get((sender, receiver), 0.0)
        delays = [base + rng.random() * self.weather.jitter]
        late = None
        if rng.random() < self.weather.duplicate:
            self.duplicated += 1
            if rng.random() < self.weather.late_copy:
                late = 1.0 + rng.random() * 15.0
            else:
                delays.append(base + rng.random() * self.weather.jitter * 4)
        return delays, late

    def heal(self) -> None:
        self.weather = LinkWeather()
        self.tx_down.clear()
        self.rx_down.clear()
        self.cut.clear()
        self.slow.clear()


class HashingSwitch:
    """The external hashing switch: which member a peer's packet reaches."""

    def __init__(self, members: list[str], hash_mode: str, ha: bool, salt: int = 0):
        self.members = members  # in port (bucket) order
        self.hash_mode = hash_mode
        self.ha = ha
        self.salt = salt
        self.serving: list[str] = []  # what the agents say, polled: nobody until one serves
        self.allowed: set[str] | None = None  # what a rehash allows (None: all)
        self.ports_down: set[str] = set()  # crashed members: their buckets go at once
        self._cache: dict = {}

    @property
    def buckets(self) -> list[str]:
        live = [m for m in self.members if m in self.serving and m not in self.ports_down
                and (self.allowed is None or m in self.allowed)]
        return live[:1] if self.ha else live

    def follow(self, serving: list[str]) -> None:
        if serving != self.serving:
            self.serving = serving
            self._cache.clear()

    def port_down(self, member: str, down: bool) -> None:
        (self.ports_down.add if down else self.ports_down.discard)(member)
        self._cache.clear()

    def rehash(self, mode: str, allowed: set[str] | None, salt: int) -> None:
        self.hash_mode, self.allowed, self.salt = mode, allowed, salt
        self._cache.clear()

    def member_for(self, src: str, sport: int, dst: str, dport: int) -> str | None:
        """The member this packet reaches, or None when no bucket is left."""
        fields = (src, dst) if self.hash_mode in ("l3", "split") else (src, dst, sport, dport)
        rotate = self.hash_mode == "split" and dport == NATT_PORT and not self.ha
        key = (fields, rotate)
        if key in self._cache:
            return self._cache[key]
        buckets = self.buckets
        chosen = None
        if buckets:
            text = f"{self.salt}|{'|'.join(map(str, fields))}|"
            weights = [zlib.crc32(f"{text}{m}".encode()) for m in buckets]
            best = weights.index(max(weights))
            chosen = buckets[(best + 1) % len(buckets)] if rotate else buckets[best]
        self._cache[key] = chosen
        return chosen
