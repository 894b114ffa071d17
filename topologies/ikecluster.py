"""The ikelab topology for plain Mininet.

    sudo mn --custom topologies/ikecluster.py --topo ikecluster,members=3,peers=2

Options (all optional): members, peers, hash (l3|l4|split), mode (ls|ha), ike (1|2|mixed),
auth (psk|pubkey), nat=1, keep=1, agent=0, ownership=table+label|stateless,
dead_after=SECONDS, chain=N, ike_fragmentation=0, rebalance=0, ip=6|dual. Every node starts its own
daemons; the CLI gains the lab's commands (`help` lists them: sas, up, ownership, steering,
hashing, sites, members, fail, restore, drain, undrain, stop, partition, heal, rehash, flood
and capture), and
`m1 swanctl --list-sas` talks to m1's own charon. `mn` runs under /usr/bin/python3, so this
file puts the lab and the venv made by scripts/setup.sh on its path.

Every name bound here becomes a global of `mn` (that is how `--custom` works): `Mininet` makes
mn build the lab's ClusterNet (so `fail`, `restore`, `rehash` ... act on the net as under
`ikelab run --cli`), `CLI` replaces mn's CLI with the lab's, and `cleanup` replaces mn's global
cleanup, which would otherwise kill every Mininet process and delete every OVS bridge on the
machine after an error or Ctrl-C.
"""

import os
import sys

# mn exec()s this file without __file__; the code object still knows its path.
LAB_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(
    globals().get("__file__") or sys._getframe().f_code.co_filename)))
VENV_LIB = os.path.join(LAB_ROOT, ".venv", "lib")
sys.path[:0] = [LAB_ROOT] + [os.path.join(VENV_LIB, name, "site-packages")
                             for name in (os.listdir(VENV_LIB) if os.path.isdir(VENV_LIB) else [])]

from lab.net.cluster import ClusterNet as Mininet  # noqa: E402,F401
from lab.run.mncli import LabCLI as CLI  # noqa: E402,F401
from lab.run.mnlab import IkeClusterMnTopo, cleanup  # noqa: E402,F401

topos = {"ikecluster": IkeClusterMnTopo}
