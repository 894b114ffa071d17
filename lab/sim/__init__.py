"""The cluster simulator: the real agents' cores on simulated members, under simulated time
and faults, from one seed (FoundationDB's simulation and TigerBeetle's VOPR are the models).

- `world`: the cluster: every member runs `lab.agent.protocol.core.Agent`, unchanged, beside a
  model of its charon; peers run model charons too; one event queue, one clock, one random
  generator.
- `charon`: the model of charon (IKEv2 and IKEv1, real headers through `lab.agent.protocol.ike`).
- `network`: the sync network (loss, duplicates, late copies, reordering, partitions of any
  shape, asymmetric links) and the hashing switch (rehashes, the serving set changing).
- `faults`: crashes and restarts, stalls, lost links, drains, partitions, floods, rehashes.
- `checker`: the invariants, after every step (safety) and in the quiet tail (liveness).
- `bugs`: planted bugs, variants of the core that the simulator must catch (`--self-test`).
- `runner`: seeds, processes, shrinking; `story`: a failure's last events in words.

Pure: nothing here touches a socket, a file or the clock (the runner reads the wall clock
only to report speed). `python -m lab.sim --help` says how to run it.
"""
