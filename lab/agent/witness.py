"""The sync network's witness: ICMP echo to the sync bridge's own address. An answer proves
our own sync link works (see `membership` for why a witness and not a vote)."""

import os
import socket
import struct


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Witness:
    def __init__(self, address: str):
        self.address = address
        self.ident = os.getpid() & 0xFFFF
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def ping(self, seq: int) -> None:
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
        packet = header[:2] + checksum(header).to_bytes(2, "big") + header[4:]
        try:
            self.sock.sendto(packet, (self.address, 0))
        except OSError:
            pass  # no route while our link is down: the missing answer says so

    def answers(self) -> int:
        """How many echo replies of ours from the witness are waiting (read them all)."""
        count = 0
        while True:
            try:
                data, (source, _port) = self.sock.recvfrom(2048)
            except BlockingIOError:
                return count
            offset = (data[0] & 0x0F) * 4
            if (source == self.address and len(data) >= offset + 8 and data[offset] == 0
                    and int.from_bytes(data[offset + 4:offset + 6], "big") == self.ident):
                count += 1

    def close(self) -> None:
        self.sock.close()
