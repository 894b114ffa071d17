"""Fuzzing the sync codec: the sync network is a wire every member listens on, so a datagram
on it may be anything. Whatever its bytes, `Codec.decode` gives a Message or raises
`sync.SyncError` with one of its counters' reasons, and a refused datagram moves no replay
window. What a member encodes, any other member with the key decodes to the same message, for
every type and any field values in their ranges; one changed byte anywhere makes it refused.

The replay window is checked against its definition (RFC 4303 3.4.3's, per sender): a
sequence number is accepted once, and only while it is within WINDOW of the highest accepted.
The payload decoders a message's handler calls (snapshot entries, heartbeats) give their value
or SyncError('malformed'), and round-trip too.
"""

import hashlib
import hmac
from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import event, given, strategies as st

from lab.agent.protocol.ownership import Key
from lab.agent.protocol.sync import (ANNOUNCE, BODY, ENTRY, HEADER, HEARTBEAT_BODY, MAC_LEN,
    MAGIC, STATE_CODES, TYPE_NAMES, VERSION, WINDOW, Codec, Heartbeat, Message, SyncError,
    decode_entries, decode_heartbeat, encode_entries, encode_heartbeat)

REASONS = {"short", "foreign", "mac", "replay", "stale", "type"}  # SyncError's, for Codec.decode
KEY = b"\x5a" * 32

u8, u16, u32, u64 = (st.integers(0, 2**bits - 1) for bits in (8, 16, 32, 64))
spis = st.binary(min_size=8, max_size=8)
# Zero means "unknown" on the wire, so a known value is never zero.
peers = st.none() | st.integers(1, 2**32 - 1).map(lambda n: str(IPv4Address(n)))
rspis = st.none() | st.integers(1, 2**64 - 1).map(lambda n: n.to_bytes(8, "big"))
keys = st.binary(min_size=16, max_size=64)
requesters = st.sampled_from("ir-")
states = st.sampled_from(sorted(STATE_CODES))

messages = st.builds(Message, type=st.sampled_from(sorted(TYPE_NAMES)), sender=u8,
                     seq=st.just(0), ispi=spis, msgid=u32, requester=requesters, owner=u8,
                     state=states, tag=u32, rspi=spis, peer=peers, port=u16, nat=st.booleans(),
                     payload=st.binary(max_size=200))


def sign(key: bytes, data: bytes) -> bytes:
    return data + hmac.new(key, data, hashlib.sha256).digest()


@st.composite
def plausible(draw, size: int) -> bytes:
    """`size` random bytes laid out as a body or an ENTRY (both open with ispi, msgid,
    requester, owner, state), whose requester, state and owner are, more often than chance,
    ones the decoders accept: so the inputs also reach past those checks."""
    data = bytearray(draw(st.binary(min_size=size, max_size=size)))
    if draw(st.booleans()):
        data[12] = ord(draw(requesters))
        data[13] = draw(st.integers(1, 0xFF))
        data[14] = draw(st.sampled_from(sorted(STATE_CODES.values())))
    return bytes(data)


@st.composite
def ours(draw):
    """Bytes with our magic and version, anything after the header, and mostly a valid MAC:
    what a member with the key could send, so every check behind the MAC is reached."""
    header = HEADER.pack(MAGIC, VERSION, draw(st.integers(0, 20)), draw(u8),
                         draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1)))
    data = header + draw(st.one_of(st.binary(max_size=BODY.size), plausible(BODY.size)))
    data += draw(st.binary(max_size=40))
    return sign(KEY, data) if draw(st.booleans()) else data + draw(
        st.binary(min_size=MAC_LEN, max_size=MAC_LEN))


def receiver() -> Codec:
    return Codec(KEY, 9, first_seq=1)


def decode(codec: Codec, data: bytes) -> str:
    """'accepted', or the reason it was refused."""
    try:
        codec.decode(data)
    except SyncError as err:
        return err.reason
    return "accepted"


@given(st.one_of(st.binary(max_size=200), ours()))
def test_any_bytes_decode_to_a_message_or_a_sync_error_with_a_counted_reason(data):
    outcome = decode(receiver(), data)
    event(outcome)
    assert outcome in REASONS | {"accepted"}


@given(messages, keys, u8, st.integers(0, 2**64 - 2))
def test_every_message_type_with_any_field_values_round_trips(msg, key, me, first_seq):
    got = Codec(key, 99, first_seq=0).decode(Codec(key, me, first_seq).encode(msg))
    assert got == replace(msg, sender=me, seq=first_seq)


@given(messages, st.data())
def test_any_single_changed_byte_of_a_sync_datagram_is_rejected(msg, data):
    good = Codec(KEY, 1, first_seq=7).encode(msg)
    where = data.draw(st.integers(0, len(good) - 1), label="byte")
    flip = data.draw(st.integers(1, 0xFF), label="xor")
    bad = good[:where] + bytes([good[where] ^ flip]) + good[where + 1:]
    codec = receiver()
    outcome = decode(codec, bad)
    event(outcome)
    assert outcome in ("foreign", "mac")
    assert decode(codec, good) == "accepted"  # the refused copy moved no window


@given(messages, st.sampled_from([v for v in range(0x100) if v != VERSION]))
def test_a_datagram_of_another_codec_version_is_foreign_even_with_a_valid_mac(msg, version):
    good = Codec(KEY, 1, first_seq=7).encode(msg)[:-MAC_LEN]
    assert decode(receiver(), sign(KEY, good[:4] + bytes([version]) + good[5:])) == "foreign"


@given(messages, keys)
def test_a_datagram_under_any_other_key_fails_the_mac(msg, key):
    assert decode(receiver(), Codec(key, 1, first_seq=7).encode(msg)) == (
        "accepted" if key == KEY else "mac")


# ---- the replay window ----------------------------------------------------------------------

seqs = st.integers(0, 2**64 - 4 * WINDOW)  # room for what the tests add to it


def datagram(seq: int, sender: int = 1) -> bytes:
    return Codec(KEY, sender, first_seq=seq).encode(Message(ANNOUNCE, sender))


@given(messages, seqs)
def test_a_datagram_accepted_once_is_refused_the_second_time(msg, seq):
    data = Codec(KEY, 1, first_seq=seq).encode(msg)
    codec = receiver()
    assert decode(codec, data) == "accepted"
    assert decode(codec, data) == "replay"


@given(seqs.map(lambda s: s + 2 * WINDOW), st.integers(1, 2 * WINDOW))
def test_sequence_numbers_older_than_the_window_are_refused(top, behind):
    codec = receiver()
    assert decode(codec, datagram(top)) == "accepted"
    assert decode(codec, datagram(top - behind)) == ("accepted" if behind < WINDOW
                                                     else "replay")


@given(seqs, st.integers(1, WINDOW).flatmap(
    lambda n: st.tuples(st.permutations(range(n)), st.permutations(range(n)))))
def test_any_permutation_of_fresh_datagrams_within_the_window_is_accepted_exactly_once_each(
        base, orders):
    first, again = orders
    sent = [datagram(base + i) for i in range(len(first))]
    codec = receiver()
    assert [decode(codec, sent[i]) for i in first] == ["accepted"] * len(first)
    assert [decode(codec, sent[i]) for i in again] == ["replay"] * len(again)


@given(seqs, st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(0, 3 * WINDOW)),
                      max_size=150))
def test_the_replay_window_accepts_exactly_what_its_definition_says_in_any_arrival_order(
        base, arrivals):
    """Per sender: accepted iff never accepted before and no more than WINDOW - 1 behind
    the highest accepted (0 before the first)."""
    codec, seen = receiver(), {1: set(), 2: set()}
    for sender, offset in arrivals:
        seq = base + offset
        fresh = seq not in seen[sender] and max(seen[sender], default=0) - seq < WINDOW
        assert decode(codec, datagram(seq, sender)) == ("accepted" if fresh else "replay")
        if fresh:
            seen[sender].add(seq)


# ---- payloads: snapshot entries and heartbeats ----------------------------------------------

# Ages go out in whole milliseconds; beyond the field's 0xFFFFFFFF (49 days) as that. The
# time an SA came up goes out as it is (wall clock ms, 64 bits).
entries = st.tuples(st.builds(Key, spis, u32, requesters), st.integers(1, 0xFF), states, rspis,
                    peers, u16, st.booleans(), st.integers(0, 2**33), st.integers(0, 2**64 - 1))


@given(st.lists(entries, max_size=40))
def test_snapshot_entries_round_trip_with_their_age_to_the_millisecond(sent):
    payload = encode_entries([(*entry, ms / 1000, up) for *entry, ms, up in sent])
    assert decode_entries(payload) == [
        (key.ispi, key.msgid, key.requester, owner, state, rspi, peer, port, nat,
         min(ms, 0xFFFFFFFF) / 1000, up)
        for key, owner, state, rspi, peer, port, nat, ms, up in sent]


def test_an_age_of_whole_milliseconds_survives_a_snapshot():
    """Regression: ages were truncated after a float multiply, so 1.001 s arrived as 1.0 s."""
    key = Key(b"\x01" * 8, 0, "i")
    got = decode_entries(encode_entries([(key, 1, "established", None, None, 0, False, 1.001,
                                          0)]))
    assert got[0][-2] == 1.001


@given(st.one_of(st.binary(max_size=3 * ENTRY.size),
                 st.lists(plausible(ENTRY.size), max_size=3).map(b"".join)))
def test_any_snapshot_payload_decodes_to_entries_or_is_malformed(payload):
    try:
        got = decode_entries(payload)
    except SyncError as err:
        assert err.reason == "malformed"
        return event("malformed")
    event(f"entries: {len(got)}")
    assert len(got) * ENTRY.size == len(payload)
    assert all(owner and requester in "ir-" for _, _, requester, owner, *_ in got)


@given(u8, st.sets(st.integers(0, 31)), u64, u32, u64)
def test_a_heartbeat_round_trips_for_any_field_values(code, live, incarnation, owned, digest):
    payload = encode_heartbeat(code, live, incarnation, owned, digest)
    assert decode_heartbeat(payload) == Heartbeat(code, live, incarnation, owned, digest)


@given(st.one_of(st.binary(max_size=2 * HEARTBEAT_BODY.size),
                 st.binary(min_size=HEARTBEAT_BODY.size, max_size=HEARTBEAT_BODY.size)))
def test_any_heartbeat_payload_decodes_or_is_malformed(payload):
    try:
        heartbeat = decode_heartbeat(payload)
    except SyncError as err:
        assert err.reason == "malformed" and len(payload) != HEARTBEAT_BODY.size
        return
    assert encode_heartbeat(*heartbeat) == payload


@given(st.floats(1e6, 4e9), st.floats(-5.0, 5.0), st.floats(0.05, 3.0))
def test_a_datagram_is_taken_only_within_its_age(sent, late, max_age):
    """Sent at `sent` (wall clock), read `late` seconds later: refused as stale exactly when
    that is further from now than `max_age` (either way: a clock gone wrong), whatever the
    replay window says (a member that just restarted has an empty one)."""
    data = Codec(KEY, 1, first_seq=7).encode(Message(ANNOUNCE, 1), sent)
    outcome = "accepted"
    try:
        Codec(KEY, 9, first_seq=1).decode(data, sent + late, max_age)
    except SyncError as err:
        outcome = err.reason
    # The datagram carries milliseconds: within a millisecond of the limit either is right.
    if abs(abs(late) - max_age) > 0.002:
        assert outcome == ("stale" if abs(late) > max_age else "accepted")
