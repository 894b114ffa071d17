"""The agent's I/O shell: sockets, NFQUEUE, charon over vici, kernel routes, the control
socket, the witness's process and the decision trace. It feeds `protocol.core.Agent` events
and carries out the actions it returns; no protocol decision is made here."""
