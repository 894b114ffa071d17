"""Pictures of the lab, drawn with matplotlib: the ladder of one peer's negotiations, the
chaos run's ping timeline, benchmark timelines and the lab's topology.

Every function writes one file whose format (SVG or PNG) follows its extension. Text stays
text in an SVG (`svg.fonttype = none`): a browser can search it, and a test can read it.
"""

from pathlib import Path

FORMATS = (".svg", ".png")
MAX_ARROWS = 300  # a long run's ladder is cut here (the title says so)
COLOURS = {"request": "#1f5fbf", "response": "#2a8f3a", "message": "#1f5fbf",
           "forward": "#e07b00", "void": "#c62828", "dropped": "#777777",
           "protocol": "#6a3d9a"}


class PlotError(ValueError):
    """A picture that cannot be drawn (an unknown format, nothing to draw); one line."""


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt
    return plt


def check_format(path: Path) -> None:
    if Path(path).suffix.lower() not in FORMATS:
        raise PlotError(f"{path}: the file name must end in .svg or .png")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120 if path.suffix.lower() == ".png" else None,
                bbox_inches="tight")
    _pyplot().close(fig)
    return path


def draw_ladder(ladder, path: Path, title: str = "") -> Path:
    """The ladder (`lab.show.ladder.Ladder`) as a sequence diagram in `path`: a row per message (and
    per CHILD SA installed), the sync network's lanes shaded beside the members', a claim's wait
    as a bar on its member's lane. In an SVG every arrow and label has a hover title (SPIs,
    Message ID, what the agent decided)."""
    check_format(path)
    if not ladder.arrows:
        raise PlotError(f"no IKE message of {ladder.peer} in this run")
    plt = _pyplot()
    events = sorted([(a.t, 0, n, a) for n, a in enumerate(ladder.arrows)]
                    + [(m.t, 1, n, m) for n, m in enumerate(ladder.marks)])[:MAX_ARROWS]
    x, gap = {}, 0.0
    for i, lane in enumerate(ladder.lanes):
        if lane.startswith("sync:") and not any(k.startswith("sync:") for k in x):
            gap = 0.8  # the sync network stands apart from the members
        x[lane] = 2.4 * i + gap
    rows = len(events)
    fig, ax = plt.subplots(figsize=(max(8.0, 2.4 * len(ladder.lanes) + 3.3), 1.8 + 0.34 * rows))
    top, bottom = 1.0, -rows
    sync = [lx for lane, lx in x.items() if lane.startswith("sync:")]
    if sync:
        ax.axvspan(min(sync) - 1.0, max(sync) + 1.0, color="#f1ebf7", zorder=0)
        ax.text((min(sync) + max(sync)) / 2, top + 1.05, "sync network", ha="center",
                va="bottom", fontsize=10, color="#6a3d9a", fontweight="bold")
    for lane, lx in x.items():
        held = lane == ladder.holder
        if held:
            ax.axvspan(lx - 0.9, lx + 0.9, color="#fff3c4", zorder=0)
        ax.plot([lx, lx], [bottom - 0.5, top], color="#444444" if lane != "switch" else "#999999",
                linewidth=1.6 if held else 1.0, linestyle="-" if lane != "switch" else ":",
                zorder=1)
        name = {"switch": "hashing switch"}.get(lane, lane.removeprefix("sync:"))
        ax.text(lx, top + 0.3, name + ("\n(holds the IKE SA)" if held else ""), ha="center",
                va="bottom", fontsize=10, fontweight="bold" if held else "normal",
                bbox={"boxstyle": "round", "facecolor": "#ffe28a" if held else (
                    "#e4d7f0" if lane.startswith("sync:") else "#eeeeee"),
                      "edgecolor": "#444444"})
    t0 = events[0][0]
    row_at = [t for t, *_ in events]
    titles = {}
    for row, (t, is_mark, n, item) in enumerate(events):
        y = -row
        if is_mark:
            ax.plot([x[item.lane]], [y], marker="s", markersize=7, color="#2a8f3a", zorder=4,
                    gid=f"ladder-mark-{n}")
            ax.text(x[item.lane] + 0.15, y, item.text, ha="left", va="center", fontsize=7,
                    color="#2a8f3a", gid=f"ladder-marktext-{n}")
            titles[f"ladder-mark-{n}"] = titles[f"ladder-marktext-{n}"] = item.title
        else:
            _draw_arrow(ax, x, item, y, n, titles)
        ax.text(-1.2, y, f"{t - t0:8.3f} s", ha="right", va="center", fontsize=7,
                family="monospace", color="#555555")
    for span in ladder.spans:
        if span.lane not in x:
            continue
        first = next((r for r, t in enumerate(row_at) if t >= span.t0), rows - 1)
        last = next((r for r, t in enumerate(row_at) if t >= span.t1), rows - 1)
        ax.plot([x[span.lane] - 0.18] * 2, [-first, -last], color="#d4a017", linewidth=5,
                alpha=0.6, solid_capstyle="butt", zorder=2)
        ax.text(x[span.lane] - 0.3, -(first + last) / 2, f"{span.text}\n"
                f"{(span.t1 - span.t0) * 1000:.1f} ms", ha="right", va="center", fontsize=6.5,
                color="#8a6d00")
    cut = f" (first {MAX_ARROWS} of {len(ladder.arrows) + len(ladder.marks)} rows)" if len(
        ladder.arrows) + len(ladder.marks) > MAX_ARROWS else ""
    ax.set_title((title or f"IKE of {ladder.peer} across the cluster") + cut, fontsize=11,
                 pad=52 if sync else 40)
    handles = [plt.Line2D([], [], color=COLOURS[k], linestyle=LINESTYLES.get(k, "-"),
                          label=text)
               for k, text in (("request", "request (peer or member)"), ("response", "response"),
                               ("forward", "IKE forwarded over the sync network"),
                               ("protocol", "ownership protocol (CLAIM, ANNOUNCE, ...)"),
                               ("void", "reached a member without the IKE SA"),
                               ("dropped", "dropped by the agent"))]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
              fontsize=8, frameon=False)
    ax.set_xlim(-2.6, x[ladder.lanes[-1]] + 2.2)
    ax.set_ylim(bottom - 0.8, top + 1.6)
    ax.axis("off")
    saved = _save(fig, path)
    if saved.suffix.lower() == ".svg":
        _add_titles(saved, titles)
    return saved


LINESTYLES = {"forward": "--", "protocol": ":"}


def _draw_arrow(ax, x: dict, arrow, y: float, n: int, titles: dict) -> None:
    colour = COLOURS[arrow.kind]
    x0, x1 = x[arrow.src], x[arrow.dst]
    drawn = ax.annotate("", xy=(x1, y), xytext=(x0, y), zorder=3,
                        arrowprops={"arrowstyle": "-|>", "color": colour,
                                    "linestyle": LINESTYLES.get(arrow.kind, "-"),
                                    "linewidth": 1.4, "shrinkA": 0, "shrinkB": 2})
    drawn.arrow_patch.set_gid(f"ladder-arrow-{n}")
    if arrow.kind not in ("forward", "protocol") and "switch" in x:
        ax.plot([x["switch"]], [y], marker="o", markersize=4, color=colour, zorder=4)
    ax.text((x0 + x1) / 2, y + 0.08, arrow.label, ha="center", va="bottom", fontsize=7.5,
            color=colour, zorder=5, gid=f"ladder-label-{n}")
    titles[f"ladder-arrow-{n}"] = titles[f"ladder-label-{n}"] = arrow.title
    if arrow.kind in ("void", "dropped"):
        ax.text(x1 + (0.15 if x1 >= x0 else -0.15), y, f"x {arrow.note}",
                ha="left" if x1 >= x0 else "right", va="center", fontsize=7.5,
                color=colour, fontweight="bold")
    elif arrow.note:
        ax.text(x1 + 0.15, y - 0.1, arrow.note, ha="left", va="top", fontsize=6.5,
                color="#555555")


def _add_titles(path: Path, titles: dict) -> None:
    """Give the SVG's groups of these ids a <title>: a browser shows it on hover."""
    from xml.sax.saxutils import escape

    text = path.read_text()
    for gid, title in titles.items():
        if title:
            text = text.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{escape(title)}</title>',
                                1)
    path.write_text(text)


def draw_lines(series: dict, marks: list, path: Path, title: str, ylabel: str,
               xlabel: str = "seconds", logx: bool = False, hlines: tuple = ()) -> Path:
    """Lines of (x, y) points per name in `series` (a y of None is a gap), with vertical
    `marks` (x, text) and horizontal `hlines` (y, text): a benchmark's figures."""
    check_format(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.5 * len(series)))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o",
                    label=name, linewidth=1.2)
    for at, text in hlines:
        ax.axhline(at, color="#777777", linestyle="--", linewidth=1)
        ax.text(0.0, at, f" {text}", va="bottom", ha="left", fontsize=7, color="#555555",
                transform=ax.get_yaxis_transform())
    if logx:
        from matplotlib.ticker import ScalarFormatter
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1000, not 2^9.97
    for at, text in marks:
        ax.axvline(at, color="#c62828", linestyle=":", linewidth=1)
        ax.text(at, 1.0, f" {text}", rotation=90, va="top", ha="left", fontsize=7,
                color="#c62828", transform=ax.get_xaxis_transform())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def draw_boxes(groups: dict, path: Path, title: str, ylabel: str) -> Path:
    """One box per name in `groups` (name -> list of values): a benchmark's repeats."""
    check_format(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups)), 4))
    names = list(groups)
    ax.boxplot([groups[n] or [0] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def draw_replies(replies: dict, marks: list, path: Path, title: str) -> Path:
    """One row of ticks per name in `replies` (name -> times of the replies, seconds): a gap
    in a row is an outage. `marks` (x, text) are numbered vertical lines, their texts listed
    under the plot."""
    check_format(path)
    plt = _pyplot()
    names = list(replies)
    fig, ax = plt.subplots(figsize=(12, 1.8 + 0.45 * len(names) + 0.18 * len(marks)))
    ax.eventplot([replies[n] for n in names], lineoffsets=range(len(names)), linelengths=0.7,
                 linewidths=0.6, colors="#2a8f3a")
    for number, (at, _text) in enumerate(marks, 1):
        ax.axvline(at, color="#c62828", linestyle=":", linewidth=1)
        ax.text(at, 1.01, str(number), va="bottom", ha="center", fontsize=8,
                color="#c62828", fontweight="bold", transform=ax.get_xaxis_transform())
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("seconds")
    ax.set_title(title, pad=16)
    ax.grid(axis="x", alpha=0.3)
    if marks:
        listing = "\n".join(f"{n}  {text}  (at {at:.1f} s)"
                             for n, (at, text) in enumerate(marks, 1))
        ax.text(0.0, -0.25, listing, transform=ax.transAxes, va="top", ha="left",
                fontsize=8, color="#c62828")
    return _save(fig, path)


def draw_topology(plan, path: Path) -> Path:
    """The lab a `lab.plan.topology.Plan` describes: every node, every cable with the interfaces
    and addresses at its ends, and on each switch the port number of each cable (a member's
    port on a hashing switch is its bucket: `bucket i` = member i)."""
    check_format(path)
    plt = _pyplot()
    hosts = {h.name: h for h in plan.hosts()}
    peers = list(plan.peers)
    members = list(plan.members)
    rows = max(len(peers), len(members), 2)
    gap = 1.4  # between rows

    def spread(n: int, i: int) -> float:  # row i of n, centred in the rows
        return gap * ((rows - n) / 2 + i)

    pos = {}
    for i, p in enumerate(peers):
        y = spread(len(peers), i)
        pos[p.lan_host], pos[p.name] = (0.0, y), (3.4, y)
        if p.behind_nat:
            pos["r1"] = (5.4, y)
    switches = {s.role: s for s in plan.switches}
    mid = gap * (rows - 1) / 2
    pos[switches["external"].name] = (7.6, mid)
    for i, m in enumerate(members):
        pos[m.name] = (10.6, spread(len(members), i))
    pos[switches["sync"].name] = (12.2, gap * rows)
    pos[switches["internal"].name] = (13.8, mid)
    pos[plan.lan_host.name] = (16.6, mid)
    fig, ax = plt.subplots(figsize=(20, 3.0 + 1.1 * rows))

    def address(node: str, intf: str) -> str:
        host = hosts.get(node)
        if host is None:
            return intf
        found = next((i for i in host.interfaces if i.name == intf), None)
        if not found or not found.addresses:
            return intf
        return f"{intf} " + " ".join(str(a) for a in found.addresses)

    def cable(a: str, b: str, a_text: str, b_text: str, colour: str = "#555555") -> None:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        ax.plot([xa, xb], [ya, yb], color=colour, linewidth=1, zorder=1)
        for (x0, y0), (x1, y1), text in (((xa, ya), (xb, yb), a_text),
                                         ((xb, yb), (xa, ya), b_text)):
            ax.text(x0 + (x1 - x0) * 0.3, y0 + (y1 - y0) * 0.3, text, fontsize=6.5,
                    ha="center", color=colour, zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})

    for switch in plan.switches:
        colour = {"external": "#1f5fbf", "internal": "#2a8f3a", "sync": "#e07b00"}[switch.role]
        for port in switch.ports:
            hashing = switch.role != "sync" and port.port < 100
            cable(switch.name, port.node,
                  f"port {port.port}" + (f" (bucket {port.port})" if hashing else ""),
                  address(port.node, port.interface), colour)
    for link in plan.host_links:
        cable(link.a, link.b, address(link.a, link.a_intf), address(link.b, link.b_intf))
    kinds = {"member": "#ffe28a", "peer": "#cfe0ff", "lan-host": "#e8e8e8",
             "nat-router": "#f3d0ff"}
    for name, (x, y) in pos.items():
        host = hosts.get(name)
        if host is None:
            switch = next(s for s in plan.switches if s.name == name)
            text = {"external": f"{name}\nexternal hashing switch\nVIP {switch.vip}",
                    "internal": f"{name}\ninternal hashing switch\nVIP {switch.vip}",
                    "sync": f"{name}\nsync network\n10.255.0.0/24"}[switch.role]
            face = "#dddddd"
        else:
            text = {"member": f"{name}\ncluster member", "peer": f"{name}\nVPN peer",
                    "lan-host": f"{name}\nLAN host",
                    "nat-router": f"{name}\nNAT router"}[host.role]
            face = kinds[host.role]
        ax.text(x, y, text, ha="center", va="center", fontsize=8, zorder=5,
                bbox={"boxstyle": "round", "facecolor": face, "edgecolor": "#444444"})
    spec = plan.spec
    ax.set_title(f"ikelab: {spec.members} members, {spec.peers} peers, hash {spec.hash}, "
                 f"mode {spec.mode}" + (", NAT" if spec.nat else ""))
    ax.set_xlim(-1, 17.6)
    ax.set_ylim(-1.0, gap * rows + 0.8)
    ax.invert_yaxis()
    ax.axis("off")
    return _save(fig, path)


def draw_crowd_members(per_member: dict[str, int], path: Path, title: str) -> Path:
    """Bars of tunnels per member, with the mean as a line: how evenly the hash spread the
    crowd."""
    check_format(path)
    if not per_member:
        raise PlotError("no member holds a crowd tunnel")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(per_member) + 2), 3.2))
    names, counts = list(per_member), list(per_member.values())
    ax.bar(names, counts, color="#1f5fbf")
    mean = sum(counts) / len(counts)
    ax.axhline(mean, color="#c62828", linestyle="--", linewidth=1)
    ax.text(0.0, mean, f" mean {mean:.0f}", va="bottom", ha="left", fontsize=8,
            color="#c62828", transform=ax.get_yaxis_transform())
    for x, n in enumerate(counts):
        ax.text(x, n, str(n), ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel("tunnels held")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def draw_bringup(curve: list[float], total: int, path: Path, title: str) -> Path:
    """Sites up against seconds since the first initiation (a step per site)."""
    check_format(path)
    if not curve:
        raise PlotError("no site came up")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.step([0.0] + list(curve), range(len(curve) + 1), where="post", color="#1f5fbf")
    ax.axhline(total, color="#777777", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds since the first site initiated")
    ax.set_ylabel("sites up")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)
