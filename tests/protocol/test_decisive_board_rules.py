"""The pure board rules that fix what decides a step and bound ELIMINATE storms (btard_wire.board;
security review, findings 1, 6, 7, 9). The site, the in-memory board and the fake site call these."""

from __future__ import annotations

from btard_wire import BOARD_PHASES
from btard_wire import board as rules
from worker_client.btard import protocol as P

from ._swarm import Swarm

A, B = "a" * 64, "b" * 64


def test_a_report_may_list_only_digests_the_board_holds():
    assert rules.unheld_listed([A], stored=[A, B]) == []
    assert rules.unheld_listed([A, B], stored=[A]) == [B]


def test_a_report_must_list_every_accusation_of_its_own_sender():
    assert rules.unlisted_own([A, B], listed=[A, B, "c" * 64]) == []
    assert rules.unlisted_own([A, B], listed=[B]) == [A]


def test_accusations_and_eliminates_are_refused_once_the_set_that_decides_the_step_is_fixed():
    ok = {"sender_reported": False, "validation_closed": False}
    assert rules.moderation_refused(phase="accuse", **ok) is None
    assert "own validation report" in rules.moderation_refused(phase="eliminate", sender_reported=True,
                                                               validation_closed=False)
    assert "closed" in rules.moderation_refused(phase="accuse", sender_reported=False, validation_closed=True)
    assert rules.moderation_refused(phase="verdict", sender_reported=True, validation_closed=True) is None
    assert "waiting for no tensor" in rules.moderation_refused(phase="eliminate", sender_posted_scalars=True, **ok)
    assert rules.moderation_refused(phase="accuse", sender_posted_scalars=True, **ok) is None


def test_a_second_different_message_in_a_single_message_slot_is_a_conflict_and_a_resend_is_not():
    assert rules.slot_conflict(phase="scalars", board_phases=BOARD_PHASES, stored_digest=A, digest=B)
    assert not rules.slot_conflict(phase="scalars", board_phases=BOARD_PHASES, stored_digest=A, digest=A)
    assert not rules.slot_conflict(phase="scalars", board_phases=BOARD_PHASES, stored_digest=None, digest=B)
    assert not rules.slot_conflict(phase="accuse", board_phases=BOARD_PHASES, stored_digest=A, digest=B)


def test_eliminates_are_rate_limited_and_repeat_eliminators_escalated():
    assert rules.elimination_rate_ok(effective_in_epoch=0)
    assert not rules.elimination_rate_ok(effective_in_epoch=rules.ELIMINATE_LIMIT)
    assert not rules.escalated(pairs_in_run=1)
    assert rules.escalated(pairs_in_run=rules.ESCALATE_AFTER)


def test_bringing_benched_peers_back_returns_targets_and_never_an_eliminator():
    pairs = [("e1", "h1"), ("e2", "h2"), ("e1", "h3"), ("h4", "e1")]
    assert rules.unbench(pairs=pairs, needed=2) == ["h1", "h2"]
    back = rules.unbench(pairs=pairs, needed=10)
    assert back == ["h1", "h2", "h3"] and "e1" not in back and "e2" not in back


def test_an_eliminate_storm_of_seven_in_sixteen_never_lowers_the_honest_share():
    swarm = Swarm(n=16, attack="eliminate_storm", byzantine=tuple(range(7)), attack_start=1, numel=64)
    swarm.run(4)
    assert not swarm.board.banned
    effective = [e for e in swarm.board.moderation_queue if e["effective"]]
    assert all(e["eliminator"] in swarm.byzantine for e in effective)
    left = swarm.board.next_group()
    honest_left = [p for p in left if p not in swarm.byzantine]
    assert len(honest_left) * 2 > len(left)  # an honest majority, at least as large a share as before
    assert {swarm.history[-1][p].outcome for p in honest_left} == {"applied"}


def test_the_step_deadline_covers_every_phase_deadline():
    assert rules.step_deadline(phase_timeout=30, step_timeout=120) == 30 * len(rules.STEP_PHASES)
    assert rules.step_deadline(phase_timeout=1, step_timeout=120) == 120


def test_a_minority_reporting_at_the_deadline_does_not_inflate_the_measured_step_time():
    members = [f"p{i}" for i in range(16)]
    times = {p: 10.0 for p in members[:9]} | {p: 119.0 for p in members[9:]}
    assert rules.robust_step_seconds(times, members=members) == 10.0
    assert rules.robust_step_seconds({"stranger": 5.0}, members=members) is None


def test_lateness_is_charged_to_the_late_sender_only():
    posted = {"a": 1.0, "b": 29.0, "c": 31.0}
    assert rules.late_senders(posted, expected=["a", "b", "c", "d"], opened_at=0.0, phase_timeout=30.0) == ["c", "d"]


def test_a_crash_like_fault_bans_the_account_only_at_the_third_key_ban():
    scopes = [rules.ban_scope(kind="silence", earlier_key_bans=k) for k in range(4)]
    assert scopes == ["key", "key", "account", "account"]
    assert rules.ban_scope(kind="withheld_reveal", earlier_key_bans=1) == "key"
    assert rules.ban_scope(kind="wrong_scalar", earlier_key_bans=0) == "account"
    assert rules.ban_scope(kind="silence", earlier_key_bans=0, has_account=False) == "account"


def test_when_only_eliminators_are_benched_those_that_cannot_strike_again_come_back():
    """The soak's permanent stall: every online peer was in a pair as an eliminator (a late restarted
    worker eliminated by the others, eliminating back), so targets alone never reach min_peers and the
    epoch never ends. Eliminators whose ELIMINATE of the epoch is spent come back after the targets."""
    pairs = [("a", "late"), ("late", "b"), ("b", "a")]  # everyone is an eliminator
    assert rules.unbench(pairs=pairs, needed=2) == []
    assert rules.unbench(pairs=pairs, needed=2, spent={"a", "b", "late"}) == ["a", "late"]
    # targets first; an eliminator that could still strike stays out
    pairs = [("e1", "h1"), ("e2", "h2")]
    assert rules.unbench(pairs=pairs, needed=3, spent={"e2"}) == ["h1", "h2", "e2"]


def test_a_restarted_workers_catch_up_silence_is_excused_once_in_a_while():
    """Killed in step 25 (silent), back during 26 and catching up (silent), speaking at 28: without the
    excuse 25-27 are three silent steps in a row and a key ban; with it, once per SILENCE_EXCUSE_EVERY
    steps, the count never reaches the limit, and a key dropping and rejoining often is charged."""
    count, last = 0, None
    for step, silent, rejoined in ((25, True, None), (26, True, 26), (27, True, 26), (28, False, 26)):
        excused = rules.silence_excused(step=step, rejoined_step=rejoined, last_excused_step=last)
        last = step if excused and silent else last
        count = rules.next_silence_count(count, silent=silent, excused=excused)
        assert not rules.silence_banned(count), step
    assert count == 0 and last == 26
    # a second drop three steps later is not excused
    assert not rules.silence_excused(step=29, rejoined_step=29, last_excused_step=26)
    assert rules.silence_excused(step=36, rejoined_step=36, last_excused_step=26)
    assert not rules.silence_excused(step=30, rejoined_step=26, last_excused_step=None)  # long after the rejoin
    assert rules.next_silence_count(2, silent=False, excused=True) == 0  # speaking still resets


def test_a_refused_eliminate_leaves_its_senders_report_which_the_board_then_stores():
    """The slow host of the cross-host tests: the site refused the second of a peer's two ELIMINATEs
    (``eliminate_limit``, one per account and epoch) and the report that still listed it was refused in
    turn (``unheld_digest``), so the peer sat in validation. Told which broadcast was refused, the peer
    takes it out of its report, and the board stores the report."""
    params = P.ProtocolParams(tau=1.0, validators=1, board_echo=True)
    swarm = Swarm(n=6, attack="withhold_part", byzantine=(1, 2), attack_start=1, params=params, site_closes=True)
    victim = swarm.ids[0]
    board, post = swarm.board, swarm.board.post
    refused: list[str] = []

    def one_eliminate_per_sender(connection, envelope):
        if connection == victim and envelope.phase == "eliminate" and board._moderation.get(victim):
            refused.append(envelope.digest())
            board.rejected.append((connection, "eliminate_limit: one ELIMINATE per account and epoch"))
            return False
        return post(connection, envelope)

    board.post = one_eliminate_per_sender
    board.keep_log = True
    swarm.run(2)
    assert len(refused) == 1  # the victim eliminated both withholders; the second was refused
    # the report signed with both ELIMINATEs went out before the refusal came back and was refused in turn
    assert [r[1] for r in board.rejected if r[0] == victim] == [
        "eliminate_limit: one ELIMINATE per account and epoch", "report lists 1 digest(s) the board does not hold"]
    reports = [e for e in board.log if e.sender == victim and e.phase == "validation" and e.step == 1]
    assert len(reports) == 1 and refused[0] not in reports[0].payload["accusations"]
    assert board._moderation[victim] and set(board._moderation[victim]) <= set(reports[0].payload["accusations"])
    assert not any(victim in r.silent for r in swarm.history[-1].values())
    assert [e["eliminator"] for e in board.moderation_queue if e["effective"]] == [victim]
    assert not board.banned


def test_an_equivocating_aggregator_stalls_no_honest_peer_and_nobody_honest_withholds_a_reveal():
    """The aggregator sends a different (signed) aggregate to half the group: that half is doomed before it
    reveals, the other half revealed and waits in ``mprng_reveal``. A doomed peer still reveals once every
    aggregation result is on the board, so the step ends (before: 'does not converge' in the worker's mode,
    a stall until the step deadline on the site) and no honest member counts as withholding its reveal."""
    params = P.ProtocolParams(tau=1.0, validators=1, board_echo=True)
    swarm = Swarm(n=8, attack="equivocate", byzantine=(2, 5), attack_start=2, params=params, site_closes=True)
    swarm.run(6)
    assert set(swarm.board.banned) == swarm.byzantine
    assert not any(swarm.board.withheld.get(p) for p in swarm.honest), swarm.board.withheld
    last = swarm.history[-1]
    assert {last[p].outcome for p in swarm.honest} == {"applied"}
    for results in swarm.history:  # the honest peers agree on every step's r_t and outcome
        honest = [results[p] for p in swarm.honest if p in results]
        assert len({(r.outcome, r.r) for r in honest}) == 1
