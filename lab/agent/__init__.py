"""The forwarding agent: single-member IKE ownership across the cluster (`SEP_my_IKE_packet`).

Two floors behind a narrow door:
- `protocol/`: a state machine with no I/O (`protocol.core.Agent`, with its roles `claimant`,
  `director`, `joining`, `liveness`, `resync`, `handover` and `sa_events`, each held to its
  written `contract`, over the pure `ike`, `ownership`, `membership`, `sync`, `steering`,
  `pacing`, `holdings`, `crowd`, `synctrace` and `witness`). Nothing under it imports `os`, `time`, `socket`, `subprocess`, `threading`
  or `select` (tests/unit/test_architecture.py).
- `io/`: the thin shell (`daemon`) that feeds the core events from NFQUEUE (`nfqueue`), the
  sync socket, the witness (`witnessd` runs it), charon (`charon`, over `vicilink`, the one
  vici client) and the control socket (`control`), and carries out its actions (`routes`
  among them), with the decision trace (`trace`) written beside.
`names` and `config`, here at the top, are what both sides of the door agree on.

The package imports only the standard library, vici, netfilterqueue and itself; the lab
imports from it only `names`, `config`, `io.control`, `io.trace`, `io.vicilink`,
`protocol.steering` and `protocol.ike` (the one packet codec).
"""
