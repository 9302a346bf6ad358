"""A step's messages reach its members' sockets through one hub per site process (live.fanout)."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from live import fanout
from live.bus import deliver_async
from live.events import BroadcastRecorded
from runs.models import Run

from tests.factories import RunFactory, UserFactory
from tests.site.helpers import envelope
from tests.site.wsworker import join, receive_type, token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="fanout-run", min_peers=99, peers_per_group=16)


async def members(n: int):
    out = []
    for i in range(n):
        user = await database_sync_to_async(UserFactory)()
        out.append(await join(await database_sync_to_async(token_for)(user), f"fan-{i}".encode()))
    return out


async def test_a_relay_reaches_every_member_with_one_channel_layer_message(run, monkeypatch):
    socks = await members(6)
    layer = get_channel_layer()
    sends = []
    original = layer.send

    async def counting_send(channel, message):
        sends.append(channel)
        return await original(channel, message)

    monkeypatch.setattr(layer, "send", counting_send)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    sender = socks[0][1]
    env = envelope(sender, run_now, phase="accuse", payload={"accused": socks[1][1].peer_id})
    ids = [ident.peer_id for _, ident, _ in socks]
    await deliver_async(BroadcastRecorded(run_id=run.id, step=0, envelope=env, recipients=ids), layer)
    assert len(sends) == 1 and sends[0].endswith(fanout.HUB_SUFFIX)  # one copy for this process
    for comm, ident, _ in socks[1:]:
        assert (await receive_type(comm, "relay"))["envelope"]["nonce"] == env.nonce
    assert await socks[0][0].receive_nothing(timeout=0.3)  # not a board phase: no echo to the sender
    for comm, _, _ in socks:
        await comm.disconnect()


async def test_a_board_phase_message_goes_back_to_its_sender_as_proof_it_was_stored(run):
    socks = await members(2)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env = envelope(socks[0][1], run_now, phase="mprng_commit", payload={"hash": "ab" * 32})
    ids = [ident.peer_id for _, ident, _ in socks]
    await deliver_async(BroadcastRecorded(run_id=run.id, step=0, envelope=env, recipients=ids))
    for comm, _, _ in socks:
        assert (await receive_type(comm, "relay"))["envelope"]["nonce"] == env.nonce
    for comm, _, _ in socks:
        await comm.disconnect()


async def test_the_hub_stops_when_the_last_worker_socket_of_the_process_closes(run):
    socks = await members(2)
    loop = asyncio.get_running_loop()
    assert not fanout._hubs[loop].done()
    for comm, _, _ in socks:
        await comm.disconnect()
    await asyncio.sleep(0)
    assert loop not in fanout._hubs


async def test_a_notice_for_a_worker_that_already_left_is_dropped_quietly(run, caplog):
    from live.consumers import WorkerConsumer

    class ClosedTransport(Exception):
        pass

    async def closed_send(message):
        raise ClosedTransport("Attempt to send on a closed protocol")

    consumer = WorkerConsumer()
    consumer.base_send = closed_send
    await consumer.send(text_data="{}")  # no exception reaches the server
    assert consumer.gone
    sent = []

    async def recording_send(message):
        sent.append(message)

    consumer.base_send = recording_send
    await consumer.send(text_data="{}")  # and later writes are skipped, even on a live transport
    assert consumer.gone and sent == []
