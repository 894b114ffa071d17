"""Outages from `ping -D` output."""

from lab.show.outage import longest_outage, reply_times

PING = """PING 10.1.0.10 (10.1.0.10) 56(84) bytes of data.
[100.000000] 64 bytes from 10.1.0.10: icmp_seq=1 ttl=62 time=0.5 ms
[100.100000] 64 bytes from 10.1.0.10: icmp_seq=2 ttl=62 time=0.5 ms
[100.200000] no answer yet for icmp_seq=3
[103.300000] 64 bytes from 10.1.0.10: icmp_seq=34 ttl=62 time=0.5 ms
[103.400000] 64 bytes from 10.1.0.10: icmp_seq=35 ttl=62 time=0.5 ms
"""


def test_reply_times_skip_everything_but_replies():
    assert reply_times(PING) == [100.0, 100.1, 103.3, 103.4]


def test_the_longest_gap_less_one_interval_is_the_outage():
    assert longest_outage(reply_times(PING), 100.05, 103.45) == 3.1


def test_a_gap_still_open_when_the_window_ends_counts_to_its_end():
    assert longest_outage([100.0, 100.1], 100.05, 105.0) == 4.8


def test_steady_replies_are_no_outage():
    times = [100 + i / 10 for i in range(50)]
    assert longest_outage(times, 100.5, 104.5) == 0.0


def test_lost_pings_are_those_never_answered_and_duplicates_are_counted():
    from lab.show.outage import duplicates, lost
    text = "\n".join([
        "[100.0] 64 bytes from 10.1.0.10: icmp_seq=1 ttl=62 time=1 ms",
        "[100.3] no answer yet for icmp_seq=2",
        "[100.4] no answer yet for icmp_seq=3",
        "[100.45] 64 bytes from 10.1.0.10: icmp_seq=3 ttl=62 time=250 ms",  # late, not lost
        "[100.5] 64 bytes from 10.1.0.10: icmp_seq=4 ttl=62 time=1 ms",
        "[100.5] 64 bytes from 10.1.0.10: icmp_seq=4 ttl=62 time=1 ms (DUP!)"])
    assert lost(text, 100.0, 101.0) == 1
    assert lost(text, 100.35, 101.0) == 0  # seq 2 was overdue before the window
    assert duplicates(text) == 1


def test_a_ping_summary_names_the_unanswered_requests_and_the_first_round_trip():
    from lab.show.outage import ping_summary
    out = b"""PING 10.2.1.10 (10.2.1.10) 56(84) bytes of data.
64 bytes from 10.2.1.10: icmp_seq=2 ttl=62 time=1.71 ms
64 bytes from 10.2.1.10: icmp_seq=3 ttl=62 time=0.987 ms

--- 10.2.1.10 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 1002ms
"""
    assert ping_summary(out) == {"sent": 3, "received": 2, "unanswered": [1],
                                 "first_ms": None, "slowest_ms": 1.71}
    late = out.replace(b"\n64 bytes from 10.2.1.10: icmp_seq=2",
                       b"\n64 bytes from 10.2.1.10: icmp_seq=1 ttl=62 time=712 ms"
                       b"\n64 bytes from 10.2.1.10: icmp_seq=2")
    late = late.replace(b"2 received", b"3 received")
    assert ping_summary(late) == {"sent": 3, "received": 3, "unanswered": [],
                                  "first_ms": 712.0, "slowest_ms": 712.0}


def test_a_ping_that_printed_nothing_counts_every_request_unanswered():
    from lab.show.outage import PING_COUNT, ping_summary
    assert ping_summary(b"") == {"sent": PING_COUNT, "received": 0,
                                 "unanswered": list(range(1, PING_COUNT + 1)),
                                 "first_ms": None, "slowest_ms": None}
