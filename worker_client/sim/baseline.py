"""Trusted-server baselines for comparison: data-parallel SGD with one rule of ``AGGREGATORS`` (no
verification, no validation, no bans), and Kardam's asynchronous parameter server with delayed workers.
Same seeds, same attackers and the same hooks as the BTARD loop (:mod:`.run`)."""

from __future__ import annotations

import hashlib
import inspect
import random

import torch

from btard_wire.randomness import batch_seed, genesis_randomness

from ..btard import protocol as P
from ..btard.aggregators import AGGREGATORS, bucketing, centered_clip
from ..btard.attacks import Byzantine
from ..tasks import apply_flat_update, flatten_params
from .kardam import Kardam
from .world import RUN, Outcome, World

# Recorded in every baseline run's summary. 2: every rule that takes f is told the true number of
# attackers (trimmed mean trims f per side), the median averages the two middle values for even n,
# Bulyan averages the values nearest the median even when values repeat. Runs without it (version 1)
# told trimmed mean beta = 0.1, Krum and Bulyan an f capped by their preconditions.
BASELINE_VERSION = 2


def baseline_params(rule: str, *, f: int) -> dict:
    """What a baseline rule is told, as its authors intend: ``f``, the true number of attackers, for
    every rule that takes one (trimmed mean trims f per side; Krum, Multi-Krum, Bulyan, NNM). A rule
    whose precondition fails for this n and f raises its ValueError at the first step: we do not
    quietly tell it a smaller f. (tau and bucketing's per-step seed are set by the simulator.)"""
    fn = AGGREGATORS[rule]
    accepted = {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {"f": f} if "f" in accepted else {}


def check_baseline(rule: str, *, peers: int, f: int) -> None:
    """Raise the rule's own ValueError if it cannot run on ``peers`` inputs when told ``f``."""
    if rule not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {rule!r}; use btard or one of {sorted(AGGREGATORS)}")
    x = torch.randn(peers, 4, generator=torch.Generator().manual_seed(0))
    baseline_update(rule, x, baseline_params(rule, f=f), tau=1.0, bounds=[(0, 4)], seed=0)


def check_kardam(*, peers: int, f: int) -> None:
    """Raise Kardam's own ValueError if it cannot run with ``peers`` workers and ``f`` (n >= 3f+1)."""
    Kardam(torch.zeros(1), n=peers, f=f, lr=1.0)


def baseline_view(step: int, ids: list[str], numel: int, bounds) -> P.StepView:
    """The step view a behaviour's gradient hook reads in a baseline run (no protocol step exists)."""
    ctx = P.StepContext(run=RUN, step=step, group=list(ids), public_keys={}, r_prev=b"", numel=numel)
    return P.StepView(ctx=ctx, index=0, role="contributor", bounds=tuple(bounds), contributors=tuple(ids))


def baseline_update(rule: str, x: torch.Tensor, params: dict, *, tau: float, bounds, seed: int) -> torch.Tensor:
    """One trusted-server aggregation. A final CenteredClip runs per part like BTARD's aggregators (tau
    acts per part), after any pre-aggregation of the whole vectors; bucketing reshuffles every step."""
    fn = AGGREGATORS[rule]
    pre = getattr(fn, "pre", None)
    final = getattr(fn, "rule_name", rule)
    if pre is bucketing:
        params = {**params, "seed": seed}
    if final != "centered_clip":
        return fn(x, **params)
    if pre is not None:
        pre_params = {k: v for k, v in params.items()
                      if k in inspect.signature(pre).parameters}
        x = pre(x, **pre_params)
    return torch.cat([centered_clip(x[:, a:b], tau=tau, init="median") for a, b in bounds])


def run_baseline(world: World, *, rule: str, f: int, tau: float) -> Outcome:
    """Data-parallel SGD with ``rule`` on a trusted server: every peer's gradient (attackers' through
    their ``hook_corrupt_gradient``) aggregated and applied each step. No bans exist."""
    out, models, ids = world.outcome, world.models, world.ids
    rule_params = baseline_params(rule, f=f)
    out.stats["rule_params"] = dict(rule_params)
    out.stats["baseline_version"] = BASELINE_VERSION
    r = genesis_randomness(RUN, world.seed)
    bounds = P.part_bounds(world.numel, len(ids))
    # adaptive attacks (optimal ALIE/IPM) search their scale against the rule in use
    world.collusion.aggregate = lambda x: baseline_update(rule, x, rule_params, tau=tau, bounds=bounds,
                                                          seed=int.from_bytes(r[:8], "little"))
    batch = world.base_batch
    for step in range(world.steps):
        fake = baseline_view(step, ids, world.numel, bounds)
        honest: dict[str, torch.Tensor] = {}
        flips: dict[str, bool] = {}
        for p in ids:
            req = P.ComputeGradient(request_id="own", seed=batch_seed(r, RUN, step, p), model_ref=models.version,
                                    step=step, peer=p, purpose="own", batch_size=batch)
            flips[p] = world.peers[p].hook_gradient_request(req).flip_labels
            honest[p] = models.gradient(models.version, req.seed, False, batch, p)
        world.collusion.step, world.collusion.honest = step, honest
        rows = []
        for p in ids:
            g = (models.gradient(models.version, batch_seed(r, RUN, step, p), True, batch, p) if flips[p]
                 else honest[p])
            peer = world.peers[p]
            if isinstance(peer, Byzantine):
                g = peer.hook_corrupt_gradient(g.clone(), fake)
            rows.append(g)
        x = torch.stack(rows)
        if not torch.isfinite(x).all():
            # The model has already diverged (an earlier update blew it up): training is over.
            out.stats["diverged_at"] = step
            break
        update = baseline_update(rule, x, rule_params, tau=tau, bounds=bounds, seed=int.from_bytes(r[:8], "little"))
        if not torch.isfinite(update).all():
            out.stats["diverged_at"] = step
            break
        apply_flat_update(world.model, update, world.optimizer)
        models.bump()
        r = hashlib.sha256(b"btard-baseline" + r).digest()
        out.stats["applied_steps"] += 1
        world.tick(step)
    world.pad_diverged()
    return out


def run_kardam(world: World, *, f: int, staleness: int) -> Outcome:
    """Kardam's parameter server (:mod:`.kardam`) with delayed workers.

    A step is one round in which every worker submits one gradient, in a random order. An honest
    worker's gradient is computed on the model as it was ``delay`` rounds ago, ``delay`` drawn each
    round uniformly from ``0..staleness`` (so ``staleness = 0`` still has up to ``n - 1`` updates of
    staleness within a round); attackers are always fresh (delay 0) and see the round's honest
    gradients, as in the synchronous baselines. Kardam's staleness is counted in accepted updates and
    dampens the step by ``1 / (1 + staleness)``. An accepted gradient goes through the task's
    optimizer scaled by ``1/n`` times that factor, so a round of n fresh accepted gradients moves the
    model like one averaged step of the synchronous baselines."""
    out, models, ids, byz_ids = world.outcome, world.models, world.ids, world.byz_ids
    peers = len(ids)
    rng = random.Random(world.seed * 104729 + 17)
    server_version_at: dict[int, int] = {}

    def apply(g: torch.Tensor, step: float) -> torch.Tensor:
        apply_flat_update(world.model, g * step, world.optimizer)
        return flatten_params(world.model)

    server = Kardam(flatten_params(world.model), n=peers, f=f, lr=1.0 / peers,
                    max_staleness=peers * (staleness + 2), apply=apply)
    reasons: dict[str, int] = {}
    accepted = {"honest": 0, "byzantine": 0}
    r = genesis_randomness(RUN, world.seed)
    bounds = P.part_bounds(world.numel, peers)
    batch = world.base_batch
    for step in range(world.steps):
        server_version_at[step] = server.version
        server_version_at.pop(step - staleness - 2, None)
        fake = baseline_view(step, ids, world.numel, bounds)
        computed_on: dict[str, int] = {}
        honest: dict[str, torch.Tensor] = {}
        rows: dict[str, torch.Tensor] = {}
        for p in ids:
            delay = 0 if p in byz_ids else rng.randint(0, staleness)
            on = max(0, step - delay)
            computed_on[p] = on
            req = P.ComputeGradient(request_id="own", seed=batch_seed(r, RUN, step, p), model_ref=on, step=step,
                                    peer=p, purpose="own", batch_size=batch)
            flip = world.peers[p].hook_gradient_request(req).flip_labels
            honest[p] = models.gradient(on, req.seed, False, batch, p)
            rows[p] = models.gradient(on, req.seed, True, batch, p) if flip else honest[p]
        world.collusion.step, world.collusion.honest = step, honest
        for p in byz_ids:
            rows[p] = world.peers[p].hook_corrupt_gradient(rows[p].clone(), fake)
        order = list(ids)
        rng.shuffle(order)
        for p in order:
            decision = server.submit(p, rows[p], server.version - server_version_at[computed_on[p]])
            reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
            if decision.accepted:
                accepted["byzantine" if p in byz_ids else "honest"] += 1
        if not torch.isfinite(server.params).all():
            out.stats["diverged_at"] = step
            break
        models.bump()
        r = hashlib.sha256(b"btard-baseline" + r).digest()
        out.stats["applied_steps"] += 1
        world.tick(step)
    out.stats["kardam"] = {"updates": server.version, "reasons": dict(sorted(reasons.items())),
                           "accepted_honest": accepted["honest"], "accepted_byzantine": accepted["byzantine"],
                           "f": f, "staleness": staleness}
    world.pad_diverged()
    return out
