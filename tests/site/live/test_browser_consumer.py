"""live.consumers.browser: a dashboard's live partial, rendered once per event for many viewers."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from btard_wire.control import StepReport
from tests.factories import RunFactory
from tests.site.wsworker import (
    T,
    application,
    two_member_group,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="ws-run", min_peers=2, peers_per_group=4)


async def test_the_run_dashboard_receives_its_partial_when_the_step_advances(run, alice, bob):
    browser = WebsocketCommunicator(application, f"/ws/live/?run={run.pk}")
    assert (await browser.connect(timeout=T))[0]
    (ca, _, _), (cb, _, _), _ = await two_member_group(run, alice, bob)
    for comm in (ca, cb):
        await comm.send_to(text_data=StepReport(step=0, outcome="applied", loss=1.5, accuracy=0.42,
                                                samples=16).model_dump_json())
    while True:
        html = await browser.receive_from(timeout=T)
        if 'id="run-step">1<' in html:
            break
    assert 'id="run-dashboard" hx-swap-oob="true"' in html and "0.420" in html
    for comm in (ca, cb, browser):
        await comm.disconnect()


async def test_many_viewers_of_a_dashboard_share_one_render_per_event(run, monkeypatch):
    from live.bus import emit
    from live.consumers import browser as consumers
    from live.events import PeersPromoted

    renders = []
    real = consumers.render_fragment

    def counting(event, **kw):
        renders.append(event.type)
        return real(event, **kw)

    monkeypatch.setattr(consumers, "render_fragment", counting)
    viewers = [WebsocketCommunicator(application, f"/ws/live/?run={run.pk}") for _ in range(5)]
    for v in viewers:
        assert (await v.connect(timeout=T))[0]
    await database_sync_to_async(emit)(PeersPromoted(run_id=run.pk, peer_ids=["p-shared-render"]))
    pages = [await v.receive_from(timeout=T) for v in viewers]
    assert len(set(pages)) == 1 and 'id="run-dashboard" hx-swap-oob="true"' in pages[0]
    assert renders == ["peers_promoted"]  # five sockets, one render
    await database_sync_to_async(emit)(PeersPromoted(run_id=run.pk, peer_ids=["p-second"]))
    for v in viewers:
        await v.receive_from(timeout=T)
    assert renders == ["peers_promoted"] * 2  # a new event renders again
    for v in viewers:
        await v.disconnect()
