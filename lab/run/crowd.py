"""The crowd's life seen from outside: its sites brought up at a rate, counted as their charons
say, and summarised per member.

Sites initiate the way branch gateways do after a head-end comes back: one after another at
`--crowd-rate` per second, not all in one millisecond, and no more than WINDOW_SECONDS' worth
of them negotiating at once, so a rate the machine cannot sustain slows the crowd down rather
than drowning it (the report says what rate it achieved). Every fact comes from a daemon: the crowd
nodes' charons say when a site's CHILD SA is up (vici `child-updown` events, then `list-sas`
at the end), the members' charons say who holds it. Progress goes to a terminal only (tqdm),
never into `--json` output or a log.
"""

import random
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from tqdm import tqdm

from .. import strongswan
from ..agent.names import CHILD_NAME
from ..plan.topology import CROWD_OUTER, Plan, Site
from ..show.outage import PING, ping_counts
from .probes import lans_steered

SAMPLE_SITES = 16  # sites the traffic test pings through, both ways
WINDOW_SECONDS = 2.0  # sites initiated but not yet up: at most this many seconds of the rate
MIN_WINDOW = 20
SAMPLE_SEED = 1


def progress(total: int, what: str, quiet: bool) -> tqdm:
    """A progress bar on a terminal (stderr): `quiet` (--json) or no terminal shows none."""
    return tqdm(total=total, desc=what, unit="site", disable=quiet or not sys.stderr.isatty(),
                file=sys.stderr, dynamic_ncols=True, leave=False)


@dataclass
class CrowdWatch:
    """What the crowd nodes' charons said about their sites since `start`: when each site's
    CHILD SA came up (seconds from the start), and which sites a negotiation failed for."""

    start: float = field(default_factory=time.monotonic)
    up_after: dict[str, float] = field(default_factory=dict)
    went_down: Counter = field(default_factory=Counter)  # site -> times its IKE SA went down
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    changed: threading.Event = field(default_factory=threading.Event)

    def listen(self, vici_socket, deadline: float = 5.0) -> threading.Thread:
        """Follow one crowd node's charon in a thread of its own until `stop()`; return once
        it listens (or after `deadline` seconds), so no early event is missed."""
        listening = threading.Event()
        thread = threading.Thread(target=self._listen, args=(vici_socket, listening),
                                  daemon=True, name="crowd-events")
        thread.start()
        listening.wait(deadline)
        return thread

    def _listen(self, vici_socket, listening: threading.Event) -> None:
        while not self.stopping.is_set():
            try:
                with strongswan.session(vici_socket, timeout=None) as sess:
                    for name, message in sess.listen(["child-updown", "ike-updown"], timeout=0.1):
                        listening.set()  # registered: the first yield comes after that
                        if self.stopping.is_set():
                            return
                        if name is None:  # the listen timeout: look at `stopping` again
                            continue
                        self._heard(strongswan.decode(name), strongswan.decode(dict(message)))
            except strongswan.VICI_ERRORS:
                self.stopping.wait(0.2)

    def _heard(self, event: str, message: dict) -> None:
        up = message.pop("up", "no") == "yes"
        for site, sa in message.items():
            with self.lock:
                if event == "child-updown" and up and site not in self.up_after:
                    self.up_after[site] = time.monotonic() - self.start
                elif event == "ike-updown" and not up:
                    self.went_down[site] += 1
            self.changed.set()

    def up(self) -> int:
        with self.lock:
            return len(self.up_after)

    def stop(self) -> None:
        self.stopping.set()


def bring_up(lab, rate: float, timeout: float, quiet: bool = False,
             say=lambda message: None) -> CrowdWatch:
    """Have every crowd site initiate its tunnel, `rate` sites per second (interleaved over
    the crowd nodes), and wait until all are up or `timeout` seconds have passed since the
    last initiation; the watch says when each came up."""
    plan: Plan = lab.plan
    sites = interleaved(plan)
    watch = CrowdWatch()
    threads = [watch.listen(lab.node(c.name).files.vici_socket) for c in plan.crowd]
    watch.start = time.monotonic()
    sessions = {}
    bar = progress(len(sites), "crowd up", quiet)
    with ExitStack() as stack:
        stack.callback(_stop, watch, threads, bar)
        window = max(MIN_WINDOW, int(rate * WINDOW_SECONDS))
        for n, site in enumerate(sites):
            due = watch.start + n / rate
            # At the rate, unless more than `window` sites are still negotiating: then wait
            # for some to come up. Past what the machine sustains (charons, agents and the
            # switch share two cores), initiating faster only makes every negotiation retry.
            while (wait := due - time.monotonic()) > 0 or n - watch.up() >= window:
                time.sleep(min(max(wait, 0.01), 0.1))
                bar.n = watch.up()
                bar.refresh()
            sess = sessions.get(site.node)
            if sess is None:
                sess = sessions[site.node] = stack.enter_context(strongswan.session(
                    lab.node(site.node).files.vici_socket))
            # timeout -1: charon starts it and answers at once; its events say how it went.
            for _ in sess.initiate({"ike": site.name, "child": CHILD_NAME, "timeout": -1}):
                pass
        say(f"crowd: {len(sites)} sites initiated in {time.monotonic() - watch.start:.1f} s "
            f"(asked {rate:g}/s)")
        end = time.monotonic() + timeout
        while watch.up() < len(sites) and time.monotonic() < end:
            watch.changed.wait(0.2)
            watch.changed.clear()
            bar.n = watch.up()
            bar.refresh()
    return watch


def _stop(watch: CrowdWatch, threads: list, bar) -> None:
    bar.close()
    watch.stop()
    for thread in threads:
        thread.join(1.0)


def interleaved(plan: Plan) -> list[Site]:
    """Every site, taking one from each crowd node in turn: each charon gets its share of the
    rate, as sites spread over a country would."""
    queues = [list(c.sites) for c in plan.crowd]
    result = []
    for n in range(max((len(q) for q in queues), default=0)):
        result += [q[n] for q in queues if n < len(q)]
    return result


def site_states(lab) -> dict[str, str]:
    """site -> its tunnel's state as its crowd node's charon holds it now: "up" (IKE SA
    ESTABLISHED with an INSTALLED CHILD SA), "no CHILD SA", "connecting", or "no IKE SA"."""
    states = {}
    for node in lab.plan.crowd:
        sas = strongswan.list_sas(lab.node(node.name).files.vici_socket)
        for sa in sas.values():
            name = sa.get("name")
            state = ("up" if strongswan.tunnel_up(sa) else "no CHILD SA"
                     if sa.get("state") == "ESTABLISHED" else "connecting")
            if states.get(name) != "up":  # a site with two SAs counts as up if one is
                states[name] = state
    return {s.name: states.get(s.name, "no IKE SA") for s in lab.plan.sites()}


def holders(member_sas: dict[str, dict], plan: Plan) -> dict[str, list[str]]:
    """site -> the members whose charon holds an ESTABLISHED IKE SA with it (one, if all is
    well), from each member's `list_sas`."""
    by_address = {str(s.address): s.name for s in plan.sites()}
    result: dict[str, list[str]] = {s.name: [] for s in plan.sites()}
    for member, sas in member_sas.items():
        for sa in sas.values():
            address = sa.get("remote-host", "")
            if (sa.get("state") == "ESTABLISHED" and _in_crowd(address)
                    and address in by_address):
                result[by_address[address]].append(member)
    return result


def _in_crowd(address: str) -> bool:
    try:
        return IPv4Address(address) in CROWD_OUTER
    except ValueError:
        return False


def sample(plan: Plan, count: int = SAMPLE_SITES, seed: int = SAMPLE_SEED) -> list[Site]:
    """The sites the traffic test goes through: a seeded random sample, in index order."""
    sites = plan.sites()
    return sorted(random.Random(seed).sample(sites, min(count, len(sites))),
                  key=lambda s: s.index)


SAMPLE_PATH_WAIT = 10.0  # seconds for the sampled sites' steering before their pings


def ping_sample(lab, sites: list[Site]) -> dict[str, dict[str, dict[str, int]]]:
    """Ping both ways between the cluster's LAN host and each sampled site's LAN address, in
    parallel, once every sampled site's path through the cluster is complete (or
    SAMPLE_PATH_WAIT has passed: then the pings tell): site -> direction -> sent/received.
    A site counts as up when charon says so, before the agents have steered its LAN (found:
    one sampled site in about ten runs lost its first ping)."""
    lans = {str(site.lan) for site in sites}
    deadline = time.monotonic() + SAMPLE_PATH_WAIT
    while lans - lans_steered(lab, lans) and time.monotonic() < deadline:
        time.sleep(0.1)
    plan = lab.plan
    lan_host = lab.node(plan.lan_host.name)
    lan_address = str(plan.lan_host.interfaces[0].address.ip)
    procs = {}
    for site in sites:
        procs[(site.name, "to_site")] = lan_host.popen(PING + [str(site.lan_address)])
        procs[(site.name, "from_site")] = lab.node(site.node).popen(
            PING + ["-I", str(site.lan_address), lan_address])
    result = {s.name: {} for s in sites}
    for (site, direction), counts in ping_counts(procs).items():
        result[site][direction] = counts
    return result


def summarise(plan: Plan, watch: CrowdWatch | None, states: dict[str, str],
              held: dict[str, list[str]], traffic: dict, rate: float) -> dict:
    """The crowd's part of the report: counts and figures, then every site."""
    per_member = Counter(h[0] for h in held.values() if len(h) == 1)
    counts = [per_member.get(m.name, 0) for m in plan.members]
    mean = sum(counts) / len(counts) if counts else 0
    failures = Counter()
    for site in plan.sites():
        state, owners = states[site.name], held[site.name]
        if state != "up":
            failures[state] += 1
        elif len(owners) != 1:
            failures["held by no member" if not owners else "held by two members"] += 1
    bad_traffic = sorted(s for s, t in traffic.items()
                         if any(d["received"] < d["sent"] for d in t.values()))
    if bad_traffic:
        failures["lost pings"] = len(bad_traffic)
    up_after = watch.up_after if watch else {}
    last = max(up_after.values()) if up_after else None
    ups = sum(1 for s in states.values() if s == "up")
    return {
        "sites": len(states), "up": ups, "rate_asked": rate,
        "rate_achieved": round(len(up_after) / last, 1) if last else None,
        "last_up_s": round(last, 2) if last is not None else None,
        "per_member": {m.name: per_member.get(m.name, 0) for m in plan.members},
        "max_over_mean": round(max(counts) / mean, 3) if mean else None,
        "failures": dict(failures), "traffic_sample": traffic, "bad_traffic": bad_traffic,
        "ok": not failures and ups == len(states),
        "curve": sorted(round(t, 3) for t in up_after.values()),
        "site_list": [{"site": s.name, "node": s.node, "ike": s.ike_version,
                       "address": str(s.address), "lan": str(s.lan), "state": states[s.name],
                       "held_by": held[s.name],
                       "up_after_s": round(up_after[s.name], 3) if s.name in up_after
                       else None}
                      for s in plan.sites()],
    }


SITE_STATES = ("up", "no CHILD SA", "connecting", "no IKE SA")
SITES_LISTED = 40  # `sites` lists at most this many matching sites, then says how many more


def sites_filter(words: list[str], members: list[str]):
    """A predicate on (state, holders) for the CLI's `sites` words: member names (held by
    one of them), `up`, `down` (not up), `double` (held by two members or more); or a
    one-line error for a word it does not know."""
    wanted_members = [w for w in words if w in members]
    unknown = [w for w in words if w not in members and w not in ("up", "down", "double")]
    if unknown:
        return (f"{unknown[0]!r} is neither a member ({', '.join(members)}) nor up, down "
                "or double")

    def keep(state: str, held: list[str]) -> bool:
        return ((not wanted_members or any(m in held for m in wanted_members))
                and ("up" not in words or state == "up")
                and ("down" not in words or state != "up")
                and ("double" not in words or len(held) > 1))
    return keep


def describe_sites(plan: Plan, states: dict[str, str], held: dict[str, list[str]],
                   keep=lambda state, held: True) -> list[str]:
    """The CLI's `sites`: the crowd's states and tunnels per member, then the sites `keep`
    lets through (at most SITES_LISTED): name, crowd node, IKE version, outer address,
    state, the members that hold it."""
    by_state = Counter(states.values())
    per_member = Counter(h[0] for h in held.values() if len(h) == 1)
    double = sum(1 for h in held.values() if len(h) > 1)
    lines = [f"{len(states)} sites: " + ", ".join(f"{by_state[s]} {s}" for s in SITE_STATES
                                                  if by_state[s]),
             "held by: " + " ".join(f"{m.name}={per_member.get(m.name, 0)}"
                                    for m in plan.members)
             + (f"; by two members or more: {double}" if double else "")]
    chosen = [s for s in plan.sites() if keep(states[s.name], held[s.name])]
    for site in chosen[:SITES_LISTED]:
        lines.append(f"  {site.name:<7} {site.node:<4} v{site.ike_version}  "
                     f"{str(site.address):<15}  {states[site.name]:<11}  "
                     f"{','.join(held[site.name]) or '-'}")
    if len(chosen) > SITES_LISTED:
        lines.append(f"  ... and {len(chosen) - SITES_LISTED} more")
    elif not chosen:
        lines.append("  (no site matches)")
    return lines


def draw(crowd: dict, directory, spec) -> list:
    """The crowd's two pictures in `directory`: tunnels per member, and the bring-up curve;
    the paths written."""
    from pathlib import Path

    from ..show.plots import PlotError, draw_bringup, draw_crowd_members
    label = f"{crowd['sites']} sites, {spec.members} members, hash {spec.hash}"
    written = []
    for name, draw_one in (("crowd_members.png", lambda p: draw_crowd_members(
                               crowd["per_member"], p, f"Tunnels per member ({label})")),
                           ("crowd_bringup.png", lambda p: draw_bringup(
                               crowd["curve"], crowd["sites"], p,
                               f"Crowd bring-up ({label}, {crowd['rate_asked']:g}/s asked)"))):
        try:
            written.append(str(draw_one(Path(directory) / name)))
        except PlotError:
            pass  # nothing to draw (no site up): the report says why
    return written
