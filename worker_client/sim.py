"""``btard-sim``: simulate a swarm on one machine, honest and Byzantine peers, BTARD or a baseline rule.

    btard-sim --task mnist5k-mlp --peers 16 --byzantine 7 --attack alie --attack-start 50 \\
              --aggregator btard --steps 300 --seed 0 --json out.json

``--aggregator btard`` runs the full protocol (:mod:`worker_client.btard.protocol`) over the in-memory
transport (:mod:`worker_client.transports.memory`): signed broadcasts through a bulletin board that bans
on a majority of verdicts, parts and aggregates as raw float32 bytes. Any name from
:data:`~worker_client.btard.aggregators.AGGREGATORS` instead runs plain data-parallel SGD with that rule
on a trusted server (no verification, no validation, no bans), with the same seeds and attackers, for
comparison; every rule that takes ``f`` is told the true number of attackers. ``--aggregator kardam``
runs Kardam's asynchronous parameter server with delayed workers (``--staleness``); ``--non-iid ALPHA``
gives every peer a label-skewed shard. :func:`run_simulation` is the Python entry point (tests,
``btard-experiments``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import inspect
import json
import math
import random
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from btard_wire.envelope import Identity

from .btard import protocol as P
from .btard.aggregators import AGGREGATORS, bucketing, centered_clip
from .btard.attacks import ATTACKS, Byzantine, Collusion
from .btard.kardam import Kardam
from .btard.mprng import batch_seed, genesis_randomness
from .tasks import (
    apply_flat_update,
    batch_gradient,
    compute_gradient,
    flatten_params,
    get_task,
    load_flat_params,
    param_slices,
)
from .transports.memory import build_swarm, seeded_bytes, seeded_nonces

RUN = "sim"
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
    _baseline_update(rule, x, baseline_params(rule, f=f), tau=1.0, bounds=[(0, 4)], seed=0)


def _baseline_view(step: int, ids: list[str], numel: int, bounds) -> P.StepView:
    """The step view a behaviour's gradient hook reads in a baseline run (no protocol step exists)."""
    ctx = P.StepContext(run=RUN, step=step, group=list(ids), public_keys={}, r_prev=b"", numel=numel)
    return P.StepView(ctx=ctx, index=0, role="contributor", bounds=tuple(bounds), contributors=tuple(ids))


def _baseline_update(rule: str, x: torch.Tensor, params: dict, *, tau: float, bounds, seed: int) -> torch.Tensor:
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


class _Models:
    """Model states by version (the protocol's ``model_ref``) and a cache of computed gradients."""

    def __init__(self, task, model, batch_size: int, keep: int = 3, shards: dict[str, np.ndarray] | None = None):
        self.task = task
        self.shards = shards
        self.model = model
        self.scratch = copy.deepcopy(model)
        self.batch_size = batch_size
        self.version = 0
        self.states: OrderedDict[int, torch.Tensor] = OrderedDict({0: flatten_params(model)})
        self.keep = keep
        self.cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.computed = 0

    def bump(self) -> None:
        self.version += 1
        self.states[self.version] = flatten_params(self.model)
        while len(self.states) > self.keep:
            self.states.popitem(last=False)

    def gradient(self, version: int, seed: int, flip: bool, batch_size: int = 0, peer: str = "") -> torch.Tensor:
        batch_size = batch_size or self.batch_size
        key = (version, seed, flip, batch_size, peer if self.shards else "")
        g = self.cache.get(key)
        if g is None:
            if version == self.version:
                model = self.model
            else:
                load_flat_params(self.scratch, self.states[version])
                model = self.scratch
            if self.shards:  # non-IID: the batch of this seed from the batch owner's shard
                g = self._shard_gradient(model, seed, flip, batch_size, self.shards[peer])
            else:
                g = compute_gradient(self.task, model, seed, batch_size, flip_labels=flip)
            self.computed += 1
            self.cache[key] = g
            while len(self.cache) > 256:
                self.cache.popitem(last=False)
        return g

    def _shard_gradient(self, model, seed: int, flip: bool, batch_size: int, shard: np.ndarray) -> torch.Tensor:
        rng = np.random.Generator(np.random.PCG64(int(seed)))
        idx = torch.from_numpy(shard[rng.choice(len(shard), size=batch_size, replace=len(shard) < batch_size)])
        x_train, y_train, _, _ = self.task.data
        x, y = x_train[idx], y_train[idx]
        if flip:
            y = self.task.num_classes - 1 - y
        return batch_gradient(self.task, model, x, y)[0]

    def batch(self, requests: list[tuple[str, P.ComputeGradient]]) -> list[torch.Tensor]:
        return [self.gradient(req.model_ref, req.seed, req.flip_labels, req.batch_size, req.peer)
                for _, req in requests]


def dirichlet_shards(labels: torch.Tensor, peers: list[str], *, alpha: float, seed: int) -> dict[str, np.ndarray]:
    """Label-skewed shards of the training set (Hsu et al., 2019): for every class, the peers' shares
    are drawn from Dirichlet(alpha, ..., alpha) and that class's samples are dealt out in those
    proportions. Every sample goes to exactly one peer; a peer left with none gets one sample of the
    largest shard. Deterministic in ``seed``, so every peer (and validator) knows every shard."""
    if not alpha > 0:
        raise ValueError(f"non-IID needs a Dirichlet alpha > 0, got {alpha!r}")
    rng = np.random.Generator(np.random.PCG64(int(seed) * 7 + 3))
    y = labels.numpy()
    parts: list[list[np.ndarray]] = [[] for _ in peers]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(len(peers), float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    shards = [np.sort(np.concatenate(p)) for p in parts]
    for k, shard in enumerate(shards):
        if len(shard) == 0:
            big = max(range(len(shards)), key=lambda j: len(shards[j]))
            shards[k], shards[big] = shards[big][:1], shards[big][1:]
    return dict(zip(peers, shards))


def run_simulation(*, task: str = "mnist5k-mlp", peers: int = 16, byzantine: int = 0, attack: str = "none",
                   attack_start: int = 0, attack_every: int = 1, aggregator: str = "btard", steps: int = 300,
                   seed: int = 0, tau: float = 1.0, validators: int = 2, batch_size: int = 32,
                   global_batch: int = 0,
                   lr: float | None = None, eval_every: int = 10, progress: bool = False,
                   attack_params: dict | None = None, threads: int | None = None, rule_f: int | None = None,
                   staleness: int = 0, non_iid: float = 0.0,
                   protocol_params: dict | None = None, json_path: str | Path | None = None) -> dict:
    """Simulate ``steps`` steps and return the run summary (see ``docs/protocol.md``, "btard-sim")."""
    args = dict(task=task, peers=peers, byzantine=byzantine, attack=attack, attack_start=attack_start,
                attack_every=attack_every, aggregator=aggregator, steps=steps, seed=seed, tau=tau,
                validators=validators, batch_size=batch_size, global_batch=global_batch, lr=lr,
                eval_every=eval_every, rule_f=rule_f, staleness=staleness, non_iid=non_iid,
                attack_params=attack_params or {}, protocol_params=protocol_params or {})
    if aggregator not in ("btard", "kardam") and aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; use btard, kardam or one of {sorted(AGGREGATORS)}")
    if not isinstance(staleness, int) or staleness < 0:
        raise ValueError(f"staleness must be an integer >= 0, got {staleness!r}")
    if staleness and aggregator != "kardam":
        raise ValueError("--staleness delays workers of the asynchronous baseline: use it with --aggregator kardam")
    if attack not in ("none", "", None) and attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; known: {sorted(ATTACKS)}")
    if attack in ("none", "", None):
        byzantine = 0
    if not (0 <= byzantine < peers):
        raise ValueError("need 0 <= byzantine < peers")
    if rule_f is not None and (not isinstance(rule_f, int) or rule_f < 0):
        raise ValueError(f"rule_f must be an integer >= 0, got {rule_f!r}")
    if aggregator == "kardam":  # Kardam needs n >= 3f+1
        Kardam(torch.zeros(1), n=peers, f=byzantine if rule_f is None else rule_f, lr=1.0)
    elif aggregator != "btard":  # a failed precondition (e.g. Krum's n >= 2f+3) is an error before step 0
        check_baseline(aggregator, peers=peers, f=byzantine if rule_f is None else rule_f)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t_task = get_task(task)
    model = t_task.build_model(seed)
    optimizer = t_task.make_optimizer(model.parameters())
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    rng = random.Random(seed)
    identities = [Identity.from_seed(f"btard-sim:{seed}:{i}".encode()) for i in range(peers)]
    ids = [i.peer_id for i in identities]
    shards = dirichlet_shards(t_task.data[1], ids, alpha=non_iid, seed=seed) if non_iid else None
    models = _Models(t_task, model, batch_size, keep=max(3, staleness + 2), shards=shards)
    numel = models.states[0].numel()

    byz_ids = set(rng.sample(ids, byzantine))
    keys = {i.peer_id: i.public_key_b64 for i in identities}
    collusion = Collusion(members=set(byz_ids), seed=seed, segments=param_slices(model))
    params = P.ProtocolParams(tau=tau, validators=validators, global_batch=global_batch, **(protocol_params or {}))
    # without bans every step has all peers: the baselines use the same per-peer batch BTARD starts with
    base_batch = params.global_batch and math.ceil(params.global_batch / peers)

    def before(step: int, own: dict[str, torch.Tensor]) -> None:
        collusion.step, collusion.honest = step, own

    # the peers, the board and the in-memory transport (the baselines use only the peers' hooks);
    # seeded MPRNG secrets and envelope nonces, so one seed gives the same run byte for byte
    built = build_swarm(identities, params, models.batch, run=RUN, byzantine=byz_ids, attack=attack,
                        collusion=collusion, entropy=seeded_bytes(seed * 7919 + 1), nonce=seeded_nonces(seed),
                        attack_params=dict(attack_start=attack_start, attack_every=attack_every,
                                           **(attack_params or {})),
                        before_gradients=before)
    peer_objs = built.peers

    curve: list[list[float]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, file=sys.stderr, desc=f"{aggregator}/{attack}", leave=False)
    # Many short-lived protocol objects per step: collect garbage less often (restored below).
    gc_threshold = gc.get_threshold()
    gc.set_threshold(100_000, 50, 50)
    started = time.perf_counter()
    cpu_started = time.process_time()
    stats: dict[str, Any] = {"applied_steps": 0, "dropped_steps": 0, "eliminations": [],
                             "honest_disagreements": 0}

    def evaluate(step: int) -> None:
        curve.append([step, t_task.evaluate(model)])

    if aggregator == "btard":
        board, swarm = built.board, built.memory
        r_prev = genesis_randomness(RUN, seed)
        records: dict[str, P.StepRecord | None] = {p: None for p in ids}
        for step in range(steps):
            group = board.next_group()
            contexts = {p: P.StepContext(run=RUN, step=step, group=group, public_keys=keys, r_prev=r_prev,
                                         numel=numel, model_ref=models.version, prev=records[p])
                        for p in group}
            honest_left = [p for p in group if p not in byz_ids]
            if not honest_left:  # every honest peer is banned or eliminated: the run is over
                stats["ended_early"] = {"step": step, "reason": f"no honest peer left ({len(group)} peers in "
                                                                 f"the group, {len(board.banned)} banned)"}
                break
            results = swarm.run_step(contexts)
            for p, why in swarm.crashed.items():  # an attacker's own code raised: silent for that step
                stats.setdefault("byzantine_crashes", []).append([step, p, why[:200]])
            board.report_silence({p: r.silent for p, r in results.items() if p not in byz_ids})
            honest = [results[p] for p in group if p not in byz_ids and p in results]
            views: dict[tuple, list[P.StepResult]] = {}
            for r in honest:
                key = (r.outcome, r.r, None if r.update is None else hashlib.sha256(
                    r.update.numpy().tobytes()).hexdigest())
                views.setdefault(key, []).append(r)
            ref = max(views.values(), key=len)[0]
            if len(views) > 1:  # a protocol bug if it ever happens: record it, follow the majority
                stats["honest_disagreements"] += 1
            for p, r in results.items():
                records[p] = r.record
            for e in ref.eliminations:
                stats["eliminations"].append([step, *e])
            r_prev = ref.r
            if ref.outcome == "applied":
                apply_flat_update(model, ref.update, optimizer)
                models.bump()
                stats["applied_steps"] += 1
            else:
                stats["dropped_steps"] += 1
            if eval_every and (step + 1) % eval_every == 0:
                evaluate(step + 1)
            if bar:
                bar.update(1)
                bar.set_postfix(bans=len(board.banned), acc=f"{curve[-1][1]:.3f}" if curve else "-")
        bans = [b.as_dict() for b in sorted(board.banned.values(), key=lambda b: b.step)]
        stats["moderation_queue"] = board.moderation_queue
        stats["messages"] = swarm.messages
        stats["bytes_p2p"] = swarm.bytes_sent
    elif aggregator == "kardam":
        bans = []
        _run_kardam(peers=peers, f=byzantine if rule_f is None else rule_f, staleness=staleness, steps=steps,
                    seed=seed, ids=ids, byz_ids=byz_ids, peer_objs=peer_objs, collusion=collusion, models=models,
                    model=model, optimizer=optimizer, numel=numel, base_batch=base_batch, stats=stats,
                    eval_every=eval_every, evaluate=evaluate, bar=bar)
        if "diverged_at" in stats and eval_every:
            acc = t_task.evaluate(model)
            last = curve[-1][0] if curve else 0
            curve.extend([s, acc] for s in range(last + eval_every, steps + 1, eval_every))
    else:
        rule_params = baseline_params(aggregator, f=byzantine if rule_f is None else rule_f)
        stats["rule_params"] = dict(rule_params)
        stats["baseline_version"] = BASELINE_VERSION
        r = genesis_randomness(RUN, seed)
        bounds = P.part_bounds(numel, peers)
        # adaptive attacks (optimal ALIE/IPM) search their scale against the rule in use
        collusion.aggregate = lambda x: _baseline_update(aggregator, x, rule_params, tau=tau, bounds=bounds,
                                                         seed=int.from_bytes(r[:8], "little"))
        for step in range(steps):
            fake = _baseline_view(step, ids, numel, bounds)
            honest: dict[str, torch.Tensor] = {}
            flips: dict[str, bool] = {}
            for p in ids:
                req = P.ComputeGradient(request_id="own", seed=batch_seed(r, RUN, step, p), model_ref=models.version,
                                        step=step, peer=p, purpose="own", batch_size=base_batch)
                peer = peer_objs[p]
                req2 = peer.hook_gradient_request(req)
                flips[p] = req2.flip_labels
                honest[p] = models.gradient(models.version, req.seed, False, base_batch, p)
            collusion.step, collusion.honest = step, honest
            rows = []
            for p in ids:
                g = (models.gradient(models.version, batch_seed(r, RUN, step, p), True, base_batch, p) if flips[p]
                     else honest[p])
                peer = peer_objs[p]
                if isinstance(peer, Byzantine):
                    g = peer.hook_corrupt_gradient(g.clone(), fake)
                rows.append(g)
            x = torch.stack(rows)
            if not torch.isfinite(x).all():
                # The model has already diverged (an earlier update blew it up): training is over.
                stats["diverged_at"] = step
                break
            update = _baseline_update(aggregator, x, rule_params, tau=tau, bounds=bounds,
                                      seed=int.from_bytes(r[:8], "little"))
            if not torch.isfinite(update).all():
                stats["diverged_at"] = step
                break
            apply_flat_update(model, update, optimizer)
            models.bump()
            r = hashlib.sha256(b"btard-baseline" + r).digest()
            stats["applied_steps"] += 1
            if eval_every and (step + 1) % eval_every == 0:
                evaluate(step + 1)
            if bar:
                bar.update(1)
        bans = []
        if "diverged_at" in stats and eval_every:
            # A diverged model stays diverged: record its (chance-level) accuracy at the remaining points.
            acc = t_task.evaluate(model)
            last = curve[-1][0] if curve else 0
            curve.extend([s, acc] for s in range(last + eval_every, steps + 1, eval_every))
    if bar:
        bar.close()
    elapsed = time.perf_counter() - started
    gc.set_threshold(*gc_threshold)
    cpu = time.process_time() - cpu_started
    if not curve or curve[-1][0] != steps:
        evaluate(steps)
    banned_ids = {b["peer"] for b in bans}
    out = {
        "final_accuracy": curve[-1][1],
        "accuracy_curve": curve,
        "byzantine": sorted(byz_ids),
        "bans": bans,
        "honest_banned": len(banned_ids - byz_ids),
        "byzantine_banned": len(banned_ids & byz_ids),
        "last_ban_step": max((b["step"] for b in bans), default=None),
        "seconds_per_step": elapsed / max(1, steps),
        "cpu_seconds_per_step": cpu / max(1, steps),
        "gradients_computed": models.computed,
        "args": args,
        **stats,
    }
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return out


def _run_kardam(*, peers, f, staleness, steps, seed, ids, byz_ids, peer_objs, collusion, models, model, optimizer,
                numel, base_batch, stats, eval_every, evaluate, bar) -> None:
    """Kardam's parameter server (:mod:`.btard.kardam`) with delayed workers.

    A step is one round in which every worker submits one gradient, in a random order. An honest
    worker's gradient is computed on the model as it was ``delay`` rounds ago, ``delay`` drawn each
    round uniformly from ``0..staleness`` (so ``staleness = 0`` still has up to ``n - 1`` updates of
    staleness within a round); attackers are always fresh (delay 0) and see the round's honest
    gradients, as in the synchronous baselines. Kardam's staleness is counted in accepted updates and
    dampens the step by ``1 / (1 + staleness)``. An accepted gradient goes through the task's
    optimizer scaled by ``1/n`` times that factor, so a round of n fresh accepted gradients moves the
    model like one averaged step of the synchronous baselines."""
    rng = random.Random(seed * 104729 + 17)
    server_version_at: dict[int, int] = {}

    def apply(g: torch.Tensor, step: float) -> torch.Tensor:
        apply_flat_update(model, g * step, optimizer)
        return flatten_params(model)

    server = Kardam(flatten_params(model), n=peers, f=f, lr=1.0 / peers,
                    max_staleness=peers * (staleness + 2), apply=apply)
    reasons: dict[str, int] = {}
    accepted = {"honest": 0, "byzantine": 0}
    r = genesis_randomness(RUN, seed)
    bounds = P.part_bounds(numel, peers)
    for step in range(steps):
        server_version_at[step] = server.version
        server_version_at.pop(step - staleness - 2, None)
        fake = _baseline_view(step, ids, numel, bounds)
        computed_on: dict[str, int] = {}
        honest: dict[str, torch.Tensor] = {}
        rows: dict[str, torch.Tensor] = {}
        for p in ids:
            delay = 0 if p in byz_ids else rng.randint(0, staleness)
            on = max(0, step - delay)
            computed_on[p] = on
            req = P.ComputeGradient(request_id="own", seed=batch_seed(r, RUN, step, p), model_ref=on, step=step,
                                    peer=p, purpose="own", batch_size=base_batch)
            flip = peer_objs[p].hook_gradient_request(req).flip_labels
            honest[p] = models.gradient(on, req.seed, False, base_batch, p)
            rows[p] = models.gradient(on, req.seed, True, base_batch, p) if flip else honest[p]
        collusion.step, collusion.honest = step, honest
        for p in byz_ids:
            rows[p] = peer_objs[p].hook_corrupt_gradient(rows[p].clone(), fake)
        order = list(ids)
        rng.shuffle(order)
        for p in order:
            decision = server.submit(p, rows[p], server.version - server_version_at[computed_on[p]])
            reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
            if decision.accepted:
                accepted["byzantine" if p in byz_ids else "honest"] += 1
        if not torch.isfinite(server.params).all():
            stats["diverged_at"] = step
            break
        models.bump()
        r = hashlib.sha256(b"btard-baseline" + r).digest()
        stats["applied_steps"] += 1
        if eval_every and (step + 1) % eval_every == 0:
            evaluate(step + 1)
        if bar:
            bar.update(1)
    stats["kardam"] = {"updates": server.version, "reasons": dict(sorted(reasons.items())),
                       "accepted_honest": accepted["honest"], "accepted_byzantine": accepted["byzantine"],
                       "f": f, "staleness": staleness}


def _kv(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: value must be a number") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="btard-sim", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mnist5k-mlp")
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--byzantine", type=int, default=0)
    ap.add_argument("--attack", default="none", help=f"none or one of: {', '.join(ATTACKS)}")
    ap.add_argument("--attack-start", type=int, default=0)
    ap.add_argument("--attack-every", type=int, default=1)
    ap.add_argument("--attack-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="attack parameter, e.g. eps=100 for ipm (repeatable)")
    ap.add_argument("--aggregator", default="btard",
                    help=f"btard, kardam (asynchronous baseline) or one of: {', '.join(AGGREGATORS)}")
    ap.add_argument("--non-iid", type=float, default=0.0, metavar="ALPHA",
                    help="label-skewed shards, Dirichlet(ALPHA) per class (e.g. 0.5); 0: every peer samples "
                         "the whole training set")
    ap.add_argument("--staleness", type=int, default=0,
                    help="kardam only: an honest worker computes on the model of up to this many rounds ago")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tau", type=float, default=1.0, help="CenteredClip tau per part")
    ap.add_argument("--rule-f", type=int, default=None,
                    help="f told to a baseline rule that takes one (default: the true number of attackers)")
    ap.add_argument("--validators", type=int, default=2, help="validators per step (m)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=0,
                    help="samples per step split across the group (keeps the step's batch when peers are banned)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    kwargs["attack_params"] = {k: v for k, v in kwargs.pop("attack_param")}
    try:
        out = run_simulation(**kwargs)
    except ValueError as exc:
        print(f"btard-sim: {exc}", file=sys.stderr)
        return 2
    summary = {k: out[k] for k in ("final_accuracy", "honest_banned", "byzantine_banned", "last_ban_step",
                                   "applied_steps", "dropped_steps", "seconds_per_step")}
    if "ended_early" in out:
        summary["ended_early"] = out["ended_early"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
