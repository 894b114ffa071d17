"""IKE as the model charons speak it: what a message is (`Body`, after a real IKE header),
how one is put into an IPv4/UDP packet (`ike_packet`), an IKE SA as one side holds it (`Sa`),
and charon's retransmission schedule (`Retransmit`)."""

import struct
from dataclasses import dataclass, field

from lab.agent.names import IKE_PORT, NATT_PORT
from lab.agent.protocol import ike

HALF_OPEN_TIMEOUT = 30.0  # charon's half_open_timeout
COOKIE_THRESHOLD = 10  # charon's cookie_threshold: half-open SAs before COOKIEs are asked for
BLOCK_THRESHOLD = 5  # charon's block_threshold: half-open SAs per peer address at most
COOKIE_RETRIES = 3  # an initiator follows at most this many COOKIE demands in a row
IKEV1_DPD_TIMEOUT = 10.0

# What a message is (the model of its payloads), one byte after the IKE header.
(INIT, COOKIE, AUTH, REKEY_IKE, REKEY_CHILD, DPD, DELETE, MAIN_MODE, QUICK_MODE, R_U_THERE,
 R_U_THERE_ACK, V1_DELETE, FLOOD) = range(1, 14)
KIND_NAMES = {INIT: "IKE_SA_INIT", COOKIE: "N(COOKIE)", AUTH: "IKE_AUTH", REKEY_IKE: "rekey IKE",
              REKEY_CHILD: "rekey CHILD", DPD: "DPD", DELETE: "DELETE", MAIN_MODE: "Main Mode",
              QUICK_MODE: "Quick Mode", R_U_THERE: "R-U-THERE",
              R_U_THERE_ACK: "R-U-THERE-ACK", V1_DELETE: "Delete", FLOOD: "flood"}
INITIAL_CONTACT = 0x01  # Body.flags
BODY = struct.Struct("!BBB8s8sI")  # kind, flags, step, spi, cookie, nonce
# The exchange type and the first payload's type (RFC 7296 3.2, RFC 2408 3.1) of each kind.
EXCHANGE = {INIT: (34, 33), COOKIE: (34, 41), AUTH: (35, 46), REKEY_IKE: (36, 46),
            REKEY_CHILD: (36, 46), DPD: (37, 46), DELETE: (37, 46), MAIN_MODE: (2, 1),
            QUICK_MODE: (32, 8), R_U_THERE: (5, 8), R_U_THERE_ACK: (5, 8), V1_DELETE: (5, 8),
            FLOOD: (34, 33)}
ZERO = ike.ZERO_SPI

CONNECTING, ESTABLISHED, REKEYED, DELETING = "CONNECTING", "ESTABLISHED", "REKEYED", "DELETING"


@dataclass(frozen=True)
class Retransmit:
    """charon's schedule, as the lab renders it (lab.strongswan.render.Retransmit): 1, 1.4, 1.96 and
    2.74 s, then it gives up."""

    timeout: float = 1.0
    base: float = 1.4
    tries: int = 3

    def wait(self, attempt: int) -> float:
        return self.timeout * self.base ** attempt


@dataclass(frozen=True)
class Body:
    kind: int
    flags: int = 0
    step: int = 0  # IKEv1: which message of its exchange (1-6 in Main Mode, 1-3 in Quick Mode)
    spi: bytes = ZERO  # a rekey's new SPI; the SA a Delete names
    cookie: bytes = ZERO
    nonce: int = 0

    def encode(self) -> bytes:
        return BODY.pack(self.kind, self.flags, self.step, self.spi, self.cookie, self.nonce)

    @classmethod
    def decode(cls, data: bytes) -> "Body | None":
        if len(data) != BODY.size or data[0] not in KIND_NAMES:
            return None
        return cls(*BODY.unpack(data))


def ike_packet(src: str, sport: int, dst: str, dport: int, ispi: bytes, rspi: bytes,
               major: int, flags: int, msgid: int, body: Body) -> bytes:
    """A UDP packet (IPv4 or IPv6, as the addresses are) carrying an IKE message (with the
    non-ESP marker on 4500)."""
    exchange, first_payload = EXCHANGE[body.kind]
    payload = body.encode()
    header = ike.IkeHeader(ispi, rspi, major, exchange, flags, msgid,
                           ike.HEADER_LEN + len(payload))
    data = header.encode(next_payload=first_payload) + payload
    if NATT_PORT in (sport, dport):
        data = ike.NON_ESP_MARKER + data
    return ike.Datagram(src, sport, dst, dport, data).encode()


@dataclass
class Request:
    """Our request in flight, sent again on the retransmission schedule until answered."""

    msgid: int
    body: Body
    packet: bytes
    attempt: int = 0
    generation: int = 0  # a retransmission timer of an older request finds another value


@dataclass
class Sa:
    """One IKE SA as this daemon holds it, with its one CHILD SA."""

    version: int
    ispi: bytes
    rspi: bytes
    initiator: bool  # we started it: our SPI is the initiator's
    remote: str  # the other side's address
    connection: str
    created: float
    state: str = CONNECTING
    up_at: float | None = None  # when it was established (a rekey's new SA: at creation)
    port: int = IKE_PORT  # ours and theirs: 500, then 4500
    step: int = 0  # how far the set-up has come (messages handled)
    out_msgid: int = 0  # IKEv2: our next request's Message ID
    in_msgid: int = 0  # IKEv2: the peer's next request's Message ID
    pending: Request | None = None
    waiting: list = field(default_factory=list)  # requests to send once the window is free
    cache: dict = field(default_factory=dict)  # the peer's Message ID (v1: step) -> our answer
    initial_contact: bool = False
    child: bool = False  # its CHILD SA is installed
    last_heard: float = 0.0
    cookies: int = 0  # COOKIE demands followed so far
    cookie: bytes = ZERO
    rekeys: dict = field(default_factory=dict)  # our REKEY_IKE nonce -> our new SPI
    answered_rekey: tuple | None = None  # (their nonce, our nonce, new SA) we answered
    progressed: bool = False  # it got past its first exchange (IKE_AUTH, Main Mode 3)
    quick: dict = field(default_factory=dict)  # IKEv1 Quick Mode Message ID -> step reached
    dpd_sent: float | None = None  # IKEv1: when our first unanswered R-U-THERE went
    replaces: bytes | None = None  # IKEv1 reauthentication: our SPI of the SA it replaces

    @property
    def local_spi(self) -> bytes:
        return self.ispi if self.initiator else self.rspi

    @property
    def ike_flags(self) -> int:
        """IKEv2 header flags of a request we send (I: we are the original initiator)."""
        return ike.FLAG_INITIATOR if self.initiator else 0
