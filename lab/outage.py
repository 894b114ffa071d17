"""Outages as LAN-to-LAN traffic saw them, from `ping -D` output. Pure: text in, numbers out.

The lab pings every 100 ms (`ping -i 0.1 -D -O`): each reply line starts with its Unix time in
brackets. An outage is the longest stretch without a reply, less the one interval that separates
replies anyway.
"""

import re

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
# A traffic test's pings: three, 0.2 s apart, each answer awaited 2 s; -q: the summary only.
PING = ["ping", "-n", "-q", "-c", str(PING_COUNT), "-i", "0.2", "-W", "2"]


def ping_counts(pings: dict) -> dict:
    """key -> {"sent", "received"} from each `PING` process's summary (waited for here, 30 s
    at most); a ping that printed none counts PING_COUNT sent and none received."""
    result = {}
    for key, process in pings.items():
        out, _ = process.communicate(timeout=30)
        match = re.search(rb"(\d+) packets transmitted, (\d+) received", out)
        sent, received = (int(match.group(1)), int(match.group(2))) if match else (PING_COUNT, 0)
        result[key] = {"sent": sent, "received": received}
    return result
