"""Services: one per state change, each emitting one typed event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import authenticate
from django.utils import timezone
from live import event_routing as routes
from moderation import services as moderation
from moderation.models import AuditLog, Ban, ModerationCase
from runs import services as runs
from runs.models import BroadcastLog, Peer
from volunteers import services as volunteers
from volunteers.models import ReputationEvent

from btard_wire.control import (
    CLOSE_BAD_TOKEN,
    CLOSE_BANNED,
    CLOSE_NO_RUN,
    CLOSE_NO_TOKEN,
    CLOSE_REVOKED_TOKEN,
    Heartbeat,
    Hello,
    StepReport,
)
from btard_wire.envelope import Identity
from btard_wire.randomness import genesis_randomness, group_order, skipped_randomness
from tests.factories import RunFactory, UserFactory, make_peer
from tests.site.helpers import envelope, verdict

pytestmark = pytest.mark.django_db


def hello_for(identity, **kw):
    return Hello(public_key=identity.public_key_b64, p2p_id="QmPeer", p2p_addrs=["/ip4/127.0.0.1/tcp/1"], **kw)


def types(events):
    return [e.type for e in events()]


# --- tokens ---------------------------------------------------------------------------------------
def test_a_token_is_shown_once_and_stored_only_as_a_hash(alice, events):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    assert issued.raw.startswith(f"btard_{issued.token.prefix}_")
    assert issued.raw not in issued.token.token_hash
    assert issued.token.token_hash == volunteers.hash_token(issued.raw)
    assert types(events) == ["token_created"]
    assert volunteers.authenticate_worker_token(f" {issued.raw}").pk == issued.token.pk


def test_a_token_cannot_log_in(alice):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    assert authenticate(username="alice", password=issued.raw) is None


@pytest.mark.parametrize("raw, code", [(None, CLOSE_NO_TOKEN), ("", CLOSE_NO_TOKEN), ("nonsense", CLOSE_BAD_TOKEN),
                                       ("btard_deadbeef_wrong", CLOSE_BAD_TOKEN)])
def test_it_refuses_missing_and_unknown_tokens_with_distinct_codes(raw, code, alice):
    volunteers.create_worker_token(user=alice, name="laptop")
    with pytest.raises(volunteers.TokenRefused) as info:
        volunteers.authenticate_worker_token(raw)
    assert info.value.close_code == code


def test_a_revoked_token_is_refused_with_its_name_in_the_reason(alice, events):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    volunteers.revoke_worker_token(token=issued.token, actor=alice)
    with pytest.raises(volunteers.TokenRefused) as info:
        volunteers.authenticate_worker_token(issued.raw)
    assert info.value.close_code == CLOSE_REVOKED_TOKEN
    assert "laptop" in info.value.reason
    assert types(events) == ["token_created", "token_revoked"]
    assert routes.live_groups(events()[-1]) == [routes.token_group(issued.token.pk)]


def test_another_volunteer_cannot_revoke_my_token(alice, bob):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    with pytest.raises(PermissionError):
        volunteers.revoke_worker_token(token=issued.token, actor=bob)
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is None


def test_a_banned_account_token_is_refused_and_cannot_be_created(alice, dave):
    from volunteers.models import WorkerToken

    token = WorkerToken.objects.create(user=dave, name="old", prefix="0badc0de",
                                       token_hash=volunteers.hash_token("btard_0badc0de_x"))
    with pytest.raises(volunteers.TokenRefused) as info:
        volunteers.authenticate_worker_token("btard_0badc0de_x")
    assert info.value.close_code == CLOSE_BANNED and token.pk
    with pytest.raises(PermissionError):
        volunteers.create_worker_token(user=dave, name="new")


def test_sign_up_is_limited_per_address_and_globally(settings):
    settings.SIGNUP_LIMIT_PER_ADDRESS = 2
    settings.SIGNUP_LIMIT_GLOBAL = 3
    volunteers.check_signup_allowed(address="10.0.0.1")
    volunteers.check_signup_allowed(address="10.0.0.1")
    with pytest.raises(volunteers.SignupLimited, match="from your address"):
        volunteers.check_signup_allowed(address="10.0.0.1")
    volunteers.check_signup_allowed(address="10.0.0.2")
    with pytest.raises(volunteers.SignupLimited, match="on the site"):
        volunteers.check_signup_allowed(address="10.0.0.3")


# --- joining and admission ---------------------------------------------------------------------
def test_founders_join_active_and_later_peers_start_as_candidates(run, alice, bob, events):
    t_alice = volunteers.create_worker_token(user=alice, name="a").token
    t_bob = volunteers.create_worker_token(user=bob, name="b").token
    first = runs.join_run(token=t_alice, hello=hello_for(Identity.from_seed(b"a")))
    assert first.role == "active"
    second = runs.join_run(token=t_bob, hello=hello_for(Identity.from_seed(b"b")))
    assert second.role == "active"
    assert runs.start_step_if_ready(run=run) is not None
    late = runs.join_run(token=t_bob, hello=hello_for(Identity.from_seed(b"b2")))
    assert late.role == "candidate" and late.probation_left == run.probation_steps
    assert types(events).count("peer_joined") == 3


def test_a_new_key_of_the_same_account_is_a_new_peer_that_keeps_the_account_reputation(run, alice):
    token = volunteers.create_worker_token(user=alice, name="a").token
    runs.join_run(token=token, hello=hello_for(Identity.from_seed(b"a1")))
    volunteers.adjust_reputation(user_ids=[alice.id], kind="staff", delta=50.0)
    type(run).objects.filter(pk=run.pk).update(current_step=10)
    again = runs.join_run(token=token, hello=hello_for(Identity.from_seed(b"a2")))
    assert Peer.objects.filter(user=alice).count() == 2
    assert again.role == "candidate"
    # 50 reputation = two steps off the probation of 2, floored at the policy minimum of 1
    assert again.probation_left == 1
    alice.volunteer.refresh_from_db()
    assert alice.volunteer.reputation == 50.0


def test_high_reputation_shortens_probation():
    from admission.policies import get_policy

    run = RunFactory.build(probation_steps=5)
    policy = get_policy("reputation")
    assert policy.probation_steps(run, reputation=0) == 5
    assert policy.probation_steps(run, reputation=45) == 3
    assert policy.probation_steps(run, reputation=1000) == 1
    assert get_policy("open").probation_steps(run, reputation=0) == 0


def test_joining_without_an_open_run_is_refused(alice):
    token = volunteers.create_worker_token(user=alice, name="a").token
    with pytest.raises(runs.JoinRefused) as info:
        runs.join_run(token=token, hello=hello_for(Identity.from_seed(b"a")))
    assert info.value.close_code == CLOSE_NO_RUN


def test_a_banned_key_cannot_join_again(run, alice, bob):
    peer, identity = make_peer(run=run, user=bob)
    moderation.ban_peer(peer=peer, reason="lied", evidence_kind="bad_commitment", evidence={}, source="verdict")
    token = volunteers.create_worker_token(user=alice, name="a").token
    with pytest.raises(runs.JoinRefused) as info:
        runs.join_run(token=token, hello=hello_for(identity))
    assert info.value.close_code == CLOSE_BANNED


def test_heartbeats_emit_an_event_only_when_the_status_changes(run, alice, events):
    peer, _ = make_peer(run=run, user=alice, status="training")
    assert runs.record_heartbeat(peer=peer, heartbeat=Heartbeat(status="training")) is False
    assert runs.record_heartbeat(peer=peer, heartbeat=Heartbeat(status="error", detail="CUDA OOM")) is True
    peer.refresh_from_db()
    assert (peer.status, peer.status_detail) == ("error", "CUDA OOM")
    assert types(events) == ["peer_status_changed"]


def test_stale_peers_are_marked_offline(run, alice, bob, events, settings):
    settings.HEARTBEAT_TIMEOUT_SECONDS = 30
    fresh, _ = make_peer(run=run, user=alice)
    stale, _ = make_peer(run=run, user=bob)
    Peer.objects.filter(pk=stale.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    assert runs.mark_stale_peers_offline(run=run) == [stale.peer_id]
    assert list(Peer.objects.filter(online=True).values_list("pk", flat=True)) == [fresh.pk]
    assert types(events) == ["peer_status_changed"]


# --- group formation ----------------------------------------------------------------------------
def test_it_forms_a_deterministic_group_with_validators_and_candidates(run, events):
    peers = [make_peer(run=run, seed=f"p{i}")[0] for i in range(3)]
    cand, _ = make_peer(run=run, seed="cand", role="candidate", probation_required=2)
    record = runs.start_step_if_ready(run=run)
    assert sorted(record.members) == sorted(p.peer_id for p in peers)
    # in the order of the run's public chain at step 0 (later: the previous step's r), not by key
    r = skipped_randomness(genesis_randomness(str(run.id), run.seed), str(run.id), 0)
    assert record.members == group_order(r, record.members)
    assert [c["peer_id"] for c in record.candidates] == [cand.peer_id]
    assert record.candidates[0]["validator"] in record.members
    assert record.candidates[0]["seed"] == runs.probation_seed(run, 0, cand.peer_id)
    assert runs.start_step_if_ready(run=run) is None  # one step at a time
    formed = events()[-1]
    assert formed.type == "group_formed" and formed.recipients() == set(record.members) | {cand.peer_id}


def test_no_group_forms_below_min_peers_and_offline_peers_are_left_out(run):
    make_peer(run=run, seed="p0")
    make_peer(run=run, seed="p1", online=False)
    assert runs.start_step_if_ready(run=run) is None


def test_it_assigns_no_validators_when_it_forms_a_group(run):
    """Validators are drawn from the step's own r_t, revealed during the step: not knowable at the start
    (runs.step_validators computes them from the board; tests/site/test_validator_draw.py)."""
    peers = [make_peer(run=run, seed=f"p{i}")[0] for i in range(4)]
    runs.start_step_if_ready(run=run)
    for p in peers:
        runs.record_step_report(peer=p, report=StepReport(step=0, outcome="applied", loss=1.0, samples=32))
    runs.close_step(run=run)
    record = runs.start_step_if_ready(run=run)
    assert record.validators == {}
    assert runs.step_validators(run=run, step=1) == {}  # no reveal on the board yet


# --- the broadcast board ------------------------------------------------------------------------
@pytest.fixture
def group(run):
    peers = [make_peer(run=run, seed=f"g{i}") for i in range(3)]
    runs.start_step_if_ready(run=run)
    return peers


def test_it_stores_and_relays_a_signed_broadcast(run, group, events):
    (peer, identity), *_ = group
    entry = runs.accept_broadcast(peer=peer, envelope=envelope(identity, run))
    assert entry.digest == envelope(identity, run, nonce=entry.nonce).digest()
    relayed = events()[-1]
    assert relayed.type == "broadcast_recorded" and set(relayed.recipients) == {p.peer_id for p, _ in group}


@pytest.mark.parametrize("case, code", [
    ("wrong_signer", "sender"), ("tampered", "signature"), ("wrong_run", "wrong_run"), ("phase", "phase"),
    ("future_step", "stale_step"), ("replay", "replay"), ("outsider", "not_in_group"),
    ("bad_verdict", "payload"),
])
def test_it_rejects_bad_broadcasts_without_changing_state(case, code, run, group, events):
    (peer, identity), (other, other_identity), _ = group
    env = envelope(identity, run)
    if case == "wrong_signer":
        env = envelope(other_identity, run)
    elif case == "tampered":
        env = env.model_copy(update={"payload": {"hashes": ["ff" * 32]}})
    elif case == "wrong_run":
        env = envelope(identity, RunFactory(), step=0)
    elif case == "phase":
        env = envelope(identity, run, phase="gossip")
    elif case == "future_step":
        env = envelope(identity, run, step=5)
    elif case == "replay":
        runs.accept_broadcast(peer=peer, envelope=env)
    elif case == "outsider":
        peer, identity = make_peer(run=run, seed="outsider")
        env = envelope(identity, run)
    elif case == "bad_verdict":
        env = envelope(identity, run, phase="verdict", payload={"type": "verdict", "guilty": "nope"})
    before_logs, before_events = BroadcastLog.objects.count(), len(events())
    with pytest.raises(runs.Rejected) as info:
        runs.accept_broadcast(peer=peer, envelope=env)
    assert info.value.code == code
    assert BroadcastLog.objects.count() == before_logs and len(events()) == before_events


# --- verdicts, eliminations, moderation ----------------------------------------------------------
def test_a_strict_majority_of_signed_verdicts_bans_the_peer_and_its_account(run, events):
    peers = [make_peer(run=run, seed=f"v{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    guilty_peer, _ = peers[3]
    second_key, _ = make_peer(run=run, user=guilty_peer.user, seed="v3-other", role="candidate")
    for n, (peer, identity) in enumerate(peers[:3]):
        entry = runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty_peer.peer_id))
        ban = moderation.consider_verdict(entry=entry)
        # 1 and 2 of 4 are not a strict majority; 3 of 4 is
        assert (ban is not None) == (n == 2)
    assert ban.user == guilty_peer.user and ban.evidence["signers"] == 3
    assert ban.evidence_kind == "part_mismatch" and len(ban.evidence["verdicts"]) == 3
    assert set(Peer.objects.filter(user=guilty_peer.user).values_list("role", flat=True)) == {"banned"}
    guilty_peer.user.volunteer.refresh_from_db()
    assert guilty_peer.user.volunteer.is_banned and second_key.pk
    banned = [e for e in events() if e.type == "peer_banned"]
    assert len(banned) == 1 and routes.bans_group() in routes.live_groups(banned[0])


def test_repeated_verdicts_from_one_peer_count_once(run):
    peers = [make_peer(run=run, seed=f"r{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    (peer, identity), guilty = peers[0], peers[3][0]
    entry = runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty.peer_id))
    assert moderation.consider_verdict(entry=entry) is None
    for _ in range(2):  # the same sender's later verdicts on the same peer are refused at the door (F6)
        with pytest.raises(runs.Rejected) as refused:
            runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty.peer_id))
        assert refused.value.code == "duplicate"
    assert not Ban.objects.exists()


def test_an_elimination_benches_both_peers_for_the_epoch_and_opens_a_case(run, group, events):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id,
                                                   "reason": "never sent my part"}))
    case = moderation.record_elimination(entry=entry)
    assert set(case.peers.values_list("peer_id", flat=True)) == {sender.peer_id, target.peer_id}
    assert case.evidence["eliminate"]["signature"] == entry.envelope["signature"]
    assert set(Peer.objects.filter(pk__in=[sender.pk, target.pk]).values_list("excluded_until_step", flat=True)) \
        == {run.epoch_steps}
    assert ReputationEvent.objects.filter(kind="eliminated").count() == 2
    assert types(events)[-1] == "case_opened"


def test_staff_clear_a_case_restoring_reputation_with_an_audited_reason(run, group, carol, events):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))
    case = moderation.record_elimination(entry=entry)
    moderation.clear_case(case=case, actor=carol, reason="network partition, both honest")
    sender.user.volunteer.refresh_from_db()
    assert sender.user.volunteer.reputation == 0.0
    assert AuditLog.objects.get().action == "clear"
    assert types(events)[-1] == "case_resolved"


def test_staff_confirm_a_ban_from_a_case_and_can_unban(run, group, carol, events):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))
    case = moderation.record_elimination(entry=entry)
    ban = moderation.confirm_case_ban(case=case, peer=target, actor=carol, reason="withholds parts every epoch")
    assert ban.source == "staff" and types(events)[-1] == "peer_banned"
    moderation.unban(ban=ban, actor=carol, reason="appeal accepted")
    target.refresh_from_db()
    target.user.volunteer.refresh_from_db()
    assert not target.user.volunteer.is_banned and target.role == "waiting"
    assert list(AuditLog.objects.order_by("id").values_list("action", flat=True)) == ["confirm_ban", "unban"]
    assert types(events)[-1] == "peer_unbanned"


def test_only_staff_can_moderate_and_a_reason_is_required(run, group, alice, carol):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))
    case = moderation.record_elimination(entry=entry)
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        moderation.clear_case(case=case, actor=alice, reason="mine")
    with pytest.raises(ValueError):
        moderation.clear_case(case=case, actor=carol, reason="  ")
    assert ModerationCase.objects.get().status == "open" and not AuditLog.objects.exists()


# --- step loop ------------------------------------------------------------------------------------
def test_a_step_closes_when_every_member_reported_and_credits_contribution(run, group, events):
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied", loss=2.0, accuracy=0.5,
                                                             samples=32))
    record = runs.close_step(run=run)
    run.refresh_from_db()
    assert run.current_step == 1 and not run.step_in_progress
    assert (record.outcome, record.loss, record.accuracy, record.samples) == ("applied", 2.0, 0.5, 96)
    for peer, _ in group:
        peer.user.volunteer.refresh_from_db()
        assert peer.user.volunteer.contribution_samples == 32 and peer.user.volunteer.reputation == 1.0
    assert types(events)[-1] == "step_advanced"


def test_a_step_waits_for_reports_until_its_deadline_then_charges_the_silent(run, group, events):
    (p0, _), (p1, _), (silent, _) = group
    for peer in (p0, p1):
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied", samples=8))
    assert runs.close_step(run=run) is None
    record = runs.close_step(run=run, now=timezone.now() + timedelta(seconds=run.step_timeout + 1))
    assert record.outcome == "applied" and events()[-1].missing == [silent.peer_id]
    assert ReputationEvent.objects.get(kind="missed_deadline").user == silent.user


def test_repeated_missed_deadlines_open_a_timeouts_case(run, group):
    type(run).objects.filter(pk=run.pk).update(missed_deadlines_for_case=2)
    *_, (silent, _) = group
    for step in range(2):
        if step:
            runs.start_step_if_ready(run=run)
        for peer, _ in group[:2]:
            runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="applied", samples=8))
        runs.close_step(run=run, force=True)
    case = ModerationCase.objects.get()
    assert case.kind == "timeouts" and list(case.peers.all()) == [silent]


def test_a_duplicate_or_stale_report_is_rejected(run, group):
    peer, _ = group[0]
    runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied"))
    with pytest.raises(runs.Rejected, match="already"):
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied"))
    with pytest.raises(runs.Rejected) as info:
        runs.record_step_report(peer=peer, report=StepReport(step=3, outcome="applied"))
    assert info.value.code == "stale_step"


def test_candidates_are_promoted_after_their_validated_probation_steps(run, group, events):
    cand, _ = make_peer(run=run, seed="cand", role="candidate", probation_required=1)
    runs.close_step(run=run, force=True)
    runs.start_step_if_ready(run=run)
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=1, outcome="applied", samples=8))
    runs.record_step_report(peer=cand, report=StepReport(step=1, outcome="probation", samples=8))
    runs.close_step(run=run)
    assert runs.promote_candidates(run=run) == [cand.peer_id]
    cand.refresh_from_db()
    assert cand.role == "active" and types(events)[-1] == "peers_promoted"


def test_recompute_reputation_repairs_drift(alice):
    volunteers.adjust_reputation(user_ids=[alice.id], kind="validated_step")
    alice.volunteer.reputation = 99
    alice.volunteer.save()
    assert volunteers.recompute_reputation() == 1
    alice.volunteer.refresh_from_db()
    assert alice.volunteer.reputation == 1.0


def test_old_broadcast_logs_expire_after_the_run_retention(run, group):
    peer, identity = group[0]
    runs.accept_broadcast(peer=peer, envelope=envelope(identity, run))
    assert runs.expire_broadcasts(now=timezone.now() + timedelta(hours=run.broadcast_retention_hours - 1)) == 0
    assert runs.expire_broadcasts(now=timezone.now() + timedelta(hours=run.broadcast_retention_hours + 1)) == 1


def test_a_new_volunteer_starts_with_no_reputation_contribution_or_ban():
    volunteer = UserFactory(username="zed").volunteer
    assert (volunteer.reputation, volunteer.contribution_samples, volunteer.is_banned) == (0.0, 0, False)


@pytest.mark.parametrize("name", sorted(__import__("admission.policies", fromlist=["POLICIES"]).POLICIES))
def test_every_admission_policy_admits_founders_and_respects_its_own_probation(name):
    from admission.policies import get_policy

    policy = get_policy(name)
    run = RunFactory.build(probation_steps=3, current_step=0, step_in_progress=False, peers_per_group=4)
    assert policy.founders_active(run, active_count=0)
    steps = policy.probation_steps(run, reputation=0.0)
    assert 0 <= steps <= run.probation_steps
    assert policy.probation_steps(run, reputation=1e6) <= steps  # reputation never lengthens probation


def test_a_candidate_reporting_just_after_its_step_closed_still_gets_the_probation_step(run, group):
    cand, _ = make_peer(run=run, seed="slow-cand", role="candidate", probation_required=1)
    runs.close_step(run=run, force=True)
    runs.start_step_if_ready(run=run)
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=1, outcome="applied", samples=8))
    runs.close_step(run=run)  # the members are done; the candidate is still downloading the state
    runs.record_step_report(peer=cand, report=StepReport(step=1, outcome="probation", samples=8))
    cand.refresh_from_db()
    assert cand.probation_done == 1
    assert runs.promote_candidates(run=run) == [cand.peer_id]
    outsider, _ = make_peer(run=run, seed="not-a-candidate", role="candidate")
    with pytest.raises(runs.Rejected):
        runs.record_step_report(peer=outsider, report=StepReport(step=1, outcome="probation"))


def test_a_peer_reported_silent_by_a_majority_in_three_steps_is_banned(run, group, events):
    (p0, _), (p1, _), (quiet, _) = group
    for step in range(3):
        if step:
            runs.start_step_if_ready(run=run)
        for peer in (p0, p1):
            runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="dropped",
                                                                 missing=[quiet.peer_id]))
        runs.record_step_report(peer=quiet, report=StepReport(step=step, outcome="dropped"))
        runs.tick_run(run=run)
    ban = Ban.objects.get()
    assert (ban.peer_id, ban.evidence_kind, ban.source) == (quiet.peer_id, "silence", "verdict")


def test_silence_counts_consecutive_steps_so_a_step_the_peer_spoke_in_resets_it(run, group, events):
    (p0, _), (p1, _), (quiet, _) = group
    for step, (silent, count) in enumerate(zip([True, True, False, True, True], [1, 2, 0, 1, 2])):
        if step:
            runs.start_step_if_ready(run=run)
        for peer in (p0, p1):
            runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="dropped",
                                                                 missing=[quiet.peer_id] if silent else []))
        runs.record_step_report(peer=quiet, report=StepReport(step=step, outcome="dropped"))
        runs.tick_run(run=run)
        quiet.refresh_from_db()
        assert quiet.silent_steps == count
    assert not Ban.objects.exists()  # five steps, four of them silent, never three in a row


def test_only_the_first_elimination_naming_a_peer_removes_a_pair(run, events):
    peers = [make_peer(run=run, seed=f"e{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, ib), (c, _), _ = peers
    first = moderation.record_elimination(entry=runs.accept_broadcast(peer=a, envelope=envelope(
        ia, run, phase="eliminate", payload={"type": "eliminate", "target": c.peer_id})))
    second = moderation.record_elimination(entry=runs.accept_broadcast(peer=b, envelope=envelope(
        ib, run, phase="eliminate", payload={"type": "eliminate", "target": c.peer_id})))
    assert first.evidence["removed_pair"] and not second.evidence["removed_pair"]
    b.refresh_from_db()
    assert b.excluded_until_step is None  # still in the group
    assert ModerationCase.objects.count() == 2


def test_benched_peers_come_back_early_when_the_run_would_stall_without_them(run, events):
    type(run).objects.filter(pk=run.pk).update(min_peers=3, epoch_steps=1000)
    peers = [make_peer(run=run, seed=f"st{i}")[0] for i in range(3)]
    Peer.objects.filter(pk__in=[peers[0].pk, peers[1].pk]).update(excluded_until_step=1000)  # an ELIMINATE pair
    record = runs.start_step_if_ready(run=run)
    assert record is not None and sorted(record.members) == sorted(p.peer_id for p in peers)
    ended = [e for e in events() if e.type == "exclusions_ended"]
    assert len(ended) == 1 and ended[0].peer_ids == sorted([peers[0].peer_id, peers[1].peer_id])
    assert not Peer.objects.filter(excluded_until_step__isnull=False).exists()


def test_benched_peers_stay_out_when_the_others_are_enough(run, events):
    type(run).objects.filter(pk=run.pk).update(min_peers=2, epoch_steps=1000)
    peers = [make_peer(run=run, seed=f"ok{i}")[0] for i in range(4)]
    Peer.objects.filter(pk__in=[peers[0].pk, peers[1].pk]).update(excluded_until_step=1000)
    record = runs.start_step_if_ready(run=run)
    assert sorted(record.members) == sorted([peers[2].peer_id, peers[3].peer_id])
    assert not [e for e in events() if e.type == "exclusions_ended"]


def test_a_run_too_small_even_with_its_benched_peers_waits_and_keeps_them_benched(run):
    type(run).objects.filter(pk=run.pk).update(min_peers=4, epoch_steps=1000)
    peers = [make_peer(run=run, seed=f"sm{i}")[0] for i in range(3)]
    Peer.objects.filter(pk=peers[0].pk).update(excluded_until_step=1000)
    assert runs.start_step_if_ready(run=run) is None
    assert Peer.objects.get(pk=peers[0].pk).excluded_until_step == 1000

