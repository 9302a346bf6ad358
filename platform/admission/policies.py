"""Admission policies, a registry by name; a run names its policy in ``Run.admission_policy``.

A policy decides three things for the site: whether a new peer may start probation now (the Sybil
limits), how many probation steps an account must do, and whether a candidate is ready to become active.
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.utils import timezone

from btard_wire.registry import Registry

POLICIES: Registry[AdmissionPolicy] = Registry("admission policy")  # name -> the policy's one instance


def register(cls):
    POLICIES.register(cls.name, cls())
    return cls


def get_policy(name: str) -> AdmissionPolicy:
    """The policy registered as ``name``; :class:`btard_wire.registry.UnknownName` (a KeyError) otherwise."""
    return POLICIES[name]


class AdmissionPolicy:
    name = ""

    def founders_active(self, run, *, active_count: int) -> bool:
        """Peers joining before the first step are the run's founders and start active."""
        return run.current_step == 0 and not run.step_in_progress and active_count < run.peers_per_group

    def may_admit_candidate(self, run, *, active_count: int, candidate_count: int, admitted_in_window: int) -> bool:
        raise NotImplementedError

    def probation_steps(self, run, *, reputation: float) -> int:
        raise NotImplementedError

    def ready_to_promote(self, run, peer) -> bool:
        from btard_wire.probation import ready_to_promote  # the simulator's rule too

        return ready_to_promote(done=peer.probation_done, required=peer.probation_required)

    def window_start(self, run):
        return timezone.now() - timedelta(seconds=run.admission_window_seconds)


@register
class ReputationPolicy(AdmissionPolicy):
    """Default: Sybil limits per window and per active peer; reputation shortens probation.

    Candidates stay strictly below ``max_candidate_fraction`` of the active peers (at least one
    candidate is allowed so a small run can grow). Each ``REPUTATION_PER_STEP`` points of account
    reputation remove one probation step, down to ``MIN_PROBATION``.
    """

    name = "reputation"
    REPUTATION_PER_STEP = 20.0
    MIN_PROBATION = 1

    def may_admit_candidate(self, run, *, active_count, candidate_count, admitted_in_window):
        if admitted_in_window >= run.max_new_per_window:
            return False
        cap = max(1, math.floor(run.max_candidate_fraction * active_count))
        return candidate_count < cap

    def probation_steps(self, run, *, reputation):
        shortened = int(max(0.0, reputation) // self.REPUTATION_PER_STEP)
        return max(self.MIN_PROBATION, run.probation_steps - shortened)


@register
class OpenPolicy(AdmissionPolicy):
    """Trusted runs (demos, private clusters): everyone is active at once, no probation."""

    name = "open"

    def founders_active(self, run, *, active_count):
        return True

    def may_admit_candidate(self, run, *, active_count, candidate_count, admitted_in_window):
        return True

    def probation_steps(self, run, *, reputation):
        return 0
