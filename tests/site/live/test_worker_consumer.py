"""live.consumers.worker through WebsocketCommunicator: schema errors, groups, relays and replays, reports,
live bans, reachability."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from runs.models import BroadcastLog, Peer, Run

from btard_wire.control import (
    CLOSE_BANNED,
    Heartbeat,
    StepReport,
)
from tests.factories import RunFactory
from tests.site.helpers import envelope, verdict
from tests.site.wsworker import (
    T,
    application,
    expect_close_after_messages,
    join,
    open_worker,
    receive_type,
    signed_hello,
    token_for,
    two_member_group,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="ws-run", min_peers=2, peers_per_group=4)


@pytest.fixture
def redis_layer(redis_url, settings):
    """The Redis channel layer (a private prefix so parallel runs do not meet)."""
    import uuid

    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [redis_url], "prefix": f"t{uuid.uuid4().hex[:8]}"}}}
    channel_layers.backends.pop("default", None)
    yield
    channel_layers.backends.pop("default", None)


async def test_a_founder_is_welcomed_as_active_with_the_run_info(run, alice):
    raw = await database_sync_to_async(token_for)(alice)
    comm, identity, welcome = await join(raw, b"alice-1")
    assert welcome["role"] == "active" and welcome["peer_id"] == identity.peer_id
    assert welcome["run"]["id"] == run.id and welcome["step"] == 0
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=identity.peer_id)
    assert peer.online and peer.p2p_id == "Qmalice-1"
    await comm.disconnect()
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=identity.peer_id)
    assert not peer.online


@pytest.mark.parametrize("payload, code", [
    ("{not json", "malformed"),
    (json.dumps({"type": "heartbeat", "status": "sleeping"}), "schema"),
    (json.dumps({"type": "teleport"}), "schema"),
    (json.dumps({"v": 99, "type": "heartbeat", "status": "training"}), "version"),
    ("x" * 300_000, "too_large"),
])
async def test_malformed_messages_get_an_error_and_change_nothing(payload, code, run, alice, settings):
    raw = await database_sync_to_async(token_for)(alice)
    comm, identity, _ = await join(raw, b"alice-2")
    await comm.send_to(text_data=payload)
    error = await comm.receive_json_from(timeout=T)
    assert (error["type"], error["code"]) == ("error", code)
    # the consumer survived: a valid heartbeat still works
    await comm.send_to(text_data=Heartbeat(status="error", detail="disk full").model_dump_json())
    await asyncio.sleep(0.3)
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=identity.peer_id)
    assert (peer.status, peer.status_detail) == ("error", "disk full")
    await comm.disconnect()


async def test_messages_before_hello_are_refused(run, alice):
    comm = await open_worker(await database_sync_to_async(token_for)(alice))
    await comm.send_to(text_data=Heartbeat(status="training").model_dump_json())
    assert (await receive_type(comm, "error"))["code"] == "hello_first"
    await comm.disconnect()


async def test_the_site_forms_the_group_once_enough_peers_joined_and_pushes_it_to_each(run, alice, bob):
    a, b, groups = await two_member_group(run, alice, bob)
    assert groups[0] == groups[1]
    assert groups[0]["step"] == 0
    assert sorted(p["peer_id"] for p in groups[0]["peers"]) == sorted([a[1].peer_id, b[1].peer_id])
    for comm, _, _ in (a, b):
        await comm.disconnect()


async def test_broadcasts_are_relayed_unchanged_to_the_rest_of_the_group_and_replays_refused(run, alice, bob):
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env = envelope(ia, run_now)
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    relay = await receive_type(cb, "relay")
    assert relay["envelope"] == env.model_dump()
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    error = await receive_type(ca, "error")
    assert error["code"] == "replay"
    forged = env.model_copy(update={"payload": {"hashes": ["11" * 32]}, "nonce": "ab" * 16})
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": forged.model_dump()}))
    assert (await receive_type(ca, "error"))["code"] == "signature"
    assert await database_sync_to_async(BroadcastLog.objects.count)() == 1
    assert await cb.receive_nothing(timeout=0.3)
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_refused_broadcast_is_named_by_step_and_digest_so_its_sender_can_leave_it_out(run, alice, bob):
    """A worker's validation report lists its own ELIMINATEs; when the site refuses one (e.g. the per-account
    limit), the worker must know which, or its report is refused in turn and it waits in validation."""
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    report = envelope(ia, run_now, phase="validation",
                      payload={"target": None, "ok": None, "accusations": ["cd" * 32], "silent": []})
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": report.model_dump()}))
    error = await receive_type(ca, "error")
    assert (error["code"], error["step"], error["digest"]) == ("unheld_digest", run_now.current_step,
                                                                report.digest())
    await ca.send_to(text_data=json.dumps({"type": "heartbeat", "step": "x"}))  # not a broadcast: no digest
    schema = await receive_type(ca, "error")
    assert "digest" not in schema and "step" not in schema
    for comm in (ca, cb):
        await comm.disconnect()


async def test_reports_from_the_whole_group_advance_the_run_and_push_the_next_group(run, alice, bob):
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    for comm in (ca, cb):
        await comm.send_to(text_data=StepReport(step=0, outcome="applied", loss=2.3, accuracy=0.1,
                                                samples=32).model_dump_json())
    nxt = await receive_type(ca, "group")
    assert nxt["step"] == 1
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    assert run_now.current_step == 1 and run_now.step_in_progress
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_repeated_step_report_after_a_reconnect_is_ignored_without_an_error(run, alice, bob):
    """A worker repeats its last report after every reconnect (the old socket may have swallowed it): the
    first one stands, the repeat gets no error and changes nothing."""
    (ca, _, _), (cb, _, _), _ = await two_member_group(run, alice, bob)
    report = StepReport(step=0, outcome="applied", loss=2.3, samples=32).model_dump_json()
    await ca.send_to(text_data=report)
    await ca.send_to(text_data=StepReport(step=0, outcome="dropped", samples=32).model_dump_json())
    assert await ca.receive_nothing(timeout=0.3)  # no "duplicate" error for the repeat
    await cb.send_to(text_data=report)
    assert (await receive_type(ca, "group"))["step"] == 1
    from runs.models import StepReportRecord

    stored = await database_sync_to_async(lambda: sorted(StepReportRecord.objects.values_list("outcome", flat=True)))()
    assert stored == ["applied", "applied"]  # one report per member, the first of each
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_majority_verdict_bans_live_closes_the_socket_and_reaches_the_ban_list(run, alice, bob, carol):
    await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(min_peers=3)
    members = []
    for user, seed in ((alice, b"alice-v"), (bob, b"bob-v"), (carol, b"carol-v")):
        members.append(await join(await database_sync_to_async(token_for)(user), seed))
    for comm, _, _ in members:
        await receive_type(comm, "group")
    browser = WebsocketCommunicator(application, "/ws/live/?view=bans")
    assert (await browser.connect(timeout=T))[0]
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    (ca, ia, _), (cb, ib, _), (cc, ic, _) = members
    for comm, identity in ((ca, ia), (cb, ib)):
        env = verdict(identity, run_now, guilty=ic.peer_id)
        await comm.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    notice = await receive_type(ca, "ban")
    assert notice["peer_id"] == ic.peer_id
    assert "banned" in await expect_close_after_messages(cc, CLOSE_BANNED)
    html = await browser.receive_from(timeout=T)
    assert "carol" in html and 'hx-swap-oob="afterbegin"' in html and "part_mismatch" in html
    for comm in (ca, cb, browser):
        await comm.disconnect()


async def test_a_key_ban_closes_only_that_key_and_tells_it_how_to_start_again(run, alice, bob, carol):
    await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(min_peers=3, peers_per_group=3)
    members = []
    for user, seed in ((alice, b"alice-k"), (bob, b"bob-k"), (carol, b"carol-k")):
        members.append(await join(await database_sync_to_async(token_for)(user), seed))
    for comm, _, _ in members:
        await receive_type(comm, "group")
    spare, _, welcome = await join(await database_sync_to_async(token_for)(carol, name="second box"), b"carol-k2")
    assert welcome["role"] != "banned"
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    (ca, ia, _), (cb, ib, _), (cc, ic, _) = members
    for comm, identity in ((ca, ia), (cb, ib)):
        env = verdict(identity, run_now, guilty=ic.peer_id, kind="withheld_reveal")
        await comm.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    reason = await expect_close_after_messages(cc, CLOSE_BANNED)
    assert "your account is not" in reason and "--new-key" in reason
    notice = await receive_type(spare, "ban")  # carol's other worker hears of it and keeps working
    assert notice["peer_id"] == ic.peer_id and notice["scope"] == "key"
    while not await spare.receive_nothing(timeout=0.3):  # later messages, but no close
        assert (await spare.receive_output(timeout=T))["type"] != "websocket.close"
    for comm in (ca, cb, spare):
        await comm.disconnect()


async def test_groups_and_relays_travel_through_the_redis_channel_layer(redis_layer, run, alice, bob):
    (ca, ia, _), (cb, ib, _), groups = await two_member_group(run, alice, bob)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env = envelope(ib, run_now, phase="mprng_commit", payload={"hash": "aa" * 32})
    await cb.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    assert (await receive_type(ca, "relay"))["envelope"]["nonce"] == env.nonce
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_peer_reconnecting_mid_step_still_receives_the_step_relays(run, alice, bob):
    (ca, ia, _), (cb, ib, _), _ = await two_member_group(run, alice, bob)
    await cb.disconnect()
    cb2 = await open_worker(await database_sync_to_async(token_for)(bob, "again"))
    await cb2.send_to(text_data=await signed_hello(cb2, ib))
    assert (await cb2.receive_json_from(timeout=T))["type"] == "welcome"
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env = envelope(ia, run_now)
    await ca.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    assert (await receive_type(cb2, "relay"))["envelope"]["nonce"] == env.nonce
    for comm in (ca, cb2):
        await comm.disconnect()


async def test_a_newcomer_beyond_the_admission_limits_is_welcomed_as_waiting(run, alice):
    await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(current_step=5, max_new_per_window=0)
    comm, _, welcome = await join(await database_sync_to_async(token_for)(alice), b"alice-late")
    assert welcome["role"] == "waiting" and welcome["probation_steps_left"] == run.probation_steps
    await comm.disconnect()


async def test_another_peer_dials_a_newcomer_and_the_dashboard_lists_it_as_unreachable(run, alice, bob, client):
    await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(min_peers=99)  # no steps: just joins
    ca, _, _ = await join(await database_sync_to_async(token_for)(alice), b"alice-reach")
    from tests.site.wsclient import join as join_announcing

    cb, ib, _ = await join_announcing(bob, b"bob-reach", p2p_id="QmBob", p2p_addrs=["/ip4/10.0.0.7/tcp/4001"])
    await cb.send_to(text_data=json.dumps({"type": "reachability_request", "p2p_id": "QmBob",
                                            "p2p_addrs": ["/ip4/10.0.0.7/tcp/4001"]}))
    check = await receive_type(ca, "reachability_check")  # alice, an active peer, is asked to dial bob
    assert check["p2p_id"] == "QmBob" and check["p2p_addrs"] == ["/ip4/10.0.0.7/tcp/4001"]
    answer = {"type": "reachability_result", "request_id": check["request_id"], "reachable": False,
              "detail": "dial timed out after 10 s"}
    await ca.send_to(text_data=json.dumps(answer))
    result = await receive_type(cb, "reachability_result")
    assert result["reachable"] is False and result["detail"] == "timeout"  # the site's word, not the helper's
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=ib.peer_id)
    assert peer.reachable is False and peer.reachability_detail == "timeout"
    html = (await database_sync_to_async(client.get)(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true")).content.decode()
    assert "timeout" in html and "dial timed out after 10 s" not in html
    await ca.send_to(text_data=json.dumps(answer))  # a second answer to the same request is refused
    error = await receive_type(ca, "error")
    assert error["code"] == "unknown_request"
    for comm in (ca, cb):
        await comm.disconnect()


def test_a_long_lived_socket_remembers_the_groups_of_only_its_latest_steps():
    """Each socket notes which step's group it already sent (a group goes out once per step); over a
    1,000-step soak that set grew by one entry a step for the socket's whole life."""
    from live.consumers.worker import WorkerConsumer

    consumer = WorkerConsumer()
    for step in range(1000):
        consumer._group_sent(step)
    assert consumer.group_steps == set(range(984, 1000))
