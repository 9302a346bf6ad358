"""A raw control-plane client for the hardening tests: it speaks ``/ws/worker/`` by hand (JSON written
here, not through the worker's code), on the real ASGI websocket routing and the real consumers."""

from __future__ import annotations

import json

from btard_site.routing import websocket_urlpatterns
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from volunteers import services as volunteers

from btard_wire.envelope import Identity

T = 10  # generous receive timeout: other CPU-heavy work shares this machine
application = URLRouter(websocket_urlpatterns)


def token_for(user, name="w"):
    return volunteers.create_worker_token(user=user, name=name).raw


async def open_worker(raw: str | None, *, path: str = "/ws/worker/"):
    headers = [(b"authorization", f"Bearer {raw}".encode())] if raw is not None else []
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect(timeout=T)
    assert connected
    return comm


async def receive_type(comm, kind: str) -> dict:
    while True:
        msg = await comm.receive_json_from(timeout=T)
        if msg["type"] == kind:
            return msg


async def send(comm, message: dict) -> None:
    await comm.send_to(text_data=json.dumps(message))


def hello_for(identity: Identity, challenge: dict | None, **fields) -> dict:
    """A ``hello`` as a worker writes it, signing the site's challenge when the site sent one."""
    message = {"type": "hello", "public_key": identity.public_key_b64, "p2p_id": fields.pop("p2p_id", "QmX"),
               **fields}
    if challenge is not None:
        from btard_wire.control import hello_proof

        message["proof"] = hello_proof(identity, challenge["nonce"])
    return message


async def challenge_of(comm) -> dict:
    """The site's ``challenge``, its first message after accept (proof of key possession, F2)."""
    msg = await comm.receive_json_from(timeout=T)
    assert msg["type"] == "challenge", msg
    return msg


async def join(user_or_raw, seed: bytes, *, run_id=None, **fields):
    """Connect, answer the challenge and say hello; returns ``(comm, identity, welcome)``."""
    raw = user_or_raw if isinstance(user_or_raw, str) else await database_sync_to_async(token_for)(user_or_raw)
    comm = await open_worker(raw)
    identity = Identity.from_seed(seed)
    challenge = await challenge_of(comm)
    hello = hello_for(identity, challenge, **fields)
    if run_id is not None:
        hello["run_id"] = run_id
    await send(comm, hello)
    welcome = await comm.receive_json_from(timeout=T)
    assert welcome["type"] == "welcome", welcome
    return comm, identity, welcome
