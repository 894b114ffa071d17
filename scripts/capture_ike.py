#!/usr/bin/env python3
"""Capture real IKEv1 and IKEv2 exchanges in the lab for the parser's unit tests.

    .venv/bin/python scripts/capture_ike.py PREFIX

writes PREFIX.v2 (peer p1, IKEv2) and PREFIX.v1 (peer p2, IKEv1): initiation, pings, a CHILD
and an IKE rekey, then deletion. tests/data/ikev2.pcap and ikev1.pcap came from it.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import strongswan  # noqa: E402
from lab.agent.names import CLUSTER_CONNECTION  # noqa: E402
from lab.plan.topology import LabSpec  # noqa: E402
from lab.run.lab import Lab  # noqa: E402


def main(prefix: str) -> None:
    with Lab(LabSpec(members=1, peers=2, ike="mixed", agent=False)) as lab:
        dumps = [lab.node(peer).popen(["tcpdump", "-i", "any", "-U", "-w",
                                       f"{prefix}.{suffix}", "udp"])
                 for peer, suffix in (("p1", "v2"), ("p2", "v1"))]
        # tcpdump says nothing when it is ready; give it a moment before the first packet.
        time.sleep(1)
        sockets = {n: lab.node(n).files.vici_socket for n in ("p1", "p2")}
        strongswan.bring_up(sockets, 10)
        lab.node("hc").cmd("ping -c2 -i0.2 10.2.1.10; ping -c2 -i0.2 10.2.2.10")
        for sock in sockets.values():
            with strongswan.session(sock) as sess:
                sess.rekey({"child": "lan"})
                sess.rekey({"ike": CLUSTER_CONNECTION})
        time.sleep(2)
        for sock in sockets.values():
            strongswan.terminate(sock, CLUSTER_CONNECTION)
        for dump in dumps:
            dump.terminate()
            dump.wait()


if __name__ == "__main__":
    main(sys.argv[1])
