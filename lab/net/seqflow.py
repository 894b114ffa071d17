"""A UDP flow with sequence numbers, run inside lab nodes: which packets a tunnel lost, and
when they were sent.

    python -m lab.net.seqflow receive --port 5300 --seconds 40
    python -m lab.net.seqflow send --to 10.1.0.10 --port 5300 --rate 1000 --seconds 30

Each datagram carries its sequence number and the sender's CLOCK_MONOTONIC send time (one
clock for every namespace of a host, so the times line up with the lab's own events). The
sender stops after `--seconds` or at SIGTERM, and says goodbye; the receiver stops `--linger`
seconds after the goodbye (or after `--seconds`) and
prints one JSON line: datagrams received, the highest sequence number, duplicates, and every
gap (first and last lost number, and the send times of the datagrams on either side). iperf3
counts losses too, but not when they happened: a rekey's loss must be placed in time.
"""

import argparse
import json
import signal
import socket
import struct
import sys
import time

DATAGRAM = struct.Struct("!Qd")  # sequence number, send time (monotonic seconds)
LAST = 0xFFFFFFFFFFFFFFFF  # the sender's goodbye: the flow is over
SIZE = 200  # bytes per datagram: small, so a flow never fills the lab's links


def send(to: str, port: int, rate: float, seconds: float) -> dict:
    family = socket.AF_INET6 if ":" in to else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    padding = b"\0" * (SIZE - DATAGRAM.size)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds and not stopped:
        due = int((now - start) * rate) + 1
        while sent < due:
            try:
                sock.sendto(DATAGRAM.pack(sent, time.monotonic()) + padding, (to, port))
            except OSError:
                pass  # no route for a moment: the packet is lost, and counted as lost
            sent += 1
        time.sleep(max(0.0, min(0.002, start + sent / rate - time.monotonic())))
    for _ in range(3):  # the goodbye, thrice: one may be lost too
        try:
            sock.sendto(DATAGRAM.pack(LAST, time.monotonic()) + padding, (to, port))
        except OSError:
            pass
    return {"sent": sent, "seconds": round(time.monotonic() - start, 3)}


def receive(port: int, seconds: float, linger: float, version: int) -> dict:
    sock = socket.socket(socket.AF_INET6 if version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("::" if version == 6 else "0.0.0.0", port))
    end = time.monotonic() + seconds
    times: dict[int, float] = {}
    duplicates = 0
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            break
        if len(data) < DATAGRAM.size:
            continue
        seq, sent_at = DATAGRAM.unpack_from(data)
        if seq == LAST:
            end = min(end, time.monotonic() + linger)
            continue
        if seq in times:
            duplicates += 1
        times[seq] = sent_at
    return summarise(times, duplicates)


def summarise(times: dict[int, float], duplicates: int = 0) -> dict:
    """What a receiver prints: counts, and each gap with the send times around it."""
    received = sorted(times)
    gaps = []
    previous = -1
    for seq in received:
        if seq > previous + 1:
            gaps.append({"first": previous + 1, "last": seq - 1,
                         "after": times.get(previous), "before": times[seq]})
        previous = seq
    return {"received": len(received), "highest": received[-1] if received else None,
            "duplicates": duplicates, "lost": sum(g["last"] - g["first"] + 1 for g in gaps),
            "gaps": gaps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    sender = sub.add_parser("send")
    sender.add_argument("--to", required=True)
    sender.add_argument("--port", type=int, default=5300)
    sender.add_argument("--rate", type=float, default=1000.0)
    sender.add_argument("--seconds", type=float, default=30.0)
    receiver = sub.add_parser("receive")
    receiver.add_argument("--port", type=int, default=5300)
    receiver.add_argument("--seconds", type=float, default=60.0)
    receiver.add_argument("--linger", type=float, default=1.0)
    receiver.add_argument("--ip", type=int, choices=(4, 6), default=4)
    args = parser.parse_args(argv)
    if args.role == "send":
        if not 0 < args.rate <= 20000 or not 0 < args.seconds <= 3600:
            print("seqflow: --rate must be 0-20000 and --seconds 0-3600", file=sys.stderr)
            return 2
        result = send(args.to, args.port, args.rate, args.seconds)
    else:
        print("listening", flush=True)
        result = receive(args.port, args.seconds, args.linger, args.ip)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
