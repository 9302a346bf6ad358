"""Transports that drive the pure protocol core (:mod:`worker_client.btard.protocol`), by name."""

from .memory import BulletinBoard, MemorySwarm

TRANSPORTS = {"memory": MemorySwarm}

__all__ = ["TRANSPORTS", "BulletinBoard", "MemorySwarm"]
