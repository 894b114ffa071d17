"""Outages and lost pings as LAN-to-LAN traffic saw them, from ping's output: text in,
numbers out (`ping_counts` alone waits for the ping processes).

The lab pings every 100 ms (`ping -i 0.1 -D -O`): each reply line starts with its Unix time in
brackets. An outage is the longest stretch without a reply, less the one interval that separates
replies anyway.
"""

import re
import subprocess

INTERVAL = 0.1
_REPLY = re.compile(r"^\[(\d+(?:\.\d+)?)\] \d+ bytes from .*icmp_seq=(\d+)")


def reply_times(text: str) -> list[float]:
    """Unix times of the echo replies in `ping -D` output, in order."""
    times = []
    for line in text.splitlines():
        match = _REPLY.match(line.strip())
        if match:
            times.append(float(match.group(1)))
    return times


def longest_outage(times: list[float], start: float, end: float,
                   interval: float = INTERVAL) -> float:
    """Seconds of the longest gap between replies that overlaps [start, end], not counting the
    normal interval; the window's edges count as replies only if the pinger was answering
    there, so a gap still open at `end` counts up to `end`."""
    before = [t for t in times if t <= start]
    inside = [t for t in times if start < t <= end]
    points = ([before[-1]] if before else [start]) + inside
    if not inside or inside[-1] < end - interval * 3:
        points.append(end)  # still no answer when the window closed
    gaps = [b - a for a, b in zip(points, points[1:])]
    return round(max([g - interval for g in gaps] + [0.0]), 3)


_SEQ = re.compile(r"^\[(\d+(?:\.\d+)?)\] (?:(\d+) bytes from .*|no answer yet for )"
                  r"icmp_seq=(\d+)")


def lost(text: str, start: float, end: float) -> int:
    """Echo requests of Unix times [start, end] that got no reply at all: `ping -O` says "no
    answer yet" for each overdue one (a late reply still counts as a reply)."""
    replied, first_seen = set(), {}
    for line in text.splitlines():
        match = _SEQ.match(line.strip())
        if match:
            seq = int(match.group(3))
            first_seen.setdefault(seq, float(match.group(1)))
            if match.group(2):
                replied.add(seq)
    return sum(1 for seq, at in first_seen.items() if start <= at <= end and seq not in replied)


def duplicates(text: str) -> int:
    """Echo replies that came twice (ping marks them `(DUP!)`): two members answering."""
    return sum(1 for line in text.splitlines() if "(DUP!)" in line)


PING_COUNT = 3
# A traffic test's pings: three, 0.5 s apart. iputils' ping waits for outstanding answers only
# max(2 x the slowest answer so far, the interval) after its last echo request once one answer
# came (-W counts only while none has): so a first answer later than (count - 1) x interval +
# that wait is counted lost. Measured: a reply 0.7 s late with -i 0.2 read "2/3". At 0.5 s the
# first request's answer has 1.5 s; its round trip is kept (`first_ms`) so a slow first
# packet shows as what it is.
PING = ["ping", "-n", "-c", str(PING_COUNT), "-i", "0.5", "-W", "2"]
_SUMMARY = re.compile(rb"(\d+) packets transmitted, (\d+) received")
_ANSWER = re.compile(rb"icmp_seq=(\d+) .*time=([\d.]+) ms")


def ping_summary(out: bytes) -> dict:
    """{"sent", "received", "unanswered", "first_ms", "slowest_ms"} from one `PING` process's
    output: the echo requests (sequence numbers) that got no answer, the round trips (ms) of
    the first one's answer (None if it got none) and of the slowest answer; a ping that
    printed no summary counts PING_COUNT sent and none received."""
    match = _SUMMARY.search(out)
    sent, received = (int(match.group(1)), int(match.group(2))) if match else (PING_COUNT, 0)
    times = {int(seq): float(ms) for seq, ms in _ANSWER.findall(out)}
    return {"sent": sent, "received": received,
            "unanswered": [seq for seq in range(1, sent + 1) if seq not in times],
            "first_ms": times.get(1), "slowest_ms": max(times.values()) if times else None}


def ping_counts(pings: dict) -> dict:
    """key -> `ping_summary` of each `PING` process (waited for here, 30 s at most)."""
    result = {}
    for key, process in pings.items():
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        result[key] = ping_summary(out or b"")
    return result
