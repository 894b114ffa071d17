#!/usr/bin/env python3
"""Capture real IKEv1 and IKEv2 exchanges in the lab for the parser's unit tests.

    .venv/bin/python scripts/capture_ike.py tests/data/capture

writes PREFIX.v2 (peer p1, IKEv2) and PREFIX.v1 (peer p2, IKEv1): initiation, pings, a CHILD
and an IKE rekey, then deletion. tests/data/ikev2.pcap and ikev1.pcap came from it.
"""
import time, subprocess, sys
from lab.lab import Lab
from lab.topology import LabSpec
from lab import strongswan
import vici
out = sys.argv[1]
with Lab(LabSpec(members=1, peers=2, ike="mixed")) as lab:
    p1, p2 = lab.node("p1"), lab.node("p2")
    dump = p1.popen(["tcpdump", "-i", "any", "-U", "-w", out + ".v2", "udp"])
    dump1 = p2.popen(["tcpdump", "-i", "any", "-U", "-w", out + ".v1", "udp"])
    time.sleep(1)
    socks = {n: lab.node(n).files.vici_socket for n in ("p1", "p2")}
    for s in socks.values():
        strongswan.initiate(s, "cluster", "lan")
    w = strongswan.TunnelWatch(socks); w.wait(10)
    lab.node("hc").cmd("ping -c2 -i0.2 10.2.1.10; ping -c2 -i0.2 10.2.2.10")
    for n, s in socks.items():
        with strongswan.session(s) as sess:
            sess.rekey({"child": "lan"}); sess.rekey({"ike": "cluster"})
    time.sleep(2)
    for n, s in socks.items():
        with strongswan.session(s) as sess:
            for _ in sess.terminate({"ike": "cluster", "timeout": 3000}): pass
    time.sleep(1)
    dump.terminate(); dump1.terminate(); dump.wait(); dump1.wait()
