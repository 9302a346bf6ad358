"""Byzantine behaviours, each a :class:`~.protocol.BtardPeer` subclass that overrides ONE hook.

Registry :data:`ATTACKS` maps a name to its class (like hivemind's ``FaultyAllReduceRunner`` and its
``Fault`` enum). Every behaviour takes ``attack_start`` and ``attack_every``: it misbehaves at step t iff
``t >= attack_start`` and ``(t - attack_start) % attack_every == 0``, and is honest otherwise.

Gradient attacks commit honestly to the bad gradient, pass every aggregation-time check and are
caught only by validation by recalculation (paper Sec. 3.3): that is the paper's point. Attackers
collude through a shared :class:`Collusion` that knows the step's honest gradients (every batch seed
is public, so a real attacker can recompute them; the simulator hands them over to save the work).

Protocol attacks break one aggregation-time rule each and are caught by the check named in their
docstring.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from btard_wire import payloads as M
from btard_wire.envelope import Envelope
from btard_wire.registry import Registry

from .actions import ComputeGradient, SendTensor
from .aggregators import clip_weights
from .kernels import distances_to
from .mprng import projection, select_validators
from .peer import step_validator_count
from .protocol import BtardPeer
from .state import StepView
from .tau import part_tau
from .tensors import tensor_to_bytes


@dataclass
class Collusion:
    """Knowledge the attackers share: their ids, a common seed and the honest gradients of the step.

    ``honest`` maps contributor -> honest gradient for the current ``step`` (filled by the driver before
    any attacker computes its message). ``segments`` are the parameter tensors' slices of the flat
    vector (``random_direction`` works per parameter tensor when known, else per part). In one process
    (the simulator) the colluders share one object; across processes (networked workers) the driver
    passes each a ``worker_client.collusion.SharedCollusion`` (the core does no I/O)."""

    members: set[str] = field(default_factory=set)
    seed: int = 0
    step: int = -1
    honest: dict[str, torch.Tensor] = field(default_factory=dict)
    segments: list[slice] | None = None

    def join(self, peer_id: str) -> None:
        """``peer_id`` is one of the colluders."""
        self.members.add(peer_id)

    def honest_stack(self) -> torch.Tensor | None:
        """The honest peers' gradients of the step (attackers' own honest ones when no peer is honest)."""
        members = self.members
        rows = [g for p, g in self.honest.items() if p not in members] or list(self.honest.values())
        return torch.stack(rows) if rows else None


class Byzantine(BtardPeer):
    """Base of every behaviour: schedule and shared knowledge."""

    name = "byzantine"
    byzantine = True
    kind = "protocol"
    rational = False          # a behaviour of the rational threat model (docs/threat-model.md)
    outcome = "banned"        # what the defence achieves: "banned", or "bounded" (gain under ``bound``)
    bound = 0.0               # "bounded": the largest applied update over the clean run's typical one

    def __init__(self, *args, collusion: Collusion | None = None, attack_start: int = 0,
                 attack_every: int = 1, **params: Any):
        super().__init__(*args)
        self.collusion = collusion or Collusion()
        self.collusion.join(self.peer_id)
        self.attack_start = int(attack_start)
        self.attack_every = max(1, int(attack_every))
        for key, value in params.items():
            if not hasattr(type(self), key):
                raise ValueError(f"attack {self.name!r} has no parameter {key!r}")
            setattr(self, key, type(getattr(type(self), key))(value))

    def active(self, step: int) -> bool:
        return step >= self.attack_start and (step - self.attack_start) % self.attack_every == 0

    def _honest_victim(self, s: StepView) -> str | None:
        return next((p for p in s.ctx.group if p not in self.collusion.members), None)


# ------------------------------------------------------------------------------------------------
# gradient attacks (caught by validation by recalculation)


class GradientAttack(Byzantine):
    kind = "gradient"

    def hook_corrupt_gradient(self, gradient: torch.Tensor, s: StepView) -> torch.Tensor:
        self.remember(gradient, s.ctx.step)
        if not self.active(s.ctx.step):
            return gradient
        bad = self.attack(gradient, s)
        # huge but finite: float32 overflow would turn an attack into NaN, which is a different fault
        return torch.nan_to_num(bad, nan=0.0, posinf=1e30, neginf=-1e30).clamp_(-1e30, 1e30)

    def remember(self, gradient: torch.Tensor, step: int) -> None:
        pass

    def attack(self, g: torch.Tensor, s: StepView) -> torch.Tensor:
        raise NotImplementedError


class SignFlip(GradientAttack):
    """Send ``-scale * g`` (scale 1000)."""

    name = "sign_flip"
    scale = 1000.0

    def attack(self, g, s):
        return g * (-self.scale)


class RandomDirection(GradientAttack):
    """All attackers send the same random direction (shared seed), scaled per parameter tensor (per part
    when the layout is unknown) to ``scale`` times the honest norm of that slice."""

    name = "random_direction"
    scale = 1000.0

    def attack(self, g, s):
        gen = torch.Generator().manual_seed((self.collusion.seed * 1_000_003 + s.ctx.step) & ((1 << 62) - 1))
        direction = torch.randn(g.numel(), generator=gen)
        honest = self.collusion.honest_stack()
        ref = honest.mean(dim=0) if honest is not None else g
        segments = self.collusion.segments or [slice(a, b) for a, b in s.bounds]
        out = torch.empty_like(g)
        for sl in segments:
            d = direction[sl]
            out[sl] = d * (self.scale * float(ref[sl].norm()) / (float(d.norm()) + 1e-12))
        return out


class LabelFlip(Byzantine):
    """Compute an honest gradient on flipped labels ``y -> C - 1 - y`` (overrides the request)."""

    name = "label_flip"
    kind = "gradient"

    def hook_gradient_request(self, request: ComputeGradient) -> ComputeGradient:
        if self.active(request.step):
            return ComputeGradient(**{**request.__dict__, "flip_labels": True})
        return request


class Delayed(GradientAttack):
    """Resend the gradient computed ``delay`` steps earlier (1000). The history is bounded: one gradient
    is kept every ``ceil(delay / max_stored)`` steps; when the run is younger than ``delay`` the oldest
    kept gradient is sent."""

    name = "delayed"
    delay = 1000
    max_stored = 32

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.history: deque[tuple[int, torch.Tensor]] = deque(maxlen=self.max_stored + 1)

    def remember(self, gradient, step):
        stride = max(1, math.ceil(self.delay / self.max_stored))
        if not self.history or step - self.history[-1][0] >= stride:
            self.history.append((step, gradient.clone()))

    def attack(self, g, s):
        old = [x for t, x in self.history if t <= s.ctx.step - self.delay]
        if old:
            return old[-1].clone()
        return self.history[0][1].clone() if self.history else g


class IPM(GradientAttack):
    """Inner product manipulation (Xie et al. 2020): ``-eps * mean(honest gradients)``."""

    name = "ipm"
    eps = 0.1

    def attack(self, g, s):
        honest = self.collusion.honest_stack()
        mean = honest.mean(dim=0) if honest is not None else g
        return mean * (-self.eps)


class ALIE(GradientAttack):
    """A little is enough (Baruch et al. 2019): ``mean - z_max * std`` per coordinate over the honest
    gradients, with ``z_max = Phi^{-1}((n - s) / n)`` and ``s = floor(n/2 + 1) - b`` for n peers of
    which b are Byzantine (n = 16, b = 7 gives s = 2, z_max ~ 1.15). n and b are those of the step's
    group: once some colluders are banned, the rest recompute z for the smaller group they are in (pairing
    the shrunken n with the original b would push z to ~4.75, a different, large-deviation attack)."""

    name = "alie"
    z_max = -1.0  # < 0: derive from n and b as above

    @staticmethod
    def default_z(n: int, b: int) -> float:
        s = math.floor(n / 2 + 1) - b
        q = min(max((n - s) / n, 1e-6), 1 - 1e-6)
        return statistics.NormalDist().inv_cdf(q)

    def attack(self, g, s):
        honest = self.collusion.honest_stack()
        if honest is None or honest.shape[0] < 2:
            return g
        z = self.z_max if self.z_max >= 0 else self.z_for_group(s.ctx.group)
        return honest.mean(dim=0) - z * honest.std(dim=0)

    def z_for_group(self, group) -> float:
        return self.default_z(len(group), sum(1 for p in group if p in self.collusion.members))


class TimedALIE(ALIE):
    """ALIE that strikes only when it believes it is not checked (security review, finding 3): it
    predicts the next step's targets from the randomness it already knows (``r_{t-1}``, as a public or
    early draw would allow) and attacks only when it is not among them. With validators drawn from
    randomness revealed after the scalars (invariant 2) the guess is worthless: it is caught like ALIE."""

    name = "timed_alie"
    rational = True
    outcome = "banned_or_bounded"
    bound = 3.0

    def attack(self, g, s):
        guess = select_validators(s.ctx.r_prev, s.ctx.group, list(s.ctx.group),
                                  max(1, step_validator_count(self.params, s.ctx)))
        if self.peer_id in guess.values():
            return g  # "I will be checked": behave
        return super().attack(g, s)


class HiddenBias(GradientAttack):
    """A bias kept under every tolerance (security review, finding 15): every colluder adds the same
    fixed direction to its honest gradient, per part scaled to ``c * recalc_rtol * (||g_p|| + ||mean_p||)``
    (the recalculation tolerance along z; ``c`` < 1 hides it). Measured in docs/threat-model.md: the
    largest bias 7 of 16 can hide and its effect over a run."""

    name = "hidden_bias"
    rational = True
    outcome = "banned_or_bounded"
    bound = 1.5
    c = 0.2

    def attack(self, g, s):
        gen = torch.Generator().manual_seed(self.collusion.seed * 1_000_003 + 17)
        direction = torch.randn(g.numel(), generator=gen)
        honest = self.collusion.honest_stack()
        mean = honest.mean(dim=0) if honest is not None else g
        out = g.clone()
        for a, b in s.bounds:
            d = direction[a:b]
            size = self.c * self.params.recalc_rtol * (float(g[a:b].norm()) + float(mean[a:b].norm()))
            out[a:b] += d * (size / (float(d.norm()) + 1e-12))
        return out


# ------------------------------------------------------------------------------------------------
# protocol attacks (caught at aggregation time)


class WrongAggregate(Byzantine):
    """Aggregator publishes a shifted CenteredClip result (and distances consistent with it). Caught by
    the fixed-point check along z (Sec. 3.2): ``bad_aggregate``."""

    name = "wrong_aggregate"
    shift = 0.5  # times tau

    def hook_aggregate(self, x, s):
        v, dists = super().hook_aggregate(x, s)
        if not self.active(s.ctx.step):
            return v, dists
        gen = torch.Generator().manual_seed(s.ctx.step + 7)
        delta = torch.randn(v.numel(), generator=gen)
        v = v + delta * (self.shift * self.params.tau / float(delta.norm()))
        return v, distances_to(x, v).tolist()


class PhantomDigest(Byzantine):
    """Rational forger (security review, finding 1): publishes any aggregate of its part (``-scale * a_j``,
    with distances consistent with it) and lists an accusation digest that was never broadcast in its
    own report, so that every peer waits for it instead of running the fixed-point check. Defeated by
    invariant 1 (a step is applied only once every check ran and passed): the step is dropped, the
    report is provably false (``bad_broadcast``), and a board that refuses reports naming digests it does
    not hold leaves the forged aggregate to the fixed-point check (``bad_aggregate``)."""

    name = "phantom_digest"
    rational = True
    scale = 1.0

    def hook_aggregate(self, x, s):
        v, dists = super().hook_aggregate(x, s)
        if not self.active(s.ctx.step):
            return v, dists
        v = v * (-self.scale)
        s.list_in_report("ab" * 32)  # listed in the validation report, never broadcast
        return v, distances_to(x, v).tolist()


class ForgedAggregate(Byzantine):
    """Aggregator that publishes a forged aggregate ``a_j' = a_j + delta`` with honest distances to it.
    ``delta`` is a fixed direction (shared seed), sized to ``reach`` times the aggregate bound of the
    step as every peer computes it (invariant 3, ``checks.Checks.aggregate_bound``: the majority-th
    smallest distance may not exceed ``aggregate_bound`` times this step's median part spread, weighted
    by the part's spread in the previous step, ``aggregate_bound_spread`` without one); a rational forger
    stays just under it, estimating the median part from its own part's honest spread. Without a bound
    (``aggregate_bound = 0``) any aggregate will do. On its own the fixed-point check catches it
    (``bad_aggregate``); with an absorber (below) it does not."""

    name = "forged_aggregate"
    rational = True
    reach = 0.8
    unbounded = 100.0

    def hook_aggregate(self, x, s):
        v, dists = super().hook_aggregate(x, s)
        if not self.active(s.ctx.step):
            return v, dists
        gen = torch.Generator().manual_seed(self.collusion.seed * 7 + 1)
        direction = torch.randn(v.numel(), generator=gen)
        direction /= float(direction.norm())
        c = self.params.aggregate_bound
        honest = sorted(dists)[len(dists) // 2] if dists else 0.0  # the majority-th smallest distance
        if c > 0 and honest > 0:
            lo, hi = s.bounds[s.index]
            weight = self.params.aggregate_bound_spread  # the run's first step, or a first step after a gap
            prev = s.ctx.prev
            if prev is not None and prev.step == s.ctx.step - 1 and prev.scales:
                spreads = sorted(r for _, _, r in prev.scales)
                g_prev = spreads[len(spreads) // 2]
                own = max((r for a, b, r in prev.scales if a < hi and lo < b), default=0.0)
                if g_prev > 0 and own > 0:
                    weight = min(max(own / g_prev, 1.0), weight)
            radius = c * weight * honest  # the bound on the majority-th distance, in distance units
            size = math.sqrt(max(0.0, (self.reach * radius) ** 2 - honest ** 2))
            forged = v + direction * size
        else:  # nothing bounds it: any aggregate will do
            forged = v + direction * (self.unbounded * max(self.params.tau, float(v.norm())))
        forged = forged.to(torch.float32)
        return forged, distances_to(x, forged).tolist()


class Absorber(ForgedAggregate):
    """Forged aggregate plus a scalar "absorber" (security review, finding 2): the forging aggregator
    posts its own ``s_jj = -(sum_{k != j} w_kj s_kj) / w_jj``, computed from the parts it holds, so the
    fixed-point check along z passes exactly (nobody but aggregator j checks ``s_kj`` of part j at
    aggregation time). Composes :class:`ForgedAggregate` (its hook) with one hook of its own. Bounded
    by invariant 3 (the forged step moves at most the aggregate bound) and caught by recalculation
    when its scalars are validated (validators drawn after the scalars are on the board)."""

    name = "absorber"
    outcome = "banned_or_bounded"
    bound = 25.0  # aggregate_bound x aggregate_bound_spread x the honest spread, over the honest update

    def hook_scalars(self, values, s):
        if not self.active(s.ctx.step) or s.r is None or s.my_aggregate is None:
            return values
        j = s.index
        a0, a1 = s.bounds[j]
        zj = projection(s.r, s.ctx.numel)[a0:a1]
        res = s.payload("agg_result", self.peer_id)
        a = s.my_aggregate.to(torch.float64)
        tau = part_tau(self.params, res.distances.values())  # what every checker uses for this part
        total = 0.0
        for k in s.contributors:
            if k == self.peer_id or k not in s.received or k not in res.distances:
                continue
            d = torch.tensor([res.distances[k]], dtype=torch.float64)
            total += float(clip_weights(d, tau)[0]) * float(torch.dot(zj, s.received[k].to(torch.float64) - a))
        d_self = torch.tensor([res.distances.get(self.peer_id, 0.0)], dtype=torch.float64)
        values = list(values)
        values[j] = -total / float(clip_weights(d_self, tau)[0])
        return values


class Equivocate(Byzantine):
    """Aggregator sends a different (signed) aggregate to every other peer of the group. Caught by the
    receivers' check of ``a_j`` against the broadcast ``H(a_j)``: ``aggregate_mismatch``."""

    name = "equivocate"

    def hook_outgoing_aggregate(self, to, part, data, s):
        if not self.active(s.ctx.step) or s.ctx.group.index(to) % 2 == 0:
            return super().hook_outgoing_aggregate(to, part, data, s)
        a = torch.frombuffer(bytearray(data), dtype=torch.float32) + 0.01
        fake = tensor_to_bytes(a)
        header = M.sign_tensor_header(self.identity, run=s.ctx.run, step=s.ctx.step, kind="aggregate",
                                      part=part, data=fake)
        return SendTensor(kind="aggregate", to=to, part=part, data=fake, header=header)


class UnsignedEquivocate(Byzantine):
    """Rational equivocator (security review, "smaller issues"): sends half the group a different
    aggregate *without* a signed header, so nothing proves the deviation. The receivers treat it as not
    received and ELIMINATE the aggregator at the deadline: the step is dropped on every peer (the
    ELIMINATE is listed in the reports) and the pair leaves the group (every removed pair holds it)."""

    name = "unsigned_equivocate"
    rational = True

    def hook_outgoing_aggregate(self, to, part, data, s):
        if not self.active(s.ctx.step) or s.ctx.group.index(to) % 2 == 0:
            return super().hook_outgoing_aggregate(to, part, data, s)
        a = torch.frombuffer(bytearray(data), dtype=torch.float32) + 0.01
        return SendTensor(kind="aggregate", to=to, part=part, data=tensor_to_bytes(a))


class BadCommitment(Byzantine):
    """Contributor sends an honest peer a (signed) part that differs from its commitment. Caught by the
    aggregator's hash check: ``part_mismatch``."""

    name = "bad_commitment"

    def hook_outgoing_part(self, to, part, data, s):
        if not self.active(s.ctx.step) or to != self._honest_victim(s):
            return super().hook_outgoing_part(to, part, data, s)
        t = torch.frombuffer(bytearray(data), dtype=torch.float32) * -3.0
        fake = tensor_to_bytes(t)
        header = M.sign_tensor_header(self.identity, run=s.ctx.run, step=s.ctx.step, kind="part",
                                      part=part, data=fake)
        return SendTensor(kind="part", to=to, part=part, data=fake, header=header)


class DuplicateSlot(Byzantine):
    """Rational framer (security review, finding 7): posts two differently signed ``scalars`` messages,
    one honest and one lying about ``s_Bj`` for an honest aggregator X's part, in an order that varies
    by step, hoping that peers holding different copies convict X (``false_accusation`` or
    ``bad_aggregate``) or fork. Defeated by the board refusing the second message of a single-message
    slot as proof of equivocation (ban), and by judges resolving evidence by the digests it names."""

    name = "duplicate_slot"
    rational = True

    def hook_outgoing_broadcast(self, envelope, s):
        victim = self._honest_victim(s)
        if envelope.phase != "scalars" or not self.active(s.ctx.step) or victim is None:
            return [envelope]
        j = s.ctx.group.index(victim)
        values = list(envelope.payload["values"])
        values[j] = values[j] + 1.0 + abs(values[j])
        other, _ = self._sign("scalars", M.ScalarsPayload(values=values))
        return [envelope, other] if (s.ctx.step + self.collusion.seed) % 2 else [other, envelope]


class LieScalars(Byzantine):
    """Contributor broadcasts wrong ``s_ij``. Caught by the aggregators' recomputation: ``wrong_scalar``."""

    name = "lie_scalars"

    def hook_scalars(self, values, s):
        if not self.active(s.ctx.step):
            return values
        return [v + 1.0 + abs(v) if j != s.index else v for j, v in enumerate(values)]


class FalseAccuse(Byzantine):
    """Accuses an honest peer with evidence that does not hold. Every verifier finds the accused
    innocent, so the accuser is banned (``false_accusation``)."""

    name = "false_accuse"

    def hook_extra_accusations(self, s):
        if not self.active(s.ctx.step):
            return []
        victim = self._honest_victim(s)
        if victim is None:
            return []
        if s.role == "contributor" and s.gradient is not None:
            j = s.ctx.group.index(victim)
            data = s.my_part_bytes[j]  # inline when it fits, else judges fetch it by its committed hash
            evidence = [s.board[key][2] for key in (("commit", self.peer_id), ("agg_result", victim)) if key in s.board]
            return [M.AccusePayload(accused=victim, kind=M.FaultKind.wrong_distance, part=j, evidence=evidence,
                                    data=M.encode_inline_tensor(data) if len(data) <= 4 * M.MAX_INLINE_FLOATS
                                    else None, reason="fabricated: distance is wrong")]
        return [M.AccusePayload(accused=victim, kind=M.FaultKind.part_mismatch, reason="fabricated")]


class LateAccusation(Byzantine):
    """Rational forker (security review, finding 6): posts a fabricated accusation against an honest
    peer right after its own validation report, so that it reaches some honest peers before they finish
    and others after. Defeated by the reports fixing what decides the step: the board refuses an
    accusation after its sender's report, and no report lists it, so no peer counts it."""

    name = "late_accusation"
    rational = True
    outcome = "bounded"
    bound = 1.5  # no gain: updates as in the clean run
    before_report = False  # True: post it just before the report and leave it out of the report

    def hook_outgoing_broadcast(self, envelope, s):
        victim = self._honest_victim(s)
        if envelope.phase != "validation" or not self.active(s.ctx.step) or victim is None:
            return [envelope]
        late, _ = self._sign(self.late_phase, self.late_payload(victim, s))
        return [late, envelope] if self.before_report else [envelope, late]

    late_phase = "accuse"

    def late_payload(self, victim, s):
        return M.AccusePayload(accused=victim, kind=M.FaultKind.part_mismatch, reason="fabricated, late")


class LateEliminate(LateAccusation):
    """Same timing with an ELIMINATE of an honest peer (free: no evidence to fail). Refused after the
    sender's report; counted by nobody when no report lists it."""

    name = "late_eliminate"
    late_phase = "eliminate"

    def late_payload(self, victim, s):
        return M.EliminatePayload(target=victim, reason="fabricated, late")


class UnlistedAccusation(LateAccusation):
    """Posts a fabricated accusation just before its report and leaves it out of the report, so that only
    the honest peers that see it before their own report count it. The board refuses a report that
    omits its sender's own accusation; the peers that saw the accusation list it, so every peer counts
    it (and convicts the accuser) or none does."""

    name = "unlisted_accusation"
    outcome = "banned_or_bounded"
    before_report = True


class EliminateStorm(Byzantine):
    """ELIMINATE storm (security review, finding 9): instead of its aggregation result, posts an
    ELIMINATE of an honest peer ("part never arrived"), free of evidence, and lists it in its report like
    an honest eliminator. Bounded: the pair leaves the group (every removed pair holds the attacker, so
    the honest share never drops), an account's ELIMINATEs are rate-limited and escalated on the site
    (``btard_wire.board.elimination_rate_ok`` / ``escalated`` / ``unbench``), and one sent after the
    sender's own scalars is refused (it was waiting for no tensor)."""

    name = "eliminate_storm"
    rational = True
    outcome = "banned"  # removed: eliminated with its victim

    def hook_outgoing_broadcast(self, envelope, s):
        # each colluder strikes a different honest peer (one ELIMINATE per target removes a pair)
        honest = [p for p in s.ctx.group if p not in self.collusion.members]
        mine = sorted(p for p in s.ctx.group if p in self.collusion.members)
        victim = honest[mine.index(self.peer_id) % len(honest)] if honest else None
        if envelope.phase != "agg_result" or not self.active(s.ctx.step) or victim is None:
            return [envelope]
        elim, digest = self._sign("eliminate", M.EliminatePayload(target=victim, reason="part never arrived"))
        s.list_in_report(digest)
        return [elim]


class CandidateEliminate(EliminateStorm):
    """An ELIMINATE from a peer that is not a member of the step (a candidate on probation, a banned or
    benched key): every peer ignores a broadcast from outside the group, and the board refuses it."""

    name = "candidate_eliminate"
    outcome = "bounded"
    bound = 1.5

    def hook_outgoing_broadcast(self, envelope, s):
        victim = self._honest_victim(s)
        if envelope.phase != "agg_result" or not self.active(s.ctx.step) or victim is None:
            return [envelope]
        elim, _ = self._sign("eliminate", M.EliminatePayload(target=victim, reason="part never arrived"))
        # posted as if by a stranger to the step: the same signed ELIMINATE under a key outside the group
        return [envelope, elim.model_copy(update={"sender": "f" * 40})]


class JustInTime(Byzantine):
    """Just-in-time staller (security review, finding 8): holds each of its board broadcasts until the
    phase's deadline, so that every step lasts every deadline, and when the board closes a phase at the
    deadline hopes the whole group is charged. Lateness is charged to the late sender: the board closes
    the phase with the senders it holds, the staller's late message is refused and it alone is reported
    silent (then banned after repeated silence); the honest peers' steps go on or drop alike."""

    name = "just_in_time"
    rational = True
    outcome = "banned_or_bounded"  # banned after SILENCE_LIMIT consecutive silent steps
    bound = 1.5
    phases = ("agg_result", "scalars", "validation")

    def hook_hold_broadcast(self, envelope, s):
        return self.active(s.ctx.step) and envelope.phase in self.phases


class WithholdPart(Byzantine):
    """Never sends its part to one honest aggregator. Unprovable on a private channel: the aggregator
    ELIMINATEs the pair at the parts deadline."""

    name = "withhold_part"

    def hook_outgoing_part(self, to, part, data, s):
        if self.active(s.ctx.step) and to == self._honest_victim(s):
            return None
        return super().hook_outgoing_part(to, part, data, s)


class WithholdReveal(Byzantine):
    """Commits to an MPRNG secret and never reveals it. Publicly visible: silent in every step (r_t is
    combined without it), banned for silence at ``SILENCE_LIMIT`` consecutive steps (issue 13)."""

    name = "withhold_reveal"

    def hook_reveal(self, secret, s):
        return None if self.active(s.ctx.step) else secret


class Replay(Byzantine):
    """Replays its own signed messages of an earlier step instead of sending fresh ones. Every replay is
    rejected (wrong step / seen nonce) and changes nothing; the peer's broadcasts are then missing, so
    it is removed from each step as silent and banned for repeated silence by the site."""

    name = "replay"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.old: dict[str, Envelope] = {}

    def hook_outgoing_broadcast(self, envelope, s):
        old = self.old.get(envelope.phase)
        if old is None or old.step == envelope.step:
            self.old[envelope.phase] = envelope
        if self.active(s.ctx.step) and old is not None and old.step < envelope.step:
            return [old]
        return [envelope]


ATTACKS: Registry[type[Byzantine]] = Registry("attack", {cls.name: cls for cls in (
    SignFlip, RandomDirection, LabelFlip, Delayed, IPM, ALIE, TimedALIE, HiddenBias,
    WrongAggregate, PhantomDigest, ForgedAggregate, Absorber, Equivocate, UnsignedEquivocate, BadCommitment, DuplicateSlot, LieScalars, FalseAccuse, LateAccusation, LateEliminate, UnlistedAccusation, EliminateStorm, CandidateEliminate, JustInTime, WithholdPart, WithholdReveal, Replay,
)})
# behaviours of a rational attacker (security review 2026-12): each declares whether it ends banned
# (``outcome = "banned"``) or with its gain bounded (``outcome = "bounded"`` and its ``bound``)
RATIONAL_ATTACKS = [name for name, cls in ATTACKS.items() if cls.rational]
# the paper's gradient attacks (the rational timed variant is in RATIONAL_ATTACKS only)
GRADIENT_ATTACKS = [name for name, cls in ATTACKS.items() if cls.kind == "gradient" and not cls.rational]
PROTOCOL_ATTACKS = [name for name, cls in ATTACKS.items() if cls.kind == "protocol"]


def make_peer(attack: str | None, identity, params=None, *, entropy=None, verifier=None, nonce=None, memo=None,
              collusion: Collusion | None = None, **attack_params) -> BtardPeer:
    """An honest peer (``attack`` None/"none") or the behaviour registered as ``attack``. ``entropy``,
    ``verifier``, ``nonce`` and ``memo`` are :class:`BtardPeer`'s (the simulator's shared ones)."""
    kw = {}
    for key, value in (("entropy", entropy), ("verifier", verifier), ("nonce", nonce), ("memo", memo)):
        if value is not None:
            kw[key] = value
    if attack in (None, "", "none", "honest"):
        return BtardPeer(identity, params, **kw)
    cls = ATTACKS[attack]  # UnknownName (a ValueError and a KeyError) names the known ones
    peer = cls(identity, params, collusion=collusion, **attack_params)
    for k, v in kw.items():
        setattr(peer, k, v)
    return peer


from . import adaptive_attacks  # noqa: F401  (registers optimal_alie, optimal_ipm, mimic, free riders)


class RevealDodger(Byzantine):
    """The last revealer of the MPRNG (security review, finding 14): it waits until every other member's
    reveal is in, computes ``r_t`` with and without its own value and withholds exactly when the draw
    with its value would make a validator check it or an accomplice (``collusion.members``). A missing
    reveal is silence (issue 13), so r_t is then combined without it: the gain is one bit per step, the
    price a silence strike (docs/threat-model.md). ``dodged`` / ``escaped`` count the withheld steps and
    those where the draw without its value checks no member of the collusion."""

    name = "reveal_dodger"
    # its gradients are honest; a ban needs SILENCE_LIMIT consecutive withheld reveals (it speaks in the
    # steps between), so what the defence achieves is a bound: checked with probability q**2, not q
    outcome = "bounded"
    bound = 1.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.dodged: list[int] = []
        self.escaped: list[int] = []
        self._deferred: int | None = None

    def _targets_collusion(self, r: bytes, s: StepView) -> bool:
        from btard_wire.board import checkable_targets

        ctx = s.ctx
        if ctx.prev is None or ctx.prev.step != ctx.step - 1:
            return False
        draw = select_validators(r, ctx.group, checkable_targets(
            contributors=ctx.prev.contributors, scalars_senders=ctx.prev.scalars), step_validator_count(self.params, ctx))
        return any(t in self.collusion.members for t in draw.values())

    def _decide(self, s: StepView) -> bytes | None | bool:
        """The value to reveal, None to withhold, False while another member's reveal is still missing."""
        from btard_wire.randomness import combine_reveals

        others = [p for p in s.mprng_members if p != self.peer_id]
        if not all(s.got("mprng_reveal", p) for p in others):
            return False
        values = {p: bytes.fromhex(s.payload("mprng_reveal", p).value) for p in others}
        values[self.peer_id] = s.secret
        with_mine = combine_reveals([values[p] for p in s.mprng_members])
        if not self._targets_collusion(with_mine, s):
            return s.secret
        self.dodged.append(s.ctx.step)
        if not self._targets_collusion(combine_reveals([values[p] for p in others]), s):
            self.escaped.append(s.ctx.step)
        return None

    def hook_reveal(self, secret, s):
        if not self.active(s.ctx.step) or s.ctx.validators is not None:
            return secret
        decision = self._decide(s)
        if decision is False:
            self._deferred = s.ctx.step  # wait for the others' reveals (on_broadcast)
            return None
        return decision

    def on_broadcast(self, envelope: Envelope):
        actions = super().on_broadcast(envelope)
        s = self._s
        if (s is not None and s.result is None and self._deferred == s.ctx.step
                and envelope.phase == "mprng_reveal" and not _reveal_closed(s)):
            decision = self._decide(s)
            if decision is not False:
                self._deferred = None
                if decision is not None:
                    actions = list(actions) + self._broadcast("mprng_reveal", M.MprngRevealPayload(value=decision.hex()))
                    actions += self._advance()
        return actions


def _reveal_closed(s) -> bool:
    """Whether the board already closed the step's reveal phase (a reveal now would be refused)."""
    from .state import Stage

    return Stage.REVEAL_CLOSED in s.stages


ATTACKS.register(RevealDodger)
PROTOCOL_ATTACKS.append(RevealDodger.name)
