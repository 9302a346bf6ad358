"""Helpers shared by the test packages: processes (``worker_client.processes``: own session, kill by process
group, only our own hivemind sockets removed) and a Redis database per test run (:mod:`tests.support.redis_db`)."""

from worker_client.processes import ProcessGroup, free_port, kill_group, wait_for_site

from .redis_db import claim_redis_db

__all__ = ["ProcessGroup", "claim_redis_db", "free_port", "kill_group", "wait_for_site"]
