"""The simulator's entry point and its BTARD loop: the protocol core over the in-memory transport, in
the worker's mode (docs/protocol.md, "btard-sim").

The worker's mode (``mode="worker"``, the default) is what a deployment runs: every peer's board
broadcasts count only once the board echoed them back (``ProtocolParams.board_echo``), board phases close
when the board closes them with its list of senders (``MemorySwarm(site_closes=True)``), the group of each
step is ordered by the previous step's randomness on the board (:func:`btard_wire.randomness.group_order`,
as the site orders it), and peers that join later go through probation (:mod:`.probation`).
``mode="shared_view"`` is the earlier simulator: peers close phases on their own (shared) view and the
group keeps its order; it is kept to compare figures with runs made before the change.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from btard_wire.randomness import genesis_randomness, group_order, skipped_randomness

from ..btard import protocol as P
from ..btard.aggregators import AGGREGATORS
from ..btard.attacks import ATTACKS
from ..tasks import UndoPoint, apply_flat_update
from .baseline import check_baseline, check_kardam, run_baseline, run_kardam
from .probation import Probation
from .world import RUN, Outcome, World, build_world

MODES = ("worker", "shared_view")


def run_btard(world: World, *, mode: str, probation: Probation | None) -> Outcome:
    """``world.steps`` steps of the protocol; the board bans, the honest majority's view is the run's."""
    out, board, swarm, models = world.outcome, world.swarm.board, world.swarm.memory, world.models
    stats = out.stats
    r_prev = genesis = genesis_randomness(RUN, world.seed)
    board_r: bytes | None = None  # the previous step's MPRNG output on the board (None: it had none)
    board_withheld = False  # that output left out a committed member's withheld reveal
    records: dict[str, P.StepRecord | None] = {p: None for p in world.ids}
    undo: tuple[int, UndoPoint] | None = None  # (step, the state before its update): the last applied step
    stats.setdefault("reverted_steps", [])
    for step in range(world.steps):
        group = board.next_group()
        if mode == "worker":  # as the site orders it (the run's public chain when the last step had no r)
            group = group_order(board_r or skipped_randomness(genesis, RUN, step), group)
        contexts = {p: P.StepContext(run=RUN, step=step, group=group, public_keys=world.keys, r_prev=r_prev,
                                     numel=world.numel, model_ref=models.version, prev=records[p])
                    for p in group}
        honest_left = [p for p in group if p not in world.byz_ids]
        if not honest_left:  # every honest peer is banned or eliminated: the run is over
            stats["ended_early"] = {"step": step, "reason": f"no honest peer left ({len(group)} peers in "
                                                             f"the group, {len(board.banned)} banned)"}
            break
        model_ref = models.version
        if probation is not None:
            probation.count_members(group)
        results = swarm.run_step(contexts)
        for p, why in swarm.crashed.items():  # an attacker's own code raised: silent for that step
            stats.setdefault("byzantine_crashes", []).append([step, p, why[:200]])
        board.report_silence({p: r.silent for p, r in results.items() if p not in world.byz_ids})
        honest = [results[p] for p in group if p not in world.byz_ids and p in results]
        views = honest_views(honest)
        ref = max(views, key=len)[0]
        if len(views) > 1:  # a protocol bug if it ever happens: record it, follow the majority
            stats["honest_disagreements"] += 1
        for p, r in results.items():
            records[p] = r.record
        for e in ref.eliminations:
            stats["eliminations"].append([step, *e])
        if probation is not None:  # the site checks candidates beside the step and promotes at its close
            promoted = probation.step(step, group=group, randomness=board_r, withheld_reveals=board_withheld,
                                      model_ref=model_ref,
                                      banned=set(board.banned))
            board.members.extend(promoted)
        r_prev, board_r, board_withheld = ref.r, board.randomness(), board.reveals_withheld()
        if ref.revert_previous and undo is not None and undo[0] == step - 1:
            # a recalculation ban caught a contributor of step - 1: undo that step's update
            undo[1].restore(list(world.model.parameters()), world.optimizer)
            models.bump()
            stats["applied_steps"] -= 1
            stats["reverted_steps"].append(step - 1)
        undo = None
        if ref.outcome == "applied":
            undo = (step, UndoPoint(list(world.model.parameters()), world.optimizer,
                                    before=models.states[models.version]))
            apply_flat_update(world.model, ref.update, world.optimizer)
            models.bump()
            stats["applied_steps"] += 1
        else:
            stats["dropped_steps"] += 1
        world.tick(step, bans=len(board.banned), acc=f"{out.curve[-1][1]:.3f}" if out.curve else "-")
    out.bans = [b.as_dict() for b in sorted(board.banned.values(), key=lambda b: b.step)]
    stats["moderation_queue"] = board.moderation_queue
    stats["messages"] = swarm.messages
    stats["bytes_p2p"] = swarm.bytes_sent
    if probation is not None:
        stats["probation"] = probation.summary()
    return out


def _same_update(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """The two updates are the same bytes (what a SHA-256 of each would compare, without hashing or copying
    them): float32 values compared as their bit patterns, so -0.0 differs from 0.0 and a NaN equals
    itself, exactly as the bytes do."""
    if a is None or b is None:
        return a is b
    if a is b:
        return True
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype != b.dtype or a.numel() != b.numel():
        return a.numpy().tobytes() == b.numpy().tobytes()
    bits = _BITS.get(a.dtype)
    if bits is None:  # pragma: no cover - updates are float32
        return a.numpy().tobytes() == b.numpy().tobytes()
    return torch.equal(a.view(bits), b.view(bits))


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def honest_views(results: list[P.StepResult]) -> list[list[P.StepResult]]:
    """The honest peers' results grouped by what they saw: outcome, ``r`` and the update's bytes, in
    order of first appearance (one group when they agree, as they must)."""
    views: list[list[P.StepResult]] = []
    for r in results:
        for view in views:
            first = view[0]
            if first.outcome == r.outcome and first.r == r.r and _same_update(first.update, r.update):
                view.append(r)
                break
        else:
            views.append([r])
    return views


def _check(*, peers, byzantine, attack, aggregator, staleness, rule_f, mode, joiners, byzantine_joiners,
           join_step, probation_steps) -> int:
    """Refuse inconsistent arguments before anything is built; returns the number of attackers."""
    if aggregator not in ("btard", "kardam") and aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}; use btard, kardam or one of {sorted(AGGREGATORS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
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
    if joiners < 0 or not (0 <= byzantine_joiners <= joiners) or join_step < 1 or probation_steps < 0:
        raise ValueError("need joiners >= 0, 0 <= byzantine_joiners <= joiners, join_step >= 1 and "
                         "probation_steps >= 0")
    if byzantine_joiners and attack in ("none", "", None):
        raise ValueError("byzantine joiners run --attack: name one")
    if joiners and aggregator != "btard":
        raise ValueError("--joiners go through BTARD's probation: use them with --aggregator btard")
    f = byzantine if rule_f is None else rule_f
    if aggregator == "kardam":  # Kardam needs n >= 3f+1
        check_kardam(peers=peers, f=f)
    elif aggregator != "btard":  # a failed precondition (e.g. Krum's n >= 2f+3) is an error before step 0
        check_baseline(aggregator, peers=peers, f=f)
    return byzantine


def run_simulation(*, task: str = "mnist5k-mlp", peers: int = 16, byzantine: int = 0, attack: str = "none",
                   attack_start: int = 0, attack_every: int = 1, aggregator: str = "btard", steps: int = 300,
                   seed: int = 0, tau: float = 1.0, validators: int = 2, batch_size: int = 32,
                   global_batch: int = 0,
                   lr: float | None = None, eval_every: int = 10, progress: bool = False,
                   attack_params: dict | None = None, threads: int | None = None, rule_f: int | None = None,
                   staleness: int = 0, non_iid: float = 0.0, mode: str = "worker", joiners: int = 0,
                   byzantine_joiners: int = 0, join_step: int = 10, probation_steps: int = 5,
                   protocol_params: dict | None = None, json_path: str | Path | None = None) -> dict:
    """Simulate ``steps`` steps and return the run summary (see ``docs/protocol.md``, "btard-sim")."""
    args = {"task": task, "peers": peers, "byzantine": byzantine, "attack": attack, "attack_start": attack_start,
            "attack_every": attack_every, "aggregator": aggregator, "steps": steps, "seed": seed, "tau": tau,
            "validators": validators, "batch_size": batch_size, "global_batch": global_batch, "lr": lr,
            "eval_every": eval_every, "rule_f": rule_f, "staleness": staleness, "non_iid": non_iid,
            "attack_params": attack_params or {}, "protocol_params": protocol_params or {}, "mode": mode}
    if joiners:  # recorded only when used, so the args of earlier runs' cells compare equal
        args.update(joiners=joiners, byzantine_joiners=byzantine_joiners, join_step=join_step,
                    probation_steps=probation_steps)
    byzantine = _check(peers=peers, byzantine=byzantine, attack=attack, aggregator=aggregator, staleness=staleness,
                       rule_f=rule_f, mode=mode, joiners=joiners, byzantine_joiners=byzantine_joiners,
                       join_step=join_step, probation_steps=probation_steps)
    if threads:
        import torch  # already loaded by the world's modules; here only to set its thread count

        torch.set_num_threads(threads)
    btard = aggregator == "btard"
    world = build_world(task=task, peers=peers, byzantine=byzantine, attack=attack, attack_start=attack_start,
                        attack_every=attack_every, attack_params=attack_params or {}, joiners=joiners,
                        byzantine_joiners=byzantine_joiners, seed=seed, tau=tau, validators=validators,
                        batch_size=batch_size, global_batch=global_batch, lr=lr, staleness=staleness,
                        non_iid=non_iid, protocol_params=protocol_params or {},
                        board_echo=btard and mode == "worker", site_closes=btard and mode == "worker",
                        steps=steps, eval_every=eval_every, progress=progress, label=f"{aggregator}/{attack}")
    world.outcome.stats.update({"applied_steps": 0, "dropped_steps": 0, "eliminations": [],
                                "honest_disagreements": 0})
    # Many short-lived protocol objects per step: collect garbage less often (restored below).
    gc_threshold = gc.get_threshold()
    gc.set_threshold(100_000, 50, 50)
    started = time.perf_counter()
    cpu_started = time.process_time()
    f = byzantine if rule_f is None else rule_f
    try:
        if btard:
            probation = Probation(world, join_step=join_step, required=probation_steps) if joiners else None
            out = run_btard(world, mode=mode, probation=probation)
        elif aggregator == "kardam":
            out = run_kardam(world, f=f, staleness=staleness)
        else:
            out = run_baseline(world, rule=aggregator, f=f, tau=tau)
    finally:
        if world.bar:
            world.bar.close()
        gc.set_threshold(*gc_threshold)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    summary = summarise(world, out, args=args, elapsed=elapsed, cpu=cpu)
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=1))
    return summary


def summarise(world: World, out: Outcome, *, args: dict, elapsed: float, cpu: float) -> dict:
    """The run summary (a JSON-ready dict) from any loop's :class:`~.world.Outcome`."""
    steps = world.steps
    if not out.curve or out.curve[-1][0] != steps:
        world.evaluate(steps)
    banned_ids = {b["peer"] for b in out.bans}
    return {
        "final_accuracy": out.curve[-1][1],
        "accuracy_curve": out.curve,
        "byzantine": sorted(world.byz_ids),
        "bans": out.bans,
        "honest_banned": len(banned_ids - world.byz_ids),
        "byzantine_banned": len(banned_ids & world.byz_ids),
        "last_ban_step": max((b["step"] for b in out.bans), default=None),
        "seconds_per_step": elapsed / max(1, steps),
        "cpu_seconds_per_step": cpu / max(1, steps),
        "gradients_computed": world.models.computed,
        "args": args,
        **out.stats,
    }
