"""The BTARD protocol core: a transport-agnostic state machine (no I/O here)."""
