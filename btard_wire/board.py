"""The bulletin board's rules as pure functions over plain data (peer ids, sets, mappings).

One place for the rules the site (``platform/``), the in-memory board of the simulator
(``worker_client.transports.memory.BulletinBoard``) and the fake site of the worker tests must agree on
(docs/protocol.md: "Payloads of the broadcast phases", "Deadlines and their outcomes", Sec. 3.3):

- :func:`verdict_majority` / :func:`verdict_bans`: a peer is banned once a strict majority of the step's
  group signed verdicts naming it guilty; only members of the step count, each once;
- :func:`elimination_removes`: the first ELIMINATE naming a peer removes the pair; only between two
  active members of the step (a candidate's ELIMINATE removes nobody);
- :func:`next_withheld_steps`, :func:`withholding_banned`: withheld MPRNG reveals counted in a sliding
  window of ``REVEAL_WINDOW`` steps (``REVEAL_WITHHOLD_LIMIT`` ban the key), so a last revealer cannot
  reset the count by speaking in between (SR 14);
- :func:`reported_silent`, :func:`next_silence_count`, :func:`silence_banned`: a peer is silent in a step
  when a strict majority of the members' reports list it; it is banned after ``SILENCE_LIMIT``
  *consecutive* silent steps (a step it took part in without being reported silent resets the count);
- :func:`close_quorum`: a board phase closes once a strict majority of the step's members that are
  still online asked (askers that went offline no longer count), so a minority cannot force a close;
- :func:`mprng_output` and :func:`validator_assignment`: ``r_t`` from the board's commitments and
  reveals in group order, with the core's rule for a missing or bad reveal (a reveal missing at the
  site's close of ``mprng_reveal`` is silence and ``r_t`` combines the others; a bad one leaves the step
  without ``r_t``: nothing is validated in it), and the validators of step t with their targets (contributors of step t-1)
  drawn from it (:func:`btard_wire.randomness.draw_validators`).

Nothing here reads a database, a clock or a socket; each caller gathers the facts from its own store.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from .randomness import combine_reveals, draw_validators, mprng_commitment

SILENCE_LIMIT = 3  # consecutive steps reported silent by a majority of the group before a ban


def majority(n: int) -> int:
    """The smallest strict majority of ``n`` (``n // 2 + 1``)."""
    return n // 2 + 1


def verdict_majority(signers: Iterable[str], *, members: Collection[str]) -> bool:
    """Whether ``signers`` (the senders of verdicts naming the same guilty peer) are a strict majority
    of the step's ``members``. Non-members are ignored and every signer counts once."""
    group = set(members)
    if not group:
        return False
    return len(set(signers) & group) >= majority(len(group))


def verdict_bans(votes: Iterable[tuple[str, str]], *, members: Collection[str]) -> list[str]:
    """The guilty peers of ``votes`` (``(signer, guilty)`` pairs of one step) that a strict majority of
    ``members`` named, in the order their majority was first reached."""
    signers: dict[str, set[str]] = {}
    out: list[str] = []
    for signer, guilty in votes:
        signers.setdefault(guilty, set()).add(signer)
        if guilty not in out and verdict_majority(signers[guilty], members=members):
            out.append(guilty)
    return out


def elimination_removes(*, eliminator: str, target: str, members: Collection[str],
                        removed: Collection[str], active: Collection[str] | None = None) -> bool:
    """Whether ELIMINATE(``eliminator``, ``target``) removes the pair.

    Only when both are members of the step (and, where ``active`` is given, active peers: a candidate
    on probation is no member), they differ, and neither is already ``removed``: the first ELIMINATE
    naming a peer removes the pair; later ones against a peer already out remove nobody, so every
    removed pair holds a faulty peer and the honest share never drops."""
    pair = {eliminator, target}
    if eliminator == target or not pair <= set(members):
        return False
    if active is not None and not pair <= set(active):
        return False
    return not (pair & set(removed))


def reported_silent(reports: Mapping[str, Iterable[str]], *, members: Collection[str]) -> set[str]:
    """The members that a strict majority of ``members`` listed as silent in their step reports
    (``reports``: reporter -> the peers it reports missing). Reports of non-members do not count."""
    group = set(members)
    counts: dict[str, int] = {}
    for reporter, silent in reports.items():
        if reporter not in group:
            continue
        for p in set(silent):
            counts[p] = counts.get(p, 0) + 1
    need = majority(len(group))
    return {p for p, c in counts.items() if p in group and c >= need}


def next_silence_count(previous: int, *, silent: bool, excused: bool = False) -> int:
    """A member's count of consecutive silent steps after a step it took part in: one more when the
    group reported it silent, back to 0 when it spoke (silence counts decay; SR finding 11); unchanged
    in a step whose silence is excused (:func:`silence_excused`)."""
    if excused and silent:
        return previous
    return previous + 1 if silent else 0


SILENCE_EXCUSE_EVERY = 10  # at most one excused silent step per key in this many steps


def silence_excused(*, step: int, rejoined_step: int | None, last_excused_step: int | None,
                    every: int = SILENCE_EXCUSE_EVERY) -> bool:
    """Whether a member's silence in ``step`` is excused: ``step`` is the step during which its key
    (re)joined the run or the one right after (``rejoined_step``: the step in progress when it
    reconnected), while a restarted worker downloads the state and catches up, and its last excused
    step (``last_excused_step``) is at least ``every`` steps back. A crashed and restarted honest worker
    is silent in the step it died in and, while catching up, in one or two more: without the excuse that
    is ``SILENCE_LIMIT`` in a row and a key ban (the soak's finding). Once per ``every`` steps, so a key
    that drops and rejoins to withhold a reveal (one bit, SR 14) is excused once and then charged."""
    if rejoined_step is None or step - rejoined_step not in (0, 1):
        return False
    return last_excused_step is None or step - last_excused_step >= every


def silence_banned(count: int, *, limit: int = SILENCE_LIMIT) -> bool:
    """Whether ``count`` consecutive silent steps ban the peer."""
    return count >= limit


def close_quorum(*, asked: Collection[str], members: Collection[str], online: Collection[str]) -> bool:
    """Whether the close requests ``asked`` close a board phase: a strict majority of the step's
    ``members`` that are ``online`` asked. Only members that are online count as askers, so a
    minority can neither close a phase early nor shrink the quorum by going offline after asking."""
    present = set(members) & set(online)
    askers = set(asked) & present
    return len(askers) >= majority(max(1, len(present)))


def mprng_output(*, run: str, step: int, members: Iterable[str], commitments: Mapping[str, str],
                 reveals: Mapping[str, str | bytes], revealed: Collection[str] | None = None) -> bytes | None:
    """``r_t`` from the board: ``members`` are the MPRNG members in group order (the peers whose
    ``mprng_commit`` the board holds), ``commitments`` their ``H(x_i)`` (hex), ``reveals`` their ``x_i``
    (hex or bytes).

    ``revealed`` is the sender set of the ``mprng_reveal`` phase as the site closed it at its deadline
    (None: the phase was not closed at a deadline). A member missing from it is *silent*, not at fault
    (a cut link looks the same; issue 13): it is left out and ``r_t`` combines the reveals of the members
    that revealed, in group order, so a withholder cannot stall the step (what it gains is one bit, at
    the price of a silence strike; docs/threat-model.md). Without ``revealed`` every member's reveal is
    needed. ``None`` when a needed reveal is missing, a reveal is malformed or does not match its
    commitment (a provable fault: the step then has no ``r_t``), or nobody revealed."""
    closed = None if revealed is None else set(revealed)
    values: list[bytes] = []
    for p in members:
        if closed is not None and p not in closed:
            continue  # silent at the close: not part of r_t
        commit, reveal = commitments.get(p), reveals.get(p)
        if commit is None or reveal is None:
            return None
        try:
            x = bytes.fromhex(reveal) if isinstance(reveal, str) else bytes(reveal)
            if mprng_commitment(x, run=run, step=step, sender=p) != commit:
                return None
        except ValueError:
            return None
        values.append(x)
    if not values:
        return None
    return combine_reveals(values)


def reveal_silent(*, members: Iterable[str], revealed: Collection[str]) -> list[str]:
    """The MPRNG members (in order) missing from the closed ``mprng_reveal`` sender set ``revealed``:
    counted silent for the step (:func:`next_silence_count`), never banned for it directly."""
    closed = set(revealed)
    return [p for p in members if p not in closed]


REVEAL_WINDOW = 50  # steps over which withheld MPRNG reveals are counted (SR 14)
REVEAL_WITHHOLD_LIMIT = 5  # withheld reveals within REVEAL_WINDOW steps that ban the key


def next_withheld_steps(previous: Iterable[int], *, step: int, withheld: bool, excused: bool = False,
                        window: int = REVEAL_WINDOW) -> list[int]:
    """A member's steps with a withheld MPRNG reveal in the sliding window ending at ``step``, after that
    step: the earlier ones still inside ``(step - window, step]``, plus ``step`` when its reveal was
    missing at the close of ``mprng_reveal`` (:func:`reveal_silent` over the members that committed) and
    that silence is not excused (:func:`silence_excused`: a restarted worker's catch-up).

    The consecutive silence count (:func:`next_silence_count`) resets at every step a peer spoke in, so a
    last revealer that withholds only when the draw with its value would check it (one bit, SR 14), and
    speaks in between, was never banned for silence in practice (about 580 steps for n = 16, m = 2). This
    window does not reset: ``REVEAL_WITHHOLD_LIMIT`` withheld reveals within ``REVEAL_WINDOW`` steps ban
    the key (:func:`withholding_banned`, a crash-like kind: key only), so a dodger that keeps its key
    withholds in at most ``(limit - 1) / window`` of the steps, whatever it does in between. The list
    holds at most ``limit`` steps (what the site and the in-memory board store per member)."""
    kept = sorted({s for s in previous if step - window < s < step})
    if withheld and not excused:
        kept.append(step)
    return kept


def withholding_banned(withheld_steps: Collection[int], *, limit: int = REVEAL_WITHHOLD_LIMIT) -> bool:
    """Whether a member's withheld reveals in the window (:func:`next_withheld_steps`) ban its key."""
    return len(set(withheld_steps)) >= limit


def checkable_targets(*, contributors: Iterable[str], scalars_senders: Collection[str]) -> list[str]:
    """The contributors of a step that validation may target: those whose signed scalars of that step
    are on the board (a contributor that never published scalars has nothing to check, and its step
    was dropped for it already)."""
    sent = set(scalars_senders)
    return [p for p in contributors if p in sent]


def validator_assignment(*, run: str, step: int, group: Iterable[str], commitments: Mapping[str, str],
                         reveals: Mapping[str, str | bytes], prev_contributors: Collection[str],
                         m: int, revealed: Collection[str] | None = None) -> dict[str, str]:
    """The validators of step ``step`` and their targets (``prev_contributors``: the contributors of
    step ``step - 1`` with scalars on the board, :func:`checkable_targets`), drawn from the step's own ``r_t`` (:func:`mprng_output`); empty when the step
    has no ``r_t``. ``group`` is the step's group in order; its MPRNG members are those with a
    commitment on the board; ``revealed``: the closed reveal phase's senders (:func:`mprng_output`)."""
    order = list(group)
    members = [p for p in order if p in commitments]
    r = mprng_output(run=run, step=step, members=members, commitments=commitments, reveals=reveals,
                     revealed=revealed)
    if r is None:
        return {}
    return draw_validators(r, group=order, targets=prev_contributors, m=m)


# ---------------------------------------------------------------------------------------------------
# what decides a step (security review, findings 1, 6, 7; docs/protocol.md "What decides a step")


def unheld_listed(listed: Iterable[str], *, stored: Collection[str]) -> list[str]:
    """The digests a validation report lists (``listed``: the accusations and ELIMINATEs its sender
    saw) that the board does not hold (``stored``: digests of this step's stored ``accuse`` and
    ``eliminate`` broadcasts). A report naming one is refused: a phantom digest would make every peer
    wait for an accusation that never comes instead of running the step's checks (finding 1)."""
    held = set(stored)
    return [d for d in listed if d not in held]


def unlisted_own(own: Iterable[str], *, listed: Collection[str]) -> list[str]:
    """The sender's own stored ``accuse``/``eliminate`` digests (``own``) its validation report does not
    list. A report must list them: the reports fix the set of accusations and ELIMINATEs that decide
    the step, so an accuser cannot keep its own accusation out of that set (finding 6)."""
    names = set(listed)
    return [d for d in own if d not in names]


def moderation_refused(*, phase: str, sender_reported: bool, validation_closed: bool,
                       sender_posted_scalars: bool = False) -> str | None:
    """Why an ``accuse`` or ``eliminate`` broadcast is refused (None: accepted). Once its sender's own
    validation report is stored, or the validation phase is closed, the set that decides the step is
    fixed: a later accusation or ELIMINATE would reach some peers before they finish and others after
    (finding 6), so it is refused (a fault of the next step is raised in the next step). An ELIMINATE
    after its sender's own ``scalars`` is refused too: scalars need every part and every aggregate, so
    the sender was waiting for no tensor from anyone (finding 9)."""
    if phase not in ("accuse", "eliminate"):
        return None
    if validation_closed:
        return f"{phase} after the step's validation phase closed"
    if sender_reported:
        return f"{phase} after the sender's own validation report"
    if phase == "eliminate" and sender_posted_scalars:
        return "eliminate after the sender's own scalars: it was waiting for no tensor"
    return None


def slot_conflict(*, phase: str, board_phases: Collection[str], stored_digest: str | None,
                  digest: str) -> bool:
    """Whether a broadcast is a second, different signed message in a single-message slot ``(step,
    phase, sender)`` of ``board_phases`` whose first message has ``stored_digest``. Such a pair is
    refused and is itself proof of equivocation: two signatures of one sender on one slot (finding 7).
    The same message again (same digest) is a harmless resend, not a conflict."""
    return phase in board_phases and stored_digest is not None and stored_digest != digest


# --- limits per sender (site security review F3, F6) -----------------------------------------------------
# A sender's share of one step's board: board phases hold one message each; ``accuse``, ``eliminate`` and
# ``verdict`` at most one per other member (one per accused peer) and a few bytes' worth of evidence.
MAX_SENDER_BYTES_PER_STEP = 2 * 1024 * 1024
BOARD_REQUESTS_PER_PHASE = 3  # ``board_request`` answers per peer, step and phase
MAX_BOARD_RESPONSE_BYTES = 4 * 1024 * 1024


def may_post(*, sender: str, members: Collection[str]) -> bool:
    """Whether ``sender`` may post on the board of a step: only its members (a candidate on probation
    only listens; it cannot accuse, eliminate, vote or take part in a phase)."""
    return sender in set(members)


def sender_message_limit(phase: str, *, board_phases: Collection[str], group_size: int) -> int:
    """How many messages of ``phase`` one sender may post in one step."""
    if phase in board_phases:
        return 1
    return max(1, group_size - 1)


def verdict_kind(kinds: Mapping[str, str], *, members: Collection[str]) -> str | None:
    """The fault kind of a ban: ``kinds`` maps each signer of a verdict naming one guilty peer to the kind
    its verdict gives. A ban needs a strict majority of ``members`` on the same ``(guilty, kind)``, so the
    verdict that completes a majority cannot pick the ban's kind or scope (F4). None: no kind has one."""
    group = set(members)
    counts: dict[str, int] = {}
    for signer, kind in kinds.items():
        if signer in group and isinstance(kind, str):
            counts[kind] = counts.get(kind, 0) + 1
    winners = [k for k, c in counts.items() if c >= majority(len(group))]
    return winners[0] if winners else None


# ---------------------------------------------------------------------------------------------------
# ELIMINATE storms (security review, finding 9)

ELIMINATE_LIMIT = 1      # effective ELIMINATEs per account in one epoch; later ones remove nobody
ESCALATE_AFTER = 2       # an account in this many ELIMINATE pairs of one run goes to staff automatically


def elimination_rate_ok(*, effective_in_epoch: int, limit: int = ELIMINATE_LIMIT) -> bool:
    """Whether one more ELIMINATE by an account that already made ``effective_in_epoch`` effective ones
    in the current epoch may remove a pair. ELIMINATE is free (no evidence), so it is rate-limited:
    past the limit it is queued for staff but removes nobody."""
    return effective_in_epoch < limit


def escalated(*, pairs_in_run: int, threshold: int = ESCALATE_AFTER) -> bool:
    """Whether an account that took part in ``pairs_in_run`` ELIMINATE pairs of the run (as eliminator
    or target) is escalated to staff automatically: an honest peer is rarely in many pairs, a storm's
    eliminators always are."""
    return pairs_in_run >= threshold


def unbench(*, pairs: Iterable[tuple[str, str]], needed: int, spent: Collection[str] = ()) -> list[str]:
    """Who comes back when the benched peers are what keeps a run below ``min_peers`` (``needed``: how
    many must return). ``pairs`` are the epoch's effective ``(eliminator, target)`` pairs, oldest first.
    Targets return first and an eliminator never does while it could strike again, so bringing peers
    back cannot be used to strike again; returns at most ``needed`` peers, in pair order.

    ``spent``: eliminators that cannot remove another pair this epoch (their account used its
    ``ELIMINATE_LIMIT``, :func:`elimination_rate_ok`). When the targets are not enough, these come
    back after them, in pair order: otherwise a run whose online peers all eliminated someone (a late
    restarted worker eliminated by the others, eliminating back) stalls for good, since no step runs
    and the epoch never ends (the soak's finding)."""
    pairs = list(pairs)
    out: list[str] = []
    eliminators = {e for e, _ in pairs}
    for _, target in pairs:
        if len(out) >= needed:
            return out
        if target not in out and target not in eliminators:
            out.append(target)
    allowed = set(spent)
    for pair in pairs:
        for peer in pair:
            if len(out) >= needed:
                return out
            if peer in eliminators and peer in allowed and peer not in out:
                out.append(peer)
    return out


# ---------------------------------------------------------------------------------------------------
# liveness (security review, finding 8)

# The phases one step passes in order, each with its own deadline (docs/protocol.md, "Deadlines").
STEP_PHASES = ("gradient", "commit", "mprng_commit", "parts", "agg_result", "mprng_reveal", "aggregates",
               "scalars", "validation", "verdict")


def step_deadline(*, phase_timeout: float, step_timeout: float, phases: int = len(STEP_PHASES)) -> float:
    """The step deadline: at least the sum of the phase deadlines, so a peer that answers every phase
    just before its deadline cannot make every step miss the step deadline (and the whole group be
    charged for it)."""
    return max(float(step_timeout), phases * float(phase_timeout))


def robust_step_seconds(report_seconds: Mapping[str, float], *, members: Collection[str]) -> float | None:
    """How long a step took, for the adaptive deadlines: the median member's report time (seconds since
    the step opened), not the last report's, so a minority that reports just before the deadline
    cannot inflate every later deadline. None without reports from members."""
    times = sorted(t for p, t in report_seconds.items() if p in set(members))
    if not times:
        return None
    return times[(len(times) - 1) // 2]


def late_senders(posted_at: Mapping[str, float], *, expected: Collection[str], opened_at: float,
                 phase_timeout: float) -> list[str]:
    """The peers charged for a phase's lateness: those of ``expected`` whose broadcast reached the board
    after the phase deadline (``opened_at + phase_timeout``), or never. Lateness is the late sender's,
    never the group's."""
    deadline = opened_at + phase_timeout
    return sorted(p for p in expected if posted_at.get(p) is None or posted_at[p] > deadline)


def step_closable(*, members: Collection[str], reported: Collection[str], gone: Collection[str]) -> bool:
    """Whether a step may close before its deadline: every member ``reported`` or is ``gone`` (left the
    step: offline past the grace, rejoined without the step's state, or banned), provided at least one
    member reported. A step whose members all went away waits for its deadline (the site itself may have
    restarted). Reports and departures of non-members do not count."""
    group = set(members)
    done = set(reported) & group
    if group <= done:
        return True
    return bool(done) and group - done <= set(gone)


# ---------------------------------------------------------------------------------------------------
# ban scope (security review, finding 12)

KEY_ONLY_KINDS = frozenset({"withheld_reveal", "silence"})  # crash-like faults: a crash looks the same
# (``withheld_reveal`` is kept for verdicts of older workers: a missing reveal is now silence, not a verdict)
KEY_BANS_BEFORE_ACCOUNT = 2  # the third crash-like key ban of an account bans the account


def ban_scope(*, kind: str, earlier_key_bans: int, has_account: bool = True) -> str:
    """``"key"`` or ``"account"`` for a ban of ``kind``. A provable fault bans the account; a crash-like
    one bans only the worker key while the account holds fewer than ``KEY_BANS_BEFORE_ACCOUNT`` active
    key bans *before this one* (``earlier_key_bans`` must exclude the ban being decided), so the third
    crash-like ban is the first account ban. The caller decides once per ``(step, guilty)``: counting
    again at every later verdict would widen the second key ban (finding 12)."""
    if kind not in KEY_ONLY_KINDS or not has_account:
        return "account"
    return "key" if earlier_key_bans < KEY_BANS_BEFORE_ACCOUNT else "account"


# ---------------------------------------------------------------------------------------------------
# admission (security review, finding 10; issue 12, invariant 9)


def probation_report_refused(*, sender: str, candidate: str,
                             validators: Mapping[str, str | Sequence[str] | None],
                             reported: Collection[str]) -> str | None:
    """Why a ``probation`` report (:class:`btard_wire.payloads.ProbationPayload`) of ``sender`` on
    ``candidate`` is refused (None: accepted). ``validators`` is the step's draw ``{candidate: panel}``
    (what the step's group message named: the list of its validators, or one validator's id);
    ``reported``: the candidates ``sender`` already reported on in this step. Only a validator of the
    candidate's drawn panel may report on it, once per step: a report from any other member would let it
    void a newcomer's step (finding 10), and a second one would let the validator change its word after
    seeing the other validator's (or the step's outcome)."""
    if candidate not in validators:
        return f"{candidate[:8]} is not a candidate checked in this step"
    drawn = validators[candidate]
    panel = [drawn] if isinstance(drawn, str) else list(drawn or ())
    if sender not in panel:
        return f"{sender[:8]} is not a probation validator drawn for {candidate[:8]}"
    if candidate in set(reported):
        return f"{sender[:8]} already reported on {candidate[:8]} in this step"
    return None


def probation_drawable(*, joined_at: float, randomness_opened_at: float | None) -> bool:
    """Whether a candidate whose key joined the run at ``joined_at`` takes part in a step's probation draw
    (:func:`btard_wire.randomness.draw_probation_panels`) from randomness that the MPRNG of a step
    opened at ``randomness_opened_at`` produced.

    A candidate that knew the randomness when it chose its key, or its moment to join, could grind
    either until its panel is two accomplices (a few tries: a keyed shuffle permutes positions, and a
    key's position is its rank among the sorted ids). So only keys that joined before that step opened
    (before any of its MPRNG secrets existed) are drawn; the cost to an honest newcomer is one step of
    waiting. ``None``: the draw uses the run's public chain (step 0, or a step after one without an MPRNG
    output), known to everyone from the run's creation, so no joining time helps; such a step still
    checks every candidate, but its panels decide nothing (a grinder could choose its own or steer an
    honest newcomer's: :func:`btard_wire.probation.probation_decision`, ``public_chain``;
    docs/threat-model.md)."""
    return randomness_opened_at is None or joined_at < randomness_opened_at
