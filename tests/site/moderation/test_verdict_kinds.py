"""F4 (site security review): a ban needs a strict majority of the step's group on the same guilty peer
*and* the same fault kind; the kind (hence the scope) and the public reason are the majority's and the
site's, never those of whoever posted the verdict that completed the majority."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from moderation.models import Ban
from runs.models import Run

from tests.factories import RunFactory, UserFactory
from tests.site.helpers import envelope
from tests.site.wsclient import join, receive_type, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="verdict-run", min_peers=5, peers_per_group=5)


def verdict(identity, run, guilty, kind, reason=""):
    return envelope(identity, run, phase="verdict",
                    payload={"type": "verdict", "guilty": guilty, "accuser": identity.peer_id, "accused": guilty,
                             "kind": kind, "evidence": ["ab" * 32], "reason": reason})


async def test_the_completing_verdict_picks_neither_the_kind_nor_the_scope_nor_the_reason(run):
    users = [await database_sync_to_async(UserFactory)(username=f"v{i}") for i in range(5)]
    peers = [await join(u, f"verdict-{i}".encode()) for i, u in enumerate(users)]
    for comm, _, _ in peers:
        await receive_type(comm, "group")
    run_now = await database_sync_to_async(Run.objects.get)(pk=run.pk)
    (ca, ia, _), (cb, ib, _), (cc, ic, _), (cd, colluder, _), (cg, guilty, _) = peers
    for comm, ident in ((ca, ia), (cb, ib)):
        await send(comm, {"type": "broadcast", "envelope": verdict(ident, run_now, guilty.peer_id,
                                                                    "part_mismatch").model_dump()})
    # the third signer is a colluder: a crash-like kind would make it a key-only ban, with its own text
    await send(cd, {"type": "broadcast", "envelope": verdict(colluder, run_now, guilty.peer_id, "withheld_reveal",
                                                             "<b>nothing to see</b>").model_dump()})
    for _ in range(3):  # every member but the sender hears each verdict
        await receive_type(cc, "relay")
    assert not await database_sync_to_async(Ban.objects.exists)()
    # an honest third signer completes the majority on (guilty, part_mismatch): an account ban
    await send(cc, {"type": "broadcast", "envelope": verdict(ic, run_now, guilty.peer_id,
                                                              "part_mismatch").model_dump()})
    notice = await receive_type(ca, "ban")
    ban = await database_sync_to_async(Ban.objects.get)()
    assert (ban.peer_id, ban.evidence_kind, ban.scope) == (guilty.peer_id, "part_mismatch", "account")
    assert "nothing to see" not in ban.reason and "nothing to see" not in notice["reason"]
    assert ban.reason.startswith("part_mismatch: verdict signed by 3 of 5")
    for comm, _, _ in peers:
        await comm.disconnect()
