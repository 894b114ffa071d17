"""The IKEv1 half of the model charon (RFC 2409): Main Mode's six messages (UDP 4500 from the
fifth, as NAT-T does), Quick Mode's three under a random Message ID, and Informational
messages (DPD R-U-THERE/-ACK, Delete) that nobody answers as such. The side that expects the
next message retransmits its last one; the other answers a retransmission from its cache. A
Phase 1 rekey is a new Main Mode with new cookies, after which the old SA is deleted.

`Ikev1` is mixed into `charon.IkeDaemon`, whose SA table, sending and lookups it uses.
"""

from lab.agent.protocol import ike

from .sa import (BLOCK_THRESHOLD, ESTABLISHED, INITIAL_CONTACT, MAIN_MODE, NATT_PORT, QUICK_MODE,
                 R_U_THERE, R_U_THERE_ACK, REKEYED, V1_DELETE, ZERO, Body, Sa)

QUICK_MODES_KEPT = 8  # old Quick Modes a late retransmission may still find


class Ikev1:
    def _receive_v1(self, dgram: ike.Datagram, header: ike.IkeHeader, body: Body) -> None:
        remote = dgram.src
        if body.kind == MAIN_MODE and body.step == 1 and header.rspi == ZERO:
            self._main_mode_1(remote, dgram.dport, header)
            return
        sa = self._find(header, remote, None)
        if sa is None:
            self.dropped += 1
            return
        sa.last_heard = self.host.now()
        sa.dpd_sent = None
        if body.kind == MAIN_MODE:
            self._main_mode(sa, header, body)
        elif body.kind == QUICK_MODE:
            self._quick(sa, header, body)
        elif sa.state not in (ESTABLISHED, REKEYED):
            self.dropped += 1
        elif body.kind == R_U_THERE:
            self._one_way(sa, Body(R_U_THERE_ACK, nonce=body.nonce))
        elif body.kind == V1_DELETE:
            self._remove(sa)

    def _main_mode_1(self, remote: str, port: int, header: ike.IkeHeader) -> None:
        known = self.responding.get((remote, header.ispi))
        if known is not None:
            sa = self.sas[known]
            if 1 in sa.cache:
                self.host.transmit(sa.cache[1])  # a retransmission: the same answer
            return
        if self.half_open(remote) >= BLOCK_THRESHOLD:
            self.dropped += 1
            return
        sa = self._add(Sa(1, header.ispi, self.new_spi(), False, remote, "", self.host.now(),
                          port=port, step=1, last_heard=self.host.now()))
        self._answer(sa, 0, Body(MAIN_MODE, step=2), key=1)

    def _main_mode(self, sa: Sa, header: ike.IkeHeader, body: Body) -> None:
        step = body.step
        if sa.initiator:
            request = sa.pending
            if request is None or request.body.kind != MAIN_MODE or step != request.body.step + 1:
                return
            sa.pending = None
            if step == 2:
                sa.rspi = header.rspi
                sa.step = 3
                self._request(sa, Body(MAIN_MODE, step=3), msgid=0)
            elif step == 4:
                sa.step, sa.port = 5, NATT_PORT
                self._request(sa, Body(MAIN_MODE, INITIAL_CONTACT if sa.initial_contact else 0,
                                       step=5), msgid=0)
            elif step == 6:
                self._established_v1(sa)
                self._quick_mode(sa)
            return
        if step <= sa.step:  # a retransmission: the same answer
            if step in sa.cache:
                self.host.transmit(sa.cache[step])
            return
        if step != sa.step + 2 or step not in (3, 5):
            return
        sa.step = step
        if step == 3:
            sa.progressed = True
            self.host.sa_changed(self, sa, "progressed")
            self._answer(sa, 0, Body(MAIN_MODE, step=4), key=3)
        else:
            sa.port = NATT_PORT
            self._answer(sa, 0, Body(MAIN_MODE, step=6), key=5)
            if body.flags & INITIAL_CONTACT:
                self._initial_contact(sa)
            self._established_v1(sa)

    def _established_v1(self, sa: Sa) -> None:
        sa.state = ESTABLISHED
        sa.progressed = True
        sa.last_heard = sa.up_at = self.host.now()
        self.host.sa_changed(self, sa, "up")
        replaces = self.sas.get(sa.replaces) if sa.replaces is not None else None
        if replaces is not None and replaces is not sa:
            self.terminate(replaces)  # a reauthentication: the old SA goes

    def _quick(self, sa: Sa, header: ike.IkeHeader, body: Body) -> None:
        if sa.state != ESTABLISHED:
            return
        msgid, step = header.msgid, body.step
        reached = sa.quick.get(msgid, 0)
        request = sa.pending
        ours = request is not None and request.msgid == msgid
        if step == 2 and ours and reached == 1:  # the answer to our QM1: QM3, installed
            sa.quick[msgid] = 3
            sa.pending = None
            packet = self._packet(sa, msgid, Body(QUICK_MODE, step=3), False)
            sa.cache = {(msgid, 2): packet}
            self.host.transmit(packet)
            self._installed(sa)
        elif step == 2 and (msgid, 2) in sa.cache:
            self.host.transmit(sa.cache[(msgid, 2)])  # our QM3 went missing
        elif step == 1 and reached == 0:  # their QM1: our QM2, sent until QM3 comes
            sa.quick[msgid] = 2
            self._request(sa, Body(QUICK_MODE, step=2, nonce=self.host.random_nonce()), msgid)
        elif step == 1 and ours:
            self.host.transmit(request.packet)
        elif step == 3 and reached == 2 and ours:
            sa.quick[msgid] = 3
            sa.pending = None
            self._installed(sa)
        for old in list(sa.quick)[:-QUICK_MODES_KEPT]:
            del sa.quick[old]

    def _installed(self, sa: Sa) -> None:
        sa.child = True
        self.host.sa_changed(self, sa, "child")
