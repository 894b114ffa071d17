"""Moving tunnels between members: taking a dead member's over at once, and handing tunnels
over make-before-break when a member drains or the load is uneven.

Takeover. A member's IKE and CHILD SAs die with its charon, and its peers would notice only
when their DPD gives up, seconds later. Instead, as soon as the survivors count it dead (or
cut off), one survivor per tunnel initiates that tunnel to the peer: rendezvous hashing of the
peer's name over the members that take tunnels picks it, so every survivor agrees without a
word and the orphans spread over them. Its IKE_AUTH carries INITIAL_CONTACT (RFC 7296 2.4;
IKEv1: RFC 2407 4.6.3.3), so the peer drops the dead member's SAs and keeps the new one. A
peer behind a NAT is reached through the NAT's mapping, on the port it was last seen at: the
lab renders a connection `<peer>-natt` from the virtual IP's UDP 4500 to the NAT's 4500, the
very mapping the NAT keeps for the peer's tunnel (a port-preserving NAT maps its 4500 to
4500). A NAT that maps it to another port cannot be reached before the peer speaks, since a
connection cannot be pointed at an arbitrary port when it is initiated: that tunnel is left to
the peer's DPD, and the log says so.

Handover (make-before-break). The member that is to hold a tunnel initiates a second IKE SA
with the peer while the first still carries traffic, without INITIAL_CONTACT (connection
`<peer>-mbb`, `unique = never`), so the peer keeps both. When the new SA is up its ESTABLISHED
reaches every member and the steering routes follow the new holder; after a grace period the
old holder releases the tunnel in two steps, so that no packet meets a member without a way to
the peer: first it stops offering the peer's LAN (its own steering route to the new holder
overrides charon's, and the others hear it no longer holds it), and a moment later it ends
its SA with a DELETE (`superseded`). Which tunnels move is `balance`: all of a draining
member's, and, once a member joins or returns to the serving set, from the most loaded member
to the least until their counts differ by at most one (off with --no-rebalance). Tunnels the
hashing switch spread unevenly over the same members stay where they came up: moving them
would buy nothing and cost each a negotiation. Every member computes the same plan from the
same table; each initiates only the moves that come to it.

The peer's first ESP. The peer answers our IKE_AUTH, installs its CHILD SA and may send on it
at once, while our charon installs its own only when the answer reaches it, some milliseconds
later: a packet in that gap would meet no SA. So while a tunnel comes up here the member
queues that peer's ESP to the agent (`HoldEsp`) and holds it until charon's CHILD SA is
installed (`release_installed`), at most ESP_HOLD_LIMIT seconds.

`HandoverRole` is one role of `core.Agent`; it owns `moving` (initiations under way), `ending`
(old SAs asked to end), `releasing` (old SAs whose LAN is steered away), the held ESP and the
balance timer.
"""

import hashlib

from ..names import NATT_PORT, handover_connection, natt_connection
from .contract import HandoverView
from .events import Accept, EndSa, HoldEsp, Initiate
from .membership import DRAINED, DRAINING, SERVING, Happening

TAKEOVER_TIMEOUT = 10.0  # an initiation not up by then may be tried again
HANDOVER_GRACE = 1.0  # the old holder lets go this long after the new SA is up
ROUTES_SETTLE = 0.3  # between steering the peer's LAN away and ending the old SA
END_RETRY = 10.0  # an SA we asked charon to end and still hold is asked again after this: the
# request runs in a thread of the shell and can fail (vici busy with a crowd); seen: 3 of a
# drained member's 100 SAs stayed, each site then holding two
ESP_HOLD_LIMIT = 2.0  # the longest a peer's ESP waits for our CHILD SA
ESP_HELD_PER_PEER = 64  # beyond this, ESP passes at once (and may meet no SA)
BALANCE_INTERVAL = 1.0
# Initiations under way at once, per member. A peer's charon answers at most
# `block_threshold` (5) half-open IKE SAs from one address, and every member initiates from the
# one virtual IP: past that it drops them, and each costs a retransmission a second later. A
# crowd of sites behind one charon (a hub of branch tunnels, or the lab's crowd node) is where
# it bites: a dead member leaves a thousand orphans. So survivors share a window of four,
# and a balance moves a batch at a time.
TAKEOVER_WINDOW = 4
HANDOVER_BATCH = 16


def takeover_initiator(peer: str, receivers: list[str]) -> str | None:
    """The member that takes `peer`'s orphaned tunnel over: highest random weight of
    (member, peer) over the members that take tunnels."""
    if not receivers:
        return None
    return max(receivers, key=lambda m: hashlib.sha256(f"{m}/{peer}".encode()).digest())


def balance(holdings: dict[str, list[str]], receivers: list[str],
            draining: list[str], even_out: bool = True) -> list[tuple[str, str, str]]:
    """(peer, from, to) moves that leave the draining members without a tunnel and, with
    `even_out`, the receivers' counts differing by at most one. `holdings`: member -> the
    peers whose tunnels it holds. Deterministic: the least loaded receiver (lowest in order on
    a tie) takes the last peer (by name) of the most loaded member."""
    if not receivers:
        return []
    order = {m: n for n, m in enumerate(receivers)}
    load = {m: sorted(holdings.get(m, [])) for m in receivers}
    moves = []

    def least() -> str:
        return min(receivers, key=lambda m: (len(load[m]), order[m]))
    for member in draining:
        for peer in sorted(holdings.get(member, [])):
            to = least()
            moves.append((peer, member, to))
            load[to].append(peer)
    while even_out:
        most = max(receivers, key=lambda m: (len(load[m]), -order[m]))
        to = least()
        if len(load[most]) - len(load[to]) <= 1:
            break
        peer = load[most].pop()
        moves.append((peer, most, to))
        load[to].append(peer)
    return moves


class HandoverRole:
    # the state only this role changes
    OWNS = ("away", "ending", "esp_held", "esp_until", "evening_out", "installed", "moving",
            "new_sas", "next_balance", "orphans", "peer_names", "releasing")
    VIEW = HandoverView  # what it may read of the core and do through it (`contract`)

    def __init__(self):
        self.moving: dict[str, float] = {}  # peer -> until when our initiation may be pending
        self.ending: dict[bytes, float] = {}  # SAs we asked charon to end (SPI) -> when
        self.releasing: dict[bytes, str] = {}  # initiator SPI of our old SA -> its peer
        self.esp_until: dict[str, float] = {}  # peer -> until when its ESP is held here
        self.esp_held: dict[str, list] = {}  # peer -> refs of its held ESP packets
        self.new_sas: dict[str, bytes] = {}  # peer -> our SA that came up for it (initiator SPI)
        self.installed: frozenset = frozenset()  # (initiator SPI, prefix) of our CHILD SAs
        self.next_balance = 0.0
        self.away: set[str] = set()  # members draining or drained at the last balance
        self.evening_out = False  # a member joined or returned: even the tunnels out
        self.peer_names = {value[0]: name for name, value in self.config.peers.items()}
        self.orphans: dict[str, object] = {}  # peer -> its orphaned entry, waiting its turn

    def connection_for(self, peer: str, port: int, handover: bool) -> str | None:
        """The connection that reaches `peer` where it was last seen (None: it cannot be
        reached before it speaks: behind a NAT that maps it to a port other than 4500).
        Whether a peer sits behind a NAT is the lab's word (`natt_peers`): charon's own flag
        cannot tell, since kernel-libipsec fakes a NAT to get UDP encapsulation."""
        name = handover_connection(peer) if handover else peer
        if peer not in self.config.natt_peers:
            return name
        return natt_connection(name) if port == NATT_PORT else None

    def initiate(self, peer: str, entry, handover: bool) -> None:
        connection = self.connection_for(peer, entry.port, handover)
        if connection is None:
            self.log(f"{peer} is behind a NAT that maps it to port {entry.port}: its tunnel "
                     "is left to its DPD")
            return
        self.moving[peer] = self.now + TAKEOVER_TIMEOUT
        self.counters["handovers" if handover else "takeovers"] += 1
        self.esp_until[peer] = self.now + ESP_HOLD_LIMIT
        self.emit(HoldEsp(self._esp_held_from()))
        self.trace("handover" if handover else "takeover", peer=self.config.peers[peer][0],
                   name=peer)
        self.emit(Initiate(connection, peer))

    def _esp_held_from(self) -> frozenset:
        return frozenset(self.config.peers[p][0] for p in self.esp_until)

    def hold_esp(self, source: str, ref) -> bool:
        """Keep this ESP packet from `source` until our CHILD SA with it is installed; False:
        not held (no tunnel of that peer is coming up here, or too many are held)."""
        peer = self.peer_names.get(source)
        if peer not in self.esp_until:
            return False
        held = self.esp_held.setdefault(peer, [])
        if len(held) >= ESP_HELD_PER_PEER:
            self.counters["esp_held_full"] += 1
            return False
        held.append(ref)
        self.counters["esp_held"] += 1
        return True

    def arrived(self, address: str | None, ispi: bytes) -> None:
        """Our IKE SA with the peer at `address` is up: if we initiated it, the takeover or
        handover is done, and its CHILD SA is about to be installed."""
        peer = self.peer_names.get(address)
        if peer is not None and self.moving.pop(peer, None) is not None:
            self.new_sas[peer] = ispi
            self.release_installed()
            self.pace_takeovers()

    def sa_ended(self, ispi: bytes) -> None:
        """Our IKE SA `ispi` is gone: if we had asked charon to end it, that is done."""
        self.ending.pop(ispi, None)

    def installed_now(self, installed: frozenset) -> None:
        """Our charon's CHILD SAs now (initiator SPI, prefix): held ESP of a peer whose new
        SA is in goes."""
        self.installed = installed
        self.release_installed()

    def release_installed(self, expired_only: bool = False) -> None:
        """Let the held ESP go for each peer whose new CHILD SA our charon has installed, or
        whose hold ran out; and end our own older SAs with that peer: after a takeover the
        peer dropped them (INITIAL_CONTACT), and charon must not keep sending on them."""
        done = [p for p, until in self.esp_until.items() if until <= self.now]
        if not expired_only:
            done += [p for p, spi in self.new_sas.items()
                     if (spi, self.config.peers[p][1]) in self.installed and p not in done]
        for peer in done:
            self.esp_until.pop(peer, None)
            for ref in self.esp_held.pop(peer, []):
                self.emit(Accept(ref))
            spi, (address, prefix) = self.new_sas.pop(peer, None), self.config.peers[peer][:2]
            if (spi, prefix) not in self.installed:
                continue  # it never came up here: nothing of ours to replace
            for entry in self.table.established_with(address):
                if (entry.owner == self.config.member and entry.key.ispi != spi
                        and entry.key.ispi not in self.ending):
                    self.ending[entry.key.ispi] = self.now
                    self.log(f"ending {peer}'s older SA here: the new one replaces it")
                    self.emit(EndSa(entry.key.ispi))
        if done:
            self.emit(HoldEsp(self._esp_held_from()))

    def take_over(self, orphans: list) -> None:
        """A member left with these established tunnels (table entries): initiate ours."""
        if not self.serving:
            return
        receivers = self.membership.receivers()
        for entry in orphans:
            peer = self.peer_names.get(entry.peer)
            if (peer is not None and peer not in self.moving
                    and takeover_initiator(peer, receivers) == self.config.member):
                self.orphans[peer] = entry
        self.counters["takeovers_queued"] = len(self.orphans)
        self.pace_takeovers()

    def pace_takeovers(self) -> None:
        """Initiate the waiting orphans' tunnels, no more at once than our share of
        TAKEOVER_WINDOW; one the peer brought back meanwhile (its DPD, on another member) is
        not ours to take any more."""
        if not self.orphans or not self.serving:
            return
        share = max(1, TAKEOVER_WINDOW // max(1, len(self.membership.receivers())))
        while self.orphans and len(self.moving) < share:
            peer, entry = next(iter(self.orphans.items()))
            del self.orphans[peer]
            held = self.table.established_with(self.config.peers[peer][0])
            if held and held[-1].order > entry.order and self.membership.is_live(
                    held[-1].owner):
                continue  # the peer came back by itself, newer than the orphan
            self.log(f"taking over {peer}'s tunnel from {entry.owner}")
            self.initiate(peer, entry, handover=False)
        self.counters["takeovers_queued"] = len(self.orphans)

    def offered(self) -> frozenset:
        """The LAN prefixes this member steers to itself and tells the others it holds: its
        CHILD SAs' (`holdings`), less those of tunnels it is letting go."""
        return self.holdings - frozenset(lan for p in self.releasing.values()
                                         for lan in self.config.lans(p))

    def forget_released(self) -> None:
        """Drop what is done: an old SA that is gone and whose LAN charon no longer routes
        here (or that this member holds anew); and take back a release whose successor
        went away before our SA did (its new holder died mid-handover): we still hold the
        tunnel, and must offer its LAN again."""
        if not self.releasing and not self.ending:
            return  # the usual tick: nothing moving away from here
        me = self.config.member
        self.ending = {ispi: asked for ispi, asked in self.ending.items()
                       if self.table.owns_sa(ispi, me) and self.now < asked + END_RETRY}
        for ispi, peer in list(self.releasing.items()):
            held = self.table.established_with(self.config.peers[peer][0])
            if self.table.owns_sa(ispi, me) and held[-1].key.ispi == ispi and (
                    ispi not in self.ending):
                self.log(f"{peer}'s new SA went before ours: we keep its tunnel")
                del self.releasing[ispi]
                self.steer()
                self.advertise()
            elif not self.table.owns_sa(ispi, me) and (
                    self.config.peers[peer][1] not in self.holdings
                    or (held and held[-1].owner == me)):
                del self.releasing[ispi]
                self.steer()
                self.advertise()

    def member_arrived(self) -> None:
        """A member came back (from the dead, from isolation, from a drain): even the tunnels
        out at the next balance, unless --no-rebalance."""
        self.evening_out = self.config.rebalance

    def tunnels_held(self) -> dict[str, list[str]]:
        """member -> the peers whose tunnels it holds (the newest SA of each peer counts)."""
        result: dict[str, list[str]] = {}
        for address, entry in self.table.newest_by_peer().items():
            peer = self.peer_names.get(address)
            if peer is not None:
                result.setdefault(entry.owner, []).append(peer)
        return result

    def handover_timers(self) -> None:
        """Forget initiations that went nowhere; end our SAs that moved; say when drained;
        and, now and then, take the moves the balance gives this member."""
        self.moving = {p: t for p, t in self.moving.items() if t > self.now}
        self.pace_takeovers()
        self.release_installed(expired_only=True)
        me = self.config.member
        for old, new in self.table.superseded(me):
            ispi, peer = old.key.ispi, self.peer_names.get(old.peer)
            new_up = self.up_at(new)
            if ispi in self.ending or peer is None or self.now < new_up + HANDOVER_GRACE:
                continue
            if new.owner == me:
                # Two SAs with one peer, both here: the older goes once the newer carries
                # traffic (nothing to steer: the holder stays).
                if (new.key.ispi, self.config.peers[peer][1]) in self.installed:
                    self.ending[ispi] = self.now
                    self.log(f"ending {peer}'s older SA here: it holds a newer one with us")
                    self.emit(EndSa(ispi))
                continue
            if ispi not in self.releasing:
                self.releasing[ispi] = peer
                self.steer()
                self.advertise()
            elif self.now >= new_up + HANDOVER_GRACE + ROUTES_SETTLE:
                self.ending[ispi] = self.now
                self.log(f"ending {peer}'s old SA: its tunnel moved to {new.owner}")
                self.emit(EndSa(ispi))
        self.forget_released()
        if (self.membership.state == DRAINING and not self.table.owned(me)[0]
                and not self.moving):
            self.log(self.membership.become(Happening.EMPTIED))
        if self.now < self.next_balance or self.membership.state != SERVING or self.moving:
            return
        self.next_balance = self.now + BALANCE_INTERVAL
        members = self.membership.members
        draining = [m for m in members if self.membership.state_of(m) == DRAINING]
        receivers = self.membership.receivers()
        if (self.away - set(draining)) & set(receivers):
            self.member_arrived()  # undrained
        self.away = {m for m in members if self.membership.state_of(m) in (DRAINING, DRAINED)}
        entries = {self.peer_names.get(a): e for a, e in self.table.newest_by_peer().items()}
        moves = balance(self.tunnels_held(), receivers, draining, self.evening_out)
        if not moves:
            self.evening_out = False  # even (or nothing to move): until the next arrival
        mine = [(peer, _from, to) for peer, _from, to in moves if to == me and peer in entries]
        if len(mine) > HANDOVER_BATCH:
            mine = mine[:HANDOVER_BATCH]
            self.next_balance = self.now  # the rest as soon as this batch is up
        for peer, _from, to in mine:
            if to == me and peer in entries:
                self.log(f"taking {peer}'s tunnel over from {_from} (make-before-break)")
                self.initiate(peer, entries[peer], handover=True)
