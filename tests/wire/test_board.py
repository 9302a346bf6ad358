"""The board rules (btard_wire.board) as the site, the in-memory board and the fake site run them."""

from __future__ import annotations

import hashlib

import pytest

from btard_wire import board as rules
from btard_wire.randomness import combine_reveals, draw_validators, mprng_commitment

GROUP = ["a", "b", "c", "d"]


# --- verdict majority -----------------------------------------------------------------------------
@pytest.mark.parametrize("n, signers, banned", [(4, 2, False), (4, 3, True), (5, 2, False), (5, 3, True),
                                                (6, 3, False), (6, 4, True), (1, 1, True)])
def test_it_bans_only_on_a_strict_majority_of_the_group(n, signers, banned):
    members = [f"p{i}" for i in range(n)]
    assert rules.verdict_majority(members[:signers], members=members) is banned


def test_it_ignores_verdicts_of_non_members_and_counts_each_signer_once():
    assert not rules.verdict_majority(["a", "a", "a", "x", "y", "z"], members=GROUP)
    assert not rules.verdict_majority(["a", "b", "candidate"], members=GROUP)
    assert rules.verdict_majority(["a", "b", "c", "candidate"], members=GROUP)
    assert not rules.verdict_majority(["a"], members=[])


def test_it_lists_the_guilty_in_the_order_their_majority_was_reached():
    votes = [("a", "x"), ("b", "y"), ("c", "y"), ("a", "y"), ("b", "x"), ("c", "x"), ("d", "x")]
    assert rules.verdict_bans(votes, members=GROUP) == ["y", "x"]
    assert rules.verdict_bans([("a", "x"), ("b", "x")], members=GROUP) == []


# --- ELIMINATE ------------------------------------------------------------------------------------
def test_the_first_eliminate_naming_a_peer_removes_the_pair_and_later_ones_remove_nobody():
    removed: set[str] = set()
    assert rules.elimination_removes(eliminator="a", target="b", members=GROUP, removed=removed)
    removed |= {"a", "b"}
    assert not rules.elimination_removes(eliminator="c", target="b", members=GROUP, removed=removed)
    assert not rules.elimination_removes(eliminator="a", target="c", members=GROUP, removed=removed)
    assert rules.elimination_removes(eliminator="c", target="d", members=GROUP, removed=removed)


def test_a_candidates_eliminate_removes_nobody():
    # a candidate is no member of the step; and where the site lists it as a recipient, it is not active
    assert not rules.elimination_removes(eliminator="cand", target="a", members=GROUP, removed=())
    assert not rules.elimination_removes(eliminator="cand", target="a", members=GROUP + ["cand"],
                                         active=GROUP, removed=())
    assert not rules.elimination_removes(eliminator="a", target="cand", members=GROUP + ["cand"],
                                         active=GROUP, removed=())
    assert rules.elimination_removes(eliminator="a", target="b", members=GROUP + ["cand"], active=GROUP,
                                     removed=())


def test_a_peer_cannot_eliminate_itself_or_a_stranger():
    assert not rules.elimination_removes(eliminator="a", target="a", members=GROUP, removed=())
    assert not rules.elimination_removes(eliminator="a", target="stranger", members=GROUP, removed=())


# --- silence --------------------------------------------------------------------------------------
def test_silence_needs_a_majority_of_member_reports():
    reports = {"a": ["d"], "b": ["d"], "c": [], "x": ["c"], "y": ["c"], "z": ["c"]}
    assert rules.reported_silent(reports, members=GROUP) == set()  # 2 of 4 is no majority; x, y, z are no members
    reports["c"] = ["d", "d"]
    assert rules.reported_silent(reports, members=GROUP) == {"d"}
    assert rules.reported_silent({"a": ["x"], "b": ["x"], "c": ["x"]}, members=GROUP) == set()  # not a member


def test_silence_counts_consecutive_steps_and_decays_when_the_peer_speaks():
    count, banned_at = 0, None
    for step, silent in enumerate([True, True, False, True, True, False, True, True, True]):
        count = rules.next_silence_count(count, silent=silent)
        if banned_at is None and rules.silence_banned(count):
            banned_at = step
    assert banned_at == 8  # two silent steps, then speaking, twice: never three in a row until the end
    assert not rules.silence_banned(2) and rules.silence_banned(rules.SILENCE_LIMIT)


def test_the_memory_board_resets_silence_on_a_step_the_peer_spoke_in():
    from worker_client.transports.memory import BulletinBoard

    board = BulletinBoard(run="r", public_keys={}, members=GROUP)
    board.open_step(0, GROUP)
    majority_says_d = {"a": ["d"], "b": ["d"], "c": ["d"]}
    for _ in range(2):
        board.report_silence(majority_says_d)
    board.report_silence({"a": [], "b": [], "c": []})
    for _ in range(2):
        board.report_silence(majority_says_d)
    assert "d" not in board.banned and board.silence["d"] == 2
    board.report_silence(majority_says_d)
    assert board.banned["d"].kind == "silence"


# --- phase-close quorum ---------------------------------------------------------------------------
def test_a_phase_closes_on_a_strict_majority_of_the_online_members():
    members = ["a", "b", "c", "d", "e"]
    assert not rules.close_quorum(asked=["a", "b"], members=members, online=members)
    assert rules.close_quorum(asked=["a", "b", "c"], members=members, online=members)
    # two crashed: 2 of the 3 still online close it
    assert rules.close_quorum(asked=["a", "b"], members=members, online=["a", "b", "c"])
    assert not rules.close_quorum(asked=["a"], members=members, online=["a", "b", "c"])


def test_a_minority_cannot_force_a_close_by_asking_and_going_offline():
    members = [f"p{i}" for i in range(16)]
    byzantine = members[:7]
    # all 7 ask, then 6 of them disconnect: the 10 left online are the quorum, 1 asker among them
    assert not rules.close_quorum(asked=byzantine, members=members, online=members[6:])
    assert not rules.close_quorum(asked=byzantine + ["stranger", "x", "y"], members=members, online=members)


def test_the_memory_board_closes_a_phase_only_on_a_quorum_of_requests():
    from worker_client.transports.memory import BulletinBoard

    board = BulletinBoard(run="r", public_keys={}, members=GROUP)
    board.open_step(0, GROUP)
    assert board.request_close("a", "commit") is None
    assert board.request_close("b", "commit") is None
    assert board.request_close("stranger", "commit") is None
    assert board.request_close("c", "commit") == []
    assert "commit" in board.closed


# --- MPRNG output and the assignment from the board -----------------------------------------------
def _board(step=3, run="r"):
    secrets = {p: bytes([i + 1]) * 32 for i, p in enumerate(GROUP)}
    commits = {p: mprng_commitment(x, run=run, step=step, sender=p) for p, x in secrets.items()}
    reveals = {p: x.hex() for p, x in secrets.items()}
    return secrets, commits, reveals


def test_mprng_output_combines_the_reveals_in_group_order():
    secrets, commits, reveals = _board()
    r = rules.mprng_output(run="r", step=3, members=GROUP, commitments=commits, reveals=reveals)
    assert r == combine_reveals([secrets[p] for p in GROUP])
    assert rules.mprng_output(run="r", step=3, members=GROUP[::-1], commitments=commits, reveals=reveals) != r


@pytest.mark.parametrize("spoil", ["missing", "mismatch", "malformed", "other_step"])
def test_a_missing_or_bad_reveal_leaves_the_step_without_randomness_or_validators(spoil):
    _, commits, reveals = _board()
    if spoil == "missing":
        del reveals["c"]
    elif spoil == "mismatch":
        reveals["c"] = (b"\x09" * 32).hex()
    elif spoil == "malformed":
        reveals["c"] = "not hex"
    step = 4 if spoil == "other_step" else 3
    assert rules.mprng_output(run="r", step=step, members=GROUP, commitments=commits, reveals=reveals) is None
    assert rules.validator_assignment(run="r", step=step, group=GROUP, commitments=commits, reveals=reveals,
                                      prev_contributors=GROUP, m=2) == {}


def test_the_assignment_is_the_draw_from_the_steps_own_randomness():
    secrets, commits, reveals = _board()
    r = combine_reveals([secrets[p] for p in GROUP])
    got = rules.validator_assignment(run="r", step=3, group=GROUP, commitments=commits, reveals=reveals,
                                     prev_contributors=["a", "b", "c", "x"], m=2)
    assert got == draw_validators(r, group=GROUP, targets=["a", "b", "c"], m=2)
    assert len(got) == 2 and set(got.values()) <= {"a", "b", "c"}


def test_a_peer_left_out_of_the_mprng_does_not_count_for_the_randomness():
    secrets, commits, reveals = _board()
    del commits["d"], reveals["d"]  # its commitment missed the close: not an MPRNG member
    r = combine_reveals([secrets[p] for p in ("a", "b", "c")])
    got = rules.validator_assignment(run="r", step=3, group=GROUP, commitments=commits, reveals=reveals,
                                     prev_contributors=GROUP, m=2)
    assert got == draw_validators(r, group=GROUP, targets=GROUP, m=2)


def test_a_reveal_missing_at_the_sites_close_is_left_out_of_the_randomness_not_fatal():
    secrets, commits, reveals = _board()
    del reveals["c"]
    closed = ["a", "b", "d"]  # the site closed mprng_reveal without c's reveal
    r = rules.mprng_output(run="r", step=3, members=GROUP, commitments=commits, reveals=reveals, revealed=closed)
    assert r == combine_reveals([secrets[p] for p in ("a", "b", "d")])  # group order, c left out
    assert rules.reveal_silent(members=GROUP, revealed=closed) == ["c"]
    got = rules.validator_assignment(run="r", step=3, group=GROUP, commitments=commits, reveals=reveals,
                                     prev_contributors=GROUP, m=2, revealed=closed)
    assert got == draw_validators(r, group=GROUP, targets=GROUP, m=2) and got
    # while the phase is open (no close) a missing reveal is only not there yet: no r_t
    assert rules.mprng_output(run="r", step=3, members=GROUP, commitments=commits, reveals=reveals) is None


def test_a_reveal_stored_after_the_close_does_not_count():
    secrets, commits, reveals = _board()
    r = rules.mprng_output(run="r", step=3, members=GROUP, commitments=commits, reveals=reveals,
                           revealed=["a", "b", "c"])
    assert r == combine_reveals([secrets[p] for p in ("a", "b", "c")])


@pytest.mark.parametrize("spoil", ["mismatch", "malformed"])
def test_a_bad_reveal_in_the_closed_set_still_leaves_the_step_without_randomness(spoil):
    _, commits, reveals = _board()
    reveals["b"] = (b"\x09" * 32).hex() if spoil == "mismatch" else "not hex"
    assert rules.mprng_output(run="r", step=3, members=GROUP, commitments=commits, reveals=reveals,
                              revealed=GROUP) is None


def test_nobody_revealing_by_the_close_gives_no_randomness():
    _, commits, _ = _board()
    assert rules.mprng_output(run="r", step=3, members=GROUP, commitments=commits, reveals={}, revealed=[]) is None


# --- withheld reveals over a sliding window (SR 14) ----------------------------------------------------
def _withhold_run(steps, withholds):
    """Both counts over ``steps`` for a member that withholds its reveal where ``withholds(step, window)``
    says so: the step its key is banned under the window rule (None: never), and whether the consecutive
    silence count alone ever banned it."""
    count, window, consecutive_ban = 0, [], False
    for step in range(steps):
        withheld = withholds(step, window)
        count = rules.next_silence_count(count, silent=withheld)
        consecutive_ban |= rules.silence_banned(count)
        window = rules.next_withheld_steps(window, step=step, withheld=withheld)
        assert len(window) <= rules.REVEAL_WITHHOLD_LIMIT
        if rules.withholding_banned(window):
            return step, consecutive_ban
    return None, consecutive_ban


def test_a_withholder_that_speaks_every_other_step_cannot_reset_the_window_count():
    banned_at, consecutive_ban = _withhold_run(500, lambda step, _: step % 2 == 0)
    assert not consecutive_ban  # one honest step in between reset the old count every time
    assert banned_at == 2 * (rules.REVEAL_WITHHOLD_LIMIT - 1)  # its 5th withheld reveal, at step 8


def test_a_rational_last_revealer_dodging_its_checks_is_banned_within_the_window():
    """The reveal dodger (SR 14) at n = 16, m = 2 withholds exactly when the draw with its value makes it
    a target, i.e. in about q = 1/8 of the steps, and speaks in all others."""
    group = [f"p{i:02d}" for i in range(16)]
    dodger = group[1]

    def targeted(step, _):
        xs = [hashlib.sha256(b"%d/%d" % (step, i)).digest() for i in range(len(group))]
        return dodger in draw_validators(combine_reveals(xs), group=group, targets=group, m=2).values()

    banned_at, consecutive_ban = _withhold_run(400, targeted)
    assert banned_at is not None and banned_at < 100  # 5 withheld in 50 steps: about 5 / q = 40 steps
    assert not consecutive_ban  # three targeted steps in a row (q**3 = 0.2 %) never came


def test_a_withholder_that_keeps_its_key_withholds_at_most_limit_minus_one_per_window():
    """The best a withholder can do and keep its key: withhold whenever it likes while its window holds
    fewer than ``limit - 1`` steps; over a long run that is at most (limit - 1) / window of the steps."""
    spent = []

    def paced(step, window):
        if len(window) < rules.REVEAL_WITHHOLD_LIMIT - 1:
            spent.append(step)
            return True
        return False

    banned_at, _ = _withhold_run(1000, paced)
    assert banned_at is None
    assert len(spent) <= (1000 / rules.REVEAL_WINDOW + 1) * (rules.REVEAL_WITHHOLD_LIMIT - 1)


def test_an_honest_peer_missing_a_reveal_now_and_then_or_excused_after_a_restart_keeps_its_key():
    banned_at, consecutive_ban = _withhold_run(1000, lambda step, _: step % 13 == 0)  # a flaky link
    assert banned_at is None and not consecutive_ban
    window = []
    for step in range(20):  # a restarted worker's catch-up steps are excused, not counted
        window = rules.next_withheld_steps(window, step=step, withheld=True, excused=True)
    assert window == [] and not rules.withholding_banned(window)
    # steps leave the window once they are REVEAL_WINDOW old
    assert rules.next_withheld_steps([1, 10, 11, 59], step=60, withheld=False) == [11, 59]
    assert rules.next_withheld_steps([11, 12], step=61, withheld=True) == [12, 61]


def test_only_contributors_with_scalars_on_the_board_are_targets():
    assert rules.checkable_targets(contributors=["a", "b", "c"], scalars_senders={"c", "a", "x"}) == ["a", "c"]


# --- admission (finding 10) ---------------------------------------------------------------------------
def test_only_the_drawn_validator_reports_on_a_candidate_and_only_once_per_step():
    draw = {"cand": "a", "other": "b"}  # a site naming one validator per candidate
    assert rules.probation_report_refused(sender="a", candidate="cand", validators=draw, reported=[]) is None
    assert "not a probation validator" in rules.probation_report_refused(
        sender="b", candidate="cand", validators=draw, reported=[])
    assert "already reported" in rules.probation_report_refused(
        sender="a", candidate="cand", validators=draw, reported=["cand"])
    assert "not a candidate" in rules.probation_report_refused(
        sender="a", candidate="stranger", validators=draw, reported=[])


def test_both_validators_of_a_candidates_panel_report_on_it_and_nobody_else_does():
    draw = {"cand": ["a", "b"], "other": ["c", "d"]}
    assert rules.probation_report_refused(sender="a", candidate="cand", validators=draw, reported=["other"]) is None
    assert rules.probation_report_refused(sender="b", candidate="cand", validators=draw, reported=[]) is None
    assert "not a probation validator" in rules.probation_report_refused(
        sender="c", candidate="cand", validators=draw, reported=[])
    assert "already reported" in rules.probation_report_refused(
        sender="b", candidate="cand", validators=draw, reported=["cand"])


# --- closing a step early (issue 13) ------------------------------------------------------------------
def test_a_step_closes_early_once_every_member_reported_or_left_but_not_when_all_left():
    assert rules.step_closable(members=GROUP, reported=GROUP, gone=[])
    assert rules.step_closable(members=GROUP, reported=["a", "b"], gone=["c", "d"])
    assert not rules.step_closable(members=GROUP, reported=["a", "b"], gone=["c"])
    assert not rules.step_closable(members=GROUP, reported=[], gone=GROUP)  # waits for its deadline
    assert not rules.step_closable(members=GROUP, reported=["a", "x", "y"], gone=["x"])  # strangers count for nothing
