"""tests.support.redis_db: each test run claims a Redis database of its own and empties only that one."""

from __future__ import annotations

import os

import pytest

from tests.support.redis_db import CLAIM_KEY, claim_redis_db


def test_concurrent_runs_get_different_databases_and_release_only_their_own():
    base = os.environ.get("REDIS_URL")
    if not base:
        pytest.skip("REDIS_URL is not set (CI sets it)")
    import redis

    with claim_redis_db(base) as first:
        with claim_redis_db(base) as second:
            assert first != second
            redis.Redis.from_url(first).set("mine", 1)
            redis.Redis.from_url(second).set("theirs", 1)
        # the second run released its database (emptied it, dropped its claim); ours is untouched
        assert redis.Redis.from_url(first).get("mine") == b"1"
        assert redis.Redis.from_url(second).get("theirs") is None
        index = int(second.rsplit("/", 1)[1])
        assert redis.Redis.from_url(base).get(CLAIM_KEY.format(index=index)) is None
    assert redis.Redis.from_url(first).get("mine") is None
