"""What charon says about its own IKE SAs, and what the table makes of it: an SA that comes
up makes its entry permanent and tells every member (ESTABLISHED, with where the peer is), a
rekey gives the new SPIs the old owner (REKEY), an SA that goes takes its entries with it
everywhere (DELETE). CHILD SA events change only what the data plane steers: the shell reads
them as holdings (`core.on_holdings`).

`SaEventsRole` is one role of `core.Agent`; it keeps no state of its own.
"""

from .contract import SaEventsView
from . import sync
from .events import CharonSaid
from .ownership import ESTABLISHED, ike_sa_key


class SaEventsRole:
    OWNS = ()  # the state only this role changes
    VIEW = SaEventsView  # what it may read of the core and do through it (`contract`)

    def on_charon(self, event: CharonSaid) -> None:
        """charon's word on an IKE SA it holds (vici `ike-updown`, `ike-rekey`); CHILD SA
        events only change what the data plane steers (the shell reads them as holdings)."""
        sa = next((v for v in event.message.values() if isinstance(v, dict)), None)
        if sa is None:
            return
        if event.name == "ike-rekey":
            old, new = _spis(sa.get("old", {})), _spis(sa.get("new", {}))
            # The peer travels with the REKEY: a member that missed the old SA still learns
            # whose tunnel the new one is (superseded SAs are found by peer).
            peer = sa.get("new", {}).get("remote-host")
            if old and new:
                if self.table.rekey(old[0], new[0], new[1], self.now, self.wall_ms()) is None:
                    self.table.record(ike_sa_key(new[0]), self.config.member, ESTABLISHED,
                                      self.now, peer, self.wall_ms())
                self.broadcast(sync.Message(sync.REKEY, self.me, ispi=new[0], rspi=new[1],
                                            owner=self.me, peer=peer, payload=old[0]))
                self.release_waiting(new[0])
            return
        spis = _spis(sa)
        if event.name == "child-updown" and spis and event.message.get("up") == "yes":
            for child in sa.get("child-sas", {}).values():  # a mark on the ladder
                self.trace("installed", peer=sa.get("remote-host"), ispi=spis[0].hex(),
                           child=child.get("name"), spi_in=child.get("spi-in"),
                           spi_out=child.get("spi-out"))
        if event.name != "ike-updown" or not spis:
            return
        if event.message.get("up") == "yes":
            peer = sa.get("remote-host")
            port, nat = _port(sa.get("remote-port")), sa.get("nat-remote") == "yes"
            self.table.record(ike_sa_key(spis[0]), self.config.member, ESTABLISHED, self.now,
                              peer, self.wall_ms())
            self.table.establish(spis[0], spis[1], self.now, self.wall_ms())
            self.table.locate(spis[0], port, nat)
            self.arrived(peer, spis[0])
            self.broadcast(sync.Message(sync.ESTABLISHED, self.me, ispi=spis[0], rspi=spis[1],
                                        owner=self.me, peer=peer, port=port, nat=nat))
        else:
            self.table.delete(spis[0])
            self.sa_ended(spis[0])
            self.broadcast(sync.Message(sync.DELETE, self.me, ispi=spis[0]))


def _port(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _spis(sa: dict) -> tuple[bytes, bytes] | None:
    """(initiator SPI, responder SPI) of a vici IKE SA dict, or None if it has none."""
    try:
        ispi = bytes.fromhex(sa["initiator-spi"])
        rspi = bytes.fromhex(sa.get("responder-spi", "0" * 16))
    except (KeyError, ValueError):
        return None
    return (ispi, rspi) if len(ispi) == 8 and len(rspi) == 8 else None
