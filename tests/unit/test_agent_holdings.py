"""The agent's holdings, kept from charon's events (lab.agent.protocol.holdings)."""

from lab.agent.protocol.holdings import Holdings


def sa(uid, ispi, children):
    return {"uniqueid": uid, "initiator-spi": ispi, "child-sas": children}


def child(uid, state, *ts):
    return {"uniqueid": uid, "state": state, "remote-ts": list(ts)}


def test_children_come_rekey_and_go_with_their_ike_sa():
    h = Holdings()
    h.reset([{"s1": sa("1", "01" * 8, {"lan-1": child("1", "INSTALLED", "10.64.0.16/28")})}
              ["s1"]])
    assert h.installed() == {(bytes.fromhex("01" * 8), "10.64.0.16/28")}
    h.apply("child-updown", {"up": "yes", "s2": sa("2", "02" * 8, {
        "lan-2": child("2", "INSTALLED", "10.64.0.32/28")})})
    assert len(h.installed()) == 2
    # A CHILD SA rekey: the old one goes, the new one (same prefix) stays installed.
    h.apply("child-rekey", {"s2": sa("2", "02" * 8, {
        "old": child("2", "REKEYED", "10.64.0.32/28"),
        "new": child("3", "INSTALLED", "10.64.0.32/28")})})
    assert set(h.children) == {"1", "3"}
    # An IKE SA rekey hands its CHILD SAs to the new IKE SA (another initiator SPI).
    h.apply("ike-rekey", {"s2": {"old": {"uniqueid": "2", "initiator-spi": "02" * 8},
                                 "new": {"uniqueid": "4", "initiator-spi": "04" * 8}}})
    assert (bytes.fromhex("04" * 8), "10.64.0.32/28") in h.installed()
    h.apply("child-updown", {"up": "no", "s1": sa("1", "01" * 8, {
        "lan-1": child("1", "DELETING", "10.64.0.16/28")})})
    assert h.installed() == {(bytes.fromhex("04" * 8), "10.64.0.32/28")}
    # An IKE SA that goes with CHILD SAs still ours under it: they go too, and charon is
    # to be read again (they may have moved on silently).
    assert h.apply("ike-updown", {"up": "no", "s2": {"uniqueid": "4",
                                                     "initiator-spi": "04" * 8}}) is True
    assert h.installed() == frozenset()
    assert h.apply("ike-updown", {"up": "no", "s2": {"uniqueid": "4"}}) is False


def test_an_ikev1_reauthentication_adopts_the_child_sas_silently_and_a_read_finds_them():
    # Events as charon 5.9.8 sent them (scripts/bench_rekey.py --ike 1): the new IKE SA comes
    # up listing no CHILD SA; 10 s later the old one goes down, listing none either.
    h = Holdings()
    h.reset([sa("1", "01" * 8, {"lan-1": child("1", "INSTALLED", "10.2.1.0/24")})])
    h.apply("ike-updown", {"up": "yes", "p1": sa("2", "02" * 8, {})})
    assert h.apply("ike-updown", {"p1": sa("1", "01" * 8, {})}) is True
    h.reset([sa("2", "02" * 8, {"lan-1": child("1", "INSTALLED", "10.2.1.0/24")})])
    assert h.installed() == {(bytes.fromhex("02" * 8), "10.2.1.0/24")}


def test_a_child_sa_not_installed_is_not_held():
    h = Holdings()
    h.apply("child-updown", {"up": "yes", "s1": sa("1", "01" * 8, {
        "lan-1": child("1", "INSTALLING", "10.64.0.16/28")})})
    assert h.installed() == frozenset()
    h.apply("child-updown", {"up": "yes", "s1": {"uniqueid": "1", "initiator-spi": "zz"}})
    assert h.installed() == frozenset()  # a message without CHILD SAs, a bad SPI: nothing
