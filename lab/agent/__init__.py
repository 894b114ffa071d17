"""The forwarding agent: single-member IKE ownership across the cluster (`SEP_my_IKE_packet`).

Pure logic (`ike`, `ownership`, `sync`) imports no Mininet and no sockets; `daemon` ties it to
NFQUEUE, the sync network and vici.
"""
