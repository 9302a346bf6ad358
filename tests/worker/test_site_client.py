"""The control-plane client against a real ``websockets`` server started in the test."""

from __future__ import annotations

import asyncio
import json
import random
from http import HTTPStatus

import pytest
from websockets.asyncio.server import serve

from btard_wire.control import (
    CLOSE_BANNED,
    CLOSE_REVOKED_TOKEN,
    Heartbeat,
    Hello,
    RunInfo,
    Status,
    StepReport,
    Welcome,
)
from btard_wire.envelope import Identity
from worker_client.site_client import FatalSiteError, SiteClient, backoff_delay, ws_url

IDENTITY = Identity.from_seed(b"site-client-test")


class FakeSite:
    """A tiny site: records what each connection sent and behaves as the test says."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.connections: list[dict] = []

    async def handler(self, ws):
        record = {"auth": ws.request.headers.get("Authorization"), "messages": []}
        self.connections.append(record)
        await self.behaviour(self, ws, record)

    async def receive(self, ws, record, count: int):
        for _ in range(count):
            record["messages"].append(json.loads(await ws.recv()))


def make_client(port: int, *, received: list, status=Status.training, **kwargs) -> SiteClient:
    return SiteClient(
        f"http://127.0.0.1:{port}", "tok-123",
        hello=lambda: Hello(public_key=IDENTITY.public_key_b64, p2p_id="12D3KooTest", p2p_addrs=["/ip4/127.0.0.1/tcp/5"]),
        heartbeat=lambda: Heartbeat(status=status, detail="step 3: computing gradient", step=3),
        on_message=received.append, heartbeat_interval=0.2, backoff_base=0.05, backoff_cap=0.2,
        rng=random.Random(0), **kwargs)


WELCOME = Welcome(peer_id=IDENTITY.peer_id, role="active", step=0,
                  run=RunInfo(id=1, name="r", task="digits-mlp")).model_dump_json()


async def run_site(site: FakeSite, scenario):
    async with serve(site.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        return await asyncio.wait_for(scenario(port), 20)


async def test_it_says_hello_with_the_token_then_heartbeats_with_a_status_reason():
    async def behaviour(site, ws, record):
        await site.receive(ws, record, 1)
        await ws.send(WELCOME)
        await site.receive(ws, record, 2)
        await ws.close()

    site = FakeSite(behaviour)
    received: list = []

    async def scenario(port):
        client = make_client(port, received=received)
        task = asyncio.create_task(client.run())
        while len(site.connections) < 1 or len(site.connections[0]["messages"]) < 3:
            await asyncio.sleep(0.05)
        await client.close()
        await task

    await run_site(site, scenario)
    first = site.connections[0]
    assert first["auth"] == "Bearer tok-123"
    assert first["messages"][0]["type"] == "hello"
    assert first["messages"][1]["type"] == "heartbeat"
    assert first["messages"][1]["status"] == "training" and "gradient" in first["messages"][1]["detail"]
    assert isinstance(received[0], Welcome) and received[0].run.task == "digits-mlp"


async def test_it_reconnects_with_jittered_backoff_and_resends_what_was_queued():
    async def behaviour(site, ws, record):
        if len(site.connections) == 1:
            await site.receive(ws, record, 1)
            ws.transport.abort()  # a network failure, no close frame
            return
        await site.receive(ws, record, 3)  # hello, the queued step report, a heartbeat (any order after hello)
        await ws.close()

    site = FakeSite(behaviour)

    async def scenario(port):
        client = make_client(port, received=[])
        task = asyncio.create_task(client.run())
        while not site.connections:
            await asyncio.sleep(0.02)
        client.send(StepReport(step=3, outcome="applied", loss=0.5))
        while len(site.connections) < 2 or len(site.connections[1]["messages"]) < 3:
            await asyncio.sleep(0.05)
        await client.close()
        await task
        return client

    client = await run_site(site, scenario)
    assert len(site.connections) >= 2
    assert client.reconnect_delays and all(0.025 <= d <= 0.3 for d in client.reconnect_delays)
    types = [m["type"] for conn in site.connections for m in conn["messages"]]
    # the old socket may have swallowed it (written, then aborted): the last report goes again after the
    # reconnect, right after hello, whatever became of the first copy (the site ignores a repeat)
    assert "step_report" in [m["type"] for m in site.connections[1]["messages"]]
    assert 1 <= types.count("step_report") <= 2


@pytest.mark.parametrize("code,words", [(CLOSE_REVOKED_TOKEN, "revoked"), (CLOSE_BANNED, "banned")])
async def test_it_exits_with_a_human_message_on_a_revoked_token_or_a_ban_without_retrying(code, words):
    async def behaviour(site, ws, record):
        await site.receive(ws, record, 1)
        await ws.close(code, "nope")

    site = FakeSite(behaviour)

    async def scenario(port):
        client = make_client(port, received=[])
        with pytest.raises(FatalSiteError) as err:
            await client.run()
        return err.value

    error = await run_site(site, scenario)
    assert error.code == code and words in str(error)
    assert len(site.connections) == 1


async def test_it_exits_when_the_site_refuses_the_token_at_the_handshake():
    attempts = []

    def refuse(connection, request):
        attempts.append(request.headers.get("Authorization"))
        return connection.respond(HTTPStatus.FORBIDDEN, "bad token\n")

    async with serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        client = make_client(port, received=[])
        with pytest.raises(FatalSiteError, match="token"):
            await asyncio.wait_for(client.run(), 10)
    assert attempts == ["Bearer tok-123"]


async def test_it_keeps_retrying_while_the_site_is_down_then_connects():
    received: list = []
    client = make_client(1, received=received)  # port 1: connection refused
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.6)
    assert client.connections == 0 and len(client.reconnect_delays) >= 2
    await client.close()
    await asyncio.wait_for(task, 5)


def test_backoff_grows_exponentially_is_capped_and_jittered():
    rng = random.Random(1)
    delays = [backoff_delay(a, base=1.0, cap=8.0, rng=rng) for a in range(8)]
    assert 0.5 <= delays[0] < 1.0 and 1.0 <= delays[1] < 2.0 and 2.0 <= delays[2] < 4.0
    assert all(4.0 <= d < 8.0 for d in delays[3:])  # never longer than the cap, jitter included
    assert len({round(d, 6) for d in delays[4:]}) == 4  # capped but still jittered


def test_ws_url_maps_http_to_ws_and_https_to_wss():
    assert ws_url("https://swarm.example") == "wss://swarm.example/ws/worker/"
    assert ws_url("http://127.0.0.1:8000/") == "ws://127.0.0.1:8000/ws/worker/"
    with pytest.raises(ValueError):
        ws_url("ftp://x")


async def test_a_report_queued_just_before_close_still_reaches_the_site():
    """A worker stops right after its last step: that step's report must not be lost on the way out."""
    async def behaviour(site, ws, record):
        async for raw in ws:
            record["messages"].append(json.loads(raw))

    site = FakeSite(behaviour)

    async def scenario(port):
        client = make_client(port, received=[])
        task = asyncio.create_task(client.run())
        await client.connected.wait()
        client.send(StepReport(step=7, outcome="applied", loss=0.5, samples=32))
        await client.close()
        await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.2)

    await run_site(site, scenario)
    sent = [m for c in site.connections for m in c["messages"]]
    assert any(m["type"] == "step_report" and m["step"] == 7 for m in sent), sent
