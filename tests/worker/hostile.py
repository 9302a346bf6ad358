"""A hostile site and a hostile peer on loopback, for driving one real worker into what a review found.

:class:`HostileSite` is a real websocket server (``websockets.serve``) that speaks the control plane by
hand: it sends the challenge, reads the hello, welcomes the worker into a run, then runs the test's
script, which may send anything at all (raw text included). It records every message the worker sent.

:func:`running_worker` starts a real :class:`~worker_client.worker.Worker` (its own p2pd) against it
and always stops it (cancel, then the worker's own cleanup shuts the daemon down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from websockets.asyncio.server import serve

from btard_wire.control import Challenge, RunInfo, Welcome
from btard_wire.envelope import Identity, b64d, peer_id_from_public_key
from worker_client.worker import Worker, WorkerConfig

RUN = RunInfo(id=7, name="hostile", task="digits-mlp", batch_size=16, phase_timeout=20.0,
              validators_per_step=0, peers_per_group=3)


class HostileSite:
    def __init__(self, script=None, *, run: RunInfo | dict = RUN, welcome: bool = True):
        self.script = script
        self.run = run
        self.welcome = welcome
        self.received: list[dict] = []
        self.hellos: list[dict] = []
        self.auth: list[str | None] = []
        self.peer_id = ""
        self.url = ""
        self._server = None
        self.done = asyncio.Event()

    async def __aenter__(self) -> HostileSite:
        self._server = await serve(self._handler, "127.0.0.1", 0, max_size=None)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    def sent(self, type_: str) -> list[dict]:
        return [m for m in self.received if m.get("type") == type_]

    async def wait_for(self, predicate, timeout: float = 30.0, what: str = "the worker"):
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while loop.time() < until:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; the worker sent {self.received[-5:]}")

    async def _handler(self, ws):
        self.auth.append(ws.request.headers.get("Authorization"))
        await ws.send(Challenge(nonce="hostile-site-nonce-0123456789").model_dump_json())
        hello = json.loads(await ws.recv())
        self.hellos.append(hello)
        self.peer_id = peer_id_from_public_key(b64d(hello["public_key"]))
        reader = asyncio.create_task(self._read(ws))
        try:
            if self.welcome:
                run = self.run if isinstance(self.run, dict) else self.run.model_dump()
                welcome = Welcome(peer_id=self.peer_id, role="active", run=RUN, step=0).model_dump()
                welcome["run"] = run
                await ws.send(json.dumps(welcome))
            if self.script is not None:
                await self.script(self, ws)
            self.done.set()
            await reader
        except Exception:  # noqa: BLE001 - the worker hung up: the test looks at what was recorded
            pass
        finally:
            reader.cancel()

    async def _read(self, ws):
        async for raw in ws:
            self.received.append(json.loads(raw))


def worker_config(site_url: str, *, seed: bytes = b"hostile-worker", **overrides) -> WorkerConfig:
    fields = dict(server=site_url, token="tok-hostile", identity=Identity.from_seed(seed), device="cpu",
                  host_maddrs=["/ip4/127.0.0.1/tcp/0"], threads=1, heartbeat_interval=0.5, evaluate_every=0)
    fields.update(overrides)
    return WorkerConfig(**fields)


@contextlib.asynccontextmanager
async def running_worker(config: WorkerConfig, view=None):
    """``async with running_worker(cfg) as (worker, task):`` the worker runs; it is stopped on exit."""
    worker = Worker(config, view)
    task = asyncio.create_task(worker.run())
    try:
        yield worker, task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 30)


class RecordingView:
    """A view that keeps every event (kind, message) and the last status."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.status = None

    def event(self, kind: str, message: str, **fields) -> None:
        self.events.append((kind, message))

    def update(self, status) -> None:
        self.status = status

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


class Listener:
    """A TCP service on loopback that records every connection (a 'LAN service' the site wants probed)."""

    def __init__(self):
        self.connections = 0
        self.server = None
        self.port = 0

    async def __aenter__(self):
        async def on_connect(reader, writer):
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()
