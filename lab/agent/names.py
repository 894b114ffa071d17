"""Names both sides of the agent's narrow door agree on: where a node's files live, the sync
port, members' names and membership states, the ownership modes, the SPI ranges and labels
that say which member allocated an SPI, and the lab's connection names.

The lab renders configs and starts daemons with these; the agent finds the same names in its
config. Standard library only: the agent imports nothing from the rest of `lab`, and the lab
imports from the agent only this, `config`, `control`, `steering`, `trace`, `vicilink` and `ike`.
"""

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

SYNC_PORT = 4600  # UDP, on the sync network: every message between agents
IKE_PORT = 500  # IKE (RFC 7296 2.)
NATT_PORT = 4500  # IKE behind the non-ESP marker, and ESP in UDP (RFC 3948)
# How long a member waits for a key's director to name its owner before it asks again (the
# claimant) or forgets the question (the director).
LOOKUP_TIMEOUT = 2.0


class MemberState(StrEnum):
    """What a member's agent says it is (`lab.agent.protocol.membership` has the rules): the switch
    follows it, the CLI shows it, the tests wait for it."""

    JOINING = "joining"
    SERVING = "serving"
    ISOLATED = "isolated"
    DRAINING = "draining"
    DRAINED = "drained"


# The members that take traffic and direct keys (the hashing switch gives them buckets).
SERVING_STATES = (MemberState.SERVING, MemberState.DRAINING)


class Ownership(StrEnum):
    """`--ownership`: how the cluster decides which member owns a negotiation."""

    TABLE = "table"
    TABLE_LABEL = "table+label"
    STATELESS = "stateless"


# Members stamp their index into the IKE SPIs they make (`charon.spi_label`).
LABELLED_OWNERSHIP = (Ownership.TABLE_LABEL, Ownership.STATELESS)
CLUSTER_CONNECTION = "cluster"  # a peer's one connection to the cluster
CHILD_NAME = "lan"  # the CHILD SA of every connection
CHILD6_NAME = "lan6"  # an IKEv1 connection's second, for IPv6 when it carries both versions
CROWD_CONNECTION = "crowd"  # a member's one connection answering every crowd site
# A member has one connection per peer, named after it, and (protocol.handover) another that
# initiates without INITIAL_CONTACT, for a make-before-break handover; for a peer behind a
# NAT, a variant of each that starts on UDP 4500, the NAT's mapping.
HANDOVER_SUFFIX, NATT_SUFFIX = "-mbb", "-natt"

# ESP (steering): member i allocates its inbound SPIs from 0x(c0+i)000000-0x(c0+i)ffffff, so
# the SPI's top byte names the member that holds the SA's keys.
ESP_LABEL_BASE = 0xC0
# IKE (--ownership table+label): member i stamps i into the top byte of every IKE SPI it makes.
IKE_SPI_LABEL_MASK = 0xFF << 56


def handover_connection(peer: str) -> str:
    return peer + HANDOVER_SUFFIX


def natt_connection(connection: str) -> str:
    return connection + NATT_SUFFIX


def member_name(index: int) -> str:
    return f"m{index}"


def member_index(name: str) -> int:
    return int(name.removeprefix("m"))


def esp_label(index: int) -> int:
    return ESP_LABEL_BASE + index


def esp_spi_range(index: int) -> tuple[int, int]:
    """The inbound ESP SPIs member `index` allocates: top byte 0xc0 + index."""
    low = esp_label(index) << 24
    return low, low | 0xFFFFFF


def ike_spi_label(index: int) -> int:
    """The IKE SPI bits member `index` stamps (charon.spi_label under IKE_SPI_LABEL_MASK)."""
    return index << 56


@dataclass(frozen=True)
class NodeFiles:
    """Where one node's rendered files, sockets and logs live in a run directory: named
    `<daemon>_<node>`, so a user can open exactly what each node runs."""

    node: str
    rundir: Path

    @property
    def strongswan_conf(self) -> Path:
        return self.rundir / f"strongswan_{self.node}.conf"

    @property
    def swanctl_dir(self) -> Path:
        """The node's swanctl directory, laid out like /etc/swanctl (x509/, x509ca/, ecdsa/)."""
        return self.rundir / f"swanctl_{self.node}"

    @property
    def swanctl_conf(self) -> Path:
        return self.swanctl_dir / "swanctl.conf"

    @property
    def log(self) -> Path:
        return self.rundir / f"charon_{self.node}.log"

    @property
    def vici_socket(self) -> Path:
        return self.rundir / f"vici_{self.node}.sock"

    @property
    def agent_config(self) -> Path:
        return self.rundir / f"agent_{self.node}.json"

    @property
    def agent_socket(self) -> Path:
        return self.rundir / f"agent_{self.node}.sock"

    @property
    def agent_log(self) -> Path:
        return self.rundir / f"agent_{self.node}.log"

    @property
    def trace(self) -> Path:
        """The agent's decisions, one JSON object per line (`lab.agent.io.trace`)."""
        return self.rundir / f"trace_{self.node}.jsonl"

    @property
    def witness_config(self) -> Path:
        return self.rundir / f"witness_{self.node}.json"

    @property
    def witness_socket(self) -> Path:
        return self.rundir / f"witness_{self.node}.sock"

    @property
    def witness_log(self) -> Path:
        return self.rundir / f"witness_{self.node}.log"

    @classmethod
    def agents(cls, rundir: Path) -> list["NodeFiles"]:
        """The members of a run that have an agent (its config was rendered)."""
        return [cls(p.stem.removeprefix("agent_"), Path(rundir))
                for p in sorted(Path(rundir).glob("agent_*.json"))]
