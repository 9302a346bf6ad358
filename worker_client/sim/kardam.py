"""Kardam (Damaskinos et al., "Asynchronous Byzantine Machine Learning (the case of SGD)", ICML 2018):
the asynchronous baseline of the comparison table in the protocol spec, run by
``btard-sim --aggregator kardam --staleness S`` (:func:`worker_client.sim.run_simulation`).

A parameter server holds the model; workers send gradients one at a time, each computed on the
parameters of some earlier version (its *staleness* is the number of updates applied since). The
server keeps a gradient only if it passes two filters, then applies it with a dampened step size.

Our choices where the paper leaves room (documented here, tested in tests/protocol/test_kardam.py):

* **Lipschitz filter.** Worker p's empirical Lipschitz coefficient is
  ``L_p = ||g_new - g_prev|| / ||x_new - x_prev||`` where ``g_prev`` is p's previous gradient (accepted
  or not) and ``x_new``/``x_prev`` are the parameter versions the two gradients were computed on.
  ``K`` holds the latest coefficient of every worker (at most n entries, so at most f of them come
  from Byzantine workers, however fast they are). A gradient passes if its ``L_p`` is at most the
  ``(n-f)/n`` quantile of ``K`` (including the new value), i.e. the ``(|K| - f)``-th smallest: with
  all n workers known that is the paper's quantile, and while some are unknown the f largest values
  are still excluded (a plain ``(n-f)/n`` quantile of fewer than n values could be a Byzantine one).
  A worker's first gradient only sets its baseline (reason ``"warmup"``), as does a gradient whose
  two versions have the same parameters (``"no-progress"``: the coefficient is undefined). The
  filter also waits (``"warmup"``) until ``n - f`` workers have a coefficient.
* **Bootstrap.** Coefficients need the parameters to move, and nothing moves before a gradient is
  accepted. So the very first update is the coordinate-wise median of the first gradients of
  ``n - f`` distinct workers computed on version 0 (robust since ``n - f >= 2f + 1``); the gradient
  that completes the set is reported as ``"bootstrap"``. After it, every one of those workers gets
  a coefficient on its next gradient computed on a later version.
* **Frequency filter.** In any ``2f + 1`` consecutive accepted updates a worker holds at most
  ``max(f, 1)`` of them, so a Byzantine worker with a fast link cannot dominate the sequence of
  updates (for f = 0 the filter never rejects).
* **Staleness dampening.** The applied step is ``lr * Lambda(tau)`` with ``Lambda(tau) = 1/(1+tau)``
  (``"inverse"``, the default) or ``exp(-beta * tau)`` (``"exponential"``); gradients staler than
  ``max_staleness`` are rejected (``"too-stale"``).

Known limit (as in the paper, which bounds the damage rather than preventing it): an attacker whose
gradient hardly changes between submissions, e.g. a constant vector, has ``L_p ~ 0`` and passes the
Lipschitz filter; the frequency filter and dampening only limit how often and how hard it moves
the model. Large-norm attacks that vary with the data (scaled sign flips) are filtered.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

DAMPENING: dict[str, Callable[[int, float], float]] = {
    "inverse": lambda tau, beta: 1.0 / (1.0 + tau),
    "exponential": lambda tau, beta: math.exp(-beta * tau),
}


@dataclass(frozen=True)
class KardamDecision:
    """What the server did with one gradient."""

    accepted: bool
    reason: str  # accepted|bootstrap|warmup|no-progress|lipschitz|frequency|too-stale|non-finite
    lipschitz: float | None     # the worker's coefficient for this gradient, when defined
    threshold: float | None     # the (n-f)/n quantile it was compared against, when computed
    step_size: float            # lr * Lambda(staleness) applied; 0.0 when rejected
    version: int                # server version after the decision


class Kardam:
    """A Kardam parameter server over a flat float32 parameter vector.

    ``submit(worker_id, gradient, staleness)`` filters one gradient computed on ``params_at(version -
    staleness)`` and, if it passes, applies ``params -= lr * Lambda(staleness) * gradient``.

    ``apply(gradient, step)``, when given, carries out an accepted update instead of the plain SGD
    step and returns the new parameters (``btard-sim --aggregator kardam`` passes the task's optimizer,
    with momentum, scaled by ``step``).

    Raises ValueError when ``n < 3f + 1`` (the paper's precondition), for an unknown dampening, a
    gradient of the wrong shape, or a staleness that is negative or beyond the current version.
    """

    def __init__(self, params: torch.Tensor, *, n: int, f: int, lr: float, dampening: str = "inverse",
                 beta: float = 0.5, max_staleness: int = 64,
                 apply: Callable[[torch.Tensor, float], torch.Tensor] | None = None):
        if not isinstance(f, int) or f < 0 or not isinstance(n, int) or n < 1:
            raise ValueError(f"kardam needs integers n >= 1 and f >= 0, got n={n!r}, f={f!r}")
        if n < 3 * f + 1:
            raise ValueError(f"kardam needs n >= 3f+1, got n={n}, f={f}")
        if dampening not in DAMPENING:
            raise ValueError(f"unknown dampening {dampening!r}; known: {', '.join(sorted(DAMPENING))}")
        if lr <= 0 or max_staleness < 0:
            raise ValueError("kardam needs lr > 0 and max_staleness >= 0")
        params = params.detach().reshape(-1).to(torch.float32).clone()
        self.n, self.f, self.lr, self.beta = n, f, float(lr), float(beta)
        self.dampening = dampening
        self.max_staleness = max_staleness
        self.version = 0
        self._history: dict[int, torch.Tensor] = {0: params}
        self._last: dict[Hashable, tuple[torch.Tensor, int]] = {}   # worker -> (gradient, version)
        self._coefficients: dict[Hashable, float] = {}               # worker -> latest L_p
        self._window: deque[Hashable] = deque(maxlen=2 * f + 1)      # accepted workers, newest last
        self.accepted_count: dict[Hashable, int] = {}
        self._bootstrap: dict[Hashable, torch.Tensor] = {}           # first gradients at version 0
        self._apply_fn = apply

    # --- state ----------------------------------------------------------------------------------
    @property
    def params(self) -> torch.Tensor:
        return self._history[self.version]

    def params_at(self, version: int) -> torch.Tensor:
        """The parameters of an earlier ``version`` (kept for the last ``max_staleness`` updates)."""
        try:
            return self._history[version]
        except KeyError:
            raise ValueError(f"version {version} is not kept (current {self.version})") from None

    def step_factor(self, staleness: int) -> float:
        """``Lambda(staleness)``: the dampening applied to the learning rate."""
        return DAMPENING[self.dampening](staleness, self.beta)

    def threshold(self, candidate: Hashable | None = None, value: float | None = None) -> float | None:
        """The ``(|K| - f)``-th smallest of the latest coefficients ``K`` of every worker
        (``candidate``'s replaced by ``value``): the ``(n-f)/n`` quantile once all n workers are
        known. None until ``n - f`` workers have one."""
        coeffs = dict(self._coefficients)
        if candidate is not None and value is not None:
            coeffs[candidate] = value
        if len(coeffs) < self.n - self.f:
            return None
        ordered = sorted(coeffs.values())
        return ordered[len(ordered) - self.f - 1]

    # --- the server's one operation ---------------------------------------------------------------
    def submit(self, worker_id: Hashable, gradient: torch.Tensor, staleness: int) -> KardamDecision:
        g = gradient.detach().reshape(-1).to(torch.float32)
        if g.shape != self.params.shape:
            raise ValueError(f"gradient has {g.numel()} values, expected {self.params.numel()}")
        if not isinstance(staleness, int) or staleness < 0 or staleness > self.version:
            raise ValueError(f"staleness must be in [0, {self.version}], got {staleness!r}")
        if staleness > self.max_staleness or (self.version - staleness) not in self._history:
            return self._reject("too-stale")
        if not bool(torch.isfinite(g).all()):
            return self._reject("non-finite")

        computed_at = self.version - staleness
        x_new = self._history[computed_at]
        previous = self._last.get(worker_id)
        self._last[worker_id] = (g.clone(), computed_at)
        if previous is None:
            if self.version == 0 and computed_at == 0:
                self._bootstrap[worker_id] = g.clone()
                if len(self._bootstrap) >= self.n - self.f:
                    median = torch.stack(list(self._bootstrap.values())).median(dim=0).values
                    self._bootstrap.clear()
                    return self._apply(worker_id, median, 0, "bootstrap", None, None)
            return self._reject("warmup")
        g_prev, prev_version = previous
        x_prev = self._history.get(prev_version)
        if x_prev is None:  # the baseline fell out of the history: start over from this gradient
            return self._reject("warmup")
        dx = float(torch.linalg.vector_norm((x_new - x_prev).to(torch.float64)))
        if dx == 0.0:
            return self._reject("no-progress")
        coefficient = float(torch.linalg.vector_norm((g - g_prev).to(torch.float64))) / dx
        threshold = self.threshold(worker_id, coefficient)
        self._coefficients[worker_id] = coefficient
        if threshold is None:
            return self._reject("warmup", coefficient)
        if coefficient > threshold:
            return self._reject("lipschitz", coefficient, threshold)
        recent = list(self._window)[-2 * self.f:] if self.f else []  # with the candidate: 2f+1
        if recent.count(worker_id) + 1 > max(self.f, 1):
            return self._reject("frequency", coefficient, threshold)

        return self._apply(worker_id, g, staleness, "accepted", coefficient, threshold)

    def _apply(self, worker_id: Hashable, g: torch.Tensor, staleness: int, reason: str,
               coefficient: float | None, threshold: float | None) -> KardamDecision:
        step = self.lr * self.step_factor(staleness)
        if self._apply_fn is None:
            new_params = self.params - step * g
        else:  # e.g. the simulator's optimizer (momentum): it returns the parameters after the step
            new_params = self._apply_fn(g, step).detach().reshape(-1).to(torch.float32).clone()
            if new_params.shape != self.params.shape:
                raise ValueError(f"apply returned {new_params.numel()} values, expected {self.params.numel()}")
        self.version += 1
        self._history[self.version] = new_params
        self._history.pop(self.version - self.max_staleness - 1, None)
        self._window.append(worker_id)
        self.accepted_count[worker_id] = self.accepted_count.get(worker_id, 0) + 1
        return KardamDecision(True, reason, coefficient, threshold, step, self.version)

    def _reject(self, reason: str, coefficient: float | None = None,
                threshold: float | None = None) -> KardamDecision:
        return KardamDecision(False, reason, coefficient, threshold, 0.0, self.version)
