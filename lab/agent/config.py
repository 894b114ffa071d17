"""What the lab tells one member's agent, written as `agent_<member>.json` in the run."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .names import Ownership, member_index, member_name


@dataclass
class AgentConfig:
    member: str
    index: int
    members: dict[str, str]  # member name -> sync address
    key: str  # hex cluster key: HMAC of every sync message
    mode: str = "ls"  # ls: load sharing; ha: the lowest serving member directs every key
    ownership: str = Ownership.TABLE
    expiry: float = 30.0  # seconds a half-open (still negotiating) entry lives
    cap: int = 10000  # established entries at most
    half_open_cap: int = 2048  # half-open entries at most (the oldest makes room)
    half_open_per_peer: int = 64  # half-open entries per peer address at most (likewise)
    external_interface: str = ""
    lan_interface: str = ""
    sync_interface: str = ""
    # name -> [address as seen, protected LAN, its other LAN prefixes (dual stack: the IPv6
    # one)]: the first LAN names the tunnel's holdings, every LAN is steered
    peers: dict = field(default_factory=dict)
    vici_socket: str = ""
    control_socket: str = ""
    dead_after: float = 0.6  # seconds of silence after which a member has left
    witness: str = ""  # the sync switch's own address (see membership)
    rebalance: bool = True  # even the tunnels out over the members (see handover)
    natt_peers: list = field(default_factory=list)  # peers with `-natt` connections
    # member name -> its IPv6 sync address, in a lab with IPv6 (the steering of IPv6 ESP and
    # LAN traffic goes to an IPv6 next hop); empty in an IPv4-only lab
    members6: dict = field(default_factory=dict)
    trace: str = ""  # where to append the decision trace (JSON lines); "" for none
    # --crowd: its sites are in `peers` too; here, name -> [identity, IKE version], what the
    # agent loads into charon to initiate a site's tunnel (`crowd.site_connection`), and the
    # crowd's outer and LAN prefixes (steered and counted as one, not rule by rule).
    sites: dict = field(default_factory=dict)
    site_connection: dict = field(default_factory=dict)
    crowd_prefixes: list = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "AgentConfig":
        """The config in `path`; raises OSError, ValueError or TypeError when it is not one."""
        return cls(**json.loads(Path(path).read_text()))

    def dump(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def lans(self, peer: str) -> list[str]:
        """Every LAN prefix of `peer`, the first one first."""
        return self.peers[peer][1:]

    def name_of(self, index: int) -> str:
        return member_name(index)

    def index_of(self, name: str) -> int:
        return member_index(name)


@dataclass
class WitnessConfig:
    """What the lab tells the sync network's witness (`witnessd`), as `witness_<node>.json`."""

    address: str  # where it listens (the sync bridge's own address), on the sync port
    members: list  # the member indexes it decides for
    key: str  # hex cluster key: HMAC of every sync message
    dead_after: float = 0.6
    control_socket: str = ""

    @classmethod
    def load(cls, path: Path) -> "WitnessConfig":
        """The config in `path`; raises OSError, ValueError or TypeError when it is not one."""
        return cls(**json.loads(Path(path).read_text()))

    def dump(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"
