"""``btard-experiments``: run grids of ``btard-sim`` cells in parallel, resumably, and report them.

Each cell is one simulated run (:func:`worker_client.sim.run_simulation`). Results go to
``results/<grid>.jsonl`` (one JSON object per cell, appended as cells finish, so an interrupted grid
resumes where it stopped), then a Markdown table ``results/<grid>.md`` and PNG plots
``results/<grid>-<attack>.png`` are rebuilt from the whole file.

    btard-experiments smoke            # a few cells, well under a minute
    btard-experiments paper --jobs 2   # the robustness table (about an hour on 2 cores)
    btard-experiments fashion          # Fashion-MNIST CNN (needs apt-get install dataset-fashion-mnist)
    btard-experiments adaptive         # adaptive and time-coupled attacks, non-IID columns
    btard-experiments paper --report-only

Grids that outgrow one machine run their cells as Celery tasks on a Redis broker instead
(:mod:`worker_client.grid_celery`): start ``btard-experiments worker --broker redis://HOST:6379/DB``
on every machine that should compute, then ``btard-experiments GRID --broker redis://HOST:6379/DB``
on one; results land in the same ``results/<grid>.jsonl`` and resume the same way.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "results"

GRADIENT_ATTACKS = ["none", "sign_flip", "random_direction", "label_flip", "delayed", "ipm", "alie"]
SIM_DEFAULT_VALIDATORS = 2  # run_simulation's default m
# m for BTARD in the paper and fashion grids. The spec's calibration (and our first paper run with m = 2,
# results/ablation-btard-m2.jsonl) shows ALIE is the binding attack and that the number of validators per
# step sets how long attackers stay in; m = 4 bans all 7 in about 5 steps instead of about 12.
PAPER_VALIDATORS = 4
# BTARD in the paper and fashion grids keeps the step's batch at 16 x 32 samples however many peers are
# banned (ProtocolParams.global_batch). With a per-peer batch, banning 7 of 16 attackers leaves steps of
# 9 x 32 samples: on the still-learning Fashion-MNIST CNN that alone cost 1.0-1.3 points
# (results/ablation-fashion-per-peer-batch.jsonl); the baselines never lose peers, so for them it is the same.
PAPER_BATCH = 32
# Baselines whose configuration changed in baseline version 2 (worker_client.sim.BASELINE_VERSION): told
# the true f (trimmed mean trimmed floor(0.1 n) per side before; Krum and Bulyan had f capped by their
# preconditions), the usual median for even n, Bulyan fixed for repeated values. Their cells carry the
# version in their key, so a grid reruns them; the report leaves the version-1 rows out.
RECONFIGURED_BASELINES = ("median", "trimmed_mean", "krum", "multi_krum", "bulyan")


@dataclass(frozen=True)
class Cell:
    """One simulated run. ``key`` identifies it in the results file (used to resume)."""

    task: str
    peers: int
    byzantine: int
    attack: str
    aggregator: str
    tau: float
    seed: int
    attack_every: int = 1
    attack_start: int = 50
    steps: int = 300
    validators: int | None = None
    global_batch: int = 0
    staleness: int = 0  # Kardam's delayed workers (btard-sim --staleness)
    non_iid: float = 0.0  # Dirichlet alpha of label-skewed shards (btard-sim --non-iid); 0: IID
    # BTARD's per-part tau (ProtocolParams.tau_rule, btard-sim --tau-rule): "fixed" uses ``tau``; "spread"
    # uses ``tau_spread`` x the part's majority-th published distance (``tau`` only where that is 0).
    # A cell's default stays "fixed" (the rule every committed row before 2026-12-01 ran with, so their
    # keys stay valid) although the protocol's default is now "spread": sim_kwargs always names it
    tau_rule: str = "fixed"
    tau_spread: float = 0.5
    # BTARD undoes step t-1 when step t bans by recalculation (ProtocolParams.revert_on_recalc_ban). A
    # cell's default stays off (every committed row before 2026-12-03 ran without it, so their keys stay
    # valid and re-run to the same numbers) although the protocol's default is now on: sim_kwargs names it
    undo: bool = False
    # BTARD draws alarm x m validators in a step that follows a recalculation ban
    # (ProtocolParams.alarm_factor). A cell's default stays 1, off (every committed row before 2026-12-04
    # ran without it, so their keys stay valid), although the protocol's default is 2: sim_kwargs names it
    alarm: int = 1
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        fields = [self.task, self.peers, self.byzantine, self.attack, self.aggregator, self.tau, self.seed,
                  self.attack_every, self.attack_start, self.steps, self.validators]
        if self.global_batch:  # appended only when set, so the keys of older results stay valid
            fields.append({"global_batch": self.global_batch})
        if self.aggregator in RECONFIGURED_BASELINES:
            fields.append({"baselines": 2})
        if self.aggregator == "kardam":
            fields.append({"staleness": self.staleness})
        if self.non_iid:
            fields.append({"non_iid": self.non_iid})
        if self.tau_rule != "fixed":  # appended only when set, so the keys of older results stay valid
            fields.append({"tau_rule": self.tau_rule, "tau_spread": self.tau_spread})
        if self.undo:
            fields.append({"undo": True})
        if self.alarm != 1:
            fields.append({"alarm": self.alarm})
        return json.dumps(fields)

    @property
    def defence(self) -> str:
        """Row label: aggregator, with tau where the rule has one (and m, validators per step, for BTARD)."""
        return defence_label(self.aggregator, self.tau, self.validators, self.global_batch, self.staleness,
                             tau_rule=self.tau_rule, tau_spread=self.tau_spread, undo=self.undo,
                             alarm=self.alarm)

    @property
    def column(self) -> str:
        label = self.attack
        if self.attack != "none" and self.attack_every != 1:
            label += f" /{self.attack_every}"
        if self.attack != "none":
            label += f" b={self.byzantine}"
        if self.non_iid:
            label += f" non-iid {self.non_iid:g}"
        return label

    def sim_kwargs(self) -> dict:
        kwargs = {"task": self.task, "peers": self.peers, "byzantine": self.byzantine, "attack": self.attack,
                  "aggregator": self.aggregator, "tau": self.tau, "seed": self.seed, "attack_every": self.attack_every,
                  "attack_start": self.attack_start, "steps": self.steps, "progress": False}
        if self.validators is not None:
            kwargs["validators"] = self.validators
        if self.global_batch:
            kwargs["global_batch"] = self.global_batch
        if self.staleness:
            kwargs["staleness"] = self.staleness
        if self.non_iid:
            kwargs["non_iid"] = self.non_iid
        if self.aggregator == "btard":  # always named: the protocol's default rule is not the cells' default
            kwargs["protocol_params"] = {"tau_rule": self.tau_rule, "tau_spread": self.tau_spread,
                                         "revert_on_recalc_ban": self.undo, "alarm_factor": self.alarm}
        kwargs.update(self.extra)
        return kwargs


def defence_label(aggregator: str, tau: float, validators: int | None = None, global_batch: int = 0,
                  staleness: int = 0, *, tau_rule: str = "fixed", tau_spread: float = 0.5, undo: bool = False,
                  alarm: int = 1) -> str:
    if aggregator == "btard":
        m = SIM_DEFAULT_VALIDATORS if validators is None else validators
        tau_text = f"tau {tau:g}" if tau_rule == "fixed" else f"tau {tau_rule} {tau_spread:g}"
        return f"btard ({tau_text}, m={m}{', B=' + str(global_batch) if global_batch else ''}{', undo' if undo else ''}{f', alarm x{alarm}' if alarm != 1 else ''})"
    if aggregator.endswith("centered_clip"):
        return f"{aggregator} (tau {tau:g})"
    if aggregator == "kardam":
        return f"kardam (staleness {staleness})"
    return aggregator


def _cells(task: str, *, peers: int, byzantine: int, attacks: Iterable[str], defences: Iterable[tuple[str, float]],
           seeds: Iterable[int], steps: int, attack_start: int, attack_every: int = 1,
           btard_validators: int | None = None, btard_global_batch: int = 0, staleness: int = 0,
           non_iid: float = 0.0, tau_rule: str = "fixed", tau_spread: float = 0.5, undo: bool = False,
           alarm: int = 1, **extra) -> list[Cell]:
    out = []
    for seed in seeds:
        for attack in attacks:
            for aggregator, tau in defences:
                b = 0 if attack == "none" else byzantine
                if not _can_run(aggregator, peers, b):
                    continue  # e.g. Krum needs n >= 2f+3, Bulyan n >= 4f+3: told the true f, it cannot run
                out.append(Cell(task=task, peers=peers, byzantine=b, attack=attack, aggregator=aggregator,
                                tau=tau, seed=seed, attack_every=attack_every, attack_start=attack_start,
                                steps=steps, validators=btard_validators if aggregator == "btard" else None,
                                global_batch=btard_global_batch if aggregator == "btard" else 0,
                                staleness=staleness if aggregator == "kardam" else 0, non_iid=non_iid,
                                tau_rule=tau_rule if aggregator == "btard" else "fixed", tau_spread=tau_spread,
                                undo=undo and aggregator == "btard", alarm=alarm if aggregator == "btard" else 1,
                                extra=extra))
    return out


@functools.cache
def _can_run(aggregator: str, peers: int, byzantine: int) -> bool:
    """Whether a baseline told the true number of attackers meets its precondition (BTARD always runs)."""
    if aggregator == "btard":
        return True
    if aggregator == "kardam":
        return peers >= 3 * byzantine + 1
    from worker_client.sim import check_baseline  # imports torch: only when a grid has baselines

    try:
        check_baseline(aggregator, peers=peers, f=byzantine)
    except ValueError:
        return False
    return True


def grid_smoke() -> list[Cell]:
    return _cells("mnist5k-mlp", peers=8, byzantine=3, attacks=["none", "sign_flip"],
                  defences=[("mean", 1.0), ("btard", 1.0)], seeds=[0], steps=30, attack_start=10)


PAPER_DEFENCES = [("mean", 1.0), ("median", 1.0), ("trimmed_mean", 1.0), ("krum", 1.0), ("geometric_median", 1.0),
                  ("centered_clip", 1.0), ("centered_clip", 10.0), ("btard", 1.0), ("btard", 10.0)]


def grid_paper() -> list[Cell]:
    seeds = [0, 1, 2]
    m, gb = PAPER_VALIDATORS, 16 * PAPER_BATCH
    cells = _cells("mnist5k-mlp", peers=16, byzantine=7, attacks=GRADIENT_ATTACKS, defences=PAPER_DEFENCES,
                   seeds=seeds, steps=300, attack_start=50, btard_validators=m, btard_global_batch=gb)
    subset_attacks = ["sign_flip", "ipm", "alie"]
    subset_defences = [("mean", 1.0), ("median", 1.0), ("bulyan", 1.0), ("centered_clip", 1.0), ("btard", 1.0)]
    # Krum told f = 7 needs n >= 17: it runs in the b=3 columns only (and without attackers)
    b3_defences = [*subset_defences, ("krum", 1.0)]
    # Rare strikes: every 10th step, 7 attackers.
    cells += _cells("mnist5k-mlp", peers=16, byzantine=7, attacks=subset_attacks, defences=subset_defences,
                    seeds=seeds, steps=300, attack_start=50, attack_every=10, btard_validators=m, btard_global_batch=gb)
    # 3 attackers, where Bulyan (n >= 4f+3) and Krum (n >= 2f+3) can run.
    cells += _cells("mnist5k-mlp", peers=16, byzantine=3, attacks=subset_attacks, defences=b3_defences,
                    seeds=seeds, steps=300, attack_start=50, btard_validators=m, btard_global_batch=gb)
    # The protocol's default since 2026-12-01: the scale-following tau (spread 0.5) in every BTARD column
    spread = {"tau_rule": "spread", "tau_spread": 0.5, "seeds": seeds, "steps": 300, "attack_start": 50,
              "btard_validators": m, "btard_global_batch": gb}
    cells += _cells("mnist5k-mlp", peers=16, byzantine=7, attacks=GRADIENT_ATTACKS, defences=[("btard", 1.0)],
                    **spread)
    cells += _cells("mnist5k-mlp", peers=16, byzantine=7, attacks=subset_attacks, defences=[("btard", 1.0)],
                    attack_every=10, **spread)
    cells += _cells("mnist5k-mlp", peers=16, byzantine=3, attacks=subset_attacks, defences=[("btard", 1.0)], **spread)
    # Seed-major order: an interrupted run still has whole tables for its first seeds.
    return sorted(cells, key=lambda c: c.seed)


def grid_fashion() -> list[Cell]:
    return _cells("fashion-cnn", peers=16, byzantine=7, attacks=["none", "sign_flip", "ipm", "alie"],
                  defences=[("mean", 1.0), ("centered_clip", 1.0), ("btard", 1.0)], seeds=[0], steps=600,
                  attack_start=100, btard_validators=PAPER_VALIDATORS,
                  btard_global_batch=16 * PAPER_BATCH)


PREAGG_DEFENCES = [(f"{pre}+{rule}", tau) for pre in ("nnm", "bucketing")
                   for rule, tau in (("centered_clip", 1.0), ("krum", 1.0), ("median", 1.0))]


def grid_preagg() -> list[Cell]:
    """Pre-aggregation baselines (NNM, bucketing with buckets of 2) on the paper's setting, seed 0.
    Compositions whose rule cannot run when told the true f (Krum on 16 NNM rows with f = 7, on 8
    buckets with f >= 3) are left out."""
    cells = []
    for b in (7, 3):
        cells += _cells("mnist5k-mlp", peers=16, byzantine=b, attacks=["none", "sign_flip", "ipm", "alie"] if b == 7
                        else ["sign_flip", "ipm", "alie"], defences=PREAGG_DEFENCES, seeds=[0], steps=300,
                        attack_start=50)
    return cells


def grid_kardam() -> list[Cell]:
    """Kardam, the asynchronous baseline, with delayed workers: 3 of 16 attackers (Kardam needs n >= 3f+1,
    so 7 of 16 cannot run), honest workers up to 0 or 4 rounds stale, seed 0; the synchronous mean and
    CenteredClip in the same columns for reference."""
    cells = []
    for staleness in (0, 4):
        cells += _cells("mnist5k-mlp", peers=16, byzantine=3, attacks=["none", "sign_flip", "label_flip", "ipm", "alie"],
                        defences=[("kardam", 1.0)], seeds=[0], steps=300, attack_start=50, staleness=staleness)
    cells += _cells("mnist5k-mlp", peers=16, byzantine=3, attacks=["none", "sign_flip", "label_flip", "ipm", "alie"],
                    defences=[("mean", 1.0), ("centered_clip", 1.0)], seeds=[0], steps=300, attack_start=50)
    return cells


# The adaptive grid (issue 17). Every attack searches, times or couples itself; BTARD's columns first.
# tolerance_ride, timed_lowest_chance and the free riders are BTARD-only columns: without validation
# there is nothing to ride under or to time (against a trusted server tolerance_ride is a bias of about
# 1e-5 of the gradient and timed_lowest_chance is plain ALIE on every step), and a free rider is one
# honest gradient fewer.
ADAPTIVE_GRID_ATTACKS = ["optimal_alie", "optimal_ipm", "rop", "mimic", "tolerance_ride", "timed_lowest_chance",
                         "free_rider_zeros", "free_rider_stale", "free_rider_copy"]
BTARD_ONLY_ATTACKS = {"tolerance_ride", "timed_lowest_chance", "free_rider_zeros", "free_rider_stale",
                      "free_rider_copy"}
NON_IID_ALPHA = 0.5
NON_IID_ATTACKS = ["none", "sign_flip", "ipm", "alie", "mimic", "optimal_alie", "rop"]
ADAPTIVE_BASELINES = [("mean", 1.0), ("median", 1.0), ("geometric_median", 1.0), ("centered_clip", 1.0)]
# 200 steps (the paper grid has 300): one BTARD step costs 0.3 s of CPU on this shared machine, and the
# grid had about an hour of wall time on 2 cores shared by eight jobs; MNIST's MLP is within a few tenths
# of its plateau by then
ADAPTIVE_STEPS = 200
# the columns run first: the strongest adaptive attacks and the non-IID basics
ADAPTIVE_FIRST = ["none", "optimal_alie", "tolerance_ride", "timed_lowest_chance", "optimal_ipm", "rop"]
NON_IID_FIRST = ["none", "alie", "mimic", "optimal_alie"]


def grid_adaptive() -> list[Cell]:
    """BTARD (tau 1, m = 4, B = 512) and the main baselines against the adaptive and time-coupled attacks
    (7 of 16 from step 50, 200 steps) and in non-IID columns (Dirichlet 0.5 label-skewed shards), 3
    seeds. The order is a priority, so that an interrupted run (or one stopped at its time budget) has
    the most telling cells: BTARD's first columns on seed 0, the baselines' first columns on seed 0,
    BTARD's first columns on seeds 1 and 2, then BTARD's other columns, then the rest."""
    m, gb = PAPER_VALIDATORS, 16 * PAPER_BATCH
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50, "btard_validators": m,
              "btard_global_batch": gb}
    btard = [("btard", 1.0)]
    iid = ["none", *ADAPTIVE_GRID_ATTACKS]
    baseline_iid = ["none", *(a for a in ADAPTIVE_GRID_ATTACKS if a not in BTARD_ONLY_ATTACKS)]

    def cells(defences, attacks, non_iid_attacks, seeds):
        out = _cells("mnist5k-mlp", attacks=attacks, defences=defences, seeds=seeds, **common)
        out += _cells("mnist5k-mlp", attacks=non_iid_attacks, defences=defences, seeds=seeds,
                      non_iid=NON_IID_ALPHA, **common)
        return sorted(out, key=lambda c: c.seed)

    tiers = [cells(btard, ADAPTIVE_FIRST, NON_IID_FIRST, [0]),
             cells(ADAPTIVE_BASELINES, [a for a in ADAPTIVE_FIRST if a in baseline_iid], NON_IID_FIRST, [0]),
             cells(btard, ADAPTIVE_FIRST, NON_IID_FIRST, [1, 2]),
             cells(btard, iid, NON_IID_ATTACKS, [0, 1, 2]),
             cells(ADAPTIVE_BASELINES, baseline_iid, NON_IID_ATTACKS, [0, 1, 2])]
    out, seen = [], set()
    for tier in tiers:
        for c in tier:
            if c.key not in seen:
                seen.add(c.key)
                out.append(c)
    return out


def grid_adaptive_ablation() -> list[Cell]:
    """Why BTARD misses its target under optimal ALIE at tau 1 (docs/results.md): the same cells with a
    smaller tau (0.1, the scale of the honest distances per part) and with more validators (m = 8, so
    the attackers are banned sooner), seed 0; then seeds 1 and 2 of tau 1 and tau 0.1 (m = 4), and of m = 8."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH}
    cells = _cells("mnist5k-mlp", attacks=["none", "optimal_alie"], defences=[("btard", 0.1)],
                   btard_validators=PAPER_VALIDATORS, seeds=[0], **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], btard_validators=8,
                    seeds=[0], **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0), ("btard", 0.1)],
                    btard_validators=PAPER_VALIDATORS, seeds=[1, 2], **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], btard_validators=8,
                    seeds=[1, 2], **common)
    return cells


def grid_tau_rule() -> list[Cell]:
    """The scale-following tau (ProtocolParams.tau_rule = "spread", docs/results.md "Where BTARD misses"):
    the ``adaptive-ablation`` setting (16 peers, 7 optimal ALIE from step 50, m = 4, B = 512, 200 steps),
    spread 0.5 on seeds 0-2 with their clean runs, then spread 1.0 on seed 0 (attacked cells first), then
    spread 0.5 with non-IID shards (Dirichlet 0.5), seed 0; the fixed-tau rows to
    compare with are that grid's."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH, "btard_validators": PAPER_VALIDATORS}
    cells = _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[0, 1, 2],
                   tau_rule="spread", tau_spread=0.5, **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[0],
                    tau_rule="spread", tau_spread=1.0, **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[0],
                    tau_rule="spread", tau_spread=0.5, non_iid=0.5, **common)
    # non-IID, seed 0: faster bans (m = 8) and a smaller constant (0.25)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[0],
                    tau_rule="spread", tau_spread=0.5, non_iid=0.5, **{**common, "btard_validators": 8})
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[0],
                    tau_rule="spread", tau_spread=0.25, non_iid=0.5, **common)
    # by priority (a grid cut short by the time it has): the attacked cells of every seed, then the clean ones
    return sorted(cells, key=lambda c: (c.non_iid != 0, c.tau_spread != 0.5, c.attack == "none", c.seed))


def grid_adaptive_spread() -> list[Cell]:
    """Whether the scale-following tau should be BTARD's default (docs/results.md "Where BTARD misses"): the
    two columns BTARD misses at tau 1, optimal ALIE with IID and with non-IID (Dirichlet 0.5) shards, with
    their clean runs, seeds 0-2, for tau 1 fixed and spread 0.5 (m = 4), and non-IID spread 0.5 with m = 8;
    then spread 0.5 (m = 4) in every other BTARD column of the ``adaptive`` grid, seeds 0-2 (what the
    default would change there); then m = 8 with either rule in both missed columns and with spread in the
    other non-IID columns. Cells shared with the ``adaptive``, ``adaptive-ablation`` or ``tau-rule`` grid
    have their keys (their rows are copied, not re-run). Order: the missed columns (attacked cells first),
    the other columns, the m = 8 cells, non-IID free riders (what losing the attackers' shards costs), the
    m = 8 clean runs last (a clean run does not depend on m)."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH, "btard_validators": PAPER_VALIDATORS}
    cells = []
    for non_iid in (0.0, NON_IID_ALPHA):
        for rule in ("fixed", "spread"):
            cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)],
                            seeds=[0, 1, 2], tau_rule=rule, tau_spread=0.5, non_iid=non_iid, **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[0, 1, 2],
                    tau_rule="spread", tau_spread=0.5, non_iid=NON_IID_ALPHA, **{**common, "btard_validators": 8})
    missed = len(cells)
    cells += _cells("mnist5k-mlp", attacks=[a for a in ADAPTIVE_GRID_ATTACKS if a != "optimal_alie"],
                    defences=[("btard", 1.0)], seeds=[0, 1, 2], tau_rule="spread", tau_spread=0.5, **common)
    cells += _cells("mnist5k-mlp", attacks=[a for a in NON_IID_ATTACKS if a not in ("none", "optimal_alie")],
                    defences=[("btard", 1.0)], seeds=[0, 1, 2], tau_rule="spread", tau_spread=0.5,
                    non_iid=NON_IID_ALPHA, **common)
    others = len(cells)
    # more validators (m = 8): both rules in both missed columns (IID fixed: the adaptive-ablation grid's
    # cells), and spread in the other non-IID columns
    for non_iid in (0.0, NON_IID_ALPHA):
        for rule in ("fixed", "spread"):
            cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)],
                            seeds=[0, 1, 2], tau_rule=rule, tau_spread=0.5, non_iid=non_iid,
                            **{**common, "btard_validators": 8})
    cells += _cells("mnist5k-mlp", attacks=[a for a in NON_IID_ATTACKS if a not in ("none", "optimal_alie")],
                    defences=[("btard", 1.0)], seeds=[0, 1, 2], tau_rule="spread", tau_spread=0.5,
                    non_iid=NON_IID_ALPHA, **{**common, "btard_validators": 8})
    extended = len(cells)
    # how much of a non-IID gap is the 7 attackers' shards missing once they are banned (no defence gets
    # them back): free riders that send zeros are banned as fast as the other attackers and pull little
    # before (0.0 IID), so their non-IID gap is about what losing 7 shards costs
    for rule in ("fixed", "spread"):
        for m in (4, 8):
            cells += _cells("mnist5k-mlp", attacks=["free_rider_zeros"], defences=[("btard", 1.0)],
                            seeds=[0, 1, 2], tau_rule=rule, tau_spread=0.5, non_iid=NON_IID_ALPHA,
                            **{**common, "btard_validators": m})
    tier: dict[str, int] = {}
    for i, c in enumerate(cells):
        tier.setdefault(c.key, 0 if i < missed else 1 if i < others else 2 if i < extended else 3)
    cells = list({c.key: c for c in cells}.values())
    return sorted(cells, key=lambda c: (c.attack == "none" and c.validators == 8, tier[c.key], c.seed,
                                        c.attack == "none"))


def grid_adaptive_spread_seeds() -> list[Cell]:
    """Seeds 3 and 4 of the ``adaptive-spread`` decision cells: optimal ALIE and the clean run, IID and
    non-IID, with tau 1 (m = 4) and spread 0.5 (m = 4 and m = 8), and the non-IID free riders (m = 4)."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH}
    cells = []
    for seed in (3, 4):
        for non_iid in (0.0, NON_IID_ALPHA):
            for rule, m in (("fixed", 4), ("spread", 4), ("spread", 8)):
                cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)],
                                seeds=[seed], tau_rule=rule, tau_spread=0.5, non_iid=non_iid,
                                btard_validators=m, **common)
        for rule in ("fixed", "spread"):
            cells += _cells("mnist5k-mlp", attacks=["free_rider_zeros"], defences=[("btard", 1.0)], seeds=[seed],
                            tau_rule=rule, tau_spread=0.5, non_iid=NON_IID_ALPHA, btard_validators=4, **common)
    return cells


def grid_noniid_ablation() -> list[Cell]:
    """The one column BTARD still misses (docs/results.md "Where BTARD misses"): non-IID (Dirichlet 0.5)
    optimal ALIE, which spread 0.5 with m = 8 leaves at -1.1 on seeds 0-2. The two factors of its damage
    pushed further, each on its own: a smaller tau (spread 0.25, m = 8: each pre-ban step moves less) and more
    validators (spread 0.5, m = 12: the bans come sooner), each with its clean run, seeds 0-2; then seeds 3
    and 4 of m = 12, the setting that met the 1-point target on seeds 0-2."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH}
    cells = []
    for tau_spread, m in ((0.25, 8), (0.5, 12)):
        cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)],
                        seeds=[0, 1, 2], tau_rule="spread", tau_spread=tau_spread, non_iid=NON_IID_ALPHA,
                        btard_validators=m, **common)
    cells += _cells("mnist5k-mlp", attacks=["optimal_alie", "none"], defences=[("btard", 1.0)], seeds=[3, 4],
                    tau_rule="spread", tau_spread=0.5, non_iid=NON_IID_ALPHA, btard_validators=12, **common)
    return cells


UNDO_IID_ATTACKS = ["optimal_alie", "optimal_ipm", "rop", "timed_lowest_chance"]
UNDO_NON_IID_ATTACKS = ["optimal_alie", "alie", "rop"]


def grid_undo() -> list[Cell]:
    """Undoing the step a recalculation ban's attacker was aggregated in (ProtocolParams.revert_on_recalc_ban,
    docs/protocol.md step 10) on ``mnist5k-mlp`` in the protocol's default setting (spread 0.5, m = 4):
    the IID and non-IID columns where BTARD lost most without it, with their clean runs, seeds 0-2, then
    the non-IID columns with m = 12 and with m = 8. The same cells without the undo are the ``adaptive-spread`` and
    ``noniid-ablation`` grids' rows."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH, "btard_validators": PAPER_VALIDATORS,
              "tau_rule": "spread", "tau_spread": 0.5, "undo": True}
    cells = _cells("mnist5k-mlp", attacks=[*UNDO_IID_ATTACKS, "none"], defences=[("btard", 1.0)],
                   seeds=[0, 1, 2], **common)
    cells += _cells("mnist5k-mlp", attacks=[*UNDO_NON_IID_ATTACKS, "none"], defences=[("btard", 1.0)],
                    seeds=[0, 1, 2], non_iid=NON_IID_ALPHA, **common)
    # then the non-IID columns with the 12 validators recommended for label-skewed data, then with 8
    for m in (12, 8):
        cells += _cells("mnist5k-mlp", attacks=[*UNDO_NON_IID_ATTACKS, "none"], defences=[("btard", 1.0)],
                        seeds=[0, 1, 2], non_iid=NON_IID_ALPHA, **{**common, "btard_validators": m})
    return cells


def grid_alarm() -> list[Cell]:
    """More validators after a recalculation ban (ProtocolParams.alarm_factor = 2, docs/protocol.md "More
    validators after a ban") on top of the undo, in the protocol's default setting (spread 0.5, m = 4): the
    ``undo`` grid's IID and non-IID columns at m = 4, with their clean runs, seeds 0-2; then every other
    BTARD column of the ``adaptive`` grid, so the protocol's defaults have a row in every column."""
    common = {"peers": 16, "byzantine": 7, "steps": ADAPTIVE_STEPS, "attack_start": 50,
              "btard_global_batch": 16 * PAPER_BATCH, "btard_validators": PAPER_VALIDATORS,
              "tau_rule": "spread", "tau_spread": 0.5, "undo": True, "alarm": 2}
    cells = _cells("mnist5k-mlp", attacks=[*UNDO_NON_IID_ATTACKS, "none"], defences=[("btard", 1.0)],
                   seeds=[0, 1, 2], non_iid=NON_IID_ALPHA, **common)
    cells += _cells("mnist5k-mlp", attacks=[*UNDO_IID_ATTACKS, "none"], defences=[("btard", 1.0)],
                    seeds=[0, 1, 2], **common)
    cells += _cells("mnist5k-mlp", attacks=[a for a in ADAPTIVE_GRID_ATTACKS if a not in UNDO_IID_ATTACKS],
                    defences=[("btard", 1.0)], seeds=[0, 1, 2], **common)
    cells += _cells("mnist5k-mlp", attacks=[*(a for a in NON_IID_ATTACKS if a not in (*UNDO_NON_IID_ATTACKS, "none")),
                                            "free_rider_zeros"],
                    defences=[("btard", 1.0)], seeds=[0, 1, 2], non_iid=NON_IID_ALPHA, **common)
    return cells


GRIDS: dict[str, Callable[[], list[Cell]]] = {"smoke": grid_smoke, "paper": grid_paper, "fashion": grid_fashion,
                                              "preagg": grid_preagg, "kardam": grid_kardam,
                                              "adaptive": grid_adaptive, "adaptive-ablation": grid_adaptive_ablation,
                                              "tau-rule": grid_tau_rule, "adaptive-spread": grid_adaptive_spread,
                                              "adaptive-spread-seeds": grid_adaptive_spread_seeds,
                                              "noniid-ablation": grid_noniid_ablation, "undo": grid_undo,
                                              "alarm": grid_alarm}


# --- running -------------------------------------------------------------------------------------
def _run_cell(cell: Cell) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from worker_client.sim import run_simulation

    started = time.time()
    result = run_simulation(**cell.sim_kwargs())
    result = dict(result)
    result.update(task=cell.task, peers=cell.peers, attack=cell.attack, aggregator=cell.aggregator, tau=cell.tau,
                  seed=cell.seed, attack_every=cell.attack_every, attack_start=cell.attack_start, steps=cell.steps,
                  byzantine_count=cell.byzantine, validators=result["args"]["validators"], wall_seconds=round(time.time() - started, 2), key=cell.key)
    return result


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{lineno} is not valid JSON (an interrupted write?); that cell will rerun",
                  file=sys.stderr)
    return rows


def run_grid(name: str, *, results_dir: Path = DEFAULT_RESULTS, jobs: int | None = None, progress: bool = True,
             limit: int | None = None, broker: str | None = None, queue: str | None = None) -> Path:
    """Run every cell of grid ``name`` not yet in ``results/<name>.jsonl``; returns that path.

    Locally in ``jobs`` processes, or, with ``broker`` (``redis://...``), as Celery tasks on ``queue``
    run by ``btard-experiments worker`` processes anywhere (:mod:`worker_client.grid_celery`)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose from {sorted(GRIDS)}")
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.jsonl"
    done = {row.get("key") for row in load_results(path)}
    cells = [c for c in GRIDS[name]() if c.key not in done]
    if limit is not None:
        cells = cells[:limit]
    total = len(GRIDS[name]())
    jobs = max(1, jobs or os.cpu_count() or 1)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(cells) if limit is None else len(done), desc=f"grid {name}",
               unit="cell", disable=not progress, file=sys.stderr)
    if not cells:
        bar.close()
        return path
    if broker:
        from . import grid_celery

        with path.open("a") as out:
            def done(cell: Cell, row: dict) -> None:
                out.write(json.dumps(row) + "\n")
                out.flush()
                bar.set_postfix_str(f"{cell.defence} vs {cell.column}: {100 * row['final_accuracy']:.1f}%")
                bar.update(1)

            def failed(cell: Cell, why: str) -> None:
                print(f"\ncell failed: {cell.column} / {cell.defence} / seed {cell.seed}: {why}", file=sys.stderr)
                bar.update(1)

            grid_celery.run_cells(name, cells, broker=broker, queue=queue or grid_celery.DEFAULT_QUEUE,
                                  on_result=done, on_failure=failed)
        bar.close()
        return path
    with ProcessPoolExecutor(max_workers=min(jobs, len(cells)),
                             mp_context=multiprocessing.get_context("spawn")) as pool, path.open("a") as out:
        pending = {pool.submit(_run_cell, cell): cell for cell in cells}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                cell = pending.pop(fut)
                try:
                    row = fut.result()
                except Exception as exc:  # noqa: BLE001  (a failing cell is reported and left for the next resume)
                    print(f"\ncell failed: {cell.column} / {cell.defence} / seed {cell.seed}: {exc}", file=sys.stderr)
                    bar.update(1)
                    continue
                out.write(json.dumps(row) + "\n")
                out.flush()
                bar.set_postfix_str(f"{cell.defence} vs {cell.column}: {100 * row['final_accuracy']:.1f}%")
                bar.update(1)
    bar.close()
    return path


# --- reporting -----------------------------------------------------------------------------------
def _defence_label(row: dict) -> str:
    args = row.get("args") or {}
    validators = row.get("validators", args.get("validators"))
    protocol = args.get("protocol_params") or {}
    return defence_label(row["aggregator"], row["tau"], validators, int(args.get("global_batch") or 0),
                         int(args.get("staleness") or 0), tau_rule=protocol.get("tau_rule", "fixed"),
                         tau_spread=float(protocol.get("tau_spread", 0.5)),
                         undo=bool(protocol.get("revert_on_recalc_ban", False)),
                         alarm=int(protocol.get("alarm_factor", 1)))


def _column_label(row: dict) -> str:
    return Cell(task=row["task"], peers=row["peers"], byzantine=row.get("byzantine_count", 0), attack=row["attack"],
                aggregator=row["aggregator"], tau=row["tau"], seed=row["seed"],
                attack_every=row.get("attack_every", 1),
                non_iid=float((row.get("args") or {}).get("non_iid") or 0.0)).column


def last_ban_delay(row: dict) -> int | None:
    """Steps from the attack start until the last attacker was banned (None: not every attacker was)."""
    attackers = set(row.get("byzantine") or [])
    if not attackers:
        return None
    ban_steps = {b["peer"]: b["step"] for b in row.get("bans", []) if b["peer"] in attackers}
    if set(ban_steps) != attackers:
        return None
    return max(ban_steps.values()) - row.get("attack_start", 0)


def summarise(rows: list[dict]) -> dict:
    """{(defence, column): {"mean", "std", "n", "ban_delay", "all_banned", "honest_banned"}}."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(_defence_label(row), _column_label(row))].append(row)
    out = {}
    for key, members in groups.items():
        accs = [100.0 * m["final_accuracy"] for m in members]
        delays = [last_ban_delay(m) for m in members]
        out[key] = {
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "n": len(accs),
            "ban_delays": delays,
            "all_banned": all(d is not None for d in delays) and bool(members[0].get("byzantine")),
            "honest_banned": sum(int(m.get("honest_banned", 0)) for m in members),
        }
    return out


def _order(labels: Iterable[str], preferred: list[str]) -> list[str]:
    labels = set(labels)

    def rank(label: str):
        base = label.split(" ")[0]
        return (preferred.index(base) if base in preferred else len(preferred), label)

    return sorted(labels, key=rank)


def _grid_lines(cells: dict[tuple[str, str], str], defences: list[str], columns: list[str]) -> list[str]:
    """A Markdown table: one row per defence, one column per attack, ``–`` where a cell has not run."""
    lines = ["| defence | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for defence in defences:
        lines.append(f"| {defence} | " + " | ".join(cells.get((defence, c), "–") for c in columns) + " |")
    return lines


def _accuracy_cell(defence: str, column: str, s: dict) -> str:
    text = f"{s['mean']:.1f} ± {s['std']:.1f}" if s["n"] > 1 else f"{s['mean']:.1f}"
    if defence.startswith("btard") and column.split(" ")[0] != "none":
        delays = s["ban_delays"]
        if all(d is not None for d in delays) and delays:
            text += f" (banned@{max(delays)})"
        elif delays:
            text += f" ({sum(d is None for d in delays)}✗)"
    if s["honest_banned"]:
        text += f" H{s['honest_banned']}"
    return text


def _column_order(labels: Iterable[str]) -> list[str]:
    """Attack columns: IID first, then each non-IID alpha; within them the fixed attacks, then the adaptive ones."""
    preferred = ["none", *GRADIENT_ATTACKS[1:], *ADAPTIVE_GRID_ATTACKS]

    def rank(label: str):
        base = label.split(" ")[0]
        alpha = float(label.rsplit("non-iid ", 1)[1]) if "non-iid " in label else 0.0
        return (alpha, preferred.index(base) if base in preferred else len(preferred), label)

    return sorted(set(labels), key=rank)


def markdown_table(rows: list[dict], *, title: str, every_defence_gap: bool = False) -> str:
    summary = summarise(rows)
    defences = _order({d for d, _ in summary}, [d for d, _ in PAPER_DEFENCES] + ["bulyan", "multi_krum", "kardam"])
    columns = _column_order(c for _, c in summary)
    lines = [f"## {title}", "",
             ("Test accuracy (%) at the last step, mean ± std over seeds. For BTARD, `banned@k` gives the steps from "
             "the attack start until the last attacker was banned (worst seed); `✗` marks a seed where some attacker "
             "was never banned; `H` counts honest peers banned. Baselines are told the true number of attackers f, so "
             "Krum appears only where n >= 2f+3 and Bulyan where n >= 4f+3."), ""]
    lines += _grid_lines({key: _accuracy_cell(*key, s) for key, s in summary.items()}, defences, columns)
    paired = paired_gap_table(rows, every_defence=every_defence_gap)
    if paired:
        lines += ["", paired]
    return "\n".join(lines) + "\n"


def tail_accuracy(row: dict, evaluations: int = 5) -> float:
    """Mean test accuracy over the last ``evaluations`` points of the curve (less noisy than the last one)."""
    curve = [float(a) for _, a in row.get("accuracy_curve") or []][-evaluations:]
    return statistics.fmean(curve) if curve else float(row["final_accuracy"])


def _non_iid(row: dict) -> float:
    return float((row.get("args") or {}).get("non_iid") or 0.0)


def paired_gaps(rows: list[dict], *, every_defence: bool = False) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """For BTARD rows under attack (every defence's with ``every_defence``): (last-step gap, last-five gap) in
    points against the clean run of the same defence, seed and data split (IID or the same non-IID alpha), per
    (defence, column). A single evaluation on 1,000 test images has a standard error near 0.9 point, so
    comparing seed with seed and over the last five evaluations removes most of that noise."""
    clean = {(_defence_label(r), r["seed"], _non_iid(r)): r for r in rows if r["attack"] == "none"}
    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        defence = _defence_label(r)
        if r["attack"] == "none" or not (every_defence or defence.startswith("btard")):
            continue
        base = clean.get((defence, r["seed"], _non_iid(r)))
        if base is None:
            continue
        out[(defence, _column_label(r))].append(
            (100.0 * (r["final_accuracy"] - base["final_accuracy"]), 100.0 * (tail_accuracy(r) - tail_accuracy(base))))
    return out


def paired_gap_table(rows: list[dict], *, every_defence: bool = False) -> str:
    gaps = paired_gaps(rows, every_defence=every_defence)
    if not gaps:
        return ""
    defences = _order({d for d, _ in gaps}, [d for d, _ in PAPER_DEFENCES] + ["bulyan", "multi_krum", "kardam"])
    columns = _column_order({c for _, c in gaps})
    cells = {}
    for key, pairs in gaps.items():
        last = [a for a, _ in pairs]
        tail = [b for _, b in pairs]
        cells[key] = (f"{statistics.fmean(last):+.1f} ({min(last):+.1f}) / "
                      f"{statistics.fmean(tail):+.1f} ({min(tail):+.1f})")
    who = "Every defence" if every_defence else "BTARD"
    lines = [(f"{who} against its own clean run of the same seed (and the same data split), in points, mean over "
              "seeds (worst seed in brackets): first at the last step, then over the last five evaluations."), ""]
    return "\n".join(lines + _grid_lines(cells, defences, columns)) + "\n"


def plot_curves(rows: list[dict], out_dir: Path, grid: str) -> list[Path]:
    """One PNG per attack column: accuracy vs step, one line per defence (seed-averaged), ban markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_column: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_column[_column_label(row)][_defence_label(row)].append(row)
    paths = []
    for column, defences in sorted(by_column.items()):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for defence in _order(defences, [d for d, _ in PAPER_DEFENCES]):
            members = defences[defence]
            curves = [{int(s): float(a) for s, a in m["accuracy_curve"]} for m in members]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            mean = [100 * statistics.fmean(c[s] for c in curves) for s in steps]
            (line,) = ax.plot(steps, mean, label=defence, linewidth=1.6 if defence.startswith("btard") else 1.0)
            ban_steps = sorted(b["step"] for m in members for b in m.get("bans", []))
            if ban_steps:
                ys = [mean[min(range(len(steps)), key=lambda i: abs(steps[i] - b))] for b in ban_steps]
                ax.scatter(ban_steps, ys, marker="x", color=line.get_color(), s=22, zorder=3)
        start = next(iter(next(iter(defences.values())))).get("attack_start")
        if column != "none" and start:
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{grid}: {column} (x = a ban)")
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        safe = column.replace(" ", "_").replace("/", "every").replace("=", "")
        path = out_dir / f"{grid}-{safe}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def superseded(row: dict) -> bool:
    """A baseline row measured before baseline version 2 with a rule whose configuration changed since."""
    return row.get("aggregator") in RECONFIGURED_BASELINES and int(row.get("baseline_version") or 1) < 2


EVERY_DEFENCE_GAP_GRIDS = {"adaptive", "adaptive-ablation", "tau-rule", "adaptive-spread", "adaptive-spread-seeds",
                           "noniid-ablation", "undo", "alarm"}  # grids whose report pairs every defence with its clean run


def report(name: str, *, results_dir: Path = DEFAULT_RESULTS) -> tuple[Path, list[Path]]:
    rows = load_results(results_dir / f"{name}.jsonl")
    if not rows:
        raise SystemExit(f"no results in {results_dir / (name + '.jsonl')}: run `btard-experiments {name}` first")
    old = [r for r in rows if superseded(r)]
    rows = [r for r in rows if not superseded(r)]
    md = results_dir / f"{name}.md"
    task = rows[0]["task"] if rows else old[0]["task"]
    text = (markdown_table(rows, title=f"Grid `{name}` on `{task}` ({len(rows)} cells)",
                           every_defence_gap=name in EVERY_DEFENCE_GAP_GRIDS) if rows else f"## Grid `{name}`\n")
    if old:
        text += (f"\n{len(old)} cells of {', '.join(sorted({r['aggregator'] for r in old}))} measured with the version-1 "
                 "baselines (f capped or trimmed mean at beta 0.1, lower-middle median, Bulyan's tie bug) are left out; "
                 f"they stay in `{name}.jsonl`.\n")
    md.write_text(text)
    return md, plot_curves(rows, results_dir, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="btard-experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=[*sorted(GRIDS), "worker"],
                        help="a grid to run and report, or `worker`: run cells for a --broker until stopped")
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes (default: CPU count)")
    parser.add_argument("--broker", default=None, metavar="redis://HOST:6379/DB",
                        help="run the cells as Celery tasks on this broker (default: local processes)")
    parser.add_argument("--queue", default=None, help="Celery queue of the cells (default: btard-grid)")
    parser.add_argument("--concurrency", type=int, default=None, help="worker: processes (default: CPU count)")
    parser.add_argument("--pool", default="prefork", help="worker: Celery pool (prefork, solo)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--limit", type=int, default=None, help="run at most this many new cells, then report")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plots from the results")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.grid == "worker":
        if not args.broker:
            parser.error("worker needs --broker redis://HOST:6379/DB")
        from . import grid_celery

        grid_celery.start_worker(broker=args.broker, queue=args.queue or grid_celery.DEFAULT_QUEUE,
                                 concurrency=args.concurrency, pool=args.pool)
        return 0
    started = time.time()
    if not args.report_only:
        run_grid(args.grid, results_dir=args.results_dir, jobs=args.jobs, progress=not args.quiet, limit=args.limit,
                 broker=args.broker, queue=args.queue)
    md, plots = report(args.grid, results_dir=args.results_dir)
    print(f"table: {md}")
    for p in plots:
        print(f"plot:  {p}")
    print(f"wall time: {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
