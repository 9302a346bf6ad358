"""BTARD Swarm worker: the volunteer-side client and the protocol core (``worker_client.btard``)."""

__version__ = "0.1.0"
