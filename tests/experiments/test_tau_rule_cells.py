"""Grid cells that select BTARD's tau rule (ProtocolParams.tau_rule): the fixed-tau cells keep the keys of
the committed results, a spread cell has its own key, row label, and passes the rule to btard-sim."""

from __future__ import annotations

import json

from worker_client.experiments import DEFAULT_RESULTS, GRIDS, Cell, _defence_label, load_results

COMMON = {"task": "mnist5k-mlp", "peers": 16, "byzantine": 7, "attack": "optimal_alie", "aggregator": "btard",
          "tau": 1.0, "seed": 0, "attack_start": 50, "steps": 200, "validators": 4, "global_batch": 512}


def test_fixed_tau_cells_keep_the_keys_of_the_committed_results():
    committed = {row["key"] for row in load_results(DEFAULT_RESULTS / "adaptive-ablation.jsonl")}
    # (its tau 1, m = 4, seed-0 cells are the adaptive grid's)
    regenerated = {c.key for grid in ("adaptive-ablation", "adaptive") for c in GRIDS[grid]()}
    assert committed and committed <= regenerated
    assert Cell(**COMMON).key == Cell(**COMMON, tau_rule="fixed", tau_spread=3.0).key


def test_a_spread_cell_has_its_own_key_label_and_passes_the_rule_to_btard_sim():
    fixed, spread = Cell(**COMMON), Cell(**COMMON, tau_rule="spread", tau_spread=0.5)
    assert spread.key != fixed.key
    assert json.loads(spread.key)[-1] == {"tau_rule": "spread", "tau_spread": 0.5}
    assert Cell(**COMMON, tau_rule="spread", tau_spread=1.0).key != spread.key
    assert spread.sim_kwargs()["protocol_params"] == {"tau_rule": "spread", "tau_spread": 0.5}
    assert "protocol_params" not in fixed.sim_kwargs()
    assert spread.defence == "btard (tau spread 0.5, m=4, B=512)"
    assert fixed.defence == "btard (tau 1, m=4, B=512)"
    # a result row is labelled from what btard-sim recorded, as the report reads it
    row = {"aggregator": "btard", "tau": 1.0, "validators": 4,
           "args": {"global_batch": 512, "protocol_params": {"tau_rule": "spread", "tau_spread": 0.5}}}
    assert _defence_label(row) == spread.defence


def test_the_tau_rule_grid_pairs_every_spread_cell_with_its_clean_run():
    cells = GRIDS["tau-rule"]()
    assert {c.tau_rule for c in cells} == {"spread"}
    attacked = {(c.seed, c.tau_spread) for c in cells if c.attack == "optimal_alie"}
    clean = {(c.seed, c.tau_spread) for c in cells if c.attack == "none"}
    assert attacked == clean and {s for s, _ in attacked} == {0, 1, 2}
