"""The BTARD protocol core: a transport-agnostic state machine (no I/O here, no module-global state).

Import its names from :mod:`worker_client.btard.protocol` (the public entry point); the modules behind it
are split by concern (``docs/protocol.md``, "Driver API"): ``peer``, ``checks``, ``court``, ``state``,
``actions``, ``kernels``, ``memo``.
"""
