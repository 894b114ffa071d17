"""The forwarding agent: single-member IKE ownership across the cluster (`SEP_my_IKE_packet`).

Two houses behind a narrow door. The protocol is a state machine with no I/O (`core.Agent`,
with its `director` and `joining` roles, over the pure `ike`, `ownership`, `membership`,
`sync` and `steering`); `daemon` is the thin shell that feeds it events from NFQUEUE
(`nfqueue`), the sync socket, the witness (`witness`), charon (`charon`) and the control
socket (`control`), and carries out its actions (`routes` among them). The package imports
only the standard library, vici, netfilterqueue and itself; the lab imports from it only
`names`, `config`, `control` and `steering`.
"""
