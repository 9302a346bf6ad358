"""The CenteredClip ``tau`` of each part (``ProtocolParams.tau_rule``, selected by name).

- ``"fixed"``: ``tau_j = ProtocolParams.tau`` for every part and step (the spec's rule; a per-task
  calibration).
- ``"spread"``: ``tau_j = tau_spread x rho_j``, where ``rho_j`` is the **majority-th smallest** of the
  distances ``d_kj = ||g_k[j] - a_j||`` that part j's aggregator publishes for the step's contributors
  (``m = c // 2 + 1`` of ``c``; the value the aggregate bound already reads). Everything is on the step's
  own board, so every peer (the aggregator, every checker of the fixed point, a newcomer with no
  previous step) computes the same ``tau_j`` from the same published floats; ``ProtocolParams.tau``
  is used only where ``rho_j == 0`` (a majority of rows equal to ``a_j``).

The aggregator finds the joint fixed point: ``a_j`` is CenteredClip's fixed point with ``tau_j``, and
``tau_j`` is the rule's value for the distances to ``a_j`` (:func:`centered_clip_part`).

**Why a coalition cannot inflate it** (``tests/protocol/test_tau_rule.py``). Each honest contributor
checks its own ``d_kj`` (``wrong_distance`` otherwise), and with an honest majority of contributors at
least ``m`` of the ``c`` distances are honest; the ``m``-th smallest is therefore at most the largest
honest distance to ``a_j``, whatever the others post or send: attackers far away change nothing, and
attackers close to ``a_j`` only lower it. What they can still do is move ``a_j`` (by at most about
``(b / h) tau_j`` per part for ``b`` attackers and ``h`` honest rows), which lengthens the honest
distances; with ``tau_spread = c`` and honest distances about ``sigma``, the joint fixed point is at
most ``c sigma / sqrt(1 - (c b / h)^2)`` while ``c b / h < 1`` (1.09 x for c = 0.5, b = 7, h = 9), and
once ``tau_j`` is below the honest distances the shift is capped by the geometric median's (about
``1.24 sigma`` for 7 of 16), not by ``tau``. A forging aggregator gains nothing from it: its own part
is bounded by the aggregate bound (invariant 3), and ``tau_j`` of one part depends on that part's
distances only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from btard_wire.registry import Registry

from .aggregators import CenteredClipResult, CenteredClipSolver, centered_clip_with_info

# a rule maps (params, the part's published distances) to tau_j
TauRule = Callable[..., float]

# the aggregator stops the joint (a_j, tau_j) iteration when tau moves by less than this, relative:
# the fixed-point check's tolerance along z allows about 1e-4 (fixed_point_sigmas x fixed_point_rtol)
TAU_RTOL = 1e-8
TAU_MAX_ROUNDS = 60
# the search on the Gram's distances (centered_clip_part) stops tighter, so that what separates its tau
# from the exact distances' is the Gram's rounding; its CenteredClip iterates stop GRAM_STOP_MARGIN inside
# the protocol's tolerance, so that a_j is within it for either tau; where neither holds, it corrects for
# the rounding at most GRAM_CORRECTIONS times (a pass over the part each)
GRAM_TAU_RTOL = 1e-10
GRAM_STOP_MARGIN = 0.1
GRAM_CORRECTIONS = 2


def majority_distance(distances: Iterable[float]) -> float:
    """The ``m``-th smallest of ``c`` distances, ``m = c // 2 + 1`` (0.0 for none)."""
    d = sorted(float(x) for x in distances)
    return d[len(d) // 2] if d else 0.0


def fixed_tau(params, distances: Iterable[float]) -> float:
    return params.tau


def spread_tau(params, distances: Iterable[float]) -> float:
    rho = majority_distance(distances)
    return params.tau_spread * rho if rho > 0 else params.tau


TAU_RULES: Registry[TauRule] = Registry("tau rule", {"fixed": fixed_tau, "spread": spread_tau})


def part_tau(params, distances: Iterable[float]) -> float:
    """``tau_j`` of a part whose aggregator published ``distances`` (one per contributor)."""
    return TAU_RULES[params.tau_rule](params, distances)


def _clip(x: torch.Tensor, params, tau: float) -> CenteredClipResult:
    return centered_clip_with_info(x, tau=tau, eps=params.cc_eps, max_iters=params.cc_max_iters,
                                   init=params.cc_init, method=params.cc_method,
                                   rtol=params.cc_stop_margin * params.fixed_point_rtol)


def _solver(x: torch.Tensor, params) -> CenteredClipSolver:
    # the search's iterates stop GRAM_STOP_MARGIN inside CenteredClip's tolerance, so that the result is
    # still within it for the tau its exact distances give (a Gram-rounding away from the searched one)
    return CenteredClipSolver(x, eps=GRAM_STOP_MARGIN * params.cc_eps, max_iters=params.cc_max_iters,
                              init=params.cc_init, method=params.cc_method,
                              rtol=GRAM_STOP_MARGIN * params.cc_stop_margin * params.fixed_point_rtol)


def _converged_at(solver: CenteredClipSolver, params, tau: float, distances) -> bool:
    """The result of ``solver`` is CenteredClip's fixed point for ``tau`` by its own stop (the residual
    under ``cc_eps + rtol x sum w d``), with the weights of the exact ``distances``."""
    residual, spread = solver.residual(tau, distances)
    return residual < params.cc_eps + params.cc_stop_margin * params.fixed_point_rtol * spread


def _tau_fixed_point(rule: Callable[[float], float], tau: float, rtol: float,
                     rounds: int) -> tuple[float, bool]:
    """``tau`` with ``|rule(tau) - tau| <= rtol x tau`` by secant steps on ``rule(tau) - tau`` (a plain
    iteration where a secant step leaves ``[tau / 2, 2 tau]``), from ``tau``; ``rule`` is last called
    with the returned ``tau``. Returns ``(tau, converged)``."""
    prev: tuple[float, float] | None = None
    for _ in range(rounds):
        t_new = rule(tau)
        g = t_new - tau
        if abs(g) <= rtol * tau:
            return tau, True
        nxt = t_new
        if prev is not None and g != prev[1]:
            secant = tau - g * (tau - prev[0]) / (g - prev[1])
            if tau / 2 <= secant <= 2 * tau:
                nxt = secant
        prev = (tau, g)
        tau = nxt
    rule(tau)
    return tau, False


def centered_clip_part(x: torch.Tensor, params) -> tuple[CenteredClipResult, float]:
    """The protocol's aggregate of one part's float32 rows ``x`` and the ``tau_j`` it used.

    Fixed rule: CenteredClip with ``params.tau``. Spread rule: the joint fixed point ``tau = T(tau)``,
    ``T(tau) = part_tau(distances to CenteredClip(x, tau))``, by secant steps on ``T(tau) - tau``
    (:func:`_tau_fixed_point`), starting from ``params.tau``. The published (exact) distances give back
    the returned ``tau`` to ``TAU_RTOL`` relative, and ``a_j`` is CenteredClip's fixed point for it.

    The cost is about one CenteredClip run (issue 16): the start and the Gram matrix around it do not
    depend on ``tau``, so the search runs in coefficient space on the distances the Gram gives
    (:class:`.aggregators.CenteredClipSolver`, each round going on from the previous one's iterate, each
    stopped ``GRAM_STOP_MARGIN`` inside CenteredClip's tolerance), to ``GRAM_TAU_RTOL``; then one pass
    over ``x`` builds ``a_j`` and its exact distances, and ``T`` is checked on those. The Gram's distances
    are up to ~4e-7 relative off the exact ones, so the check mostly misses ``TAU_RTOL``; ``a_j`` is then
    returned with the exact distances' own ``tau`` where CenteredClip's stop holds there too (the
    residual, with those distances' weights, under ``cc_eps + rtol x sum w d``). Otherwise (not seen in
    the tests unless forced) the search goes on with ``T`` shifted by the difference measured there and
    the pass is redone, up to ``GRAM_CORRECTIONS`` times, and after that the secant goes on with full
    CenteredClip runs, each judged on exact distances, as the solve did before."""
    x = x.to(torch.float32)
    tau = params.tau
    if params.tau_rule == "fixed":
        return _clip(x, params, tau), tau
    solver = _solver(x, params)
    last: dict[str, float] = {}

    def on_gram(t: float) -> float:
        last["gram"] = part_tau(params, solver.solve(t).tolist())
        return last["gram"] + last.get("offset", 0.0)

    tau, _ = _tau_fixed_point(on_gram, tau, GRAM_TAU_RTOL, TAU_MAX_ROUNDS)
    for correction in range(GRAM_CORRECTIONS + 1):
        res = solver.result()
        exact = part_tau(params, res.distances.tolist())
        if abs(exact - tau) <= TAU_RTOL * tau:
            return res, tau
        if _converged_at(solver, params, exact, res.distances.numpy()):
            # a_j is also CenteredClip's fixed point for the tau its exact distances give, by the stop of
            # centered_clip_with_info: a joint fixed point, with the published distances' tau exactly
            return res, exact
        if correction == GRAM_CORRECTIONS:
            break
        last["offset"] = exact - last["gram"]
        tau, _ = _tau_fixed_point(on_gram, tau, GRAM_TAU_RTOL, TAU_MAX_ROUNDS)
    found = {}

    def on_exact(t: float) -> float:
        found["res"] = _clip(x, params, t)
        return part_tau(params, found["res"].distances.tolist())

    tau, _ = _tau_fixed_point(on_exact, tau, TAU_RTOL, TAU_MAX_ROUNDS)
    # not converged (the full-run secant can stall at ~3e-8 on a T with the stop's steps in it; the
    # tests force this path): the fixed-point check decides
    return found["res"], tau
