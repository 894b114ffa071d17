"""Key tables from charon's log (lab.show.keytables), on log text in charon 5.9.8's format."""

from lab.show.keytables import (OCTETS, PREFERENCES, assign_spis, esp_rows, ikev1_rows,
    ikev2_rows, read_log, tables)

ISPI, RSPI = bytes.fromhex("2e33554c667e26e0"), bytes.fromhex("f84c9fd7f89d5cf6")


def dump(time, thread, group, tag, name, data: bytes, kind="secret") -> list[str]:
    lines = [f"{time} {thread}[{group}] {tag} {name}{' ' + kind if kind else ''} => "
             f"{len(data)} bytes @ 0x7f00"]
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        lines.append(f"{time} {thread}[{group}] {tag} {offset:4}: "
                     + " ".join(f"{b:02X}" for b in chunk).ljust(48) + "  ................")
    return lines


def ike_keys(time, thread, tag, base: int) -> list[str]:
    lines = []
    for i, name in enumerate(("Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er")):
        lines += dump(time, thread, "IKE", tag, name,
                      bytes([base + i]) * (32 if name in ("Sk_d", "Sk_ai", "Sk_ar") else 16))
    return lines


def child_keys(time, thread, tag, base: int) -> list[str]:
    lines = []
    for i, name in enumerate(("encryption initiator", "encryption responder",
                              "integrity initiator", "integrity responder")):
        lines += dump(time, thread, "CHD", tag, name, bytes([base + i]) * 16, "key")
    return lines


def responder_log() -> str:
    tag = "<p1|2>"
    lines = ["10:00:00.001 09[IKE] <p1|2> 203.0.113.11 is initiating an IKE_SA"]
    lines += ike_keys("10:00:00.002", 9, "<2>", 0)  # no config yet: the unique id alone
    # the AUTH octets begin with an IKE_SA_INIT message: the request's has no responder SPI
    # yet, the response's both
    lines += dump("10:00:00.003", 11, "IKE", tag, OCTETS, ISPI + bytes(8) + b"\x21" * 80, "")
    lines += dump("10:00:00.003", 11, "IKE", tag, OCTETS, ISPI + RSPI + b"\x21\x20" * 40, "")
    lines += ["10:00:00.003 11[IKE] <p1|2> IKE_SA p1[2] established between "
              "203.0.113.1[cluster.ikelab.test]...203.0.113.11[p1.ikelab.test]"]
    lines += child_keys("10:00:00.004", 11, tag, 0x10)
    lines += ["10:00:00.005 11[IKE] <p1|2> CHILD_SA lan{1} established with SPIs c1e2ddbd_i "
              "0caa5830_o and TS 10.1.0.0/24 === 10.2.1.0/24",
              # a rekey this side starts: it is the CHILD SA's initiator now
              "10:00:05.000 12[IKE] <p1|2> establishing CHILD_SA lan{2} reqid 1"]
    lines += child_keys("10:00:05.001", 12, tag, 0x20)
    lines += ["10:00:05.002 12[IKE] <p1|2> CHILD_SA lan{2} established with SPIs c1aaaaaa_i "
              "0bbbbbbb_o and TS 10.1.0.0/24 === 10.2.1.0/24"]
    # an IKE SA rekey: the new keys are logged in the old SA
    lines += ike_keys("10:00:09.000", 13, tag, 0x40)
    return "\n".join(lines) + "\n"


def test_ike_keys_are_read_per_derivation_with_the_spis_of_the_auth_octets():
    ike, _ = read_log(responder_log())
    own, rekey = ike
    assert (own.sa, own.version, own.generation, rekey.generation) == ("2", 2, 0, 1)
    assert own.spis == (ISPI.hex(), RSPI.hex()) and rekey.spis is None
    assert own.keys["Sk_ei"] == bytes([3]) * 16 and own.keys["Sk_ai"] == bytes([1]) * 32
    assert rekey.keys["Sk_ei"] == bytes([0x43]) * 16
    assert ikev2_rows(ike) == [
        f"{ISPI.hex()},{RSPI.hex()}," + "03" * 16 + "," + "04" * 16
        + ',"AES-CBC-128 [RFC3602]",' + "01" * 32 + "," + "02" * 32
        + ',"HMAC_SHA2_256_128 [RFC4868]"']


def test_a_rekeys_keys_take_the_spis_of_the_one_new_sa_vici_holds():
    ike, _ = read_log(responder_log())
    assign_spis(ike, {"3": (2, "1111111111111111", "2222222222222222")})
    assert ike[1].spis == ("1111111111111111", "2222222222222222")
    assert len(ikev2_rows(ike)) == 2
    # two candidates: which is which is not known, so neither is guessed
    ike, _ = read_log(responder_log())
    assign_spis(ike, {"3": (2, "11" * 8, "22" * 8), "4": (2, "33" * 8, "44" * 8)})
    assert ike[1].spis is None and len(ikev2_rows(ike)) == 1


def test_each_child_sa_maps_the_initiators_keys_to_the_initiators_direction():
    _, children = read_log(responder_log())
    first, rekeyed = children
    assert (first.name, first.initiator, rekeyed.name, rekeyed.initiator) == (
        "lan{1}", False, "lan{2}", True)
    table = esp_rows(children)
    # The responder's inbound SA (from the peer) carries the initiator's keys.
    assert ('"IPv4","203.0.113.11","203.0.113.1","0xc1e2ddbd","AES-CBC [RFC3602]","0x'
            + "10" * 16 + '","HMAC-SHA-256-128 [RFC4868]","0x' + "12" * 16 + '"') in table
    assert ('"IPv4","203.0.113.1","203.0.113.11","0x0caa5830","AES-CBC [RFC3602]","0x'
            + "11" * 16 + '","HMAC-SHA-256-128 [RFC4868]","0x' + "13" * 16 + '"') in table
    # The rekey it initiated: its outbound SA carries the initiator's keys.
    assert ('"IPv4","203.0.113.1","203.0.113.11","0x0bbbbbbb","AES-CBC [RFC3602]","0x'
            + "20" * 16 + '","HMAC-SHA-256-128 [RFC4868]","0x' + "22" * 16 + '"') in table
    assert len(table) == 4


def test_ikev1_keys_are_ka_with_the_initiators_cookie_from_vici():
    log = "\n".join(["10:00:00.001 09[IKE] <p2|5> IKE_SA p2[5] established between "
                     "203.0.113.1[cluster]...203.0.113.12[p2]"]
                    + dump("10:00:00.002", 9, "IKE", "<p2|5>", "encryption key Ka",
                           bytes([7]) * 16, ""))
    ike, _ = read_log(log)
    assert ikev1_rows(ike) == []  # no cookie yet
    assign_spis(ike, {"5": (1, "abcdef0123456789", "0123456789abcdef")})
    assert ikev1_rows(ike) == ["abcdef0123456789," + "07" * 16]


def test_a_dump_cut_short_leaves_that_key_out_and_junk_lines_are_ignored():
    log = responder_log().splitlines()
    # Sk_ai's dump is two lines (32 bytes): drop its second, as a log cut mid-dump would.
    second = next(i for i, line in enumerate(log) if line.endswith("  ................")
                  and "  16: 01" in line)
    broken = "\n".join(["garbage", "", "10:00 x[IKE] nothing"] + log[:second]
                       + log[second + 1:])
    [own, _], children = read_log(broken)
    assert "Sk_ai" not in own.keys and {"Sk_ar", "Sk_ei", "Sk_er"} <= set(own.keys)
    assert len(children) == 2


def test_tables_merge_both_sides_of_an_sa_into_one_row_and_turn_esp_decoding_on():
    log = responder_log()
    files = tables({"m1": (log, {}), "m1-again": (log, {})})
    assert files["ikev2_decryption_table"].count("\n") == 1
    assert files["esp_sa"].count("\n") == 4
    assert files["ikev1_decryption_table"] == ""
    assert files["preferences"] == PREFERENCES
