"""What the simulated peers and the world's attackers do of their own accord: peers connect
(and reconnect when their SA goes, as `dpd_action = restart` and `keyingtries = 0` make
strongSwan do), every charon checks the liveness of quiet SAs and rekeys now and then, peers
send ESP through their tunnels, and floods of unauthenticated first messages come and go.

`Traffic` is mixed into `world.World`, whose clock, queue and random generator it uses.
"""

from ipaddress import IPv4Address, IPv6Address

from lab.agent.protocol import ike
from lab.agent.names import Ownership, esp_label

from .charon import IkeDaemon
from .sa import (CONNECTING, ESTABLISHED, FLOOD, IKE_PORT, INIT, MAIN_MODE, NATT_PORT, Body,
                 ike_packet)

VIP, VIP6 = "203.0.113.1", "2001:db8:0:1::1"  # lab.plan.topology's, per IP version
PEER_DPD_DELAY, MEMBER_DPD_DELAY = 3.0, 5.0  # lab.strongswan.render
DUTIES = 0.5  # how often charons look at their SAs (DPD, rekeys, traffic)
FLOOD_SPRAY = 0.5  # share of flood packets that also reach a second member
STORM = 12  # first messages when a member's state changes


def peer_addresses(index: int, ip6: bool) -> tuple[str, str]:
    """Peer `index`'s address and protected LAN, as the lab's plan gives them."""
    if ip6:
        return f"2001:db8:0:1::{10 + index}", f"2001:db8:2:{index}::/64"
    return f"203.0.113.{10 + index}", f"10.2.{index}.0/24"


class Traffic:
    def peer_connects(self, peer) -> None:
        """The peer's connection (re)starts unless it has an SA up or coming up."""
        peer.restart_due = False
        if any(sa.state == ESTABLISHED or (sa.initiator and sa.state == CONNECTING)
               for sa in peer.daemon.sas.values()):
            return
        mine = [sa for sa in peer.daemon.sas.values()]
        peer.daemon.initiate(self.vip, "cluster", peer.version, initial_contact=not mine)

    def duties(self) -> None:
        """Every charon looks at its SAs: liveness checks after silence, rekeys now and
        then, and the peers' ESP."""
        for peer in self.peers:
            self._daemon_duties(peer.daemon, PEER_DPD_DELAY)
            for sa in list(peer.daemon.sas.values()):
                if sa.state == ESTABLISHED and sa.child and self.rng.random() < 0.5:
                    esp = (esp_label(self.rng.randint(1, self.spec.members)) << 24
                           | self.rng.getrandbits(24)).to_bytes(4, "big")
                    self.peer_sends(ike.Datagram(peer.address, NATT_PORT, self.vip,
                                                 NATT_PORT, esp + bytes(40)).encode())
        for member in self.members.values():
            if member.up:
                self._daemon_duties(member.charon, MEMBER_DPD_DELAY)
        if self.now < self.flooding_until:
            self._flood_burst(self.spec.flood)
        elif self.spec.background_flood and not self.quiet:
            self._flood_burst(self.spec.background_flood)
        self.after(DUTIES, self.duties)

    def _daemon_duties(self, daemon: IkeDaemon, dpd_delay: float) -> None:
        for sa in list(daemon.sas.values()):
            if sa.state != ESTABLISHED:
                continue
            if self.now - sa.last_heard >= dpd_delay:
                daemon.check_liveness(sa)
            elif not self.quiet and self.rng.random() < self.spec.rekey_rate * DUTIES:
                daemon.rekey(sa, ike_sa=self.rng.random() < 0.4)

    # ---- floods -------------------------------------------------------------------------------
    def flood(self, seconds: float) -> None:
        self.flooding_until = max(self.flooding_until, self.now + seconds)

    def _first_message(self) -> bytes:
        """An unauthenticated first message (IKEv2 IKE_SA_INIT or IKEv1 Main Mode 1) with a
        fresh SPI from a made-up address, on 500 or 4500; now and then junk behind its
        header."""
        version = self.rng.choice((1, 2))
        made_up = self.rng.randint(1, 254)
        source = str(IPv6Address("2001:db8:0:f::") + made_up if self.spec.ip6
                     else IPv4Address("198.51.100.0") + made_up)
        port = self.rng.choice((IKE_PORT, IKE_PORT, NATT_PORT))
        body = Body(INIT if version == 2 else MAIN_MODE, step=0 if version == 2 else 1)
        if self.rng.random() < 0.05:
            body = Body(FLOOD)
        return ike_packet(source, port, self.vip, port, self.rng.getrandbits(64).to_bytes(
            8, "big") or b"\1" * 8, bytes(8), version, ike.FLAG_INITIATOR if version == 2
            else 0, 0, body)

    def _flood_burst(self, rate: float) -> None:
        """Unauthenticated first messages with fresh SPIs from made-up addresses, spread over
        the next half second."""
        count = int(rate * DUTIES)
        for _ in range(count):
            packet = self._first_message()
            when = self.rng.random() * DUTIES
            self.after(when, self.switch_forwards, packet)
            if self.rng.random() < FLOOD_SPRAY:
                # The same first message at a second member at once: claims for one key race
                # at two directors whenever the members' views of who serves differ.
                other = self.rng.choice(list(self.members.values()))
                self.after(when + self.rng.random() * 0.001, self.member_receives, other,
                           packet, ike.parse_datagram(packet))

    def storm(self) -> None:
        """A member changed state: for a moment the members' views of who serves differ, so
        first messages now, each reaching two members, make claims race at two directors
        (FoundationDB's "buggify": what reality makes rare, the simulator makes often)."""
        if self.quiet or self.spec.ownership == Ownership.STATELESS:
            return
        for _ in range(STORM):
            packet = self._first_message()
            dgram = ike.parse_datagram(packet)
            when = self.rng.random() * 0.1
            for member in self.rng.sample(list(self.members.values()), 2) if len(
                    self.members) > 1 else self.members.values():
                self.after(when + self.rng.random() * 0.002, self.member_receives, member,
                           packet, dgram)
