"""What each role of `core.Agent` may read of the core, and do through it: one typed view per
role (a `typing.Protocol`), written down in one place.

The agent is one object made of roles (`ClaimantRole`, `DirectorRole`, ...). Each role owns
the state it alone changes (its `OWNS`) and reaches everything else through its view (its
`VIEW`, below): the core's shared facts (`Core`: config, clock, table, membership, counters)
and the actions it may take (emit, send, trace), plus the other roles' *actions* it may ask
for, by name. No view names another role's state: a role that wants another's state changed
asks that role. tests/unit/test_roles.py reads every role's code and fails on a `self.<name>`
outside its own methods, its `OWNS` and its `VIEW`, on a write to anything outside `OWNS`
(counters excepted: every role tallies what it does), and on a view naming another role's
state.
"""

from typing import Protocol

from ..config import AgentConfig
from . import sync
from .events import PacketQueued
from .membership import Membership
from .ownership import Entry, OwnershipTable


class Core(Protocol):
    """What every role may read of the core and do through it."""

    config: AgentConfig
    me: int  # this member's index
    now: float  # the event's monotonic time
    indexes: set[int]  # every configured member's index
    table: OwnershipTable  # the replica of the cluster's table, changed through its methods
    membership: Membership
    counters: dict[str, int]  # the one shared thing a role writes: its tallies

    @property
    def serving(self) -> bool: ...

    def emit(self, action) -> None: ...

    def log(self, text: str) -> None: ...

    def trace(self, decision: str, packet: bytes | None = None, inbound: bool = True,
              **detail) -> None: ...

    def send(self, to: int | None, msg: sync.Message, counter: str = "sync_sent") -> None: ...

    def broadcast(self, msg: sync.Message, counter: str = "sync_sent") -> None: ...

    def new_tag(self) -> int: ...

    def departed_owner(self, index: int) -> bool: ...

    def wall_ms(self) -> int: ...


class ClaimantView(Core, Protocol):
    def director(self, ispi: bytes) -> int | None: ...

    def release(self, packet: PacketQueued, owner: int, ispi: bytes) -> None: ...

    def answer_waiters(self, ispi: bytes, owner: int) -> None: ...  # the director's


class DirectorView(Core, Protocol):
    def live_others(self) -> set[int]: ...

    def release_waiting(self, ispi: bytes) -> None: ...  # the claimant's


class JoiningView(Core, Protocol):
    def dispatch(self, msg: sync.Message) -> None: ...  # replays kept table changes


class HandoverView(Core, Protocol):
    holdings: frozenset  # the LAN prefixes of our installed CHILD SAs

    def up_at(self, entry: Entry) -> float: ...

    def advertise(self) -> None: ...

    def steer(self) -> None: ...


class LivenessView(Core, Protocol):
    incarnation: int  # our first sequence number: new after every restart

    def sent_at(self, msg: sync.Message) -> float: ...

    def advertise(self) -> None: ...

    def steer(self) -> None: ...

    def forget_routes(self, index: int | None = None) -> bool: ...

    # what a change of membership asks of the other roles
    def claimant_isolated(self) -> None: ...

    def claimant_redirects(self, index: int) -> None: ...

    def director_isolated(self) -> None: ...

    def director_forgets(self, index: int) -> None: ...

    def abandon_snapshot(self) -> None: ...

    def restart_join(self) -> None: ...

    def fetch_table(self) -> None: ...

    def compare_owned(self, sender: int, state: str, owned: int, digest: int) -> None: ...

    def member_arrived(self) -> None: ...

    def take_over(self, orphans: list[Entry]) -> None: ...


class ResyncView(Core, Protocol):
    pass


class SaEventsView(Core, Protocol):
    def release_waiting(self, ispi: bytes) -> None: ...  # the claimant's

    def arrived(self, address: str | None, ispi: bytes) -> None: ...  # handover's

    def sa_ended(self, ispi: bytes) -> None: ...  # handover's
