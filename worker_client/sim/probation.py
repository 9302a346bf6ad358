"""Probation in the simulator: peers that join a running swarm as candidates, as the site and the
worker handle them (docs/protocol.md, "Newcomers"; the rules are btard_wire's).

A candidate joins just before step ``join_step`` opens. At each later step whose randomness (the
previous step's MPRNG output on the board) it could not have known when it joined, or that draws from
the run's public chain (:func:`btard_wire.board.probation_drawable`), the step draws its panel of two
validators among the step's members (:func:`btard_wire.probation.probation_panels`); the candidate
computes the gradient of the step's model state on its public probation seed
(:func:`btard_wire.randomness.probation_seed`) and each validator recomputes it, failing it beyond
``recalc_rtol``. The panel's two reports decide, as on the site
(:func:`btard_wire.probation.probation_decision`): both pass, the step counts; both fail, the step is a
failed one (``failed``: it earns nothing, nobody is banned); anything else (and any step drawn from the run's public chain) neither counts
nor punishes, and the next step draws a new panel; so does a step whose randomness left out a committed
member's withheld reveal (``withheld_reveals``, which ``sim.run`` takes from the in-memory board).
With ``probation_steps`` counted steps the candidate becomes an active member from the next step on
(:func:`btard_wire.probation.ready_to_promote`). Candidates are never aggregated and never post on the
board.

Byzantine candidates run the swarm's attack: a gradient attack active during probation corrupts the
probation gradient (and fails); a patient one (``attack_start`` after its promotion) passes and attacks
as a member. Byzantine validators collude: they fail every honest candidate and pass their own (a lone one in a
panel beside an honest validator makes a disagreement: it delays, it never decides).

What the simulator does not model of the site's admission: the Sybil limits per window and per active
peer, and reputation shortening probation (a new account has none). The networked validator posts its
check as a signed ``probation`` broadcast (``ProbationPayload``) that the site reads with the same rule;
the simulator applies the rule to the validators' checks without posting them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from btard_wire.probation import CREDIT, REJECT, probation_decision, probation_panels, ready_to_promote
from btard_wire.randomness import genesis_randomness, probation_seed, skipped_randomness

from ..btard import protocol as P
from ..btard.attacks import Byzantine
from ..btard.kernels import gradient_mismatch
from .baseline import baseline_view
from .world import RUN, World


@dataclass
class Candidate:
    peer: str
    byzantine: bool
    joined_at: float
    drawn: int = 0
    credited: int = 0
    voided: int = 0  # drawn steps that did not count (a disagreement or a missing report: re-drawn)
    promoted_at: int | None = None
    failed: int = 0  # drawn steps both validators of the panel failed (no credit, no ban)
    member_steps: int = 0  # steps it took part in as a member after its promotion

    def as_dict(self) -> dict:
        return {"byzantine": self.byzantine, "drawn": self.drawn, "credited": self.credited,
                "voided": self.voided, "promoted_at": self.promoted_at, "failed": self.failed,
                "member_steps": self.member_steps}


class Probation:
    """The run's candidates; :meth:`step` after each step of the group, :meth:`summary` at the end."""

    def __init__(self, world: World, *, join_step: int, required: int):
        self.world = world
        self.join_step = join_step
        self.required = required
        # the key joined during step join_step - 1, before step join_step opened
        self.candidates = {c: Candidate(c, c in world.byz_ids, joined_at=join_step - 0.5) for c in world.joiners}

    def waiting(self, step: int) -> list[Candidate]:
        if step < self.join_step:
            return []
        return [c for c in self.candidates.values() if c.promoted_at is None]

    def count_members(self, group: list[str]) -> None:
        for p in group:
            if p in self.candidates:
                self.candidates[p].member_steps += 1

    def step(self, step: int, *, group: list[str], randomness: bytes | None, model_ref: int,
             banned: Collection[str] = (), withheld_reveals: bool = False) -> list[str]:
        """Run step ``step``'s probation checks on the model state ``model_ref`` the step started from;
        ``group``: the step's members as it opened (the site draws then), ``randomness``: the previous
        step's MPRNG output on the board (None: it had none, and the run's public chain is used), ``banned``: peers banned by the step's end
        (a banned validator can no longer post its check), ``withheld_reveals``: that output left out a
        committed member's withheld reveal (``btard_wire.probation.reveals_withheld``; the step then decides
        nothing, as on the site). Returns the candidates promoted at the step's
        close (members from the next step on)."""
        waiting = self.waiting(step)
        if not waiting:
            return []
        opened = float(step - 1)
        if randomness is None:  # the site draws from the run's public chain then, checking every candidate
            randomness, opened = skipped_randomness(genesis_randomness(RUN, self.world.seed), RUN, step), None
        panels = probation_panels(randomness, members=group, joined_at={c.peer: c.joined_at for c in waiting},
                                  randomness_opened_at=opened)
        world, models = self.world, self.world.models
        batch = models.batch_size
        view = baseline_view(step, group, world.numel, P.part_bounds(world.numel, max(1, len(group))))
        reports: list[tuple[str, str, bool]] = []  # (validator, candidate, ok), as the site stores them
        promoted: list[str] = []
        for cand in waiting:
            panel = panels.get(cand.peer)
            if not panel:
                continue
            cand.drawn += 1
            seed = probation_seed(run=RUN, seed=world.seed, step=step, peer=cand.peer)
            claimed = models.gradient(model_ref, seed, False, batch, cand.peer)
            peer = world.peers[cand.peer]
            if isinstance(peer, Byzantine):
                claimed = peer.hook_corrupt_gradient(claimed.clone(), view)
            mine = models.gradient(model_ref, seed, False, batch, cand.peer)
            honest_ok = gradient_mismatch(mine, claimed, world.params.recalc_rtol) is None
            for validator in panel:
                if validator in banned:  # a banned validator can no longer post its check
                    continue
                # colluding validator: keeps honest newcomers out, lets its own in
                reports.append((validator, cand.peer, cand.byzantine if validator in world.byz_ids else honest_ok))
        for cand in waiting:
            panel = panels.get(cand.peer)
            if not panel:
                continue
            decision = probation_decision(candidate=cand.peer, panel=panel, reported=True, reports=reports,
                                          public_chain=opened is None,
                                          withheld_reveals=withheld_reveals and opened is not None)
            if decision == CREDIT:
                cand.credited += 1
            elif decision == REJECT:
                cand.failed += 1
            else:
                cand.voided += 1
            if ready_to_promote(done=cand.credited, required=self.required):
                cand.promoted_at = step + 1
                promoted.append(cand.peer)
        return promoted

    def summary(self) -> dict:
        promoted = [c for c in self.candidates.values() if c.promoted_at is not None]
        return {"join_step": self.join_step, "required": self.required,
                "candidates": {c.peer: c.as_dict() for c in self.candidates.values()},
                "honest_promoted": sum(not c.byzantine for c in promoted),
                "byzantine_promoted": sum(c.byzantine for c in promoted),
                "honest_failed_steps": sum(c.failed for c in self.candidates.values() if not c.byzantine),
                "byzantine_failed_steps": sum(c.failed for c in self.candidates.values() if c.byzantine),
                "still_candidates": sum(c.promoted_at is None for c in self.candidates.values())}
