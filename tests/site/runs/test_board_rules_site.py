"""runs.services.board: the board rules of btard_wire.board that fix what decides a step, held by the site
(slot_conflict, moderation_refused, unheld_listed, unlisted_own; docs/threat-model.md, "Site")."""

from __future__ import annotations

import pytest
from moderation.models import Ban
from runs import services as runs
from runs.models import BroadcastLog, Peer, StepRecord

from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db

ACCUSE = {"type": "accuse", "kind": "part_mismatch", "evidence": ["ab" * 32], "reason": "bad part"}


def _accuse(identity, run, accused):
    return envelope(identity, run, phase="accuse", payload={**ACCUSE, "accused": accused.peer_id})


def _report(identity, run, accusations=()):
    return envelope(identity, run, phase="validation", payload={"accusations": list(accusations)})


def _refused(code, *, peer, env, service=runs.accept_broadcast):
    before = BroadcastLog.objects.count()
    with pytest.raises(runs.Rejected) as info:
        service(peer=peer, envelope=env)
    assert info.value.code == code
    assert BroadcastLog.objects.count() == before  # nothing stored
    return info.value


@pytest.mark.parametrize("service", [runs.accept_broadcast, runs.post_broadcast])
def test_it_refuses_a_second_different_message_in_one_slot_and_bans_its_sender_with_both_digests(
        run, group, service):
    (sender, identity), _, _ = group
    first = envelope(identity, run, phase="commit", payload={"hashes": ["00" * 32]})
    service(peer=sender, envelope=first)
    second = envelope(identity, run, phase="commit", payload={"hashes": ["11" * 32]})
    _refused("equivocation", peer=sender, env=second, service=service)
    ban = Ban.objects.get(peer_id=sender.peer_id, lifted_at=None)
    assert ban.evidence_kind == "equivocation" and ban.scope == "account"
    assert ban.evidence["digests"] == [first.digest(), second.digest()]
    assert Peer.objects.get(pk=sender.pk).role == "banned"
    assert list(BroadcastLog.objects.filter(sender_peer_id=sender.peer_id).values_list("digest", flat=True)) \
        == [first.digest()]


def test_it_keeps_a_byte_identical_resend_harmless(run, group):
    (sender, identity), _, _ = group
    first = envelope(identity, run, phase="commit")
    runs.post_broadcast(peer=sender, envelope=first)
    _refused("replay", peer=sender, env=first, service=runs.post_broadcast)
    assert not Ban.objects.exists() and Peer.objects.get(pk=sender.pk).role == "active"


def test_it_refuses_an_accusation_after_the_senders_own_report(run, group):
    (a, ia), (b, _), _ = group
    runs.accept_broadcast(peer=a, envelope=_report(ia, run))
    err = _refused("too_late", peer=a, env=_accuse(ia, run, b))
    assert "own validation report" in err.message


def test_it_refuses_an_elimination_after_validation_closed(run, group):
    (a, ia), (b, _), _ = group
    for peer, ident in group:
        runs.accept_broadcast(peer=peer, envelope=_report(ident, run))
    assert "validation" not in (StepRecord.objects.get(run=run, step=0).closed_phases or {})
    err = _refused("too_late", peer=a, env=envelope(ia, run, phase="eliminate",
                                                    payload={"type": "eliminate", "target": b.peer_id}))
    assert "validation phase closed" in err.message


def test_it_refuses_an_elimination_after_the_senders_own_scalars(run, group):
    (a, ia), (b, _), _ = group
    runs.accept_broadcast(peer=a, envelope=envelope(ia, run, phase="scalars", payload={"values": [0.0] * 3}))
    _refused("too_late", peer=a, env=envelope(ia, run, phase="eliminate",
                                              payload={"type": "eliminate", "target": b.peer_id}))


def test_it_accepts_an_accusation_before_the_senders_report(run, group):
    (a, ia), (b, _), (c, ic) = group
    runs.accept_broadcast(peer=c, envelope=_report(ic, run))  # another member's report closes nothing
    entry = runs.accept_broadcast(peer=a, envelope=_accuse(ia, run, b))
    assert entry.phase == "accuse"


def test_it_refuses_a_report_listing_a_digest_the_board_does_not_hold(run, group):
    (a, ia), _, _ = group
    _refused("unheld_digest", peer=a, env=_report(ia, run, ["cd" * 32]))


def test_it_refuses_a_report_that_leaves_out_the_senders_own_accusation(run, group):
    (a, ia), (b, _), _ = group
    mine = runs.accept_broadcast(peer=a, envelope=_accuse(ia, run, b))
    _refused("unlisted_own", peer=a, env=_report(ia, run))
    assert runs.accept_broadcast(peer=a, envelope=_report(ia, run, [mine.digest])).phase == "validation"


def test_it_accepts_a_report_listing_another_members_stored_accusation(run, group):
    (a, ia), (b, ib), (c, _) = group
    theirs = runs.accept_broadcast(peer=b, envelope=_accuse(ib, run, c))
    assert runs.accept_broadcast(peer=a, envelope=_report(ia, run, [theirs.digest])).phase == "validation"
