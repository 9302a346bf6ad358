"""A worker socket whose routes were lost still hears its step (issue 13, faults across hosts).

A Redis restart drops every routing entry and group membership, and closes every worker socket at once
(the channel layer's receive fails): the workers reconnect, but the group of the step in progress had
gone out to nobody, so the whole swarm idled until the step's deadline (52-55 s in the e2e test). A
worker back from a killed Daphne process missed the relays posted meanwhile, and waited for them until
the step's deadline. And a socket that stays up while its routing entry is evicted or flushed heard
nothing more of any step.
"""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.cache import cache
from live import event_routing as routes
from runs.models import Run

from btard_wire.board import BOARD_REQUESTS_PER_PHASE
from btard_wire.control import Heartbeat, StepReport
from tests.factories import RunFactory
from tests.site.helpers import envelope
from tests.site.wsworker import open_worker, receive_type, signed_hello, token_for, two_member_group

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="routes-run", min_peers=2, peers_per_group=4)


async def test_a_member_reconnecting_mid_step_gets_the_group_of_the_step_in_progress(run, alice, bob):
    (ca, _, _), (cb, ib, _), groups = await two_member_group(run, alice, bob)
    step = groups[1]["step"]
    await cb.disconnect()  # its socket went (a Redis restart closes them all) and the step goes on
    cb2 = await open_worker(await database_sync_to_async(token_for)(bob, "again"))
    await cb2.send_to(text_data=await signed_hello(cb2, ib))
    assert (await cb2.receive_json_from(timeout=10))["type"] == "welcome"
    group = await receive_type(cb2, "group")
    assert group["step"] == step and ib.peer_id in [p["peer_id"] for p in group["peers"]]
    for comm in (ca, cb2):
        await comm.disconnect()


async def test_a_member_reconnecting_mid_step_gets_the_broadcasts_it_missed_meanwhile(run, alice, bob):
    # The two-Daphne e2e stall: alice posts while bob has no socket; bob comes back, posts, and waits in that
    # phase for alice's message, which nobody relays again; alice has all of bob's and moves on, so she never
    # asks to close the phase, and the phase never closes for bob (no quorum) until the step's deadline.
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    await cb.disconnect()
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    missed = envelope(ia, run_now)
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": missed.model_dump()}))
    assert (await receive_type(ca, "relay"))["envelope"]["nonce"] == missed.nonce  # stored (the board's echo)
    cb2 = await open_worker(await database_sync_to_async(token_for)(bob, "again"))
    await cb2.send_to(text_data=await signed_hello(cb2, ib))
    assert (await receive_type(cb2, "group"))["step"] == run_now.current_step
    assert (await receive_type(cb2, "relay"))["envelope"]["nonce"] == missed.nonce
    for comm in (ca, cb2):
        await comm.disconnect()


async def test_reconnecting_does_not_fetch_the_board_more_often_than_board_requests_may(run, alice, bob):
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": envelope(ia, run_now).model_dump()}))
    await receive_type(ca, "relay")
    relays, raw = [], await database_sync_to_async(token_for)(bob, "again")
    for _ in range(BOARD_REQUESTS_PER_PHASE + 2):
        await cb.disconnect()
        cb = await open_worker(raw)
        await cb.send_to(text_data=await signed_hello(cb, ib))
        await receive_type(cb, "group")
        # a refused second hello: everything the site sent before its error came first
        await cb.send_to(text_data=json.dumps({"type": "hello", "public_key": ib.public_key_b64}))
        got = []
        while (msg := await cb.receive_json_from(timeout=10))["type"] != "error":
            got.append(msg["type"])
        relays.append(got.count("relay"))
    assert relays == [1] * BOARD_REQUESTS_PER_PHASE + [0, 0]
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_socket_whose_routing_entry_and_groups_were_lost_gets_them_back_with_its_next_heartbeat(
        run, alice, bob):
    # The f5 e2e stall: a Redis restart closed only the sockets waiting on the layer at that moment; the others
    # stayed up without a routing entry, so the next step's group and its broadcasts went past them.
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    layer = get_channel_layer()
    key = routes.peer_channel_key(ib.peer_id, run.pk)
    channel = await cache.aget(key)
    assert channel is not None
    await cache.adelete(key)
    for group in (routes.run_workers_group(run.pk), routes.peer_group(ib.peer_id, run.pk)):
        await layer.group_discard(group, channel)
    # meanwhile the step ends and the next one starts; alice posts in it
    for comm in (ca, cb):
        await comm.send_to(text_data=StepReport(step=0, outcome="applied", loss=2.3, accuracy=0.1,
                                                samples=32).model_dump_json())
    assert (await receive_type(ca, "group"))["step"] == 1
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    missed = envelope(ia, run_now)
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": missed.model_dump()}))
    await receive_type(ca, "relay")

    await cb.send_to(text_data=Heartbeat(status="training", step=0).model_dump_json())
    await cb.send_to(text_data=json.dumps({"type": "hello", "public_key": ib.public_key_b64}))
    got = []
    while (msg := await cb.receive_json_from(timeout=10))["type"] != "error":  # the heartbeat was handled before
        got.append(msg)
    assert msg["code"] == "already_joined"
    assert await cache.aget(key) == channel
    assert [m["step"] for m in got if m["type"] == "group"] == [1]  # the group it missed, once
    assert missed.nonce in [m["envelope"]["nonce"] for m in got if m["type"] == "relay"]  # and the broadcast

    env = envelope(ia, run_now, phase="mprng_commit", payload={"hash": "aa" * 32})
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    assert (await receive_type(cb, "relay"))["envelope"]["nonce"] == env.nonce  # the step's fan-out finds it
    await layer.group_send(routes.peer_group(ib.peer_id, run.pk),
                           {"type": "worker.forward", "text": json.dumps({"type": "probe"})})
    assert (await receive_type(cb, "probe"))["type"] == "probe"  # and its groups have it again
    for comm in (ca, cb):
        await comm.disconnect()
