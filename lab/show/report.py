"""The report of `ikelab run`: what every daemon and switch said, judged and printed.

Pure: it takes the SAs read over vici, the switch's answers and the ping counts, and returns a
dict with a stable shape (`--json` prints it as is; README documents it) or its text form.
A tunnel is good when the peer's IKE SA is ESTABLISHED, exactly one member holds it, its CHILD
SA is INSTALLED, and LAN-to-LAN traffic passed both ways.
"""

SHAPE_VERSION = 3  # 2: `crowd`; 3: `ip`, IPv6 traffic, no `warnings` (a lost ping is a problem)


def holder_states(initiator_spi: str | None, member_sas: dict[str, dict]) -> dict[str, str]:
    """member -> state of its IKE SA with this initiator SPI (the IKE cookie), for the members
    holding one; ESTABLISHED wins when a member holds several."""
    result = {}
    for member, sas in member_sas.items():
        states = [sa["state"] for sa in sas.values()
                  if initiator_spi and sa.get("initiator-spi") == initiator_spi]
        if states:
            result[member] = "ESTABLISHED" if "ESTABLISHED" in states else states[0]
    return result


def _child_sas(peer_sa: dict | None, member_sas: dict[str, dict]) -> list[dict]:
    if not peer_sa:
        return []
    result = []
    for child in peer_sa.get("child-sas", {}).values():
        holders = sorted(
            member for member, sas in member_sas.items() for sa in sas.values()
            for theirs in sa.get("child-sas", {}).values()
            if theirs.get("spi-in") == child.get("spi-out"))
        result.append({"name": child.get("name"), "state": child.get("state"),
                       "spi_in": child.get("spi-in"), "spi_out": child.get("spi-out"),
                       "local_ts": child.get("local-ts", []),
                       "remote_ts": child.get("remote-ts", []), "holders": holders})
    return result


def _newest(sas: dict[str, dict]) -> dict | None:
    """The peer's IKE SA that matters: an established one if any, else the latest."""
    if not sas:
        return None
    established = [sa for sa in sas.values() if sa.get("state") == "ESTABLISHED"]
    pool = established or list(sas.values())
    return max(pool, key=lambda sa: int(sa.get("uniqueid", 0)))


def ownership_of(ispi: str | None, agents: dict[str, dict]) -> tuple[list[str], int]:
    """(owners named by the members' tables for this IKE SA, IKE packets forwarded for it)."""
    if not ispi or not agents:
        return [], 0
    owners, forwarded = set(), 0
    for status in agents.values():
        for row in status.get("table", []):
            if row["key"] in (f"{ispi}/0/i", f"{ispi}/0/-"):
                owners.add(row["owner"])
        forwarded += status.get("forwarded_by_spi", {}).get(ispi, 0)
    return sorted(owners), forwarded


def tunnel_report(peer: str, ike_version: int, peer_sas: dict[str, dict],
                  member_sas: dict[str, dict], paths: dict[str, str | None],
                  traffic: dict[str, dict], up_after: float | None,
                  last_sa: dict | None = None, agents: dict[str, dict] | None = None) -> dict:
    """One tunnel's entry: daemon state, holders, switch paths, traffic, and what went wrong.

    `last_sa` is the peer's IKE SA as last seen, for a negotiation the peer has since given up.
    """
    current = _newest(peer_sas)
    sa = current or last_sa
    if current:
        state = current["state"]
    else:
        state = f"GAVE_UP (was {last_sa['state']})" if last_sa else "NONE"
    states = holder_states(sa.get("initiator-spi") if sa else None, member_sas)
    established_on = sorted(m for m, s in states.items() if s == "ESTABLISHED")
    children = _child_sas(current, member_sas)
    traffic_ok = (all(0 < traffic.get(d, {}).get("received", 0) == traffic[d].get("sent", 0)
                      for d in ("to_peer", "from_peer", "to_peer6", "from_peer6")
                      if d in traffic or not d.endswith("6"))
                  and all(traffic.get(f"tcp_{d}", {}).get("bytes", 0) > 0
                          for d in ("to_peer", "from_peer")))
    problems = []
    if state != "ESTABLISHED":
        problems.append(f"IKE SA not established on {peer} (state {state})")
        half_open = sorted(m for m, s in states.items() if s != "ESTABLISHED")
        natt = paths.get("udp4500")
        if half_open and natt and natt not in half_open:
            problems.append(f"the switch sends {peer}'s UDP 4500 (IKE_AUTH) to {natt}, "
                            f"which does not hold the IKE SA (half-open on "
                            f"{', '.join(half_open)})")
    if len(established_on) > 1:
        problems.append(f"IKE SA held by {len(established_on)} members: "
                        f"{', '.join(established_on)}")
    elif state == "ESTABLISHED" and not established_on:
        problems.append("no member holds the established IKE SA")
    owners, forwarded = ownership_of(sa.get("initiator-spi") if sa else None, agents or {})
    steered = {kind: sum(a.get("steering", {}).get("counters", {}).get(f"{kind} {peer}", 0)
                         for a in (agents or {}).values()) for kind in ("esp", "lan")}
    if agents and len(owners) > 1:
        problems.append(f"the members' tables disagree on the owner: {', '.join(owners)}")
    elif agents and established_on and owners and owners != established_on:
        problems.append(f"the table names {owners[0]} as owner but the IKE SA is held by "
                        f"{', '.join(established_on)}")
    if state == "ESTABLISHED" and not any(c["state"] == "INSTALLED" for c in children):
        problems.append("no CHILD SA installed")
    for direction, label in (("to_peer", "cluster LAN -> peer LAN"),
                             ("from_peer", "peer LAN -> cluster LAN"),
                             ("to_peer6", "cluster LAN -> peer LAN over IPv6"),
                             ("from_peer6", "peer LAN -> cluster LAN over IPv6")):
        if direction.endswith("6") and direction not in traffic:
            continue  # a lab of one family pings in it alone
        counts = traffic.get(direction, {})
        if counts.get("received", 0) == 0:
            problems.append(f"no traffic {label} ({counts.get('received', 0)}/"
                            f"{counts.get('sent', 0)} pings answered)")
        elif counts["received"] < counts.get("sent", 0):
            # Each tunnel is pinged from the moment its data path is complete in every kernel
            # on the way: a ping lost then is the cluster's fault.
            unanswered = ", ".join(map(str, counts.get("unanswered", [])))
            problems.append(f"pings lost {label} after the tunnel was up "
                            f"({counts['received']}/{counts['sent']} answered"
                            + (f"; none to echo {unanswered}" if unanswered else "") + ")")
        tcp = traffic.get(f"tcp_{direction}", {})
        if not direction.endswith("6") and tcp.get("bytes", 0) == 0:
            problems.append(f"no TCP {label} ({tcp.get('error') or 'nothing received'})")
    return {"peer": peer, "ike_version": ike_version, "state": state,
            "ike_sa_holders": sorted(states), "holder_states": states,
            "initiator_spi": sa.get("initiator-spi") if sa else None,
            "responder_spi": sa.get("responder-spi") if sa else None,
            "child_sas": children, "up_after_s": up_after, "switch_paths": paths,
            "owner": owners[0] if len(owners) == 1 else None, "forwarded": forwarded,
            "steered": steered, "traffic": traffic, "traffic_ok": traffic_ok,
            "problems": problems}


def lab_report(spec, tunnels: list[dict], buckets: dict, timings: dict,
               run_dir: str | None, agents: dict[str, dict] | None = None,
               crowd: dict | None = None) -> dict:
    """The whole report; `ok` only when every tunnel is good, the crowd's too."""
    return {"shape": SHAPE_VERSION,
            "ok": bool(tunnels) and all(not t["problems"] for t in tunnels)
            and (crowd is None or crowd["ok"]),
            "crowd": crowd, "crowd_rate": spec.crowd_rate if crowd else None,
            "members": spec.members, "peers": spec.peers, "hash": spec.hash, "mode": spec.mode,
            "ike": spec.ike, "auth": spec.auth, "nat": spec.nat, "agent": spec.agent,
            "ip": spec.ip,
            "ownership": spec.ownership if spec.agent else None,
            "agents": {m: {"counters": a["counters"],
                           "forward_latency_us": a["forward_latency_us"],
                           "table_size": len(a["table"])}
                       for m, a in (agents or {}).items()},
            "timings": timings, "buckets": buckets, "run_dir": run_dir, "tunnels": tunnels}


def _traffic_cell(traffic: dict, direction: str) -> str:
    """Pings answered, and whether TCP went through: "3/3 +tcp"."""
    pings = traffic.get(direction, {})
    tcp = "+tcp" if traffic.get(f"tcp_{direction}", {}).get("bytes", 0) > 0 else "-tcp"
    six = traffic.get(f"{direction}6")
    v6 = f" v6 {six.get('received', 0)}/{six.get('sent', 0)}" if six else ""
    return f"{pings.get('received', 0)}/{pings.get('sent', 0)}{v6} {tcp}"


def _ip_words(ip: str) -> str:
    """How the header line names the IP versions: nothing for the IPv4 default."""
    return {"4": "", "6": ", IPv6", "dual": ", dual stack"}.get(ip, f", ip {ip}")


def format_text(report: dict) -> str:
    """The report as a table and a verdict, for a terminal."""
    agent = f"agent ({report['ownership']})" if report["agent"] else "no agent"
    lines = [f"ikelab: {report['members']} members, {report['peers']} peers, hash "
             f"{report['hash']}, mode {report['mode']}, ike {report['ike']}, auth "
             f"{report['auth']}{', nat' if report['nat'] else ''}"
             f"{_ip_words(report.get('ip', '4'))}; {agent}"]
    timings = report["timings"]
    up = timings.get("tunnels_up_s")
    lines.append(f"lab up in {timings.get('lab_up_s', 0):.1f} s; "
                 + (f"all tunnels up {up:.1f} s later" if up is not None
                    else "not every tunnel came up"))
    lines.append("")
    header = ("peer", "ike", "IKE SA", "held by", "owner", "fwd", "CHILD SA", "500->", "4500->",
              "LAN->peer", "peer->LAN", "steered esp/lan")
    rows = [header]
    for t in report["tunnels"]:
        holders = ",".join(m if s == "ESTABLISHED" else f"{m}({s.lower()})"
                           for m, s in sorted(t["holder_states"].items())) or "-"
        children = ",".join(f"{c['name']} {c['state']}" for c in t["child_sas"]) or "-"
        rows.append((t["peer"], f"v{t['ike_version']}", t["state"], holders,
                     t.get("owner") or "-", t.get("forwarded", 0), children,
                     t["switch_paths"].get("udp500") or "-",
                     t["switch_paths"].get("udp4500") or "-",
                     _traffic_cell(t["traffic"], "to_peer"),
                     _traffic_cell(t["traffic"], "from_peer"),
                     f"{t['steered']['esp']}/{t['steered']['lan']}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for t in report["tunnels"]:
        lines += [f"  {t['peer']}: {p}" for p in t["problems"]]
    for switch, groups in report["buckets"].items():
        for group, counts in groups.items():
            spread = " ".join(f"{m}={n}" for m, n in counts.items())
            lines.append(f"switch {switch} group {group} packets per member: {spread}")
    for member, agent in report.get("agents", {}).items():
        c = agent["counters"]
        lines.append(f"agent {member}: seen {c['seen_in']} in / {c['seen_out']} out, local "
                     f"{c['delivered_local']}, forwarded {c['forwarded']}, received "
                     f"{c['received_forwarded']}, claims won {c['claims_won']} lost "
                     f"{c['claims_lost']}, lookups {c['lookups']}, parse errors "
                     f"{c['parse_errors']}, table {agent['table_size']}")
    lines += describe_crowd(report.get("crowd"))
    lines += describe_chaos(report.get("chaos"), report.get("play_steps"),
                            report.get("play", "chaos"))
    bad = [t for t in report["tunnels"] if t["problems"]]
    if report["ok"]:
        lines.append("OK: every tunnel is up on exactly one member and carries traffic both ways"
                     + (" (the crowd's on a sample)" if report.get("crowd") else "")
                     + (f", and the cluster came back whole after every "
                        f"{report.get('play', 'chaos')} step" if report.get("chaos") else ""))
    elif bad:
        lines.append(f"FAIL: {len(bad)} of {len(report['tunnels'])} tunnels have problems")
    elif report.get("crowd") and not report["crowd"]["ok"]:
        lines.append("FAIL: not every crowd site is up on exactly one member with traffic")
    else:
        lines.append(f"FAIL: the cluster did not come back whole after a "
                     f"{report.get('play', 'chaos')} step")
    if report.get("run_dir"):
        lines.append(f"configs and logs kept in {report['run_dir']}")
    for plot in (report.get("crowd") or {}).get("plots", []):
        lines.append(f"picture: {plot}")
    return "\n".join(lines)


def with_chaos(report: dict, steps: list[dict], planned: int, play: str = "chaos") -> dict:
    """The report with the steps of a chaos play added (`planned`: how many it has); `ok` also
    needs every step taken, each recovered."""
    return dict(report, chaos=steps, play=play, play_steps=planned,
                ok=report["ok"] and len(steps) == planned and all(
                    s["consistent_after_s"] is not None for s in steps))


def describe_crowd(crowd: dict | None) -> list[str]:
    """The crowd in a few lines, for the text report."""
    if not crowd:
        return []
    lines = [f"crowd: {crowd['up']}/{crowd['sites']} sites up"
             + (f", the last {crowd['last_up_s']:.1f} s after the first initiation "
                f"({crowd['rate_achieved']:g}/s achieved, {crowd['rate_asked']:g}/s asked)"
                if crowd["last_up_s"] is not None else "")]
    spread = " ".join(f"{m}={n}" for m, n in crowd["per_member"].items())
    lines.append(f"crowd: tunnels per member {spread}; max/mean "
                 f"{crowd['max_over_mean'] if crowd['max_over_mean'] is not None else '-'}")
    sample_ok = len(crowd["traffic_sample"]) - len(crowd["bad_traffic"])
    lines.append(f"crowd: traffic sample {sample_ok}/{len(crowd['traffic_sample'])} sites "
                 "answered every ping both ways"
                 + (f" (lost: {', '.join(crowd['bad_traffic'])})" if crowd["bad_traffic"]
                    else ""))
    if crowd["failures"]:
        lines.append("crowd: failures: " + ", ".join(f"{reason} {n}" for reason, n in
                                                    sorted(crowd["failures"].items())))
    return lines



def describe_chaos(steps: list[dict] | None, planned: int | None = None,
                   play: str = "chaos") -> list[str]:
    """One line per step of a chaos play (`planned` steps): what was done, the worst LAN
    outage, when it was whole again."""
    if not steps:
        return []
    lines = [f"{play} (LAN-to-LAN pings every 100 ms from the peers' LANs):"]
    for s in steps:
        after = (f"consistent again after {s['consistent_after_s']:.1f} s"
                 if s["consistent_after_s"] is not None else f"NOT consistent: {s['problem']}")
        outage = ("no traffic watched" if s["outage_s"] is None
                  else f"longest outage {s['outage_s']:.1f} s")
        lines.append(f"  {s['name']}: {outage}; {after}")
    if planned is not None and len(steps) < planned:
        lines.append(f"  stopped after {len(steps)} of {planned} steps")
    return lines


def describe_membership(states: dict[str, dict]) -> list[str]:
    """Each member's state and view, and what the switches give buckets to (CLI `members`)."""
    lines = []
    for member, state in states.items():
        if member in ("switches", "witness"):
            continue
        if "live" not in state:
            lines.append(f"{member}: {state['state']}")
            continue
        failed = f" ({state['failed']})" if state.get("failed") else ""
        moving = (f", taking over {','.join(state['moving'])}" if state.get("moving")
                  else "")
        lines.append(f"{member}: {state['state']}{failed}, holds {state.get('holds', 0)} "
                     f"tunnels{moving}, hears {','.join(state['live'])}, sees serving "
                     f"{','.join(state['serving']) or 'nobody'}, witness "
                     f"{'backs it' if state['connected'] else 'SILENT'}, table "
                     f"{state['table_size']}")
    witness = states.get("witness")
    if witness is not None:
        lines.append("witness: " + (f"no answer ({witness['error']})" if "error" in witness
                                    else f"backs {','.join(witness['backs']) or 'nobody'}, "
                                         f"{witness['changes']} changes, " + ", ".join(
                                             f"{m} hears {','.join(v['hears'])}"
                                             for m, v in witness["heard"].items())))
    for switch, info in states.get("switches", {}).items():
        drained = f", drained {','.join(info['drained'])}" if info.get("drained") else ""
        errors = (f", {info['health_errors']} health check errors (logged)"
                  if info.get("health_errors") else "")
        lines.append(f"switch {switch}: hash {info['hash']}, buckets "
                     f"{','.join(info['buckets']) or 'none (drops)'}{drained}{errors}")
    return lines


def describe_sas(node: str, sas: dict[str, dict]) -> list[str]:
    """A node's IKE and CHILD SAs, one line each, for the Mininet CLI's `sas` command."""
    if not sas:
        return [f"{node}: no IKE SAs"]
    lines = []
    for sa in sorted(sas.values(), key=lambda s: int(s.get("uniqueid", 0))):
        lines.append(f"{node}: {sa.get('name')}[{sa.get('uniqueid')}] IKEv{sa.get('version')} "
                     f"{sa.get('state')} {sa.get('local-host')}:{sa.get('local-port')} <-> "
                     f"{sa.get('remote-host')}:{sa.get('remote-port')} "
                     f"spi {sa.get('initiator-spi')}_i {sa.get('responder-spi')}_r")
        for child in sa.get("child-sas", {}).values():
            lines.append(f"{node}:   {child.get('name')} {child.get('state')} "
                         f"spi {child.get('spi-in')}_in {child.get('spi-out')}_out "
                         f"{','.join(child.get('local-ts', []))} === "
                         f"{','.join(child.get('remote-ts', []))} "
                         f"packets {child.get('packets-in', 0)} in / "
                         f"{child.get('packets-out', 0)} out")
    return lines


def describe_ownership(statuses: dict[str, dict], now_label: str = "") -> list[str]:
    """The cluster-wide table (key, owner, state, age, how many replicas agree) and every
    member's counters, for `ikelab status` and the CLI's `ownership`."""
    rows: dict[str, dict] = {}
    for member, status in statuses.items():
        for row in status.get("table", []):
            entry = rows.setdefault(row["key"], {"row": row, "owners": {}})
            entry["owners"][member] = row["owner"]
    lines = [f"{'key (initiator SPI/Message ID/requester)':44} {'owner':6} {'state':12} "
             f"{'age':>7}  replicas"]
    for key, entry in sorted(rows.items(), key=lambda kv: kv[1]["row"]["age_s"], reverse=True):
        owners = set(entry["owners"].values())
        agree = (f"{len(entry['owners'])}/{len(statuses)}" if len(owners) == 1
                 else "DISAGREE " + ",".join(f"{m}={o}" for m, o in entry["owners"].items()))
        row = entry["row"]
        lines.append(f"{key:44} {row['owner']:6} {row['state']:12} {row['age_s']:6.1f}s  {agree}")
    if not rows:
        lines.append("(empty)")
    lines.append("")
    for member, status in statuses.items():
        counters = " ".join(f"{k}={v}" for k, v in status["counters"].items() if v)
        view = status.get("membership", {})
        about = [view["state"]] if view.get("state") else []
        if "holds" in view:
            about.append(f"holds {view['holds']} tunnels")
        if view.get("moving"):
            about.append(f"taking over {','.join(view['moving'])}")
        about_text = f" ({', '.join(about)})" if about else ""
        lines.append(f"{member}{about_text}: {counters or 'all counters zero'}")
    return lines


def describe_steering(statuses: dict[str, dict]) -> list[str]:
    """Each member's steering in force: the prefixes it holds, its routes to holders, and
    the packet counters of its nftables rules, for the CLI's `steering`."""
    lines = []
    for member, status in statuses.items():
        steering = status.get("steering", {})
        lines.append(f"{member}: holds {', '.join(steering.get('holds', [])) or 'nothing'}")
        for prefix, holder in steering.get("routes", {}).items():
            lines.append(f"{member}:   route {prefix} via {holder}")
        for rule, packets in sorted(steering.get("counters", {}).items()):
            lines.append(f"{member}:   {rule:12} {packets} packets")
    return lines
