"""The agent's protocol: the state machine (`core.Agent`), its roles and the pure logic they
stand on. No I/O here: events in, actions out (`events`), time given by the caller.

The invariants, and what checks them. The cluster simulator (`lab.sim`, FoundationDB's and
TigerBeetle's way: these cores, unchanged, on simulated time, under faults, from one seed)
checks every one after every step or in its quiet tail, across millions of events
(tests/unit/test_sim.py); each bug it found is a scenario in tests/unit/
test_agent_found_by_sim.py.

- One owner: no two members' charons hold, or negotiate, the same IKE SA (sim: one-owner).
- Claim discipline: a director grants a key only once every member it counted live when it
  announced, and still counts live, has acknowledged (sim: claim-discipline;
  test_agent_protocol: a claim is granted only once every live member acked).
- No forwarding loop: an arrival is forwarded at most once (sim: no-forwarding-loop).
- No double injection: a forwarded packet is written into the owner's stack at most once,
  whatever the sync network duplicates or an attacker replays (sim: no-double-injection;
  test_agent: forged and replayed sync messages are dropped and counted).
- Bounds: tables, parked packets, announcements and lookups stay within their caps under any
  flood (sim: bounds; test_agent_flood).
- No dead owner: no table names a member it counted dead (sim: no-dead-owner).
- Failure detection: a crashed member is out of every live set within `dead_after` and a
  heartbeat interval (sim: failure-detection; test_membership).
- Liveness: after the last fault, every tunnel is up on exactly one member within a bounded
  time, and a dead member's tunnels are owned again exactly once (sim: liveness).
- Convergence: then every serving member's table names the same owner for every established
  IKE SA, the one whose charon holds it (sim: convergence).
"""
