"""`lab.net.flood`'s spoofed sources: random addresses of a prefix, never the virtual IP, never a
spared address (the peers', for a flood that must not impersonate them)."""

import ipaddress
import random

import pytest

from lab.net import flood


def test_spoofed_sources_spread_over_the_prefix_but_never_the_vip_or_the_spared():
    random.seed(7)
    pick = flood.random_sources(ipaddress.ip_network("203.0.113.0/29"), "203.0.113.1",
                                spare=("203.0.113.2", "203.0.113.3"))
    assert {pick() for _ in range(400)} == {"203.0.113.4", "203.0.113.5", "203.0.113.6"}


def test_spared_ipv6_addresses_match_however_they_are_spelled():
    random.seed(7)
    pick = flood.random_sources(ipaddress.ip_network("2001:db8:0:1::/125"), "2001:db8:0:1::1",
                                spare=("2001:db8:0:1:0:0:0:2",))
    assert {pick() for _ in range(400)} == {f"2001:db8:0:1::{n}" for n in range(3, 7)}


def test_a_prefix_with_no_source_left_is_refused_in_one_line(capsys):
    assert flood.main(["--spoof", "203.0.113.0/30", "--spare", "203.0.113.2"]) == 2
    assert capsys.readouterr().err == "flood: 203.0.113.0/30 has no source address left to spoof\n"


def test_a_spare_that_is_no_address_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        flood.main(["--spoof", "203.0.113.0/24", "--spare", "p2"])
    assert exit_.value.code == 2
    assert "invalid ip_address value: 'p2'" in capsys.readouterr().err
