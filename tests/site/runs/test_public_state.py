"""F13 (site security review): peers' network addresses go only to the members of their step (in
``Group``), never to the public JSON API, the dashboard or its live pushes."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tests.factories import RunFactory
from tests.site.wsclient import T, application, join, receive_type

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]
ADDR = "/ip4/203.0.113.42/tcp/31337"


async def test_addresses_reach_the_group_but_not_the_public(alice, bob, client):
    run = await database_sync_to_async(RunFactory)(name="privacy-run", min_peers=2)
    browser = WebsocketCommunicator(application, f"/ws/live/?run={run.pk}")
    assert (await browser.connect(timeout=T))[0]
    ca, _, _ = await join(alice, b"alice-p", p2p_id="QmAlice", p2p_addrs=[ADDR])
    cb, _, _ = await join(bob, b"bob-p", p2p_id="QmBob", p2p_addrs=["/ip4/198.51.100.8/tcp/4001"])
    group = await receive_type(cb, "group")
    assert ADDR in [a for p in group["peers"] for a in p["p2p_addrs"]]  # members need it
    pushes = []
    while not await browser.receive_nothing(timeout=0.5):
        pushes.append(await browser.receive_from())
    assert pushes and not any("203.0.113.42" in html for html in pushes)
    for url in (f"/api/runs/{run.pk}/", "/api/runs/", f"/runs/{run.pk}/", "/api/bans/", "/bans/", "/"):
        body = (await database_sync_to_async(client.get)(url)).content.decode()
        assert "203.0.113.42" not in body and "198.51.100.8" not in body, url
    for comm in (ca, cb, browser):
        await comm.disconnect()
