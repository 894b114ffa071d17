"""The agent's protocol: the state machine (`core.Agent`), its roles and the pure logic they
stand on. No I/O here: events in, actions out (`events`), time given by the caller."""
