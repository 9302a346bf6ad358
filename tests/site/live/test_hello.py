"""F2 (site security review): a ``hello`` proves possession of the key it announces by signing the
site's challenge, and a socket becomes a key's route in a run only once its join succeeded, so nobody
can deafen a peer, receive its traffic or get its key banned by announcing its public key."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache
from live import event_routing as routes
from runs.models import Peer, Run

from btard_wire.control import hello_proof
from btard_wire.envelope import Identity
from tests.factories import RunFactory
from tests.site.helpers import envelope
from tests.site.wsclient import T, join, open_worker, receive_type, send, token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="hello-run", min_peers=2, peers_per_group=4)


async def challenge(comm) -> str:
    msg = await comm.receive_json_from(timeout=T)
    assert msg["type"] == "challenge" and len(msg["nonce"]) >= 16
    return msg["nonce"]


async def test_the_site_sends_a_fresh_challenge_on_every_connection(run, alice):
    raw = await database_sync_to_async(token_for)(alice)
    first = await open_worker(raw)
    nonce = await challenge(first)
    second = await open_worker(raw)
    assert await challenge(second) != nonce
    for comm in (first, second):
        await comm.disconnect()


@pytest.mark.parametrize("proof", ["", "not base64!", "forged"])
async def test_a_hello_without_a_valid_proof_is_refused_and_registers_nothing(run, alice, proof):
    victim = Identity.from_seed(b"victim")
    comm = await open_worker(await database_sync_to_async(token_for)(alice))
    nonce = await challenge(comm)
    if proof == "forged":  # signed by the attacker's own key over the right nonce
        proof = hello_proof(Identity.from_seed(b"attacker"), nonce)
    await send(comm, {"type": "hello", "public_key": victim.public_key_b64, "proof": proof})
    assert (await receive_type(comm, "error"))["code"] == "proof"
    assert not await database_sync_to_async(Peer.objects.filter(peer_id=victim.peer_id).exists)()
    assert await cache.aget(routes.peer_channel_key(victim.peer_id, run.pk)) is None
    await comm.disconnect()


async def test_a_proof_for_another_connections_challenge_is_refused(run, alice):
    identity = Identity.from_seed(b"alice-proof")
    raw = await database_sync_to_async(token_for)(alice)
    one, two = await open_worker(raw), await open_worker(raw)
    nonce_one = await challenge(one)
    await challenge(two)
    await send(two, {"type": "hello", "public_key": identity.public_key_b64,
                     "proof": hello_proof(identity, nonce_one)})
    assert (await receive_type(two, "error"))["code"] == "proof"
    for comm in (one, two):
        await comm.disconnect()


async def test_announcing_a_members_key_neither_deafens_it_nor_intercepts_its_relays(run, alice, bob, carol):
    (ca, ia, _) = await join(alice, b"alice-h")
    (cb, ib, _) = await join(bob, b"bob-h")
    for comm in (ca, cb):
        await receive_type(comm, "group")
    attacker = await open_worker(await database_sync_to_async(token_for)(carol))
    nonce = await challenge(attacker)
    await send(attacker, {"type": "hello", "public_key": ia.public_key_b64,
                          "proof": hello_proof(Identity.from_seed(b"carol"), nonce)})
    assert (await receive_type(attacker, "error"))["code"] == "proof"
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    env = envelope(ib, run_now)
    await send(cb, {"type": "broadcast", "envelope": env.model_dump()})
    assert (await receive_type(ca, "relay"))["envelope"]["nonce"] == env.nonce  # the victim still hears
    assert await attacker.receive_nothing(timeout=0.3)
    for comm in (ca, cb, attacker):
        await comm.disconnect()


async def test_a_key_is_bound_to_one_account_in_every_run(run, alice, bob):
    other = await database_sync_to_async(RunFactory)(name="second-run", min_peers=99)
    comm, identity, _ = await join(alice, b"alice-bound", run_id=run.pk)
    # bob somehow holds alice's private key: the proof is valid, the key still belongs to alice
    thief = await open_worker(await database_sync_to_async(token_for)(bob))
    nonce = await challenge(thief)
    await send(thief, {"type": "hello", "public_key": identity.public_key_b64, "run_id": other.pk,
                       "proof": hello_proof(identity, nonce)})
    assert (await receive_type(thief, "error"))["code"] == "key_taken"
    assert not await database_sync_to_async(Peer.objects.filter(run=other, peer_id=identity.peer_id).exists)()
    for c in (comm, thief):
        await c.disconnect()


async def test_routing_entries_are_per_run_and_written_after_the_join(run, alice):
    comm, identity, _ = await join(alice, b"alice-route")
    entry = await cache.aget(routes.peer_channel_key(identity.peer_id, run.pk))
    assert isinstance(entry, str)
    assert await cache.aget(f"peer-channel:{identity.peer_id}") is None
    await comm.disconnect()
    assert await cache.aget(routes.peer_channel_key(identity.peer_id, run.pk)) is None


_ = json


async def test_a_group_formed_while_the_join_was_in_flight_reaches_the_joiner_once(run, alice, bob, monkeypatch):
    from live.consumers import worker as consumers
    from runs.services import join_run, start_step_if_ready

    ca, _, _ = await join(alice, b"alice-race")

    def join_then_form_the_group(token, hello):
        result = join_run(token=token, hello=hello)
        start_step_if_ready(run=result.run)  # another process formed the group before the route was written
        return result

    monkeypatch.setattr(consumers, "_join", join_then_form_the_group)
    cb, _, _ = await join(bob, b"bob-race")
    group = await receive_type(cb, "group")
    assert group["step"] == 0
    assert (await receive_type(ca, "group"))["step"] == 0
    # exactly once: nothing else for bob
    extra = []
    while not await cb.receive_nothing(timeout=0.3):
        extra.append((await cb.receive_json_from())["type"])
    assert "group" not in extra
    for comm in (ca, cb):
        await comm.disconnect()
