"""The CHILD SAs our charon has installed, kept from its events rather than read again and
again: with a crowd, a member's charon holds a thousand SAs, and listing them all after every
burst of events cost an agent a fifth of a core (vici's messages are parsed in Python).

`Holdings` starts from one full read (`reset`, from `list-sas`), follows `child-updown`,
`child-rekey`, `ike-updown` and `ike-rekey` (`apply`), and is read again from scratch now and
then by its owner, so a missed event cannot leave a prefix wrong for long. Pure: the shell
(`io.charon.CharonListener`) feeds it.
"""


class Holdings:
    def __init__(self):
        # CHILD SA unique id -> (its IKE SA's unique id, initiator SPI, remote prefixes)
        self.children: dict[str, tuple[str, bytes, tuple[str, ...]]] = {}

    def reset(self, sas: list[dict]) -> None:
        """Start again from every IKE SA charon holds (`list-sas`, decoded)."""
        self.children = {}
        for sa in sas:
            self._add_children(sa)

    def apply(self, event: str, message: dict) -> bool:
        """Follow one vici event (decoded): CHILD SAs come, go and rekey; an IKE SA that
        rekeys hands them to its successor. True when the events cannot say what is held
        and charon must be read again (`reset`): an IKE SA went down while CHILD SAs were
        still ours under it. Either it took them along (charon said nothing of them), or
        they had moved on without a word: an IKEv1 reauthentication adopts the old IKE
        SA's CHILD SAs into the new one silently, then deletes the old one (found by
        scripts/bench_rekey.py: the LAN's steering went, 10 s after each IKEv1 rekey)."""
        up = message.get("up") == "yes"
        uncertain = False
        for sa in (v for v in message.values() if isinstance(v, dict)):
            if event == "ike-rekey":
                old, new = sa.get("old", {}), sa.get("new", {})
                moved = _ispi(new)
                for cid, (ike, ispi, ts) in list(self.children.items()):
                    if ike == str(old.get("uniqueid")):
                        self.children[cid] = (str(new.get("uniqueid")), moved, ts)
            elif event == "ike-updown" and not up:
                gone = str(sa.get("uniqueid"))
                kept = {cid: v for cid, v in self.children.items() if v[0] != gone}
                uncertain = uncertain or len(kept) < len(self.children)
                self.children = kept
            elif event in ("child-updown", "child-rekey"):
                self._add_children(sa, removing=event == "child-updown" and not up)
        return uncertain

    def _add_children(self, sa: dict, removing: bool = False) -> None:
        ike, ispi = str(sa.get("uniqueid")), _ispi(sa)
        for child in _children(sa):
            cid = str(child.get("uniqueid"))
            if not removing and child.get("state") == "INSTALLED":
                self.children[cid] = (ike, ispi, tuple(child.get("remote-ts", [])))
            else:
                self.children.pop(cid, None)

    def installed(self) -> frozenset:
        """(initiator SPI, remote prefix) of every INSTALLED CHILD SA."""
        return frozenset((ispi, ts) for _ike, ispi, prefixes in self.children.values()
                         for ts in prefixes)


def _children(sa: dict) -> list[dict]:
    """The CHILD SAs an IKE SA dict lists: `child-sas` holds them by name, or (child-rekey)
    as `old` and `new`."""
    return [c for c in sa.get("child-sas", {}).values() if isinstance(c, dict)]


def _ispi(sa: dict) -> bytes:
    try:
        return bytes.fromhex(sa.get("initiator-spi", ""))
    except ValueError:
        return b""
