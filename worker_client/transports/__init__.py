"""Transports that drive the pure protocol core (:mod:`worker_client.btard`): here the in-memory swarm of
the simulator and the tests (:mod:`.memory`); the networked worker drives it over hivemind and the site."""

from .memory import BulletinBoard, MemorySwarm

__all__ = ["BulletinBoard", "MemorySwarm"]
