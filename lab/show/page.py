"""One page per kept run: `report.html` in its run directory, one self-contained file.

It holds the lab's picture, the report, one ladder per peer, the plots the run made, the
agents' counters and ownership tables as the run ended, and links to the run's files (pcaps,
key tables, rendered configs, logs, traces). Pictures are inline (SVG as markup, PNG as data
URIs) and the style is in the page: it opens from a copied directory, with no network, in
any browser. Links are relative, so the directory can move.

Written after the lab is torn down, when the traces, captures and key tables are complete.
"""

import base64
import html
import json
import re
from pathlib import Path

from ..plan.topology import EXTERNAL_VIP, EXTERNAL_VIP6, Plan
from . import ladder as ladders
from .plots import PlotError, draw_ladder, draw_topology
from .report import format_text

PAGE = "report.html"
PICTURES = "pictures"  # the page's SVGs, also kept as files beside it
AGENTS = "agents.json"  # the agents' counters and tables as the main job ended
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1600px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.ok { color: #1b7a2e; } .bad { color: #b71c1c; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 0.5em 0 1.5em 0; overflow-x: auto; } figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
img { max-width: 100%; }
"""


def write_page(run_path: Path, plan: Plan, report: dict) -> Path:
    """Write `<run dir>/report.html` for this run's `report` and return its path."""
    run_path = Path(run_path)
    pictures = run_path / PICTURES
    pictures.mkdir(exist_ok=True)
    verdict = ("all is well" if report["ok"] else
               "something failed: the report below says what")
    parts = [f"<h1>ikelab run {html.escape(run_path.name)}: "
             f"<span class='{'ok' if report['ok'] else 'bad'}'>{verdict}</span></h1>",
             "<h2>The lab</h2>", _figure(draw_topology(plan, pictures / "topology.svg")),
             "<h2>The report</h2>", f"<pre>{html.escape(format_text(report))}</pre>",
             "<h2>Each peer's negotiations across the cluster</h2>",
             "<p>Hover over an arrow for its SPIs, Message ID and what the agent decided.</p>"]
    parts += _ladders(run_path, plan, pictures)
    plots = sorted(p for p in run_path.glob("*.png"))
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f"<figure><img alt='{html.escape(p.name)}' src='data:image/png;base64,"
                  f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption>"
                  f"{html.escape(p.name)}</figcaption></figure>" for p in plots]
    parts += _agents(run_path)
    parts += _files(run_path)
    page = run_path / PAGE
    page.write_text("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                    f"<title>ikelab run {html.escape(run_path.name)}</title>"
                    f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts)
                    + "\n</body></html>\n")
    return page


def _figure(svg_path: Path) -> str:
    """An SVG file as inline markup (its XML prologue dropped)."""
    text = svg_path.read_text()
    return f"<figure>{text[text.index('<svg'):]}</figure>"


def _ladders(run_path: Path, plan: Plan, pictures: Path) -> list[str]:
    members = [m.name for m in plan.members]
    try:
        seen = ladders.load(run_path, members, (str(EXTERNAL_VIP), str(EXTERNAL_VIP6)))
    except ladders.LadderError as exc:
        return [f"<p>No ladders: {html.escape(str(exc))}</p>"]
    if not seen:
        return ["<p>No ladders: this run kept neither agent traces nor captures.</p>"]
    protocol = ladders.load_protocol(run_path, members)
    parts = []
    for peer in plan.peers:
        drawn = ladders.build(peer.name, str(peer.seen_as), members, seen, protocol,
                              ladders.load_payloads(run_path, peer.name))
        try:
            path = draw_ladder(drawn, pictures / f"ladder-{peer.name}.svg",
                               f"IKE of {peer.name} ({peer.seen_as}) across the cluster")
        except PlotError as exc:
            parts.append(f"<p>{html.escape(peer.name)}: {html.escape(str(exc))}</p>")
            continue
        parts += [f"<h3>{html.escape(peer.name)}</h3>", _figure(path)]
    return parts


def _agents(run_path: Path) -> list[str]:
    try:
        agents = json.loads((run_path / AGENTS).read_text())
    except (OSError, ValueError):
        return []
    parts = ["<h2>The agents as the run ended</h2>"]
    names = sorted({k for a in agents.values() for k in a.get("counters", {})})
    parts.append("<table><tr><th>counter</th>" + "".join(
        f"<th>{html.escape(m)}</th>" for m in agents) + "</tr>" + "".join(
        f"<tr><td>{html.escape(n)}</td>" + "".join(
            f"<td>{a.get('counters', {}).get(n, '')}</td>" for a in agents.values()) + "</tr>"
        for n in names) + "</table>")
    for member, agent in agents.items():
        table = agent.get("table", [])
        parts.append(f"<h3>{html.escape(member)}'s ownership table ({len(table)} entries)</h3>")
        if table:
            columns = list(table[0]) if isinstance(table[0], dict) else []
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>"
                                                 for c in columns) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>"
                                 for c in columns) + "</tr>" for row in table[:200]) + "</table>")
    return parts


# What a reader of a run may want to open, by kind; relative links, in this order.
FILES = (("captures (Wireshark; `ikelab wireshark` decrypts them)", "captures/*.pcap"),
         ("key tables (Wireshark's, from charon's log: lab use only)", "keys/*"),
         ("rendered configs", "strongswan_*.conf"), ("", "swanctl_*/swanctl.conf"),
         ("", "agent_*.json"), ("logs", "charon_*.log"), ("", "agent_*.log"),
         ("agents' decision traces", "trace_*.jsonl"), ("pictures", f"{PICTURES}/*.svg"))


def _files(run_path: Path) -> list[str]:
    parts = ["<h2>The run's files</h2>", "<ul>"]
    for label, pattern in FILES:
        found = sorted(run_path.glob(pattern))
        if not found:
            continue
        links = ", ".join(f"<a href='{html.escape(str(p.relative_to(run_path)))}'>"
                          f"{html.escape(str(p.relative_to(run_path)))}</a>" for p in found)
        parts.append(f"<li>{html.escape(label) + ': ' if label else ''}{links}</li>")
    parts.append("</ul>")
    return parts


def resources(page: Path) -> list[str]:
    """Every `src` and `href` the page refers to (a test checks each resolves)."""
    return re.findall(r"(?:src|href)='([^']*)'", page.read_text())
