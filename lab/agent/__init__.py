"""The forwarding agent: single-member IKE ownership across the cluster (`SEP_my_IKE_packet`).

Two houses behind a narrow door. The protocol is a state machine with no I/O (`core.Agent`,
with its roles `claimant`, `director`, `joining`, `liveness`, `resync`, `handover` and
`sa_events`, over the pure `ike`, `ownership`, `membership`, `sync`, `steering`, `pacing`,
`holdings` and `witness`); `daemon` is the thin shell that feeds it events from NFQUEUE
(`nfqueue`), the sync socket, the witness (`witnessd` runs it), charon (`charon`, `crowd`)
and the control socket (`control`), and carries out its actions (`routes` among them), with
the decision trace (`trace`) written beside. The package imports only the standard library,
vici, netfilterqueue and itself; the lab imports from it only `names`, `config`, `control`,
`steering`, `trace`, `vicilink` (the one vici client) and `ike` (the one packet codec).
"""
