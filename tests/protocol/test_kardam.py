"""Kardam: the Lipschitz filter, the frequency filter and staleness dampening in a small async run."""

from __future__ import annotations

import math

import pytest
import torch

from worker_client.sim.kardam import DAMPENING, Kardam

D = 20


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(D, generator=gen)
    a = torch.randn(400, D, generator=gen)
    b = a @ w_star + 0.1 * torch.randn(400, generator=gen)
    return a, b


def _loss(a, b, w):
    return float(((a @ w - b) ** 2).mean())


def _gradient(a, b, w, gen, batch=16):
    idx = torch.randint(0, a.shape[0], (batch,), generator=gen)
    return 2 * a[idx].T @ (a[idx] @ w - b[idx]) / batch


def _async_run(*, n=7, f=2, attackers=(), attack=None, events=600, filtered=True, seed=1):
    """Workers pull the model, compute a gradient, and submit it later (staleness = updates since).

    Attackers finish twice as often as honest workers. Returns (server, decisions, a, b)."""
    a, b = _problem()
    server = Kardam(torch.zeros(D), n=n, f=f, lr=0.02)
    gen = torch.Generator().manual_seed(seed)
    pulled = {w: 0 for w in range(n)}
    weights = torch.tensor([2.0 if w in attackers else 1.0 for w in range(n)])
    decisions = []
    for _ in range(events):
        w = int(torch.multinomial(weights, 1, generator=gen))
        params = server.params_at(pulled[w])
        g = _gradient(a, b, params, gen)
        if w in attackers:
            g = attack(g)
        staleness = server.version - pulled[w]
        if filtered:
            decisions.append((w, server.submit(w, g, staleness)))
        else:  # plain asynchronous SGD: everything is applied, with the same dampening
            server._history[server.version + 1] = server.params - 0.02 / (1 + staleness) * g
            server.version += 1
        pulled[w] = server.version
    return server, decisions, a, b


def test_it_filters_a_large_norm_attacker_and_keeps_training_with_the_honest_workers():
    attackers = (0, 1)
    server, decisions, a, b = _async_run(attackers=attackers, attack=lambda g: -100.0 * g)
    accepted = [w for w, d in decisions if d.accepted and d.reason != "bootstrap"]  # that one is a median
    assert accepted and not any(w in attackers for w in accepted)
    reasons = {d.reason for w, d in decisions if w in attackers}
    assert "lipschitz" in reasons
    # honest gradients that reached the filters (not warm-up or no-progress) are mostly kept
    honest = [d for w, d in decisions if w not in attackers and d.threshold is not None]
    assert sum(d.accepted for d in honest) > 0.6 * len(honest)
    assert _loss(a, b, server.params) < 0.05  # noise floor is 0.01; the start is ~20
    assert any(d.accepted and d.step_size < 0.02 for _, d in decisions)  # stale ones were dampened


def test_without_the_filters_the_same_attack_destroys_the_model():
    server, _, a, b = _async_run(attackers=(0, 1), attack=lambda g: -100.0 * g, filtered=False)
    loss = _loss(a, b, server.params)
    assert not math.isfinite(loss) or loss > 1e3


def test_it_accepts_honest_workers_when_nobody_attacks():
    server, decisions, a, b = _async_run(attackers=())
    # about f/n of honest coefficients sit above the (n-f)/n quantile: that is the filter's price
    filtered = [d for _, d in decisions if d.threshold is not None]
    assert sum(d.accepted for d in filtered) > 0.6 * len(filtered)
    assert _loss(a, b, server.params) < 0.05


def test_the_frequency_filter_caps_a_fast_worker_at_f_of_any_2f_plus_1_updates():
    f, n = 2, 7
    target = torch.linspace(-1.0, 1.0, D)
    server = Kardam(torch.zeros(D), n=n, f=f, lr=0.1)

    def gradient():  # noiseless gradient of ||x - target||^2 / 2: every coefficient is 1
        return server.params - target

    for w in range(n):  # bootstrap, then a coefficient for every worker
        server.submit(w, gradient(), 0)
    for w in range(n):
        server.submit(w, gradient(), 0)
    window: list[int] = []
    reasons = []
    for i in range(30):  # worker 6 submits three times as often as anyone else
        w = 6 if i % 4 else i // 4 % 6
        d = server.submit(w, gradient(), 0)
        if w == 6:
            reasons.append(d.reason)
        if d.accepted:
            window.append(w)
    assert "frequency" in reasons and "accepted" in reasons
    for start in range(len(window) - 2 * f):
        assert window[start:start + 2 * f + 1].count(6) <= f


def test_lipschitz_threshold_is_the_n_minus_f_over_n_quantile_of_the_latest_coefficients():
    server = Kardam(torch.zeros(3), n=4, f=1, lr=0.1)
    server._coefficients = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 100.0}
    assert server.threshold() == 3.0  # (3/4) quantile of 4 values: the 3rd smallest
    assert server.threshold("d", 0.5) == 2.0
    server._coefficients = {"a": 1.0, "b": 2.0, "d": 100.0}
    assert server.threshold() == 2.0  # 3 known: the largest f=1 is still excluded
    server._coefficients = {"a": 1.0, "b": 2.0}
    assert server.threshold() is None  # fewer than n - f workers known


def test_a_workers_first_gradient_only_sets_its_baseline():
    server = Kardam(torch.zeros(3), n=4, f=1, lr=0.1)
    d = server.submit("w", torch.ones(3), 0)
    assert (d.accepted, d.reason, server.version) == (False, "warmup", 0)
    d = server.submit("w", torch.ones(3) * 2, 0)
    assert d.reason == "no-progress"  # the parameters did not move: no coefficient


@pytest.mark.parametrize("name, staleness, expected", [
    ("inverse", 0, 1.0), ("inverse", 3, 0.25), ("exponential", 2, math.exp(-1.0)),
])
def test_staleness_dampening(name, staleness, expected):
    server = Kardam(torch.zeros(2), n=1, f=0, lr=0.1, dampening=name, beta=0.5)
    assert server.step_factor(staleness) == pytest.approx(expected)
    assert set(DAMPENING) == {"inverse", "exponential"}


def test_the_first_update_is_the_median_of_n_minus_f_first_gradients():
    server = Kardam(torch.zeros(2), n=4, f=1, lr=0.1)
    assert server.submit("byz", torch.tensor([1e6, -1e6]), 0).reason == "warmup"
    assert server.submit("a", torch.tensor([1.0, 2.0]), 0).reason == "warmup"
    d = server.submit("b", torch.tensor([3.0, 4.0]), 0)
    assert (d.accepted, d.reason, server.version) == (True, "bootstrap", 1)
    assert torch.allclose(server.params, -0.1 * torch.tensor([3.0, 2.0]))  # median, not the mean
    # the next gradient on version 1 has a coefficient against the worker's version-0 gradient
    d = server.submit("a", torch.tensor([1.5, 2.0]), 0)
    assert d.lipschitz == pytest.approx(0.5 / float(server.params.norm()))


def test_preconditions_and_bad_submissions():
    with pytest.raises(ValueError, match=r"kardam needs n >= 3f\+1, got n=6, f=2"):
        Kardam(torch.zeros(2), n=6, f=2, lr=0.1)
    with pytest.raises(ValueError, match="unknown dampening"):
        Kardam(torch.zeros(2), n=4, f=1, lr=0.1, dampening="linear")
    server = Kardam(torch.zeros(2), n=4, f=1, lr=0.1, max_staleness=2)
    with pytest.raises(ValueError, match="expected 2"):
        server.submit(0, torch.zeros(3), 0)
    with pytest.raises(ValueError, match="staleness"):
        server.submit(0, torch.zeros(2), 1)  # version is 0
    assert server.submit(0, torch.tensor([math.nan, 0.0]), 0).reason == "non-finite"


def test_known_limit_a_constant_vector_passes_the_lipschitz_filter_but_is_frequency_capped():
    """Documented weakness: L_p = 0 for an attacker that repeats one vector; the frequency filter still
    caps its share at f of any 2f+1 accepted updates."""
    attack_vector = torch.full((D,), 3.0)
    _, decisions, _, _ = _async_run(attackers=(0,), attack=lambda g: attack_vector, n=4, f=1)
    attacker = [d for w, d in decisions if w == 0]
    assert any(d.accepted and d.reason == "accepted" and d.lipschitz == 0.0 for d in attacker)
    accepted = [w for w, d in decisions if d.accepted]
    for start in range(len(accepted) - 2):
        assert accepted[start:start + 3].count(0) <= 1


def test_btard_sim_runs_kardam_with_delayed_workers_and_filters_a_sign_flipper():
    from worker_client.sim import run_simulation

    kw = {"task": "digits-mlp", "peers": 7, "byzantine": 2, "attack": "sign_flip", "steps": 20, "attack_start": 0,
          "seed": 0, "eval_every": 0}
    mean = run_simulation(**kw, aggregator="mean")
    for staleness in (0, 2):
        out = run_simulation(**kw, aggregator="kardam", staleness=staleness)
        k = out["kardam"]
        assert k["f"] == 2 and k["staleness"] == staleness
        assert k["accepted_byzantine"] == 0 and k["reasons"]["lipschitz"] > 0
        assert k["updates"] == k["accepted_honest"] > 20  # several updates per round of 7 submissions
        assert sum(k["reasons"].values()) == 7 * 20
        assert out["final_accuracy"] > mean["final_accuracy"] + 0.1, (out["final_accuracy"], mean["final_accuracy"])
    assert "no-progress" in k["reasons"]  # delayed workers compute twice on one version now and then


def test_btard_sim_refuses_kardam_beyond_its_precondition_and_staleness_elsewhere():
    from worker_client.sim import run_simulation

    with pytest.raises(ValueError, match=r"kardam needs n >= 3f\+1, got n=16, f=7"):
        run_simulation(task="digits-mlp", peers=16, byzantine=7, attack="ipm", aggregator="kardam", steps=1)
    with pytest.raises(ValueError, match="use it with --aggregator kardam"):
        run_simulation(task="digits-mlp", peers=4, aggregator="mean", staleness=2, steps=1)


def test_an_apply_callback_carries_out_accepted_updates():
    applied = []

    def apply(g, step):
        applied.append(step)
        return torch.full((3,), float(len(applied)))

    server = Kardam(torch.zeros(3), n=4, f=1, lr=0.5, apply=apply)
    for w in range(3):
        server.submit(w, torch.ones(3), 0)
    assert applied == [0.5] and torch.equal(server.params, torch.ones(3))
