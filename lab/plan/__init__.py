"""The plan: what a user asks for (`topology.LabSpec`), the address plan it implies
(`topology.Plan`) and the hashing switch's OpenFlow program (`hashing`). Pure data and text:
no Mininet, no sockets, no processes."""
