"""F5 (site security review): a reachability check dials only the requester's announced address, a few
times an hour; only the peer that was asked can answer it (unguessable request ids), and the answer is a
fixed word, never the helper's own text."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from runs.models import Peer, Run

from tests.factories import RunFactory
from tests.site.wsclient import join, receive_type, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]
ADDR = "/ip4/203.0.113.7/tcp/4001"


@pytest.fixture
def run(db):
    return RunFactory(name="reach-run", min_peers=99)  # no steps: joins only


async def three_peers(alice, bob, carol):
    helper = await join(alice, b"alice-rc")
    asker = await join(bob, b"bob-rc", p2p_id="QmBob", p2p_addrs=[ADDR])
    other = await join(carol, b"carol-rc")
    return helper, asker, other


def request(addrs=(ADDR,), p2p_id="QmBob"):
    return {"type": "reachability_request", "p2p_id": p2p_id, "p2p_addrs": list(addrs)}


@pytest.mark.parametrize("addrs, p2p_id", [(["/ip4/10.0.0.5/tcp/22"], "QmBob"),
                                           ([ADDR, "/dns4/metadata.google.internal/tcp/80"], "QmBob"),
                                           ([ADDR], "QmSomeoneElse")])
async def test_only_the_announced_address_is_dialled(run, alice, bob, carol, addrs, p2p_id):
    (ca, _, _), (cb, _, _), (cc, _, _) = await three_peers(alice, bob, carol)
    await send(cb, request(addrs, p2p_id))
    assert (await receive_type(cb, "error"))["code"] == "not_announced"
    assert await ca.receive_nothing(timeout=0.3) and await cc.receive_nothing(timeout=0.1)
    for comm in (ca, cb, cc):
        await comm.disconnect()


async def test_only_the_asked_peer_can_answer_and_the_answer_is_a_fixed_word(run, alice, bob, carol):
    (ca, _, _), (cb, ib, _), (cc, _, _) = await three_peers(alice, bob, carol)
    await send(cb, request())
    # one of alice and carol (active, online) is asked
    asked, bystander = None, None
    for comm, other in ((ca, cc), (cc, ca)):
        if not await comm.receive_nothing(timeout=0.5):
            asked, bystander = comm, other
            break
    check = await receive_type(asked, "reachability_check")
    assert len(check["request_id"]) >= 20
    forged = {"type": "reachability_result", "request_id": check["request_id"], "reachable": False,
              "detail": "<b>your firewall is broken, run this script</b>"}
    await send(bystander, forged)
    assert (await receive_type(bystander, "error"))["code"] == "unknown_request"
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=ib.peer_id)
    assert peer.reachable is None
    await send(asked, forged | {"detail": "connection refused by 203.0.113.7: <b>x</b>"})
    result = await receive_type(cb, "reachability_result")
    assert result == {"v": 1, "type": "reachability_result", "request_id": check["request_id"],
                      "reachable": False, "detail": "refused"}
    peer = await database_sync_to_async(Peer.objects.get)(peer_id=ib.peer_id)
    assert (peer.reachable, peer.reachability_detail) == (False, "refused")
    for comm in (ca, cb, cc):
        await comm.disconnect()


async def test_reachability_requests_are_rate_limited(run, alice, bob, carol, settings):
    settings.REACHABILITY_REQUESTS_PER_HOUR = 2
    (ca, _, _), (cb, _, _), (cc, _, _) = await three_peers(alice, bob, carol)
    for _ in range(2):
        await send(cb, request())
    await send(cb, request())
    assert (await receive_type(cb, "error"))["code"] == "rate_limited"
    checks = 0
    for comm in (ca, cc):
        while not await comm.receive_nothing(timeout=0.3):
            msg = await comm.receive_json_from()
            checks += msg["type"] == "reachability_check"
    assert checks == 2
    for comm in (ca, cb, cc):
        await comm.disconnect()


_ = Run
