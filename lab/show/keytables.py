"""Wireshark's key tables from charon's own log, for decrypted captures (`--capture` runs).

charon at filelog level 4 (`ike = 4`, `chd = 4`) writes every key it derives as a hex dump,
each line tagged with its thread and, with `ike_name = yes`, its IKE SA (`<conn|unique id>`):

    10:55:01.123 11[IKE] <p1|2> Sk_ei secret => 16 bytes @ 0x7f53fc0132f0
    10:55:01.123 11[IKE] <p1|2>    0: 60 64 42 D3 AF DB 3D 3B E1 CF 0D 82 BF 9B E5 91  `dB...
    10:55:01.125 11[IKE] <p1|2> establishing CHILD_SA lan{1}
    10:55:01.130 11[CHD] <p1|2> encryption initiator key => 16 bytes @ 0x7f53fc013300
    ...
    10:55:01.131 11[IKE] <p1|2> CHILD_SA lan{1} established with SPIs c1e2ddbd_i 0caa5830_o
                                 and TS 10.1.0.0/24 === 10.2.1.0/24

Key lines are the one place where the log is the only source (vici says nothing of keys):
this module reads them, pure, text in and tables out.

- IKEv2: `Sk_d` opens each derivation (the IKE SA's own, then one per rekey, logged in the
  SA being rekeyed); `Sk_ai`, `Sk_ar`, `Sk_ei`, `Sk_er` follow. The SPIs are not in those
  lines, but the AUTH octets charon dumps at level 3 begin with an IKE_SA_INIT message, whose
  header holds both once it is the response. A rekey's SPIs come from vici (`alive`: the SAs
  charon still holds).
- IKEv1: `encryption key Ka`; Wireshark wants it with the initiator's cookie (its SPI), which
  comes from vici.
- A CHILD SA's "initiator key" protects what its initiator sends (RFC 7296 2.17; IKEv1 derives
  it for the responder's SPI, so the same holds): this side initiated the CHILD SA if it
  logged `establishing CHILD_SA` for it first (the IKE_AUTH's, or a rekey it started), so its
  outbound SPI carries the initiator's keys; else its inbound.
"""

import re
from dataclasses import dataclass, field

# `<conn|unique id>`, or `<unique id>` before the IKE SA has its config (its keys are derived
# while IKE_SA_INIT is processed: seen so in charon 5.9.8's log)
LINE = re.compile(r"^\S+ \d+\[(?P<group>\w+)\] (?:<(?:(?P<conn>[^|>]*)\|)?(?P<sa>\d+)> )?"
                  r"(?P<text>.*)$")
OCTETS = "octets = message + nonce + prf(Sk_px, IDx')"
KA = "encryption key Ka"
KEY = re.compile(r"^(?P<name>Sk_(?:d|ei|er|ai|ar)|encryption key Ka"
                 r"|(?:encryption|integrity) (?:initiator|responder)"
                 r"|octets = message \+ nonce \+ prf\(Sk_px, IDx'\))(?: secret| key)? => "
                 r"(?P<size>\d+) bytes")
DUMP = re.compile(r"^\s*(?P<offset>\d+): (?P<hex>(?:[0-9A-Fa-f]{2} ?)+)")
ESTABLISHING = re.compile(r"^establishing CHILD_SA (?P<child>\S+)\{(?P<id>\d+)\}")
ESTABLISHED = re.compile(r"^CHILD_SA (?P<child>\S+)\{(?P<id>\d+)\} established with SPIs "
                         r"(?P<spi_in>[0-9a-f]{8})_i (?P<spi_out>[0-9a-f]{8})_o")
BETWEEN = re.compile(r"^IKE_SA \S+ established between (?P<local>[^\[]+)\[[^\]]*\]\.\.\."
                     r"(?P<remote>[^\[]+)\[")

# The lab's proposals (`render.IKE_PROPOSALS`, `ESP_PROPOSALS`) as Wireshark names them
# (its UAT enums, verified with tshark 4.0.17: PLATFORM.md).
IKE_ENCRYPTION, IKE_INTEGRITY = "AES-CBC-128 [RFC3602]", "HMAC_SHA2_256_128 [RFC4868]"
ESP_ENCRYPTION, ESP_INTEGRITY = "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"
# Wireshark decrypts ESP only when told to (`preferences` in its configuration directory).
PREFERENCES = "esp.enable_encryption_decode: TRUE\n"


@dataclass
class IkeKeys:
    """One IKE SA's keys as one node derived them. `sa`: charon's unique id of the IKE SA
    they were derived in; `generation`: 0 for that SA's own keys, 1.. for each rekey's (logged
    in the SA being rekeyed); `spis`: (initiator SPI, responder SPI), hex, when the log says."""

    sa: str
    version: int  # 2: Sk_e*/Sk_a*; 1: Ka
    generation: int = 0
    keys: dict[str, bytes] = field(default_factory=dict)
    spis: tuple[str, str] | None = None


@dataclass
class ChildKeys:
    """One CHILD SA's keys, SPIs and direction, as one side saw it."""

    sa: str  # its IKE SA's unique id
    name: str  # lan{3}
    spi_in: str
    spi_out: str
    initiator: bool  # this side initiated the CHILD SA
    keys: dict[str, bytes]  # "encryption initiator", "integrity responder", ...
    local: str | None = None  # the IKE SA's addresses, for the ESP table
    remote: str | None = None

    def sas(self) -> list[tuple[str, str, str, bytes, bytes]]:
        """(source, destination, SPI, encryption key, integrity key) of both directions."""
        mine = "initiator" if self.initiator else "responder"
        theirs = "responder" if self.initiator else "initiator"
        return [(self.local, self.remote, self.spi_out, self.keys.get(f"encryption {mine}", b""),
                 self.keys.get(f"integrity {mine}", b"")),
                (self.remote, self.local, self.spi_in,
                 self.keys.get(f"encryption {theirs}", b""),
                 self.keys.get(f"integrity {theirs}", b""))]


def read_log(text: str) -> tuple[list[IkeKeys], list[ChildKeys]]:
    """Every IKE SA's and CHILD SA's keys in a charon log; a key whose dump is cut short (a
    log rotated or truncated mid-dump) is left out, not guessed."""
    ike: dict[str, list[IkeKeys]] = {}  # IKE SA -> its key generations, in order
    children: list[ChildKeys] = []
    pending: dict[str, dict[str, bytes]] = {}  # IKE SA -> CHILD keys not yet given SPIs
    starting: dict[str, set[str]] = {}  # IKE SA -> CHILD SAs this side is establishing
    addresses: dict[str, tuple[str, str]] = {}
    dumping: tuple | None = None  # (IKE SA, key name, bytes wanted, bytes so far)
    for raw in text.splitlines():
        line = LINE.match(raw)
        if not line:
            continue
        sa, text_ = line.group("sa") or "", line.group("text")
        if dumping is not None:
            dump = DUMP.match(text_)
            if dump and sa == dumping[0]:
                data = dumping[3] + bytes.fromhex(dump.group("hex").replace(" ", ""))
                dumping = dumping[:3] + (data,)
                if len(data) >= dumping[2]:
                    _store(ike, pending, dumping[0], dumping[1], data[:dumping[2]])
                    dumping = None
                continue
            dumping = None  # cut short: left out
        if key := KEY.match(text_):
            name = key.group("name")
            if name == "Sk_d":
                generations = ike.setdefault(sa, [])
                generations.append(IkeKeys(sa, 2, len(generations)))
            # of the AUTH octets only the first 16 bytes, the SPIs, are wanted
            dumping = (sa, name, 16 if name == OCTETS else int(key.group("size")), b"")
        elif found := ESTABLISHING.match(text_):
            starting.setdefault(sa, set()).add(f"{found.group('child')}{{{found.group('id')}}}")
        elif found := BETWEEN.match(text_):
            addresses[sa] = (found.group("local").strip(), found.group("remote").strip())
        elif found := ESTABLISHED.match(text_):
            name = f"{found.group('child')}{{{found.group('id')}}}"
            local, remote = addresses.get(sa, (None, None))
            children.append(ChildKeys(sa, name, found.group("spi_in"), found.group("spi_out"),
                                      name in starting.get(sa, set()), pending.pop(sa, {}),
                                      local, remote))
    return [keys for generations in ike.values() for keys in generations], children


def _store(ike: dict, pending: dict, sa: str, name: str, data: bytes) -> None:
    if name == OCTETS:
        # Each side dumps the octets it signs and those it verifies: one begins with the
        # IKE_SA_INIT request, whose responder SPI is still zero; the response has both.
        first = ike.get(sa, [None])[0]
        if (first is not None and first.version == 2 and first.spis is None
                and any(data[8:16])):
            first.spis = (data[:8].hex(), data[8:16].hex())
    elif name == KA:
        generations = ike.setdefault(sa, [])
        generations.append(IkeKeys(sa, 1, len(generations), {"Ka": data}))
    elif name.startswith("Sk_"):
        if ike.get(sa) and ike[sa][-1].version == 2:
            ike[sa][-1].keys[name] = data
    else:
        pending.setdefault(sa, {})[name] = data


def assign_spis(keys: list[IkeKeys], alive: dict[str, tuple[int, str, str]]) -> None:
    """Give SPIs to the key sets the log left without: `alive` is what vici lists (unique id ->
    IKE version, initiator SPI, responder SPI). An IKE SA's own keys get its SPIs; a rekey's
    keys, logged in the old SA, get those of the one SA vici holds that has none of its own
    keys in the log and none of the log's SPIs (two such, and which is which is not known:
    left out, not guessed)."""
    known = {k.spis for k in keys if k.spis}
    for entry in keys:
        if entry.spis is None and entry.generation == 0 and entry.sa in alive:
            entry.spis = alive[entry.sa][1:]
            known.add(entry.spis)
    logged = {k.sa for k in keys}
    orphans = [entry for entry in keys if entry.spis is None and entry.generation > 0]
    unclaimed = [spis[1:] for sa, spis in alive.items()
                 if sa not in logged and spis[1:] not in known and spis[0] == 2]
    if len(orphans) == 1 and len(unclaimed) == 1:
        orphans[0].spis = unclaimed[0]


def ikev2_rows(keys: list[IkeKeys]) -> list[str]:
    """`ikev2_decryption_table` rows of the IKEv2 key sets with SPIs: hex unquoted (a quoted
    SPI fails: "Length of Initiator's SPI must be 8 octets"), algorithms by name."""
    rows = []
    for entry in keys:
        k = entry.keys
        if entry.version != 2 or entry.spis is None or not {"Sk_ei", "Sk_er"} <= set(k):
            continue
        rows.append(f'{entry.spis[0]},{entry.spis[1]},{k["Sk_ei"].hex()},{k["Sk_er"].hex()},'
                    f'"{IKE_ENCRYPTION}",{k.get("Sk_ai", b"").hex()},'
                    f'{k.get("Sk_ar", b"").hex()},"{IKE_INTEGRITY}"')
    return rows


def ikev1_rows(keys: list[IkeKeys]) -> list[str]:
    """`ikev1_decryption_table` rows: the initiator's cookie and Ka, hex unquoted."""
    return [f"{entry.spis[0]},{entry.keys['Ka'].hex()}" for entry in keys
            if entry.version == 1 and entry.spis is not None]


def esp_rows(children: list[ChildKeys]) -> list[str]:
    """`esp_sa` rows: both directions of every CHILD SA with keys and addresses."""
    rows = []
    for child in children:
        if child.local is None or child.remote is None:
            continue
        version = "IPv6" if ":" in child.local else "IPv4"
        for source, destination, spi, encryption, integrity in child.sas():
            if encryption and integrity:
                rows.append(f'"{version}","{source}","{destination}","0x{spi}",'
                            f'"{ESP_ENCRYPTION}","0x{encryption.hex()}",'
                            f'"{ESP_INTEGRITY}","0x{integrity.hex()}"')
    return rows


def tables(logs: dict[str, tuple[str, dict[str, tuple[int, str, str]]]]) -> dict[str, str]:
    """Wireshark's configuration files (name -> text) for every key in the logs: `logs` maps
    a node to (its charon log, what vici listed of its IKE SAs at the end). The same SA seen
    by both its sides is one row."""
    ikev2, ikev1, esp = [], [], []
    for text, alive in logs.values():
        keys, children = read_log(text)
        assign_spis(keys, alive)
        ikev2 += ikev2_rows(keys)
        ikev1 += ikev1_rows(keys)
        esp += esp_rows(children)
    return {"ikev2_decryption_table": _unique(ikev2), "ikev1_decryption_table": _unique(ikev1),
            "esp_sa": _unique(esp), "preferences": PREFERENCES}


def _unique(rows: list[str]) -> str:
    return "".join(f"{row}\n" for row in dict.fromkeys(rows))
