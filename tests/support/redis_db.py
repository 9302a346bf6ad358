"""A Redis database of its own for each test run, so two runs on one Redis server never meet.

A run claims a free database index with ``SET NX`` on a claim key in database 0 (with a TTL that a
background thread renews while the run lasts, so a crashed run's claim expires), empties only the database it
claimed, and releases it at the end. It never ``FLUSHDB``s a database another run may hold.

    with claim_redis_db("redis://127.0.0.1:6379/0") as url:   # e.g. redis://127.0.0.1:6379/7
        ...
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from urllib.parse import urlsplit, urlunsplit

CLAIM_KEY = "btard-test:db-claim:{index}"
CLAIM_TTL_SECONDS = 120
FIRST_INDEX = 1  # database 0 holds the claims (and belongs to whoever uses the server's default)


class NoFreeDatabase(RuntimeError):
    pass


def _with_db(url: str, index: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, parts.fragment))


@contextlib.contextmanager
def claim_redis_db(url: str, *, ttl: int = CLAIM_TTL_SECONDS):
    """Yield the URL of a database index that this run alone holds (see the module docstring)."""
    import redis

    control = redis.Redis.from_url(_with_db(url, 0))
    databases = int(control.config_get("databases").get("databases", 16)) if _can_config(control) else 16
    owner = f"{os.getpid()}:{secrets.token_hex(8)}"
    index = None
    for candidate in range(FIRST_INDEX, databases):
        if control.set(CLAIM_KEY.format(index=candidate), owner, nx=True, ex=ttl):
            index = candidate
            break
    if index is None:
        raise NoFreeDatabase(f"every Redis database {FIRST_INDEX}..{databases - 1} is claimed by another run")
    key = CLAIM_KEY.format(index=index)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            with contextlib.suppress(Exception):
                if control.get(key) == owner.encode():
                    control.expire(key, ttl)

    thread = threading.Thread(target=renew, name="redis-db-claim", daemon=True)
    thread.start()
    ours = _with_db(url, index)
    client = redis.Redis.from_url(ours)
    try:
        client.flushdb()  # ours now: whatever a crashed earlier holder left
        yield ours
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            if control.get(key) == owner.encode():
                client.flushdb()
                control.delete(key)


def _can_config(client) -> bool:
    try:
        client.config_get("databases")
        return True
    except Exception:  # noqa: BLE001 - CONFIG may be disabled (managed Redis): assume the default 16
        return False
