"""An IKE_SA_INIT flood, run inside a lab node: the lab's own hostile load.

    python -m lab.net.flood --rate 1000 --seconds 30 [--ike 1|2] [--port 500|4500] [--spoof PREFIX]
                        [--spare ADDRESS ...] [--vip 203.0.113.1 | --vip 2001:db8:0:1::1]

(`Flood` starts one in a node; the CLI's `flood` and the flood tests and benchmark use it.)

Each packet is a real first message captured in the lab (IKEv2 IKE_SA_INIT, or IKEv1 Main
Mode message 1) with a fresh random initiator SPI and a fresh source port, sent to the
cluster's virtual IP (IPv4 or IPv6): unspoofed from the node's own address, or with `--spoof`
from random addresses of a prefix of the same family (the lab's internet, say: legitimate
peers' addresses included, unless `--spare` names them). On UDP 4500 it carries the RFC 3948
non-ESP marker. It never
targets anything but one of the lab's virtual IPs, and it prints one JSON line when done:
packets sent and the rate achieved.
"""

import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

from ..agent.names import IKE_PORT, NATT_PORT
from ..agent.protocol.ike import internet_checksum

VIP = "203.0.113.1"
VIPS = (VIP, "2001:db8:0:1::1")  # the only addresses it floods (`lab.plan.topology`'s virtual IPs)
# UDP payloads of the first packet of tests/data/ikev2.pcap and ikev1.pcap, SPI first.
IKEV2_SA_INIT = bytes.fromhex(
    "0b90528146a9a7910000000000000000212022080000000000000110220000300000002c010100040300000c"
    "0100000c800e0080030000080300000c030000080200000500000008040000132800004800130000c369ecfa"
    "f795a360692c296be882a946f9d7b8798f1d0e78d24a45d3566571b62632640a3fb6a80f06b1579f8f6cd947"
    "5ec1577e63df02fae77326bd624b89c629000024095a5a5608ee008932346d53fc04cc64b7ef4db274d33217"
    "12543ddde764624e2900001c00004004c0795c811fc2f2d2e049bfa8339adf2b239daaf72900001c00004005"
    "6fb0a5822afa903dc18a239964f22de3104a648b290000080000402e290000100000402f0002000300040005"
    "0000000800004016")
IKEV1_MAIN_MODE = bytes.fromhex(
    "2ca37ec0cf14801400000000000000000110020000000000000000b40d00003800000001000000010000002c"
    "01010001000000240101000080010007800e0080800200048004001380030001800b0001800c3de00d00000c"
    "09002689dfd6b7120d000014afcad71368a1f1c96b8696fc775701000d0000184048b7d56ebce88525e7de7f"
    "00d6c2d3800000000d0000144a131c81070358455c5728f20e95452f0000001490cb80913ebb696e086381b5"
    "ec427b1f")
NON_ESP_MARKER = b"\0\0\0\0"


def message(ike: int, port: int) -> bytes:
    """One flood message: the captured first message with a fresh initiator SPI."""
    template = IKEV2_SA_INIT if ike == 2 else IKEV1_MAIN_MODE
    data = os.urandom(8) + template[8:]
    return NON_ESP_MARKER + data if port == NATT_PORT else data


def spoofed(payload: bytes, source: str, sport: int, port: int) -> bytes:
    """IPv4 + UDP (RFC 791, 768) from `source` (this node's own address, or not), checksums
    filled: the switch and the members see what a real packet from that address would be."""
    udp_len = 8 + len(payload)
    src, dst = socket.inet_aton(source), socket.inet_aton(VIP)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, port, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, random.getrandbits(16), 0,
                         64, 17, 0, src, dst)
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:] + udp


def spoofed6(payload: bytes, source: str, sport: int, port: int, vip: str) -> bytes:
    """IPv6 + UDP (RFC 8200, 768) from `source`, the checksum IPv6 requires filled."""
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (source, vip))
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!IxxxB", udp_len, 17)
    udp = struct.pack("!HHHH", sport, port, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    return struct.pack("!IHBB", 6 << 28, udp_len, 17, 64) + src + dst + udp


def own_address(vip: str = VIP) -> str:
    """The address this node would send to the virtual IP from."""
    probe = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((vip, IKE_PORT))
        return probe.getsockname()[0]
    finally:
        probe.close()


def random_sources(prefix, vip: str, spare=()):
    """A function that returns a random address of `prefix`, never the virtual IP nor one of
    `spare` (addresses, as strings): a /64 has too many hosts to list."""
    base, size = int(prefix.network_address), prefix.num_addresses
    avoid = {str(ipaddress.ip_address(a)) for a in spare} | {vip}
    if size - 2 <= sum(base < int(ipaddress.ip_address(a)) < base + size - 1 for a in avoid):
        raise ValueError(f"{prefix} has no source address left to spoof")
    def pick() -> str:
        while (address := str(ipaddress.ip_address(base + random.randrange(1, size - 1)))) in avoid:
            pass
        return address
    return pick


def flood(rate: float, seconds: float, ike: int, port: int,
          spoof: ipaddress.IPv4Network | ipaddress.IPv6Network | None, vip: str = VIP,
          spare=()) -> dict:
    """Send at `rate` packets/s for `seconds` (spoofed: never from `spare`); the packets
    sent and the rate achieved."""
    own = own_address(vip)
    source = random_sources(spoof, vip, spare) if spoof else lambda: own
    six = ":" in vip
    build = (lambda *a: spoofed6(*a, vip)) if six else spoofed
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_RAW,
                         socket.IPPROTO_RAW)
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds:
        for _ in range(int((now - start) * rate) + 1 - sent):
            packet = build(message(ike, port), source(), random.randint(1024, 65535), port)
            try:
                sock.sendto(packet, (vip, 0))
            except OSError:
                pass  # a full queue: the next one goes
            sent += 1
        time.sleep(max(0.0, min(0.005, start + sent / rate - time.monotonic())))
    took = time.monotonic() - start
    return {"sent": sent, "seconds": round(took, 2), "rate": round(sent / took, 1)}


class Flood:
    """A flood running in a lab node (its own process, recorded with the run like any other)."""

    def __init__(self, node, rate: float = 1000.0, seconds: float = 30.0, ike: int = 2,
                 port: int = IKE_PORT, spoof: str | None = None, vip: str = VIP, spare=()):
        self.node, self.rate, self.seconds = node, rate, seconds
        command = [sys.executable, "-m", "lab.net.flood", "--rate", str(rate), "--seconds",
                   str(seconds), "--ike", str(ike), "--port", str(port), "--vip", vip]
        if spoof:
            command += ["--spoof", spoof] + [f"--spare={a}" for a in spare]
        self.description = (f"{node.name}: IKEv{ike} first messages to {vip} UDP {port} at "
                            f"{rate:g}/s "
                            f"for {seconds:g} s" + (f", sources spoofed from {spoof}"
                                                    if spoof else "")
                            + (f" but {', '.join(spare)}" if spoof and spare else ""))
        self.process = node.popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                      p for p in sys.path if p)))

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> dict:
        """What the flood reported when done: packets sent and the rate achieved."""
        out, _ = self.process.communicate(timeout=timeout)
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": out.decode(errors="replace").strip() or "no report"}

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            self.process.wait(5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="packets per second (1000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long (30)")
    parser.add_argument("--ike", type=int, choices=(1, 2), default=2)
    parser.add_argument("--port", type=int, choices=(IKE_PORT, NATT_PORT), default=IKE_PORT)
    parser.add_argument("--spoof", type=ipaddress.ip_network, default=None,
                        help="random source addresses from this prefix (default: this node's)")
    parser.add_argument("--spare", type=ipaddress.ip_address, action="append", default=[],
                        metavar="ADDRESS", help="with --spoof: never this source (repeatable)")
    parser.add_argument("--vip", choices=VIPS, default=VIP,
                        help=f"the virtual IP to flood ({VIP})")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 100000 or not 0 < args.seconds <= 3600:
        print("flood: --rate must be 0-100000 and --seconds 0-3600", file=sys.stderr)
        return 2
    if args.spoof is not None and (args.spoof.version == 6) != (":" in args.vip):
        print("flood: --spoof must be of the virtual IP's family", file=sys.stderr)
        return 2
    if args.spoof is not None:
        try:
            random_sources(args.spoof, args.vip, [str(a) for a in args.spare])
        except ValueError as exc:
            print(f"flood: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(flood(args.rate, args.seconds, args.ike, args.port, args.spoof,
                           args.vip, [str(a) for a in args.spare])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
