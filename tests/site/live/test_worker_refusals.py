"""live.consumers.worker through WebsocketCommunicator: who may open a worker socket (the role matrix), token
refusals, revocation and replacement."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from runs.models import Peer
from volunteers import services as volunteers

from btard_wire.control import (
    CLOSE_BAD_TOKEN,
    CLOSE_BANNED,
    CLOSE_NO_TOKEN,
    CLOSE_REPLACED,
    CLOSE_REVOKED_TOKEN,
)
from tests.factories import RunFactory, WorkerTokenFactory
from tests.site.helpers import ROLE_MATRIX, ROLES
from tests.site.wsworker import (
    expect_close,
    expect_close_after_messages,
    join,
    open_worker,
    token_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="ws-run", min_peers=2, peers_per_group=4)


async def test_it_refuses_a_missing_token_with_its_own_close_code(run):
    comm = await open_worker(None)
    reason = await expect_close(comm, CLOSE_NO_TOKEN)
    assert "token" in reason


async def test_it_refuses_an_unknown_token(run):
    comm = await open_worker("btard_00000000_nope")
    await expect_close(comm, CLOSE_BAD_TOKEN)


async def test_it_refuses_a_revoked_token_naming_it(run, alice):
    issued = await database_sync_to_async(volunteers.create_worker_token)(user=alice, name="old-laptop")
    await database_sync_to_async(volunteers.revoke_worker_token)(token=issued.token, actor=alice)
    comm = await open_worker(issued.raw)
    assert "old-laptop" in await expect_close(comm, CLOSE_REVOKED_TOKEN)


async def test_it_refuses_a_banned_account(run, dave):
    token = await database_sync_to_async(WorkerTokenFactory)(user=dave)  # issued before the ban
    comm = await open_worker(token.raw)
    assert "banned" in await expect_close(comm, CLOSE_BANNED)


@pytest.mark.parametrize("who", ROLES)
async def test_the_worker_socket_follows_the_role_matrix_of_the_pages(who, users, run):
    """No token, no socket; every volunteer (staff too) joins with a token of its own; a banned account's
    token, issued before the ban, is refused."""
    user, expected = users[who], ROLE_MATRIX[who]["worker_socket"]
    if expected == "no_token":
        assert user is None
        comm = await open_worker(None)
        assert "token" in await expect_close(comm, CLOSE_NO_TOKEN)
        return
    token = await database_sync_to_async(WorkerTokenFactory)(user=user)
    if expected == "banned":
        comm = await open_worker(token.raw)
        assert "banned" in await expect_close(comm, CLOSE_BANNED)
        return
    assert expected == "joins"
    comm, identity, welcome = await join(token.raw, f"{who}-matrix".encode())
    assert welcome["peer_id"] == identity.peer_id and welcome["run"]["id"] == run.id
    peer = await database_sync_to_async(Peer.objects.select_related("user").get)(peer_id=identity.peer_id)
    assert peer.user.username == who
    await comm.disconnect()


async def test_revoking_a_token_closes_its_live_connection(run, alice):
    issued = await database_sync_to_async(volunteers.create_worker_token)(user=alice, name="box")
    comm, _, _ = await join(issued.raw, b"alice-r")
    await database_sync_to_async(volunteers.revoke_worker_token)(token=issued.token, actor=alice)
    assert "revoked" in await expect_close_after_messages(comm, CLOSE_REVOKED_TOKEN)


async def test_a_second_connection_with_the_same_token_replaces_the_first(run, alice):
    raw = await database_sync_to_async(token_for)(alice)
    first, _, _ = await join(raw, b"alice-x")
    second, _, _ = await join(raw, b"alice-x")
    await expect_close_after_messages(first, CLOSE_REPLACED)
    await second.disconnect()
