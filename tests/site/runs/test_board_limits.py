"""F3 / F6 (site security review): only a step's members post on its board; one sender's share of a
step's board is bounded (one message per board phase, one eliminate or verdict per named peer, a cap
per phase and in bytes, every payload checked against its schema); ``board_request`` answers are
bounded and rate-limited. Through the real consumers, with a raw control-plane client."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from moderation.models import ModerationCase
from runs.models import BroadcastLog, Peer, Run, StepRecord

from tests.factories import RunFactory
from tests.site.helpers import envelope
from tests.site.wsclient import join, receive_type, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="board-run", min_peers=2, peers_per_group=4)


async def group_of_two(alice, bob):
    a = await join(alice, b"alice-b")
    b = await join(bob, b"bob-b")
    for comm, _, _ in (a, b):
        await receive_type(comm, "group")
    run_now = await database_sync_to_async(Run.objects.get)(name="board-run")
    return a, b, run_now


async def post(comm, env) -> dict | None:
    await send(comm, {"type": "broadcast", "envelope": env.model_dump()})
    return None


async def stored(**filters) -> int:
    return await database_sync_to_async(BroadcastLog.objects.filter(**filters).count)()


def make_candidate(run, peer_id: str) -> None:
    peer = Peer.objects.get(run=run, peer_id=peer_id)
    peer.role = "candidate"
    peer.save()
    record = StepRecord.objects.get(run=run, step=run.current_step)
    record.candidates = [*record.candidates, {**peer.peer_info().model_dump(), "seed": 1,
                                              "validator": record.members[0], "probation_left": 2}]
    record.save()


async def test_a_candidate_cannot_eliminate_a_member_or_post_on_the_board(run, alice, bob, carol):
    (ca, ia, _), (cb, ib, _), run_now = await group_of_two(alice, bob)
    cc, ic, _ = await join(carol, b"carol-cand")
    await database_sync_to_async(make_candidate)(run_now, ic.peer_id)
    await post(cc, envelope(ic, run_now, phase="eliminate", payload={"target": ia.peer_id, "reason": "x"}))
    assert (await receive_type(cc, "error"))["code"] == "not_in_group"
    await post(cc, envelope(ic, run_now, phase="commit"))
    assert (await receive_type(cc, "error"))["code"] == "not_in_group"
    assert await stored(sender_peer_id=ic.peer_id) == 0
    assert await database_sync_to_async(ModerationCase.objects.count)() == 0
    victim = await database_sync_to_async(Peer.objects.get)(peer_id=ia.peer_id)
    assert victim.excluded_until_step is None
    for comm in (ca, cb, cc):
        await comm.disconnect()


async def test_a_member_cannot_eliminate_a_candidate(run, alice, bob, carol):
    (ca, ia, _), (cb, ib, _), run_now = await group_of_two(alice, bob)
    cc, ic, _ = await join(carol, b"carol-cand2")
    await database_sync_to_async(make_candidate)(run_now, ic.peer_id)
    await post(ca, envelope(ia, run_now, phase="eliminate", payload={"target": ic.peer_id}))
    assert (await receive_type(ca, "error"))["code"] == "payload"
    assert await database_sync_to_async(ModerationCase.objects.count)() == 0
    for comm in (ca, cb, cc):
        await comm.disconnect()


async def test_a_second_message_in_a_board_phase_is_refused_and_not_relayed(run, alice, bob):
    (ca, ia, _), (cb, ib, _), run_now = await group_of_two(alice, bob)
    for i in range(3):
        await post(ca, envelope(ia, run_now, phase="commit", payload={"hashes": [f"{i:02x}" * 32]}))
    relays = [await receive_type(cb, "relay")]
    # a second, different message in one slot is equivocation: refused, and its sender banned (closed)
    assert (await receive_type(ca, "error"))["code"] == "equivocation"
    assert len(relays) == 1 and await stored(sender_peer_id=ia.peer_id, phase="commit") == 1
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_payload_that_does_not_match_its_phase_schema_is_refused(run, alice, bob):
    (ca, ia, _), (cb, ib, _), run_now = await group_of_two(alice, bob)
    await post(ca, envelope(ia, run_now, phase="accuse", payload={"junk": "x" * 100_000}))
    assert (await receive_type(ca, "error"))["code"] == "payload"
    assert await stored(sender_peer_id=ia.peer_id) == 0
    for comm in (ca, cb):
        await comm.disconnect()


async def test_accusations_beyond_a_senders_share_are_refused(run, alice, bob):
    (ca, ia, _), (cb, ib, _), run_now = await group_of_two(alice, bob)
    accuse = {"accused": ib.peer_id, "kind": "part_mismatch", "evidence": ["ab" * 32], "reason": "r" * 400}
    for _ in range(5):
        await post(ca, envelope(ia, run_now, phase="accuse", payload=accuse))
    codes = []
    for _ in range(4):
        codes.append((await receive_type(ca, "error"))["code"])
    assert set(codes) == {"limit"}
    assert await stored(sender_peer_id=ia.peer_id, phase="accuse") == 1
    for comm in (ca, cb):
        await comm.disconnect()


async def test_repeated_eliminates_open_one_case(run, alice, bob, carol):
    await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(min_peers=3)
    members = [await join(u, s) for u, s in ((alice, b"a-e"), (bob, b"b-e"), (carol, b"c-e"))]
    for comm, _, _ in members:
        await receive_type(comm, "group")
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    (ca, ia, _), (cb, ib, _), _ = members
    for _ in range(3):
        await post(ca, envelope(ia, run_now, phase="eliminate", payload={"target": ib.peer_id}))
    codes = [(await receive_type(ca, "error"))["code"] for _ in range(2)]
    assert set(codes) <= {"duplicate", "limit"}
    assert await database_sync_to_async(ModerationCase.objects.filter(kind="eliminate").count)() == 1
    for comm, _, _ in members:
        await comm.disconnect()


async def test_board_requests_are_rate_limited_per_step_and_phase(run, alice, bob):
    (ca, ia, _), (cb, ib, _), run_now = await group_of_two(alice, bob)
    await post(ca, envelope(ia, run_now, phase="commit"))
    await receive_type(cb, "relay")
    request = {"type": "board_request", "step": run_now.current_step, "phase": "commit", "senders": []}
    for _ in range(3):
        await send(cb, request)
        assert (await receive_type(cb, "relay"))["envelope"]["sender"] == ia.peer_id
    await send(cb, request)
    assert (await receive_type(cb, "error"))["code"] == "rate_limited"
    assert await cb.receive_nothing(timeout=0.3)
    for comm in (ca, cb):
        await comm.disconnect()
