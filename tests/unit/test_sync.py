"""The sync codec: round trip, MAC, replay window."""

import pytest

from lab.agent.protocol.sync import ANNOUNCE, FORWARD, WINDOW, Codec, Message, SyncError

KEY = b"k" * 32


def pair():
    return Codec(KEY, 1, first_seq=1000), Codec(KEY, 2, first_seq=5)


def test_round_trip_keeps_every_field():
    m1, m2 = pair()
    msg = Message(ANNOUNCE, 0, ispi=b"\xaa" * 8, msgid=3, requester="r", owner=2,
                  state="established", tag=77, rspi=b"\xbb" * 8, peer="203.0.113.11")
    got = m2.decode(m1.encode(msg))
    assert (got.type_name, got.sender, got.seq, got.ispi, got.msgid, got.requester, got.owner,
            got.state, got.tag, got.rspi, got.peer) == (
        "announce", 1, 1000, b"\xaa" * 8, 3, "r", 2, "established", 77, b"\xbb" * 8,
        "203.0.113.11")
    forward = m2.decode(m1.encode(Message(FORWARD, 0, payload=b"\x45" + b"\0" * 40)))
    assert forward.payload == b"\x45" + b"\0" * 40


@pytest.mark.parametrize("mangle, reason", [
    (lambda d: d[:20], "short"),
    (lambda d: b"XXXX" + d[4:], "foreign"),
    (lambda d: d[:30] + bytes([d[30] ^ 1]) + d[31:], "mac"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "mac"),
])
def test_bad_messages_are_refused_with_a_reason(mangle, reason):
    m1, m2 = pair()
    data = m1.encode(Message(ANNOUNCE, 0, ispi=b"\x01" * 8))
    with pytest.raises(SyncError) as err:
        m2.decode(mangle(data))
    assert err.value.reason == reason


def test_a_forged_key_fails_the_mac():
    forger = Codec(b"x" * 32, 1, first_seq=1)
    _, m2 = pair()
    with pytest.raises(SyncError, match="mac"):
        m2.decode(forger.encode(Message(ANNOUNCE, 0)))


def test_replays_are_refused_and_late_but_fresh_messages_accepted():
    m1, m2 = pair()
    data = [m1.encode(Message(ANNOUNCE, 0)) for _ in range(WINDOW + 5)]
    m2.decode(data[0])
    with pytest.raises(SyncError, match="replay"):
        m2.decode(data[0])
    m2.decode(data[10])
    m2.decode(data[3])  # out of order, inside the window
    with pytest.raises(SyncError, match="replay"):
        m2.decode(data[3])
    m2.decode(data[-1])
    with pytest.raises(SyncError, match="replay"):
        m2.decode(data[1])  # now older than the window


def test_snapshot_entries_and_heartbeats_round_trip():
    from lab.agent.protocol.ownership import Key
    from lab.agent.protocol.sync import (decode_entries, decode_heartbeat, encode_entries,
        encode_heartbeat)
    entries = [(Key(b"\x01" * 8, 0, "i"), 2, "established", b"\x02" * 8, "203.0.113.11", 4500,
                True, 12.5, 1_796_000_000_123),
               (Key(b"\x03" * 8, 7, "-"), 1, "negotiating", None, None, 0, False, 0.0, 0)]
    assert decode_entries(encode_entries(entries)) == [
        (b"\x01" * 8, 0, "i", 2, "established", b"\x02" * 8, "203.0.113.11", 4500, True, 12.5,
         1_796_000_000_123),
        (b"\x03" * 8, 7, "-", 1, "negotiating", None, None, 0, False, 0.0, 0)]
    assert decode_heartbeat(encode_heartbeat(1, {1, 3, 8}, 7 << 40, 2, 0xABC)) == (
        1, {1, 3, 8}, 7 << 40, 2, 0xABC)


@pytest.mark.parametrize("payload", [b"\0" * 5, b"\0" * 42, b"\x01" * 42 * 2])
def test_malformed_snapshot_payloads_are_refused(payload):
    from lab.agent.protocol.sync import decode_entries
    with pytest.raises(SyncError) as err:
        decode_entries(payload)
    assert err.value.reason == "malformed"


def test_malformed_heartbeat_is_refused():
    from lab.agent.protocol.sync import decode_heartbeat
    with pytest.raises(SyncError):
        decode_heartbeat(b"\x01\x02")
