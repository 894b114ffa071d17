"""`ikelab gallery DIR`: a fixed set of named runs, each kept with its page, and an index.

What a teacher hands a class: each exhibit is one `ikelab run` with options that show one
thing, and the verdict that run must reach to show it (the first fails on purpose). The
exhibits are data (`EXHIBITS`), as strongSwan's testing tree keeps its scenarios. Each run's
directory moves into `DIR/<exhibit>/` with its `report.html`; `DIR/index.html` has a row per
exhibit with its verdict and a link to its page. While it runs, every line says which exhibit,
its step, and how many are left.
"""

import html
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..agent.names import Ownership

INDEX = "index.html"


@dataclass(frozen=True)
class Exhibit:
    name: str
    shows: str  # what a reader sees in it, one sentence
    options: tuple[str, ...]  # `ikelab run` options (the run is kept: --capture or --keep)
    ok: bool  # the verdict that shows it: False for the failure shown on purpose


EXHIBITS = (
    Exhibit("split-without-agent", "The hashing switch sends IKE_SA_INIT (UDP 500) to one "
            "member and IKE_AUTH (UDP 4500) to another; with no agent the second has no IKE SA, "
            "and the negotiation fails. The failure, on purpose.",
            ("--hash", "split", "--no-agent", "--peers", "1", "--timeout", "5", "--capture"),
            False),
    Exhibit("agent-table", "The agent mends it: the cluster-wide table decides one owner per "
            "IKE SA, and IKE_AUTH is forwarded to it over the sync network (CLAIM, ANNOUNCE, "
            "ACK, GRANT on the ladder).", ("--hash", "split", "--capture"), True),
    Exhibit("agent-table-label", "The same with the owner's index in the top byte of its IKE "
            "SPIs: most packets are routed by their label, without asking the table.",
            ("--hash", "split", "--ownership", Ownership.TABLE_LABEL, "--capture"), True),
    Exhibit("agent-stateless", "Stateless ownership: the SPI's label alone routes IKE; the "
            "table only remembers.", ("--hash", "split", "--ownership", Ownership.STATELESS,
                                      "--capture"), True),
    Exhibit("nat", "A peer behind a NAT: IKE and ESP over UDP 4500 from the NAT's port, hashed "
            "like any flow.", ("--hash", "split", "--nat", "--capture"), True),
    Exhibit("ikev1", "IKEv1: Main Mode and Quick Mode, all Message ID 0 in Main Mode, through "
            "the same split.", ("--hash", "split", "--ike", "1", "--capture"), True),
    Exhibit("owner-death", "The member holding p1's tunnel dies: the others count it dead "
            "within 0.6 s and one takes its tunnels over (member-died and takeover on the "
            "ladder's sync lanes); p1's LAN keeps pinging (owner-death.png).",
            ("--hash", "split", "--peers", "2", "--chaos", "owner-death", "--capture"), True),
    Exhibit("drain", "The member holding p1's tunnel is drained: each of its tunnels is handed "
            "over make-before-break (handover on the ladder), then it takes its share back.",
            ("--peers", "4", "--chaos", "drain", "--capture"), True),
    Exhibit("flood", "p1 floods the virtual IP with 1000 spoofed IKE_SA_INIT a second for 10 s: "
            "the cookies and the agents' bounded tables keep every tunnel and its traffic "
            "(flood.png; the agents' counters on the page).",
            ("--peers", "3", "--chaos", "flood", "--keep"), True),
    Exhibit("rehash-mid-negotiation", "The switches rehash between a negotiation's "
            "IKE_SA_INIT and its IKE_AUTH: the IKE_AUTH reaches another member, which forwards "
            "it to the owner the table names (the last peer's ladder).",
            ("--hash", "l4", "--peers", "2", "--chaos", "rehash-mid-negotiation", "--capture"),
            True),
    Exhibit("chaos", "Owner death (its tunnels taken over, INITIAL_CONTACT), a live rehash of "
            "the switches, a rehash with an owner drained (make-before-break handover), a "
            "partition and links cut: every step recovers (chaos.png).",
            ("--hash", "split", "--peers", "3", "--chaos", "--keep"), True),
)


class GalleryError(ValueError):
    """A gallery that cannot be made (a bad directory, an unknown exhibit); one line."""


def chosen(only: str | None) -> list[Exhibit]:
    """The exhibits named in `only` (comma-separated), in gallery order; all without it."""
    if not only:
        return list(EXHIBITS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {e.name for e in EXHIBITS}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise GalleryError(f"no exhibit {unknown[0] if unknown else only!r}: choose from "
                           f"{', '.join(e.name for e in EXHIBITS)}")
    return [e for e in EXHIBITS if e.name in names]


def prepare(directory: Path) -> Path:
    """The gallery's directory, made if missing; a file there, or a directory this process may
    not write, is a GalleryError."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GalleryError(f"{directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ".writable").touch()
        (directory / ".writable").unlink()
    except OSError as exc:
        raise GalleryError(f"{directory}: cannot write there ({exc.strerror})") from None
    return directory


def run_exhibit(exhibit: Exhibit, directory: Path, say) -> dict:
    """Run one exhibit (`ikelab run --json`), echoing its progress through `say`; move its
    run directory to `directory/<name>`. Its row of the index."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as report_file:  # a pipe could fill while stderr is read
        process = subprocess.Popen([sys.executable, "-m", "lab", "run", "--json",
                                    *exhibit.options], stdout=report_file,
                                   stderr=subprocess.PIPE, text=True)
        for line in process.stderr:  # the run's progress, a step a line
            if line.strip():
                say(line.strip())
        process.wait()
        report_file.seek(0)
        out = report_file.read()
    row = {"name": exhibit.name, "shows": exhibit.shows, "options": " ".join(exhibit.options),
           "expected_ok": exhibit.ok, "seconds": round(time.monotonic() - started, 1),
           "exit": process.returncode, "ok": None, "page": None}
    try:
        report = json.loads(out)
    except ValueError:
        return row  # no report: the run did not happen (its last line said why)
    row["ok"] = report["ok"]
    if report.get("run_dir"):
        target = directory / exhibit.name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(report["run_dir"], target)
        if (target / "report.html").exists():
            row["page"] = f"{exhibit.name}/report.html"
            say(f"kept as {target}, its page {target / 'report.html'}")
    return row


def write_index(directory: Path, rows: list[dict]) -> Path:
    """`directory/index.html`: a row per exhibit, its verdict against the one it should reach."""
    cells = []
    for row in rows:
        shown = row["ok"] is not None and row["ok"] == row["expected_ok"]
        verdict = ("no report" if row["ok"] is None else "OK" if row["ok"] else "failed")
        link = (f"<a href='{html.escape(row['page'])}'>{html.escape(row['name'])}</a>"
                if row["page"] else html.escape(row["name"]))
        cells.append(f"<tr class='{'yes' if shown else 'no'}'><td>{link}</td>"
                     f"<td>{html.escape(row['shows'])}</td>"
                     f"<td><code>ikelab run {html.escape(row['options'])}</code></td>"
                     f"<td>{'OK' if row['expected_ok'] else 'failed'}</td><td>{verdict}</td>"
                     f"<td>{'as it should' if shown else 'NOT as it should'}</td>"
                     f"<td>{row['seconds']:.0f} s</td></tr>")
    index = directory / INDEX
    index.write_text(
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>ikelab gallery"
        "</title><style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}"
        "tr.yes td:nth-child(6){color:#1b7a2e}tr.no td:nth-child(6){color:#b71c1c;"
        "font-weight:bold}</style></head><body>\n<h1>ikelab gallery</h1>\n<p>Each row is one "
        "lab run, kept with its page: the lab's picture, the report, a ladder per peer, the "
        "captures and the keys that decrypt them.</p>\n<table><tr><th>exhibit</th><th>what it "
        "shows</th><th>the run</th><th>should end</th><th>ended</th><th></th><th>took</th>"
        "</tr>\n" + "\n".join(cells) + "\n</table>\n</body></html>\n")
    return index


def make(directory: Path, exhibits: list[Exhibit], say=print) -> tuple[Path, list[dict]]:
    """Run every exhibit in turn into `directory`; the index and its rows."""
    directory = prepare(directory)
    rows = []
    for n, exhibit in enumerate(exhibits, 1):
        left = len(exhibits) - n
        prefix = f"[{n}/{len(exhibits)} {exhibit.name}, {left} left]"
        say(f"{prefix} ikelab run {' '.join(exhibit.options)}")
        rows.append(run_exhibit(exhibit, directory, lambda line, p=prefix: say(f"{p} {line}")))
        write_index(directory, rows)  # a gallery cut short still has its index
    return directory / INDEX, rows
