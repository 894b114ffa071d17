"""strongSwan configuration for every node: decisions here, syntax in `templates/`.

Each node runs one charon with two files, rendered into the run directory under names a user
can open: `strongswan_<node>.conf` (daemon settings, vici socket, log) and
`swanctl_<node>/swanctl.conf` (connections and secrets), whose directory also holds the
node's certificates and key the way /etc/swanctl does. Members all render the same gateway:
one identity, one set of credentials, one connection per peer, so whichever member answers a
peer, the peer sees the same cluster. A member's agent gets its config from here too
(`agent_config`).
"""

import hashlib
import hmac
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from ..agent.config import AgentConfig, WitnessConfig
from ..agent.names import (CHILD6_NAME, CHILD_NAME, CLUSTER_CONNECTION, CROWD_CONNECTION,
                           IKE_SPI_LABEL_MASK, LABELLED_OWNERSHIP, NATT_PORT, NodeFiles,
                           esp_spi_range, handover_connection, ike_spi_label,
                           natt_connection)
from ..plan.topology import (CLUSTER_ID, CLUSTER_LAN, CROWD_DOMAIN, CROWD_LANS, CROWD_OUTER,
    EXTERNAL_VIP, SYNC_WITNESS, CrowdNode, Member, Peer, Plan)


def _template_dir() -> Path:
    """Where the templates are: inside the package when installed from a wheel, else at the top
    of the checkout (`templates/`), where a user edits them."""
    package = Path(__file__).resolve().parents[1]  # lab/
    packaged = package / "templates"
    return packaged if packaged.is_dir() else package.parent / "templates"


TEMPLATE_DIR = _template_dir()

# kernel-libipsec must come before kernel-netlink: the first IPsec backend registered wins,
# and this kernel has XFRM netlink but no ESP transforms.
PLUGINS = ("random", "nonce", "openssl", "aes", "sha1", "sha2", "hmac", "kdf", "pem", "pkcs1",
           "pkcs8", "x509", "pubkey", "revocation", "constraints", "kernel-libipsec",
           "kernel-netlink", "socket-default", "vici")
SWANCTL_PLUGINS = ("random", "nonce", "openssl", "pem", "pkcs1", "pkcs8", "x509", "pubkey")
# charon's filelog levels: IKE at 2 (the exchanges, for a reader); in --capture runs IKE and
# CHILD SA at 4, where charon dumps every key it derives (lab.show.keytables; lab use only).
LOG_LEVELS = {"ike": 2}
KEY_LOG_LEVELS = {"ike": 4, "chd": 4}
IKE_PROPOSALS = "aes128-sha256-ecp256"
ESP_PROPOSALS = "aes128-sha256"


@dataclass(frozen=True)
class Retransmit:
    """charon's retransmission schedule: a dead negotiation, or a DPD check of a dead member,
    gives up after 1 + 1.4 + 1.96 + 2.74 = about 7 s (`gives_up_after`)."""

    timeout: float = 1.0
    base: float = 1.4
    tries: int = 3

    @property
    def gives_up_after(self) -> float:
        """Seconds from the first send of a request nobody answers until charon gives up: the
        first timeout and each retransmission's, timeout * base**n for n = 0..tries."""
        return sum(self.timeout * self.base ** n for n in range(self.tries + 1))


# DPD, in seconds: a peer checks the cluster after this much silence and restarts its tunnel
# when the check goes unanswered (Retransmit; IKEv1 waits IKEV1_DPD_TIMEOUT instead), so a
# dead owner costs `peer_gives_up_after()` + one negotiation. Members check less often: the
# peers are the ones that must notice.
PEER_DPD_DELAY = 3.0
MEMBER_DPD_DELAY = 5.0
IKEV1_DPD_TIMEOUT = 10.0
# A crowd's sites, and the members towards them, check less often, as branch gateways do
# (30 s is common): 10,000 sites checking every 3 s would be 3,300 IKE exchanges a second,
# every one of them through the agents. A dead member's sites are taken over by the
# survivors at once anyway (lab.agent.protocol.handover); DPD is the sites' fallback.
CROWD_DPD_DELAY = 30.0


def peer_gives_up_after(retransmit: Retransmit = Retransmit()) -> float:
    """Seconds from a member's death until a peer whose tunnel it held gives up on it and
    negotiates again, for either IKE version: PEER_DPD_DELAY of silence, then IKEv2's
    retransmitted liveness check or IKEv1's DPD timeout, whichever takes longer."""
    return PEER_DPD_DELAY + max(retransmit.gives_up_after, IKEV1_DPD_TIMEOUT)


@dataclass(frozen=True)
class Credentials:
    """What nodes authenticate with: a PSK per peer, or a CA and a key+certificate per identity."""

    auth: str
    cluster_key: bytes
    pki_dir: Path | None = None
    ca_cert: Path | None = None  # the lab CA, the one trusted certificate
    certs: dict = field(default_factory=dict)  # identity -> (key, cert, its intermediates)

    def install(self, identity: str, swanctl_dir: Path) -> None:
        """Copy the CA chain, and `identity`'s key and certificate, into a node's swanctl
        directory."""
        if self.auth != "pubkey":
            return
        key, cert, intermediates = self.certs[identity]
        # Only the lab CA is trusted; the intermediates are there to build the chain from, and
        # so are sent in IKE_AUTH (lab.strongswan.pki says why each side knows only its own).
        files = ([("x509ca", self.ca_cert)] + [("x509", ca) for ca in intermediates]
                 + [("x509", cert), ("ecdsa", key)])
        for sub, source in files:
            (swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, swanctl_dir / sub / source.name)

    def sync_key(self) -> str:
        """The key that authenticates sync messages between members (hex)."""
        return hmac.new(self.cluster_key, b"ikelab sync", hashlib.sha256).hexdigest()

    def psk(self, peer: Peer) -> str:
        """The PSK shared by the cluster and `peer`, derived from the run's cluster key."""
        digest = hmac.new(self.cluster_key, peer.identity.encode(), hashlib.sha256).hexdigest()
        return "0x" + digest

    def crowd_psk(self) -> str:
        """The one PSK of every crowd site: 10,000 secrets on every member would say nothing
        the sites' own identities do not (each site still has its own)."""
        digest = hmac.new(self.cluster_key, CROWD_DOMAIN.encode(), hashlib.sha256).hexdigest()
        return "0x" + digest


def spi_label(plan: Plan, node: str) -> int | None:
    """With --ownership table+label or stateless, member i stamps i into the top byte of its
    IKE SPIs."""
    if (plan.spec.ownership not in LABELLED_OWNERSHIP
            or not any(m.name == node for m in plan.members)):
        return None
    return ike_spi_label(plan.member(node).index)


def esp_range(plan: Plan, node: str) -> tuple[str, str] | None:
    """A member's own inbound ESP SPI range (lab.agent.protocol.steering), as strongswan.conf
    spells it."""
    if not any(m.name == node for m in plan.members):
        return None
    low, high = esp_spi_range(plan.member(node).index)
    return f"{low:#010x}", f"{high:#010x}"


def ikesa_table_size(plan: Plan, node: str) -> int | None:
    """charon's IKE SA hash table size for `node`: the default (32 buckets) for a few
    tunnels; with a crowd, a power of two near the SAs it may hold, so a lookup stays short."""
    if not plan.crowd or any(p.name == node for p in plan.peers):
        return None
    crowd = next((c for c in plan.crowd if c.name == node), None)
    sas = len(crowd.sites) if crowd else len(plan.sites()) + len(plan.peers)
    return 1 << max(5, (sas - 1).bit_length())


def strongswan_conf_data(files: NodeFiles, label: int | None = None,
                         esp: tuple[str, str] | None = None,
                         retransmit: Retransmit = Retransmit(),
                         table_size: int | None = None, keys: bool = False) -> dict:
    """`keys`: log every key charon derives (`lab.show.keytables` reads them; --capture runs)."""
    return {"node": files.node, "plugins": PLUGINS, "retransmit": retransmit, "esp_range": esp,
            "ikesa_table_size": table_size, "log": files.log, "vici_socket": files.vici_socket,
            "log_levels": KEY_LOG_LEVELS if keys else LOG_LEVELS,
            "swanctl_plugins": SWANCTL_PLUGINS,
            "spi_label": f"{label:#018x}" if label is not None else None,
            "spi_mask": f"{IKE_SPI_LABEL_MASK:#018x}"}


def _connection(name, version, local_addrs, remote_addrs, local_id, remote_id, local_ts,
                remote_ts, auth, cert, dpd_action, fragmentation, dpd_delay=MEMBER_DPD_DELAY,
                keyingtries=1, remote_port=None, unique=None, mobike=None):
    return {"name": name, "version": version, "local_addrs": local_addrs, "mobike": mobike,
            # A NAT's mapping is from the peer's 4500 to the virtual IP's 4500: a takeover that
            # is to pass through it must leave from 4500 too, or the NAT has no mapping for it.
            "remote_port": remote_port, "local_port": remote_port, "unique": unique,
            "fragmentation": "yes" if fragmentation else "no",
            "remote_addrs": remote_addrs, "proposals": IKE_PROPOSALS, "dpd_delay": dpd_delay,
            "dpd_timeout": IKEV1_DPD_TIMEOUT, "keyingtries": keyingtries,
            "local_id": local_id, "remote_id": remote_id, "auth": auth, "cert": cert,
            "children": _children(version, local_ts, remote_ts),
            "esp_proposals": ESP_PROPOSALS, "dpd_action": dpd_action}


def _children(version, local_ts: str, remote_ts: str) -> list[dict]:
    """The CHILD SAs of a connection: one carrying every traffic selector; but IKEv1 (Quick
    Mode) negotiates only the first pair of a CHILD SA's selectors (verified here: with both
    IP versions in one, the IPv6 LAN got no route), so an IKEv1 connection of both versions
    has one CHILD SA per version, `lan` and `lan6`."""
    local, remote = local_ts.split(","), remote_ts.split(",")
    if str(version) != "1" or len(local) < 2 or len(remote) < 2:
        return [{"name": CHILD_NAME, "local_ts": local_ts, "remote_ts": remote_ts}]
    def of(ts: list[str], v6: bool) -> str:
        return ",".join(t for t in ts if (":" in t) == v6)
    return [{"name": CHILD_NAME, "local_ts": of(local, False), "remote_ts": of(remote, False)},
            {"name": CHILD6_NAME, "local_ts": of(local, True), "remote_ts": of(remote, True)}]


def _auth_data(creds: Credentials, identity: str) -> tuple[str, str | None]:
    """(auth method, certificate file name in x509/) for a node presenting `identity`."""
    if creds.auth == "pubkey":
        return "pubkey", creds.certs[identity][1].name
    return "psk", None


def member_swanctl_data(plan: Plan, member: Member, creds: Credentials) -> dict:
    """The connections to each peer; members differ only in their node name. The first,
    named after the peer, answers it, and initiates a takeover (with INITIAL_CONTACT, so the
    peer drops a dead member's SAs); `<peer>-mbb` initiates a make-before-break handover
    (`unique = never`: no INITIAL_CONTACT, the peer keeps the old SA until it is ended); for a
    peer behind a NAT, `-natt` variants start on UDP 4500, through the NAT's mapping."""
    auth, cert = _auth_data(creds, CLUSTER_ID)
    connections = []
    for p in plan.peers:
        variants = [(p.name, None), (handover_connection(p.name), "never")]
        for name, unique in variants:
            ports = [None] + ([NATT_PORT] if p.behind_nat else [])
            for port in ports:
                connections.append(_connection(
                    natt_connection(name) if port else name, p.ike_version, str(p.vip),
                    str(p.seen_as), CLUSTER_ID, p.identity, _ts(plan.cluster_lans), _ts(p.lans),
                    auth,
                    cert, "clear", plan.spec.ike_fragmentation, remote_port=port,
                    unique=unique))
    psks = [{"name": p.name, "ids": [CLUSTER_ID, p.identity], "secret": creds.psk(p)}
            for p in plan.peers] if auth == "psk" else []
    if plan.crowd:
        connections.append(crowd_responder(plan, creds))
        if auth == "psk":
            psks.append({"name": CROWD_CONNECTION, "ids": [CLUSTER_ID, f"*.{CROWD_DOMAIN}"],
                         "secret": creds.crowd_psk()})
    return {"node": member.name, "connections": connections, "psks": psks}


def crowd_responder(plan: Plan, creds: Credentials) -> dict:
    """A member's one connection that answers every crowd site: any outer address of the
    crowd, any identity under its domain, any /28 of its LANs (charon narrows the traffic
    selectors to the site's own). With --ike mixed it answers both versions (version 0).
    Members never initiate it: a takeover or handover loads a connection for that one site
    (`site_connection`)."""
    auth, cert = _auth_data(creds, CLUSTER_ID)
    version = 0 if plan.spec.ike == "mixed" else int(plan.spec.ike)
    return _connection(CROWD_CONNECTION, version, str(EXTERNAL_VIP), str(CROWD_OUTER),
                       CLUSTER_ID, f"*.{CROWD_DOMAIN}", str(CLUSTER_LAN), str(CROWD_LANS), auth,
                       cert, "clear", plan.spec.ike_fragmentation, CROWD_DPD_DELAY)


def site_connection(plan: Plan, creds: Credentials) -> dict:
    """What a member's agent loads over vici to initiate one crowd site's tunnel (a takeover
    or a handover): the connection `crowd_responder` answers with, in vici's terms, less what
    differs per site (addresses, identity, traffic selectors, version:
    `lab.agent.protocol.crowd`)."""
    conn = crowd_responder(plan, creds)
    local = {"auth": conn["auth"], "id": CLUSTER_ID}
    if conn["cert"]:
        local["certs"] = [conn["cert"]]
    return {"local_addrs": [str(EXTERNAL_VIP)], "proposals": [IKE_PROPOSALS],
            "fragmentation": conn["fragmentation"], "dpd_delay": seconds(CROWD_DPD_DELAY),
            "dpd_timeout": seconds(IKEV1_DPD_TIMEOUT), "keyingtries": "1", "local": local,
            "remote": {"auth": conn["auth"]},
            "children": {CHILD_NAME: {"local_ts": [str(CLUSTER_LAN)],
                                      "esp_proposals": [ESP_PROPOSALS], "dpd_action": "clear",
                                      "start_action": "none"}}}


def crowd_swanctl_data(plan: Plan, node: CrowdNode, creds: Credentials) -> dict:
    """One connection per site of this crowd node, each a branch gateway of its own: its
    outer address (mobike off: with MOBIKE charon would move the SA to the node's own
    address), its identity, its LAN; DPD restarts it, a failed negotiation is tried again
    without end, as a peer's."""
    connections = []
    for site in node.sites:
        auth, cert = _auth_data(creds, site.identity)
        conn = _connection(site.name, site.ike_version, str(site.address), str(EXTERNAL_VIP),
                           site.identity, CLUSTER_ID, str(site.lan), str(CLUSTER_LAN), auth,
                           cert, "restart", plan.spec.ike_fragmentation, CROWD_DPD_DELAY,
                           keyingtries=0, mobike="no")
        connections.append(conn)
    psks = ([{"name": CROWD_CONNECTION, "ids": [CLUSTER_ID], "secret": creds.crowd_psk()}]
            if creds.auth == "psk" else [])
    return {"node": node.name, "connections": connections, "psks": psks}


def peer_swanctl_data(plan: Plan, peer: Peer, creds: Credentials) -> dict:
    """The peer's one connection to the cluster's virtual IP; DPD restarts it if it dies, and
    a negotiation that fails (its responder died halfway) is tried again, without end."""
    auth, cert = _auth_data(creds, peer.identity)
    connection = _connection(CLUSTER_CONNECTION, peer.ike_version, str(peer.address),
                             str(peer.vip), peer.identity, CLUSTER_ID, _ts(peer.lans),
                             _ts(plan.cluster_lans), auth, cert, "restart",
                             plan.spec.ike_fragmentation, PEER_DPD_DELAY, keyingtries=0)
    psks = [{"name": CLUSTER_CONNECTION, "ids": [peer.identity, CLUSTER_ID],
             "secret": creds.psk(peer)}] if auth == "psk" else []
    return {"node": peer.name, "connections": [connection], "psks": psks}


def agent_config(plan: Plan, member: Member, files: NodeFiles,
                 creds: Credentials) -> AgentConfig:
    """What one member's forwarding agent needs; `.dump()` is the text of its config file."""
    return AgentConfig(
        member=member.name, index=member.index,
        members={m.name: str(m.sync_address) for m in plan.members},
        members6={m.name: str(m.sync_address6) for m in plan.members if m.sync_address6},
        key=creds.sync_key(), mode=plan.spec.mode, ownership=plan.spec.ownership,
        expiry=plan.spec.expiry, external_interface=f"{member.name}-eth0",
        lan_interface=f"{member.name}-eth1", sync_interface=f"{member.name}-eth2",
        peers={p.name: [str(p.seen_as), *map(str, p.lans)] for p in plan.peers}
        | {s.name: [str(s.address), str(s.lan)] for s in plan.sites()},
        sites={s.name: [s.identity, s.ike_version] for s in plan.sites()},
        site_connection=site_connection(plan, creds) if plan.crowd else {},
        crowd_prefixes=[str(CROWD_OUTER), str(CROWD_LANS)] if plan.crowd else [],
        vici_socket=str(files.vici_socket), control_socket=str(files.agent_socket),
        dead_after=plan.spec.dead_after, witness=str(SYNC_WITNESS.ip),
        # Room for every tunnel three times over (an old and a new SA while a tunnel moves or
        # rekeys), and never less than the agent's own default.
        cap=max(AgentConfig.cap, 3 * (len(plan.peers) + len(plan.sites()))),
        rebalance=plan.spec.rebalance, natt_peers=[p.name for p in plan.peers if p.behind_nat],
        trace=str(files.trace) if plan.spec.trace else "")


def _ts(networks) -> str:
    """A traffic selector list as swanctl.conf spells it."""
    return ",".join(str(n) for n in networks)


def seconds(value: float) -> str:
    """A duration as strongswan.conf and swanctl.conf spell it: 3.0 -> "3s"."""
    return f"{value:g}s"


def environment(template_dir: Path = TEMPLATE_DIR) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["seconds"] = seconds
    return env


def identity_of(plan: Plan, node: str) -> str:
    """The IKE identity a strongSwan node presents: the cluster's for every member."""
    if any(m.name == node for m in plan.members):
        return CLUSTER_ID
    crowd = next((c for c in plan.crowd if c.name == node), None)
    if crowd is not None:
        return crowd.sites[0].identity
    return plan.peer(node).identity


def identities_of(plan: Plan, node: str) -> list[str]:
    """Every IKE identity a strongSwan node presents: a crowd node one per site."""
    crowd = next((c for c in plan.crowd if c.name == node), None)
    if crowd is not None:
        return [site.identity for site in crowd.sites]
    return [identity_of(plan, node)]


def render_node(plan: Plan, node: str, files: NodeFiles, creds: Credentials,
                template_dir: Path = TEMPLATE_DIR, keys: bool = False) -> dict[Path, str]:
    """The text of both files of a strongSwan node (member, peer or crowd node), keyed by
    their path; `keys`: its charon logs the keys it derives (never a crowd node's: thousands
    of negotiations at level 4 would slow it down more than anyone could read)."""
    env = environment(template_dir)
    crowd = next((c for c in plan.crowd if c.name == node), None)
    if any(m.name == node for m in plan.members):
        swanctl = member_swanctl_data(plan, plan.member(node), creds)
    elif crowd is not None:
        swanctl = crowd_swanctl_data(plan, crowd, creds)
    else:
        swanctl = peer_swanctl_data(plan, plan.peer(node), creds)
    return {files.strongswan_conf: env.get_template("strongswan.conf.j2").render(
                strongswan_conf_data(files, spi_label(plan, node), esp_range(plan, node),
                                     table_size=ikesa_table_size(plan, node),
                                     keys=keys and crowd is None)),
            files.swanctl_conf: env.get_template("swanctl.conf.j2").render(swanctl)}


def witness_config(plan: Plan, bridge: str, files: NodeFiles, creds: Credentials) -> WitnessConfig:
    """What the sync network's witness needs (`lab.agent.io.witnessd`), on the bridge `bridge`."""
    return WitnessConfig(address=str(SYNC_WITNESS.ip), members=[m.index for m in plan.members],
                         key=creds.sync_key(), dead_after=plan.spec.dead_after,
                         control_socket=str(files.witness_socket))
