"""A small model of charon: IKE SAs, the messages that make, keep, rekey and end them, and the
retransmissions that carry them across a lossy network. One `IkeDaemon` runs on every
simulated member (where it tells its agent what vici would) and one on every simulated peer.

What it keeps of IKE (RFC 7296 for IKEv2, RFC 2409 for IKEv1) is what decides where packets go
and when state is made or dropped, the things the agents must get right:

- IKEv2: IKE_SA_INIT (with COOKIE when the responder holds too many half-open SAs, RFC 7296
  2.6), IKE_AUTH (with INITIAL_CONTACT, 2.4), CREATE_CHILD_SA rekeying the IKE SA (new SPIs,
  2.18; crossing rekeys resolved by the lowest nonce, 2.8.2) or the CHILD SA, INFORMATIONAL
  (liveness checks and DELETE). A window of one request each way; requests retransmitted on
  charon's schedule (`Retransmit`), responses answered again from a cache; IKE moves from UDP
  500 to 4500 at IKE_AUTH, as it always does with kernel-libipsec.
- IKEv1: Main Mode (six messages, 4500 from the fifth), Quick Mode (three, a random Message
  ID), Informational (DPD R-U-THERE/-ACK and Delete, one way); a Phase 1 rekey is a new Main
  Mode with new cookies (reauthentication), after which the old SA is deleted.

The headers are real: built by `IkeHeader.encode` and read by `ike.parse_header`, the agent's
own parser, inside IPv4/UDP datagrams (`Datagram.encode`). What follows the header is a model
of the payloads (`Body`): what kind of message it is, a new SPI, a cookie, a nonce. The agents
never look past the header, so nothing they decide on is invented here.

Not modelled: cryptography, proposals and identities, fragmentation, NAT, traffic selectors
(one CHILD SA per IKE SA, for the peer's LAN), and charon's thread pool (a message takes
`PROCESSING` to handle). Time and the network belong to the caller (`Host`).
"""

from lab.agent.protocol import ike

from .ikev1 import Ikev1
from .sa import (AUTH, BLOCK_THRESHOLD, CONNECTING, COOKIE, COOKIE_RETRIES, COOKIE_THRESHOLD,
                 DELETE, DELETING, DPD, ESTABLISHED, HALF_OPEN_TIMEOUT, IKE_PORT,
                 IKEV1_DPD_TIMEOUT, INIT, INITIAL_CONTACT, MAIN_MODE, NATT_PORT, QUICK_MODE,
                 R_U_THERE, REKEY_CHILD, REKEY_IKE, REKEYED, V1_DELETE, ZERO, Body, Request,
                 Retransmit, Sa, ike_packet)


class Host:
    """What an IkeDaemon needs from the world around it (the simulator implements it)."""

    def now(self) -> float: ...
    def after(self, delay: float, action, *args) -> None: ...
    def transmit(self, packet: bytes) -> None: ...
    def random_spi(self) -> bytes: ...
    def random_nonce(self) -> int: ...

    # What the daemon tells: vici's events on a member, nothing on a peer.
    def sa_changed(self, daemon: "IkeDaemon", sa: Sa, event: str, **detail) -> None: ...


class IkeDaemon(Ikev1):
    """One charon. `receive(packet)` takes an IKE packet addressed to it; `initiate`,
    `rekey`, `check_liveness` and `terminate` start exchanges; `sa_changed` reports every
    change of an SA to the host ("created", "progressed", "up", "rekeyed", "child", "down")."""

    def __init__(self, name: str, address: str, host: Host, retransmit: Retransmit,
                 dpd_delay: float, label: int | None = None, cookie_threshold: int =
                 COOKIE_THRESHOLD):
        self.name = name
        self.address = address
        self.host = host
        self.retransmit = retransmit
        self.dpd_delay = dpd_delay
        self.label = label  # the top byte of every IKE SPI we allocate (--ownership labels)
        self.cookie_threshold = cookie_threshold
        self.sas: dict[bytes, Sa] = {}  # our SPI -> SA
        self.responding: dict[tuple[str, bytes], bytes] = {}  # (remote, ispi) -> our SPI
        self.dropped = 0  # packets it could do nothing with
        self.generation = 0

    # ---- SPIs and lookups ------------------------------------------------------------------
    def new_spi(self) -> bytes:
        spi = self.host.random_spi()
        if self.label is not None:
            spi = bytes([self.label]) + spi[1:]
        return spi if spi not in self.sas and spi != ZERO else self.new_spi()

    def half_open(self, remote: str | None = None) -> int:
        return sum(1 for sa in self.sas.values() if sa.state == CONNECTING and not sa.initiator
                   and (remote is None or sa.remote == remote))

    def sas_with(self, remote: str) -> list[Sa]:
        return [sa for sa in self.sas.values() if sa.remote == remote]

    def _add(self, sa: Sa) -> Sa:
        self.sas[sa.local_spi] = sa
        if not sa.initiator:
            self.responding[(sa.remote, sa.ispi)] = sa.rspi
        self.host.sa_changed(self, sa, "created")
        if sa.state == CONNECTING and not sa.initiator:
            self.host.after(HALF_OPEN_TIMEOUT, self._half_open_expired, sa)
        return sa

    def _remove(self, sa: Sa, event: str = "down") -> None:
        if self.sas.get(sa.local_spi) is not sa:
            return
        del self.sas[sa.local_spi]
        if not sa.initiator and self.responding.get((sa.remote, sa.ispi)) == sa.rspi:
            del self.responding[(sa.remote, sa.ispi)]
        was_up = sa.state in (ESTABLISHED, REKEYED, DELETING)
        sa.pending = None
        sa.child = False
        self.host.sa_changed(self, sa, event if was_up else "failed")
        sa.state = "GONE"

    def clear(self) -> None:
        """charon stops: everything it held is gone, without a word to anyone."""
        for sa in list(self.sas.values()):
            self._remove(sa, "lost")
        self.responding.clear()

    # ---- sending -----------------------------------------------------------------------------
    def _packet(self, sa: Sa, msgid: int, body: Body, response: bool) -> bytes:
        flags = 0
        if sa.version == 2:
            flags = sa.ike_flags | (ike.FLAG_RESPONSE if response else 0)
        return ike_packet(self.address, sa.port, sa.remote, sa.port, sa.ispi, sa.rspi,
                          sa.version, flags, msgid, body)

    def _request(self, sa: Sa, body: Body, msgid: int | None = None) -> None:
        """Send a request on `sa` (IKEv2: when its window is free), retransmitted until
        answered; an IKEv1 message that expects an answer works the same way."""
        if sa.version == 2 and msgid is None:
            if sa.pending is not None:
                sa.waiting.append(body)
                return
            msgid, sa.out_msgid = sa.out_msgid, sa.out_msgid + 1
        self.generation += 1
        sa.pending = Request(msgid, body, self._packet(sa, msgid, body, False),
                             generation=self.generation)
        self._send_pending(sa, sa.pending)

    def _send_pending(self, sa: Sa, request: Request) -> None:
        self.host.transmit(request.packet)
        self.host.after(self.retransmit.wait(request.attempt), self._retransmit, sa,
                        request.generation)

    def _retransmit(self, sa: Sa, generation: int) -> None:
        request = sa.pending
        if request is None or request.generation != generation or self.sas.get(
                sa.local_spi) is not sa:
            return
        if request.attempt >= self.retransmit.tries:
            self._gave_up(sa)
            return
        request.attempt += 1
        self._send_pending(sa, request)

    def _gave_up(self, sa: Sa) -> None:
        """No answer after every retransmission: the other side is gone."""
        self._remove(sa, "down")

    def _answer(self, sa: Sa, msgid: int, body: Body, key=None) -> None:
        packet = self._packet(sa, msgid, body, True)
        sa.cache = {msgid if key is None else key: packet}
        self.host.transmit(packet)

    def _done(self, sa: Sa) -> None:
        """Our request was answered: the window is free for the next one."""
        sa.pending = None
        if sa.waiting and sa.state != "GONE":
            self._request(sa, sa.waiting.pop(0))

    # ---- starting exchanges ------------------------------------------------------------------
    def initiate(self, remote: str, connection: str, version: int,
                 initial_contact: bool = True, port: int = IKE_PORT) -> Sa:
        """A new IKE SA (and its CHILD SA) with `remote`."""
        sa = self._add(Sa(version, self.new_spi(), ZERO, True, remote, connection,
                          self.host.now(), port=port, initial_contact=initial_contact,
                          last_heard=self.host.now()))
        if version == 2:
            self._request(sa, Body(INIT))
        else:
            sa.step = 1
            self._request(sa, Body(MAIN_MODE, step=1), msgid=0)
        return sa

    def rekey(self, sa: Sa, ike_sa: bool) -> None:
        """Rekey `sa`'s IKE SA (IKEv1: reauthenticate with a new Main Mode) or its CHILD SA."""
        if sa.state != ESTABLISHED or sa.rekeys or any(
                b.kind in (REKEY_IKE, DELETE) for b in sa.waiting):
            return
        if ike_sa and sa.version == 1 and (not sa.initiator or any(
                other.state == CONNECTING for other in self.sas_with(sa.remote))):
            return  # IKEv1: the original initiator reauthenticates, one at a time
        if sa.version == 2:
            if ike_sa:
                nonce, spi = self.host.random_nonce(), self.new_spi()
                sa.rekeys[nonce] = spi
                self._request(sa, Body(REKEY_IKE, spi=spi, nonce=nonce))
            else:
                self._request(sa, Body(REKEY_CHILD, nonce=self.host.random_nonce()))
        elif ike_sa:
            new = self.initiate(sa.remote, sa.connection, 1, initial_contact=False)
            new.replaces = sa.local_spi
        else:
            self._quick_mode(sa)

    def check_liveness(self, sa: Sa) -> None:
        """DPD: IKEv2 an empty INFORMATIONAL; IKEv1 R-U-THERE, dead after IKEV1_DPD_TIMEOUT."""
        if sa.state != ESTABLISHED:
            return
        if sa.version == 2:
            if sa.pending is None:
                self._request(sa, Body(DPD))
            return
        now = self.host.now()
        if sa.dpd_sent is not None and now - sa.dpd_sent >= IKEV1_DPD_TIMEOUT:
            self._remove(sa, "down")
            return
        if sa.dpd_sent is None:
            sa.dpd_sent = now
        self._one_way(sa, Body(R_U_THERE, nonce=self.host.random_nonce()))

    def terminate(self, sa: Sa, tell: bool = True, force: bool = False) -> None:
        """End `sa`: with a DELETE the other side answers (IKEv2) or hears (IKEv1), or, not
        telling, at once; `force` (vici's terminate with force): the DELETE goes once and
        the SA is gone without waiting for the answer."""
        if self.sas.get(sa.local_spi) is not sa:
            return
        if not tell or sa.state == CONNECTING:
            self._remove(sa)
            return
        if sa.version == 1:
            self._one_way(sa, Body(V1_DELETE, spi=sa.ispi))
            self._remove(sa)
            return
        if force:
            msgid, sa.out_msgid = sa.out_msgid, sa.out_msgid + 1
            self.host.transmit(self._packet(sa, msgid, Body(DELETE, spi=sa.ispi), False))
            self._remove(sa)
            return
        sa.state = DELETING
        sa.waiting.clear()
        if sa.pending is None:
            self._request(sa, Body(DELETE, spi=sa.ispi))
        else:
            sa.waiting.append(Body(DELETE, spi=sa.ispi))

    def _one_way(self, sa: Sa, body: Body) -> None:
        msgid = int.from_bytes(self.host.random_spi()[:4], "big") or 1
        self.host.transmit(self._packet(sa, msgid, body, False))

    def _quick_mode(self, sa: Sa) -> None:
        msgid = int.from_bytes(self.host.random_spi()[:4], "big") or 1
        sa.quick[msgid] = 1
        self._request(sa, Body(QUICK_MODE, step=1, nonce=self.host.random_nonce()), msgid)

    # ---- receiving -----------------------------------------------------------------------------
    def receive(self, packet: bytes) -> None:
        """An IP packet addressed to us: an IKE message, or anything else (dropped)."""
        try:
            dgram = ike.parse_datagram(packet)
            data = ike.ike_payload(dgram.dport, dgram.payload)
            header = ike.parse_header(data) if data is not None else None
        except ike.ParseError:
            header = None
        body = Body.decode(data[ike.HEADER_LEN:]) if header is not None else None
        if header is None or body is None:
            self.dropped += 1  # ESP (no data plane here), keepalives, junk
            return
        if header.major == 2:
            self._receive_v2(dgram, header, body)
        else:
            self._receive_v1(dgram, header, body)

    def _find(self, header: ike.IkeHeader, remote: str, we_initiated: bool | None) -> Sa | None:
        candidates = ([header.ispi] if we_initiated else [header.rspi]) if we_initiated \
            is not None else [header.ispi, header.rspi]
        for spi in candidates:
            sa = self.sas.get(spi)
            if sa is not None and sa.ispi == header.ispi and sa.remote == remote and (
                    sa.rspi == header.rspi or sa.rspi == ZERO):
                return sa
        return None

    # ---- IKEv2 ---------------------------------------------------------------------------------
    def _receive_v2(self, dgram: ike.Datagram, header: ike.IkeHeader, body: Body) -> None:
        remote = dgram.src
        if not header.is_response and header.exchange == 34 and header.rspi == ZERO:
            self._init_request(remote, dgram.dport, header, body)
            return
        sent_by_initiator = bool(header.flags & ike.FLAG_INITIATOR)
        sa = self._find(header, remote, we_initiated=not sent_by_initiator)
        if sa is None:
            self.dropped += 1  # charon: no IKE SA for these SPIs
            return
        sa.last_heard = self.host.now()
        sa.dpd_sent = None
        if header.is_response:
            self._response_v2(sa, header, body)
        else:
            self._request_v2(sa, header, body)

    def _init_request(self, remote: str, port: int, header: ike.IkeHeader, body: Body) -> None:
        known = self.responding.get((remote, header.ispi))
        if known is not None:
            sa = self.sas[known]
            if 0 in sa.cache:
                self.host.transmit(sa.cache[0])  # a retransmission: the same answer
            return
        if self.half_open(remote) >= BLOCK_THRESHOLD:
            self.dropped += 1
            return
        if (self.half_open() >= self.cookie_threshold
                and body.cookie != self._cookie(remote, header.ispi)):
            stateless = Sa(2, header.ispi, ZERO, False, remote, "", self.host.now(), port=port)
            self.host.transmit(self._packet(stateless, 0, Body(
                COOKIE, cookie=self._cookie(remote, header.ispi)), True))
            self.host.sa_changed(self, stateless, "cookie")
            return
        sa = self._add(Sa(2, header.ispi, self.new_spi(), False, remote, "", self.host.now(),
                          port=port, last_heard=self.host.now()))
        sa.step, sa.in_msgid = 1, 1
        self._answer(sa, 0, Body(INIT, nonce=self.host.random_nonce()))

    def _cookie(self, remote: str, ispi: bytes) -> bytes:
        """RFC 7296 2.6: a value only this responder can make, for this initiator."""
        import hashlib  # noqa: PLC0415 - only when a COOKIE is asked for
        return hashlib.sha256(f"{self.name}/{remote}".encode() + ispi).digest()[:8]

    def _response_v2(self, sa: Sa, header: ike.IkeHeader, body: Body) -> None:
        request = sa.pending
        if request is None or header.msgid != request.msgid:
            return  # a late answer to an earlier try
        kind = request.body.kind
        if kind == INIT:
            if body.kind == COOKIE:
                if sa.cookies >= COOKIE_RETRIES:
                    self._remove(sa)
                    return
                sa.cookies += 1
                self.generation += 1
                sa.pending = Request(0, Body(INIT, cookie=body.cookie), b"",
                                     generation=self.generation)
                sa.pending.packet = self._packet(sa, 0, sa.pending.body, False)
                self._send_pending(sa, sa.pending)
                return
            sa.rspi = header.rspi
            sa.port = NATT_PORT
            sa.step = 1
            sa.pending = None
            self._request(sa, Body(AUTH, INITIAL_CONTACT if sa.initial_contact else 0))
            return
        self._done(sa)
        if kind == AUTH:
            self._established(sa)
        elif kind == REKEY_IKE:
            self._rekeyed_as_initiator(sa, request.body, body)
        elif kind == REKEY_CHILD:
            self.host.sa_changed(self, sa, "child")
        elif kind == DELETE:
            self._remove(sa)

    def _request_v2(self, sa: Sa, header: ike.IkeHeader, body: Body) -> None:
        if header.msgid < sa.in_msgid:
            if header.msgid in sa.cache:
                self.host.transmit(sa.cache[header.msgid])
            return
        if header.msgid > sa.in_msgid:
            return
        sa.in_msgid += 1
        if body.kind == AUTH and sa.state == CONNECTING and not sa.initiator:
            sa.port = NATT_PORT
            sa.progressed = True
            self.host.sa_changed(self, sa, "progressed")
            self._answer(sa, header.msgid, Body(AUTH))
            if body.flags & INITIAL_CONTACT:
                self._initial_contact(sa)
            self._established(sa)
        elif sa.state not in (ESTABLISHED, REKEYED, DELETING):
            self.dropped += 1
        elif body.kind == DPD:
            self._answer(sa, header.msgid, Body(DPD))
        elif body.kind == REKEY_CHILD:
            self._answer(sa, header.msgid, Body(REKEY_CHILD, nonce=self.host.random_nonce()))
            self.host.sa_changed(self, sa, "child")
        elif body.kind == REKEY_IKE and sa.state == ESTABLISHED:
            self._rekeyed_as_responder(sa, header, body)
        elif body.kind == DELETE:
            self._answer(sa, header.msgid, Body(DELETE))
            self._remove(sa)
        else:
            self._answer(sa, header.msgid, Body(body.kind))  # rekeying already: just answer

    def _established(self, sa: Sa) -> None:
        sa.state = ESTABLISHED
        sa.step = 2
        sa.progressed = True
        sa.child = True
        sa.last_heard = sa.up_at = self.host.now()
        self.host.sa_changed(self, sa, "up")

    def _initial_contact(self, sa: Sa) -> None:
        """RFC 7296 2.4: the other side has no other SA with us: ours go, silently."""
        for other in self.sas_with(sa.remote):
            if other is not sa and other.state != CONNECTING:
                self._remove(other, "down")

    def _rekey_child_sa(self, old: Sa, ispi: bytes, rspi: bytes, initiator: bool) -> Sa:
        new = Sa(old.version, ispi, rspi, initiator, old.remote, old.connection,
                 self.host.now(), state=ESTABLISHED, port=old.port, step=2, child=True,
                 progressed=True, last_heard=self.host.now(), up_at=self.host.now())
        old.child = False  # the CHILD SA moves to the new IKE SA (RFC 7296 2.18)
        self._add(new)
        self.host.sa_changed(self, new, "rekeyed", old=old)
        return new

    def _rekeyed_as_responder(self, old: Sa, header: ike.IkeHeader, body: Body) -> None:
        mine = self.new_spi()
        nonce = self.host.random_nonce()
        self._answer(old, header.msgid, Body(REKEY_IKE, spi=mine, nonce=nonce))
        # The new SA's initiator is whoever asked for the rekey (RFC 7296 2.18).
        new = self._rekey_child_sa(old, body.spi, mine, initiator=False)
        old.answered_rekey = (body.nonce, nonce, new)
        if not old.rekeys:
            old.state = REKEYED  # the other side deletes the old SA now

    def _rekeyed_as_initiator(self, old: Sa, request: Body, answer: Body) -> None:
        mine = old.rekeys.pop(request.nonce, None)
        if mine is None or old.state not in (ESTABLISHED, REKEYED):
            return
        new = self._rekey_child_sa(old, mine, answer.spi, initiator=True)
        crossed = old.answered_rekey
        if crossed is None:
            old.state = REKEYED
            self.terminate(old)
            return
        # RFC 7296 2.8.2: both rekeys made an SA; the one whose exchange had the lowest of
        # the four nonces is redundant, and whoever made it deletes it. The winner's maker
        # deletes the old SA.
        their_nonce, our_answer, _theirs = crossed
        ours_loses = min(request.nonce, answer.nonce) < min(their_nonce, our_answer)
        old.state = REKEYED
        if ours_loses:
            self.terminate(new)
        else:
            self.terminate(old)

    def _half_open_expired(self, sa: Sa) -> None:
        if self.sas.get(sa.local_spi) is sa and sa.state == CONNECTING:
            self._remove(sa, "failed")
