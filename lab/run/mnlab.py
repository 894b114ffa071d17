"""The lab under plain Mininet: `sudo mn --custom topologies/ikecluster.py --topo ikecluster`.

`mn` builds the topology with its own runner, so this module supplies what `ikelab run` would
otherwise do around it: the run directory and rendered configs (when the topology is built),
their removal at exit, and a `cleanup` that `mn` calls on an exception, on Ctrl-C and for
`mn -c` in place of its own global one, so it removes only what ikelab runs recorded.
"""

import atexit
import os
from inspect import signature

from mininet.log import error, info

from ..agent.names import Ownership
from ..net.mntopo import IkeClusterTopo
from ..net.preflight import NotReady
from ..net.rundir import RunDirectory, clean_run, recorded_runs, stale_runs
from ..plan.topology import LabSpec, TopologyError
from .lab import LabError, prepare

TRUE = ("1", "true", "yes", "on")


def _flag(value) -> bool:
    return str(value).lower() in TRUE


class IkeClusterMnTopo(IkeClusterTopo):
    """`--topo ikecluster,members=3,peers=2,hash=split,mode=ls,ike=2,auth=psk,nat=1,keep=1,
    agent=0,ownership=stateless,dead_after=0.6,chain=3,ike_fragmentation=0,rebalance=0,ip=dual`."""

    def __init__(self, members=3, peers=2, hash="l4", mode="ls", ike="2", auth="psk", nat=False,
                 keep=False, agent=True, ownership=Ownership.TABLE, dead_after=0.6, chain=0,
                 ike_fragmentation=True, rebalance=True, ip="4", **unknown):
        if unknown:
            # mn would answer Python's TypeError with a traceback banner and its cleanup.
            known = [name for name in signature(IkeClusterMnTopo).parameters if name != "unknown"]
            error(f"ikelab: error: ikecluster has no option {', '.join(map(repr, unknown))} "
                  f"(it has {', '.join(known)})\n")
            raise SystemExit(2)
        try:
            dead_after, chain = float(dead_after), int(chain)
        except (ValueError, OverflowError):  # mn makes chain=1e999 float('inf')
            error(f"ikelab: error: dead_after must be seconds and chain a whole number "
                  f"(got {dead_after!r}, {chain!r})\n")
            raise SystemExit(2) from None
        spec = LabSpec(members, peers, str(hash), str(mode), str(ike), str(auth), _flag(nat),
                       _flag(agent), str(ownership), dead_after=dead_after, chain=chain,
                       ike_fragmentation=_flag(ike_fragmentation), rebalance=_flag(rebalance),
                       ip=str(ip))
        try:
            plan, run = prepare(spec, _flag(keep), say=lambda m: info(f"*** ikelab: {m}\n"))
        except (TopologyError, LabError, NotReady) as exc:
            # SystemExit, not an exception: mn would answer an exception with its cleanup.
            error(f"ikelab: error: {exc}\n")
            raise SystemExit(2) from None
        info(f"*** ikelab: run directory {run.path}\n")
        atexit.register(clean_run, run, lambda _: None)
        super().__init__(plan=plan, rundir=run.path, strict=False)


def cleanup() -> None:
    """What `mn` runs after a failure or for `mn -c`: this process's runs and crashed ones."""
    mine = [run for run in recorded_runs() if _owned_here(run)]
    for run in mine + stale_runs():
        clean_run(run, say=lambda m: info(f"*** ikelab: {m}\n"))


def _owned_here(run: RunDirectory) -> bool:
    try:
        return run.read()["owner_pid"] == os.getpid() and run.read()["state"] != "stopped"
    except (OSError, ValueError, KeyError):
        return False
