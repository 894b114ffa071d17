"""A crowd site's connection, built when a member must initiate its tunnel.

Members answer every crowd site with one connection (`crowd`, rendered into swanctl.conf), but
a takeover or handover initiates towards one site, and charon initiates only a connection
that names its peer. Rendering 20,000 such connections into every member would make charon
search them all for each site that knocks; the agent loads the one it needs, when it needs it.
Pure: the daemon sends the result over vici.
"""

from ..names import handover_connection


def site_connection(base: dict, site: str, address: str, lan: str, identity: str,
                    version: int, handover: bool) -> tuple[str, dict]:
    """(connection name, vici `load-conn` message) to initiate `site`'s tunnel: `base` is the
    crowd connection less what differs per site. A handover's connection never sends
    INITIAL_CONTACT (`unique = never`): the site keeps its old SA until the old holder ends
    it. A takeover's does, so the site drops the dead member's SA at once."""
    name = handover_connection(site) if handover else site
    conn = {**base, "version": str(version), "remote_addrs": [address],
            "remote": {**base.get("remote", {}), "id": identity},
            "children": {child: {**value, "remote_ts": [lan]}
                         for child, value in base.get("children", {}).items()}}
    if handover:
        conn["unique"] = "never"
    return name, {name: conn}
