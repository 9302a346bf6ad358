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

Under BTARD each of them is a gradient that differs from the one its batch seed gives, so
validation by recalculation catches it on a step where the attacker is validated. Against a trusted
server they are what a strongest-known attacker sends.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import torch

from .aggregators import centered_clip
from .attacks import ALIE, ATTACKS, GradientAttack

Aggregate = Callable[[torch.Tensor], torch.Tensor]


def _target_rule(peer: GradientAttack, s) -> Aggregate:
    """The aggregation the colluders attack: the driver's ``collusion.aggregate``, else BTARD's."""
    rule = getattr(peer.collusion, "aggregate", None)
    if rule is not None:
        return rule
    tau = peer.params.tau
    bounds = list(s.bounds)
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


ADAPTIVE_ATTACKS = [cls.name for cls in (OptimalALIE, OptimalIPM, Mimic, FreeRiderZeros, FreeRiderStale,
                                         FreeRiderCopy)]
for _cls in (OptimalALIE, OptimalIPM, Mimic, FreeRiderZeros, FreeRiderStale, FreeRiderCopy):
    ATTACKS.setdefault(_cls.name, _cls)
