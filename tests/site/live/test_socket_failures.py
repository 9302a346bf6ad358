"""F11 (site security review): input the worker socket cannot use gets a clear error, and anything that
still breaks the consumer closes the socket with a reason and cleans the peer up at once; a long
``?run=`` on ``/ws/live/`` is refused, not a server error; a NaN in a payload is ``payload``."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.cache import cache
from live import event_routing as routes
from runs.models import Peer, Run

from tests.factories import RunFactory
from tests.site.helpers import envelope
from tests.site.wsclient import T, application, join, receive_type, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="socket-run", min_peers=2, peers_per_group=4)


async def test_deeply_nested_json_gets_a_clear_error_and_the_socket_keeps_working(run, alice):
    comm, identity, _ = await join(alice, b"alice-deep")
    await comm.send_to(text_data='{"type": "heartbeat", "detail": ' + "[" * 5000 + "]" * 5000 + "}")
    error = await receive_type(comm, "error")
    assert error["code"] == "malformed" and "deeper" in error["message"]
    await send(comm, {"type": "heartbeat", "status": "error", "detail": "still here"})
    await comm.receive_nothing(timeout=0.3)
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=identity.peer_id)
    assert peer.online and peer.status_detail == "still here"
    await comm.disconnect()


async def test_a_message_that_breaks_the_consumer_closes_the_socket_and_marks_the_peer_offline(
        run, alice, monkeypatch):
    from live.consumers import worker as consumers

    comm, identity, _ = await join(alice, b"alice-crash")

    def explode(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(consumers, "parse_worker_message", explode)
    await comm.send_to(text_data='{"type": "heartbeat", "status": "training"}')
    error = await receive_type(comm, "error")
    assert error["code"] == "internal"
    out = await comm.receive_output(timeout=T)
    assert out["type"] == "websocket.close" and out["code"] == 1011 and out.get("reason")
    online = True
    for _ in range(50):  # the cleanup runs right after the close frame went out
        online = await database_sync_to_async(
            lambda: Peer.objects.get(peer_id=identity.peer_id).online)()
        if not online:
            break
        await __import__("asyncio").sleep(0.05)
    assert not online
    assert await cache.aget(routes.peer_channel_key(identity.peer_id, run.pk)) is None


async def test_a_nan_in_a_payload_is_refused_as_payload_not_internal(run, alice, bob):
    ca, ia, _ = await join(alice, b"alice-nan")
    cb, ib, _ = await join(bob, b"bob-nan")
    await receive_type(ca, "group")
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env = envelope(ia, run_now, phase="scalars", payload={"values": [1.0]}).model_dump()
    text = __import__("json").dumps({"type": "broadcast", "envelope": env}).replace("1.0]", "NaN]")
    await ca.send_to(text_data=text)
    assert (await receive_type(ca, "error"))["code"] in {"payload", "schema", "malformed"}
    for comm in (ca, cb):
        await comm.disconnect()


@pytest.mark.parametrize("query", ["run=" + "9" * 120, "run=%00", "run=-1", "run=١٢", "view=admin"])
async def test_a_bad_live_view_query_is_refused_without_a_server_error(run, query):
    comm = WebsocketCommunicator(application, f"/ws/live/?{query}")
    connected, code = await comm.connect(timeout=T)
    assert not connected and code == 4400
