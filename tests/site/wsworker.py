"""The worker-socket helpers of the consumer tests: connect with a token, answer the challenge with a
``btard_wire.control.Hello`` and wait for a message type (``tests/site/wsclient.py`` is the raw JSON one)."""

from __future__ import annotations

from btard_site.routing import websocket_urlpatterns
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from volunteers import services as volunteers

from btard_wire.control import Hello
from btard_wire.envelope import Identity

T = 10  # generous receive timeout: other CPU-heavy work shares this machine

application = URLRouter(websocket_urlpatterns)


def token_for(user, name="w"):
    return volunteers.create_worker_token(user=user, name=name).raw


async def open_worker(raw: str | None):
    headers = [(b"authorization", f"Bearer {raw}".encode())] if raw is not None else []
    comm = WebsocketCommunicator(application, "/ws/worker/", headers=headers)
    connected, _ = await comm.connect(timeout=T)
    assert connected
    return comm


async def expect_close(comm, code):
    out = await comm.receive_output(timeout=T)
    assert out["type"] == "websocket.close", out
    assert out["code"] == code, out
    return out.get("reason", "")


async def signed_hello(comm, identity, **fields) -> str:
    """The hello for ``identity``, signing the challenge the site sends first (proof of key possession)."""
    from btard_wire.control import hello_proof

    challenge = await comm.receive_json_from(timeout=T)
    assert challenge["type"] == "challenge", challenge
    return Hello(public_key=identity.public_key_b64, proof=hello_proof(identity, challenge["nonce"]),
                 **fields).model_dump_json()


async def join(raw: str, seed: bytes):
    comm = await open_worker(raw)
    identity = Identity.from_seed(seed)
    await comm.send_to(text_data=await signed_hello(comm, identity, p2p_id="Qm" + seed.decode()))
    welcome = await comm.receive_json_from(timeout=T)
    assert welcome["type"] == "welcome", welcome
    return comm, identity, welcome


async def receive_type(comm, kind: str) -> dict:
    while True:
        msg = await comm.receive_json_from(timeout=T)
        if msg["type"] == kind:
            return msg


async def two_member_group(run, alice, bob):
    """alice and bob join ``run`` and both receive the group of its first step: ``(a, b, groups)``."""
    a = await join(await database_sync_to_async(token_for)(alice), b"alice-g")
    b = await join(await database_sync_to_async(token_for)(bob), b"bob-g")
    groups = [await receive_type(comm, "group") for comm, _, _ in (a, b)]
    return a, b, groups


async def expect_close_after_messages(comm, code):
    while True:
        out = await comm.receive_output(timeout=T)
        if out["type"] == "websocket.close":
            assert out["code"] == code, out
            return out.get("reason", "")
