"""A burst of simultaneous broadcasts must not hang the site (issue 12, invariant 7: liveness).

The "6-worker stall at step 0's commit" of the networked tests (docs/threat-model.md, "Protocol", 3b):
database calls of the worker sockets run in the event loop's default executor (``live.consumers.common.db``,
``thread_sensitive=False`` under PostgreSQL), whose size is ``min(32, cpus + 4)``; each stored broadcast
is delivered on commit by ``live.bus.deliver``, which blocks its thread until the fan-out is sent, and the
fan-out's cache lookup (``live.fanout.fan_out``) needs a thread of that same executor. With every thread
delivering at once (six workers posting their commits together on a 2-core machine; anyone holding that
many live sockets) none is left for the lookups: every delivery waits forever, and so does every later
message. Here the pool has two threads and two deliveries start together."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from live.bus import deliver
from live.events import PhaseClosed

POOL = 2

async def test_deliveries_from_every_thread_of_the_pool_at_once_still_finish():
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(POOL, thread_name_prefix="db-burst")
    loop.set_default_executor(pool)
    event = PhaseClosed(run_id=1, step=0, phase="commit", senders=["a" * 40], late=[],
                        recipients=["a" * 40, "b" * 40])
    # as live.consumers.common.db runs a service (whose on-commit hook delivers) under PostgreSQL
    calls = asyncio.gather(*[sync_to_async(deliver, thread_sensitive=False)(event) for _ in range(POOL)])
    try:
        await asyncio.wait_for(asyncio.shield(calls), 3)
    finally:
        # unblock a deadlocked pool (one more thread takes the queued lookups), so nothing hangs at exit
        pool._max_workers = POOL + 1
        pool._adjust_thread_count()
        await asyncio.wait_for(calls, 30)
        pool.shutdown(wait=False)
