"""btard-sim: the CLI contract and the comparison baselines (small and fast)."""

from __future__ import annotations

import json

import pytest
import torch

from worker_client.btard.aggregators import AGGREGATORS
from worker_client.sim import main, run_simulation


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_btard_sim_writes_the_json_summary(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["--task", "digits-mlp", "--peers", "5", "--byzantine", "1", "--attack", "sign_flip",
                 "--attack-start", "1", "--aggregator", "btard", "--steps", "6", "--seed", "3", "--tau", "0.5",
                 "--validators", "2", "--eval-every", "3", "--json", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    for key in ("final_accuracy", "accuracy_curve", "byzantine", "bans", "honest_banned", "seconds_per_step", "args"):
        assert key in data
    assert [s for s, _ in data["accuracy_curve"]] == [3, 6]
    assert len(data["byzantine"]) == 1 and data["honest_banned"] == 0 and data["honest_disagreements"] == 0
    assert data["args"]["attack"] == "sign_flip" and data["args"]["tau"] == 0.5
    assert json.loads(capsys.readouterr().out)["final_accuracy"] == data["final_accuracy"]


def test_unknown_names_are_a_clear_error(capsys):
    assert main(["--aggregator", "nope", "--steps", "1", "--no-progress"]) == 2
    assert "unknown aggregator" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown attack"):
        run_simulation(task="digits-mlp", peers=4, byzantine=1, attack="nope", steps=1)


@pytest.mark.parametrize("rule", sorted(AGGREGATORS))
def test_every_baseline_rule_runs_on_a_trusted_server_with_attackers(rule):
    out = run_simulation(task="digits-mlp", peers=8, byzantine=1, attack="sign_flip", aggregator=rule, steps=3,
                         eval_every=0, seed=1)
    assert out["bans"] == [] and out["applied_steps"] == 3
    assert 0.0 <= out["final_accuracy"] <= 1.0


def test_the_same_seed_gives_the_same_run():
    a = run_simulation(task="digits-mlp", peers=4, steps=4, eval_every=2, seed=5)
    b = run_simulation(task="digits-mlp", peers=4, steps=4, eval_every=2, seed=5)
    assert a["accuracy_curve"] == b["accuracy_curve"]
