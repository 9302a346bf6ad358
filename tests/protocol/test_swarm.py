"""Whole-swarm behaviour on a real task (digits-mlp, 16 peers): the paper's claims at small scale.

tau is per part (spec, "Calibration"): the honest spread of a digits-mlp part is about 0.06, so these
runs use tau = 0.25; m = 4 validators make the 7 attackers' removal quick enough for a short run.
"""

from __future__ import annotations

import pytest
import torch

from worker_client.btard.attacks import GRADIENT_ATTACKS
from worker_client.sim import run_simulation

pytestmark = pytest.mark.slow

COMMON = dict(task="digits-mlp", peers=16, tau=0.25, seed=0, eval_every=10)
ATTACKED = dict(COMMON, byzantine=7, attack_start=3, steps=50, validators=4)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clean_run():
    torch.set_num_threads(1)
    return run_simulation(**{**ATTACKED, "byzantine": 0, "attack": "none"})


def test_an_honest_swarm_bans_nobody_and_learns_like_plain_mean():
    btard = run_simulation(**{**COMMON, "eval_every": 50}, steps=150, validators=2)
    mean = run_simulation(**{**COMMON, "eval_every": 50}, steps=150, aggregator="mean")
    assert btard["bans"] == [] and btard["honest_banned"] == 0 and btard["honest_disagreements"] == 0
    assert btard["applied_steps"] == 150 and btard["dropped_steps"] == 0
    assert btard["final_accuracy"] > 0.9
    assert abs(btard["final_accuracy"] - mean["final_accuracy"]) <= 0.02


@pytest.mark.parametrize("attack", GRADIENT_ATTACKS)
def test_seven_of_sixteen_gradient_attackers_are_banned_and_accuracy_holds(attack, clean_run):
    out = run_simulation(**ATTACKED, attack=attack)
    assert out["honest_banned"] == 0 and out["honest_disagreements"] == 0
    assert {b["peer"] for b in out["bans"]} == set(out["byzantine"])
    assert {b["kind"] for b in out["bans"]} == {"recalc"}
    assert out["final_accuracy"] >= clean_run["final_accuracy"] - 0.02


@pytest.mark.parametrize("attack", ["alie", "ipm"])
def test_a_baseline_without_validation_visibly_fails_under_alie_and_ipm(attack, clean_run):
    finals = {rule: run_simulation(**ATTACKED, attack=attack, aggregator=rule)["final_accuracy"]
              for rule in ("mean", "median", "centered_clip")}
    assert min(finals.values()) <= clean_run["final_accuracy"] - 0.05, finals
