"""Adaptive gradient attacks, registered in :data:`.attacks.ATTACKS` next to the fixed ones.

* ``optimal_alie`` / ``optimal_ipm``: ALIE's ``z`` and IPM's ``eps`` are searched every attacked step
  against the aggregation rule actually in use, to maximise ``||agg(honest + b copies) -
  mean(honest)||`` (Allouah et al., 2023, as ByzFL's ``Optimal_ALittleIsEnough``: an expansion phase
  that doubles the step while the damage grows, then a contraction phase, ``evals`` evaluations in
  all; the published fixed value is always one of the candidates). The rule is the one the driver
  put in ``collusion.aggregate`` (``btard-sim`` does so for its trusted-server baselines); without one
  it is BTARD's: CenteredClip per part with the protocol's ``tau``. The colluders search once per
  step and all send the winner.
* ``mimic`` (Karimireddy, He and Jaggi, 2022): every attacker sends the gradient of one honest peer,
  the same one every step, to over-weight its data (matters with non-IID data).
* Free riders that do not compute: ``free_rider_zeros`` (a zero gradient), ``free_rider_stale``
  (their own gradient of ``delay`` steps ago) and ``free_rider_copy`` (another peer's gradient of
  the step).
* ``tolerance_ride``: the largest consistent bias every check lets through, applied every step by
  every colluder: a fixed direction added to each part of its gradient at ``1/sigmas`` of the
  recalculation tolerance (``ride_recalc`` alone), and, where it aggregates, its part's result moved
  along a fixed direction as far as the fixed-point check lets through (again ``1/sigmas`` of it).
  Never caught (with probability ``P(|N| > sigmas)`` per check); its gain is what the tolerances allow.
* ``rop``: relocated orthogonal perturbation (Ozfatura et al., 2023), time-coupled: centred on the
  running average of the previous aggregates, perturbed orthogonally to it.
* ``timed_lowest_chance``: ALIE only on the steps where the chance of being validated, computed from
  everything public at commit time, is lowest.

Under BTARD each of the others is a gradient that differs from the one its batch seed gives, so
validation by recalculation catches it on a step where the attacker is validated. Against a trusted
server they are what a strongest-known attacker sends.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable

import torch

from .aggregators import centered_clip
from .attacks import ALIE, ATTACKS, GradientAttack
from .kernels import clip_w, distances_to
from .peer import step_validator_count
from .tau import centered_clip_part, part_tau

Aggregate = Callable[[torch.Tensor], torch.Tensor]


def _target_rule(peer: GradientAttack, s) -> Aggregate:
    """The aggregation the colluders attack: the driver's ``collusion.aggregate``, else BTARD's."""
    rule = getattr(peer.collusion, "aggregate", None)
    if rule is not None:
        return rule
    params = peer.params
    tau = params.tau
    bounds = list(s.bounds)
    if params.tau_rule != "fixed":  # the protocol's own per-part rule (tau from the part's distances)
        return lambda x: torch.cat([centered_clip_part(x[:, a:b], params)[0].v for a, b in bounds])
    return lambda x: torch.cat([centered_clip(x[:, a:b], tau=tau) for a, b in bounds])


def search_scale(damage: Callable[[float], float], *, start: float = 0.0, delta: float = 1.0, evals: int = 16,
                 ratio: float = 0.8, candidates: tuple[float, ...] = ()) -> float:
    """The scale with the largest ``damage`` found by an expansion then contraction search from
    ``start`` (step ``delta`` doubled while the damage grows, then shrunk by ``ratio``), ``evals``
    evaluations in all, ``candidates`` evaluated first. Ties keep the earlier scale."""
    best_x, best_y = start, damage(start)
    for c in candidates:
        y = damage(c)
        if y > best_y:
            best_x, best_y = c, y
    remaining = evals - 1
    x0 = best_x
    while remaining > 0:  # expansion from the best so far
        y = damage(x0 + delta)
        remaining -= 1
        if y > best_y:
            best_x, best_y, x0 = x0 + delta, y, x0 + delta
            delta *= 2
        else:
            delta *= ratio
            break
    while remaining > 0:  # contraction around the best
        for x in (best_x + delta, best_x - delta):
            if remaining <= 0:
                break
            y = damage(x)
            remaining -= 1
            if y > best_y:
                best_x, best_y = x, y
        delta *= ratio
    return best_x


class _Optimal(GradientAttack):
    """Shared search: ``direction(honest)`` and ``base(honest)`` give the attack ``base + scale * direction``."""

    kind = "gradient"
    evals = 16
    delta = 1.0

    def direction(self, honest: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def published(self, s) -> float:
        raise NotImplementedError

    def attack(self, g, s):
        honest = self.collusion.honest_stack()
        if honest is None or honest.shape[0] < 2:
            return g
        cache = self.collusion.__dict__.setdefault("adaptive_cache", {})
        key = (self.name, s.ctx.step)
        if key not in cache:
            cache.clear()
            cache[key] = self._search(honest, s)
        return cache[key].clone()

    def _search(self, honest: torch.Tensor, s) -> torch.Tensor:
        b = max(1, sum(1 for p in s.ctx.group if p in self.collusion.members))
        rule = _target_rule(self, s)
        mean = honest.mean(dim=0)
        direction = self.direction(honest)
        scale_ref = float(mean.norm()) + 1e-12

        def vector(scale: float) -> torch.Tensor:
            return mean + scale * direction

        def damage(scale: float) -> float:
            v = vector(scale)
            if not bool(torch.isfinite(v).all()):  # a scale past float32's range: not a candidate
                return -1.0
            try:
                out = rule(torch.cat([honest, v.expand(b, -1)]))
            except ValueError:  # the rule refuses such input (overflow inside it)
                return -1.0
            d = float((out - mean).norm())
            return d / scale_ref if math.isfinite(d) else -1.0

        scale = search_scale(damage, delta=self.delta, evals=self.evals, candidates=(self.published(s),))
        self.last_scale = scale
        return vector(scale)


class OptimalALIE(_Optimal):
    """ALIE, ``mean - z * std``, with ``z`` searched against the rule in use (published z first)."""

    name = "optimal_alie"

    def direction(self, honest):
        return -honest.std(dim=0)

    def published(self, s):
        return ALIE.default_z(len(s.ctx.group), sum(1 for p in s.ctx.group if p in self.collusion.members))


class OptimalIPM(_Optimal):
    """IPM, ``-eps * mean``, with ``eps`` searched against the rule in use (published 0.1 first).
    Written as ``mean + scale * (-mean)``, i.e. ``eps = scale - 1``."""

    name = "optimal_ipm"

    def direction(self, honest):
        return -honest.mean(dim=0)

    def published(self, s):
        return 1.1  # eps = 0.1


class Mimic(GradientAttack):
    """Every attacker sends the gradient of the same honest peer (the ``victim``-th in sorted order)."""

    name = "mimic"
    victim = 0

    def attack(self, g, s):
        honest = sorted(p for p in self.collusion.honest if p not in self.collusion.members)
        if not honest:
            return g
        return self.collusion.honest[honest[int(self.victim) % len(honest)]].clone()


class FreeRiderZeros(GradientAttack):
    """Sends a zero gradient instead of computing one."""

    name = "free_rider_zeros"

    def attack(self, g, s):
        return torch.zeros_like(g)


class FreeRiderStale(GradientAttack):
    """Sends its own gradient of ``delay`` steps ago instead of a fresh one (its first steps: the oldest
    kept)."""

    name = "free_rider_stale"
    delay = 1

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.history: deque[tuple[int, torch.Tensor]] = deque(maxlen=max(1, int(self.delay)) + 1)

    def remember(self, gradient, step):
        if not self.history or self.history[-1][0] != step:
            self.history.append((step, gradient.clone()))

    def attack(self, g, s):
        old = [x for t, x in self.history if t <= s.ctx.step - self.delay]
        return (old[-1] if old else self.history[0][1]).clone()


class FreeRiderCopy(GradientAttack):
    """Sends another peer's gradient of the step: the next honest peer after itself in the group."""

    name = "free_rider_copy"

    def attack(self, g, s):
        group = list(s.ctx.group)
        start = group.index(self.peer_id) if self.peer_id in group else 0
        for p in group[start + 1:] + group[:start]:
            if p not in self.collusion.members and p in self.collusion.honest:
                return self.collusion.honest[p].clone()
        return g


# ------------------------------------------------------------------------------------------------
# tolerance riding: the largest consistent bias that every check lets through


def _fixed_direction(seed: int, numel: int, salt: int) -> torch.Tensor:
    """One unit direction per part, the same for every colluder and every step (a consistent bias)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + salt) & ((1 << 62) - 1))
    return torch.randn(numel, generator=gen, dtype=torch.float64)


class RideRecalculation(GradientAttack):
    """Contributor half of tolerance riding: every colluder adds the same fixed direction ``u_p`` to
    each part ``p`` of its honest gradient, sized to ``recalc_rtol * (||g_p|| + ||a_p||) / sigmas``.

    Why that size is the largest a validator lets through: the recalculation check compares the
    signed scalar ``<z_p, g_p + delta_p - a_p>`` with the recomputed ``<z_p, g_p - a_p>`` within
    ``recalc_rtol * (||g_p|| + ||a_p||)``, and ``z ~ N(0, I)`` is drawn after the commitment, so the
    gap ``<z_p, delta_p>`` is a normal variable of standard deviation ``||delta_p||``: a bias of
    ``1/sigmas`` of the tolerance is caught with probability ``P(|N| > sigmas)`` per part (5.7e-7
    at 5). The distance check moves by at most ``||delta_p||``, under its tolerance by construction.
    ``a_p`` is predicted as CenteredClip (the protocol's tau) of the step's gradients, which the
    colluders know. The direction is the same every step (``collusion.seed``), so the bias adds up."""

    name = "ride_recalc"
    sigmas = 5.0

    def attack(self, g, s):
        cache = self.collusion.__dict__.setdefault("ride_cache", {})
        if s.ctx.step not in cache:
            cache.clear()
            cache[s.ctx.step] = self._plan(g, s)
        plan = cache[s.ctx.step]
        if plan is None:
            return g
        rtol = self.params.recalc_rtol / max(self.sigmas, 1e-9)
        out = g.to(torch.float64)
        for (a, b), (a_norm, u) in zip(s.bounds, plan):
            out[a:b] += u * (rtol * (float(g[a:b].norm()) + a_norm))
        return out.to(g.dtype)

    def _plan(self, g, s) -> list[tuple[float, torch.Tensor]] | None:
        """Per part: the predicted ``||a_p||`` and the unit direction ``u_p``."""
        rows = list(self.collusion.honest.values())
        if not rows:
            return None
        predicted = _target_rule(self, s)(torch.stack(rows))
        direction = _fixed_direction(self.collusion.seed, g.numel(), 29)
        return [(float(predicted[a:b].norm()), direction[a:b] / (float(direction[a:b].norm()) + 1e-300))
                for a, b in s.bounds]


class ToleranceRide(RideRecalculation):
    """Tolerance riding (issue 17), applied every step by every colluder: as a contributor, the bias of
    :class:`RideRecalculation`; as the aggregator of part ``j``, its published ``a_j`` moved along a
    fixed direction as far as the CenteredClip fixed-point check lets through.

    That check (every peer, Sec. 3.2) is ``|<z_j, R(a_j)>| <= tol(a_j)`` with ``R(a) = sum_k min(1,
    tau/d_k) (x_k - a)`` over the parts received and ``tol = fixed_point_sigmas * (c eps +
    fixed_point_rtol * sum_k w_k (d_k + ||a||))``; ``a_j`` is fixed before ``z_j`` is drawn, so
    ``<z_j, R>`` is normal with standard deviation ``||R||``. The aggregator searches (bisection) the
    largest shift ``t`` along ``u`` with ``||R(a + t u)|| <= tol(a + t u) / sigmas`` and publishes
    the distances to the shifted value (the contributors' distance checks then pass exactly, and the
    aggregate bound, many times wider, does too). ``shifts`` records ``(step, t / ||a||)``."""

    name = "tolerance_ride"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.shifts: list[tuple[int, float]] = []

    def hook_aggregate(self, x, s):
        v, dists = super().hook_aggregate(x, s)
        if not self.active(s.ctx.step):
            return v, dists
        p = self.params
        lo, hi = s.bounds[s.index]
        u = _fixed_direction(self.collusion.seed, s.ctx.numel, 31)[lo:hi]
        u = u / (float(u.norm()) + 1e-300)
        x64, v64 = x.to(torch.float64), v.to(torch.float64)

        def within(t: float) -> tuple[bool, torch.Tensor]:
            a = (v64 + t * u).to(torch.float32)
            a64 = a.to(torch.float64)
            d = distances_to(x64, a64)
            w = clip_w(d, part_tau(p, d.tolist()))
            residual = (w[:, None] * (x64 - a64)).sum(dim=0)
            tol = p.fixed_point_sigmas * (x.shape[0] * p.cc_eps
                                          + p.fixed_point_rtol * float((w * (d + float(a64.norm()))).sum()))
            return float(residual.norm()) * self.sigmas <= tol, a

        ok, best = within(0.0)
        if not ok:  # the honest result is already at the edge: publish it
            return v, dists
        lo_t, hi_t = 0.0, max(float(v64.norm()), p.tau) * 1e-6
        while within(hi_t)[0] and hi_t < 1e6 * max(float(v64.norm()), p.tau):
            lo_t, hi_t = hi_t, hi_t * 2
        for _ in range(40):
            mid = 0.5 * (lo_t + hi_t)
            if within(mid)[0]:
                lo_t = mid
            else:
                hi_t = mid
        _, best = within(lo_t)
        self.shifts.append((s.ctx.step, lo_t / (float(v64.norm()) + 1e-300)))
        return best, distances_to(x, best).tolist()


# ------------------------------------------------------------------------------------------------
# relocated orthogonal perturbation (time-coupled)


class RelocatedOrthogonal(GradientAttack):
    """Relocated orthogonal perturbation (ROP; Ozfatura et al., "Byzantines can also learn from
    history: fall of centered clipping in federated learning", 2023), time-coupled: it builds on the
    previous aggregates. Every colluder sends, per part ``p``,

        location_p + z * ||sigma_p|| * (sin(angle) * o_p + cos(angle) * r_p / ||r_p||)

    with ``M`` the running average of the past aggregates (``beta``; the previous one when 0),
    ``location = pi * M + (1 - pi) * mean`` (``pi = 1``: at the running aggregate, so the aggregate
    lags), reference ``r = lamb * M + (1 - lamb) * mean``, ``o_p`` the unit vector of ones with its
    component along ``r_p`` removed, ``sigma`` the honest per-coordinate standard deviation and
    ``z`` ALIE's ``z`` for the group when negative (so the perturbation sits as far out as ALIE's,
    orthogonal to where the model is going instead of against it). Under BTARD the previous aggregate
    is the public record of step t-1; against a trusted server the colluders compute it with the
    rule in use from what was sent (they know every input)."""

    name = "rop"
    lamb = 0.9
    pi = 1.0
    angle = 90.0
    z = -1.0
    beta = 0.9

    def attack(self, g, s):
        honest = self.collusion.honest_stack()
        if honest is None or honest.shape[0] < 2:
            return g
        state = self.collusion.__dict__.setdefault("rop", {"momentum": None, "seen": -1, "pending": None,
                                                           "sent": {}})
        step = s.ctx.step
        if step in state["sent"]:
            return state["sent"][step].clone()
        self._update_momentum(state, s)
        mean = honest.mean(dim=0).to(torch.float64)
        momentum = mean if state["momentum"] is None else state["momentum"]
        location = self.pi * momentum + (1 - self.pi) * mean
        ref = self.lamb * momentum + (1 - self.lamb) * mean
        std = honest.std(dim=0).to(torch.float64)
        z = self.z if self.z >= 0 else ALIE.default_z(len(s.ctx.group),
                                                      sum(1 for p in s.ctx.group if p in self.collusion.members))
        sin, cos = math.sin(math.radians(self.angle)), math.cos(math.radians(self.angle))
        out = location.clone()
        for a, b in s.bounds:
            r = ref[a:b]
            r_norm = float(r.norm())
            o = torch.ones(b - a, dtype=torch.float64)
            if r_norm > 0:
                o -= r * (float(o @ r) / r_norm ** 2)
            o /= float(o.norm()) + 1e-300
            pert = sin * o + (cos * r / r_norm if r_norm > 0 else 0.0)
            out[a:b] += pert * (z * float(std[a:b].norm()) / (float(pert.norm()) + 1e-300))
        bad = out.to(g.dtype)
        b_count = max(1, sum(1 for p in s.ctx.group if p in self.collusion.members))
        state["sent"] = {step: bad}
        state["pending"] = (step, torch.cat([honest, bad.expand(b_count, -1)]), s)
        return bad.clone()

    def _update_momentum(self, state, s) -> None:
        """Fold in the aggregate of the previous step: the public record under BTARD, else the rule
        in use applied to the previous step's inputs."""
        prev = getattr(s.ctx, "prev", None)
        agg = None
        if prev is not None and prev.step == s.ctx.step - 1 and prev.step > state["seen"]:
            agg, state["seen"] = prev.aggregate.to(torch.float64), prev.step
        elif state["pending"] is not None and state["pending"][0] == s.ctx.step - 1 and \
                getattr(self.collusion, "aggregate", None) is not None:
            pstep, x, ps = state["pending"]
            agg, state["seen"] = _target_rule(self, ps)(x).to(torch.float64), pstep
        if agg is None:
            return
        m = state["momentum"]
        state["momentum"] = agg if m is None or self.beta <= 0 else self.beta * m + (1 - self.beta) * agg


# ------------------------------------------------------------------------------------------------
# timed attackers: strike when the chance of being validated is lowest


class TimedLowestChance(ALIE):
    """ALIE that strikes only on the steps where its chance of being validated is lowest, given
    everything public when it commits (issue 17). Its step-t gradient is checked by the validators
    of step t+1, drawn from ``r_{t+1}``, which nobody knows yet; what is public is the group, the
    contributors (the targets), ``m`` and who colludes (a colluding validator would not accuse). The
    colluders estimate ``P(an honest validator of the next step draws me)`` with the protocol's own
    draw (:func:`btard_wire.randomness.draw_validators`) over ``draws`` fixed random ``r`` values,
    and strike only when it is at most ``(1 + slack)`` times the lowest chance seen since the attack
    started. ``chances`` records ``(step, chance, struck)``."""

    name = "timed_lowest_chance"
    draws = 256
    slack = 0.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.chances: list[tuple[int, float, bool]] = []
        self._lowest = math.inf

    def chance(self, s) -> float:
        from btard_wire.randomness import draw_validators

        group = list(s.ctx.group)
        members = self.collusion.members
        # the step's public validator count: more after a recalculation ban (it knows the rule)
        m = max(1, step_validator_count(self.params, s.ctx))
        hits = 0
        for k in range(int(self.draws)):
            r = hashlib.sha256(b"timed-lowest-chance" + k.to_bytes(4, "little")).digest()
            draw = draw_validators(r, group=group, targets=group, m=m)
            hits += any(t == self.peer_id and v not in members for v, t in draw.items())
        return hits / max(1, int(self.draws))

    def attack(self, g, s):
        p = self.chance(s)
        self._lowest = min(self._lowest, p)
        strike = p <= self._lowest * (1 + self.slack) + 1e-12
        self.chances.append((s.ctx.step, p, strike))
        return super().attack(g, s) if strike else g


ADAPTIVE_ATTACKS = [cls.name for cls in (OptimalALIE, OptimalIPM, Mimic, FreeRiderZeros, FreeRiderStale,
                                         FreeRiderCopy, RideRecalculation, ToleranceRide, RelocatedOrthogonal,
                                         TimedLowestChance)]
for _cls in (OptimalALIE, OptimalIPM, Mimic, FreeRiderZeros, FreeRiderStale, FreeRiderCopy, RideRecalculation,
             ToleranceRide, RelocatedOrthogonal, TimedLowestChance):
    ATTACKS.setdefault(_cls.name, _cls)
