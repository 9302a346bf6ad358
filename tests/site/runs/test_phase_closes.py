"""The site closes a board phase once a majority of the step's group passed its deadline, and its list of
senders is what every peer acts on (so no two honest peers decide differently who was late)."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from runs.models import BroadcastLog, Run, StepRecord

from btard_wire.control import BoardRequest, PhaseCloseRequest
from tests.site.helpers import envelope
from tests.site.wsworker import join, receive_type, token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

MPRNG = {"hash": "ab" * 32}


@pytest.fixture
def run(db):
    from tests.factories import RunFactory

    return RunFactory(name="close-run", min_peers=3, peers_per_group=4)


async def three_members(run, alice, bob, carol):
    members = []
    for user, seed in ((alice, b"alice-c"), (bob, b"bob-c"), (carol, b"carol-c")):
        members.append(await join(await database_sync_to_async(token_for)(user), seed))
    for comm, _, _ in members:
        await receive_type(comm, "group")
    return members


async def post(comm, identity, run, phase="mprng_commit", payload=MPRNG):
    env = envelope(identity, run, phase=phase, payload=payload)
    await comm.send_to(text_data=json.dumps({"type": "broadcast", "envelope": env.model_dump()}))
    return env


async def test_a_majority_closes_the_phase_and_everyone_hears_the_same_senders(run, alice, bob, carol):
    (ca, ia, _), (cb, ib, _), (cc, ic, _) = await three_members(run, alice, bob, carol)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env_a = await post(ca, ia, run_now)
    echo = await receive_type(ca, "relay")  # the sender hears its own board-phase message back: stored
    assert echo["envelope"]["nonce"] == env_a.nonce
    await post(cb, ib, run_now)
    await ca.send_to(text_data=PhaseCloseRequest(step=0, phase="mprng_commit").model_dump_json())
    # the socket's messages are handled in order: once this error is back, the request above was handled
    await ca.send_to(text_data=PhaseCloseRequest(step=99, phase="mprng_commit").model_dump_json())
    assert (await receive_type(ca, "error"))["code"] == "stale_step"
    record = await database_sync_to_async(StepRecord.objects.get)(run=run, step=0)
    assert record.closed_phases == {} and record.close_requests == {"mprng_commit": [ia.peer_id]}
    await cb.send_to(text_data=PhaseCloseRequest(step=0, phase="mprng_commit").model_dump_json())
    closes = [await receive_type(comm, "phase_closed") for comm in (ca, cb, cc)]
    assert all(c == closes[0] for c in closes)
    assert closes[0]["phase"] == "mprng_commit" and closes[0]["step"] == 0
    assert closes[0]["senders"] == sorted([ia.peer_id, ib.peer_id])
    # carol's commitment comes too late: refused with the reason, nothing stored, nobody relayed it
    await post(cc, ic, run_now)
    error = await receive_type(cc, "error")
    assert error["code"] == "phase_closed" and "closed at its deadline" in error["message"]
    assert await database_sync_to_async(BroadcastLog.objects.filter(phase="mprng_commit").count)() == 2
    # other phases stay open
    await post(cc, ic, run_now, phase="commit", payload={"hashes": ["00" * 32]})
    assert (await receive_type(ca, "relay"))["envelope"]["sender"] == ic.peer_id
    for comm in (ca, cb, cc):
        await comm.disconnect()


async def test_a_peer_missing_a_relay_gets_the_stored_broadcasts_again(run, alice, bob, carol):
    (ca, _, _), (cb, ib, _), (cc, _, _) = await three_members(run, alice, bob, carol)
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env_b = await post(cb, ib, run_now)
    await receive_type(cc, "relay")
    await cc.send_to(text_data=BoardRequest(step=0, phase="mprng_commit", senders=[ib.peer_id]).model_dump_json())
    again = await receive_type(cc, "relay")
    assert again["envelope"] == env_b.model_dump()
    for comm in (ca, cb, cc):
        await comm.disconnect()


async def test_closing_a_step_that_is_not_running_or_an_unknown_phase_is_refused(run, alice, bob, carol):
    (ca, _, _), (cb, _, _), (cc, _, _) = await three_members(run, alice, bob, carol)
    await ca.send_to(text_data=PhaseCloseRequest(step=5, phase="commit").model_dump_json())
    assert (await receive_type(ca, "error"))["code"] == "stale_step"
    await ca.send_to(text_data=json.dumps({"type": "phase_close", "step": 0, "phase": "verdict"}))
    error = await receive_type(ca, "error")
    assert error["code"] == "schema" and "phase" in error["message"]
    for comm in (ca, cb, cc):
        await comm.disconnect()


@pytest.mark.django_db(transaction=False)
def test_peers_that_went_offline_do_not_count_towards_the_majority_and_a_minority_cannot_close():
    from runs.models import Peer
    from runs.services import accept_broadcast, request_phase_close, start_step_if_ready

    from tests.factories import RunFactory, make_peer

    run = RunFactory(min_peers=5, peers_per_group=5)
    peers = [make_peer(run=run) for _ in range(5)]
    record = start_step_if_ready(run=run)
    assert record is not None and len(record.members) == 5
    by_id = {p.peer_id: (p, ident) for p, ident in peers}
    order = [by_id[pid] for pid in record.members]
    run.refresh_from_db()
    for peer, ident in order[:2]:
        accept_broadcast(peer=peer, envelope=envelope(ident, run, phase="scalars", payload={"values": [0.0] * 5}))
    # two of five online members asking is a minority: nothing closes
    assert request_phase_close(peer=order[0][0], step=0, phase="scalars") is None
    assert request_phase_close(peer=order[1][0], step=0, phase="scalars") is None
    # two members crash (their sockets close): two of the three still here are a majority
    Peer.objects.filter(peer_id__in=[order[3][0].peer_id, order[4][0].peer_id]).update(online=False)
    closed = request_phase_close(peer=order[0][0], step=0, phase="scalars")
    assert closed is not None and closed.senders == sorted([order[0][0].peer_id, order[1][0].peer_id])
    assert sorted(closed.late) == sorted(p.peer_id for p, _ in order[2:])


@pytest.mark.django_db(transaction=False)
def test_a_peer_outside_the_step_can_neither_close_a_phase_nor_read_its_board():
    from runs.services import Rejected, board_request, request_phase_close, start_step_if_ready

    from tests.factories import RunFactory, make_peer

    run = RunFactory(min_peers=2, peers_per_group=2)
    members = [make_peer(run=run)[0] for _ in range(2)]
    assert start_step_if_ready(run=run) is not None
    stranger, _ = make_peer(run=run, role="waiting")
    with pytest.raises(Rejected) as closing:
        request_phase_close(peer=stranger, step=0, phase="commit")
    assert closing.value.code == "not_in_group"
    with pytest.raises(Rejected) as reading:
        board_request(peer=stranger, step=0, phase="commit", senders=[])
    assert reading.value.code == "not_in_group"
    with pytest.raises(Rejected) as unknown:
        request_phase_close(peer=members[0], step=0, phase="verdict")
    assert unknown.value.code == "phase" and "commit" in unknown.value.message
