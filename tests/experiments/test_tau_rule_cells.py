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
    assert spread.sim_kwargs()["protocol_params"] == {"tau_rule": "spread", "tau_spread": 0.5,
                                                      "revert_on_recalc_ban": False, "alarm_factor": 1}
    # named for the fixed rule too: the protocol's default (spread) is not a cell's default (fixed)
    assert fixed.sim_kwargs()["protocol_params"]["tau_rule"] == "fixed"
    assert "protocol_params" not in Cell(**{**COMMON, "aggregator": "mean"}).sim_kwargs()
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


def test_the_adaptive_spread_grid_pairs_fixed_and_spread_tau_on_three_seeds_in_both_missed_columns():
    from worker_client.experiments import ADAPTIVE_GRID_ATTACKS, NON_IID_ATTACKS

    cells = GRIDS["adaptive-spread"]()
    assert len({c.key for c in cells}) == len(cells)
    missed = [c for c in cells if c.attack in ("optimal_alie", "none")]
    settings = {(c.defence, c.non_iid) for c in missed}
    assert settings == {(f"btard (tau {rule}, m={m}, B=512)", alpha) for rule in ("1", "spread 0.5")
                        for m in (4, 8) for alpha in (0.0, 0.5)}
    for defence, non_iid in settings:  # every attacked cell has the clean run of its seed, on seeds 0-2
        mine = [c for c in missed if (c.defence, c.non_iid) == (defence, non_iid)]
        assert {(c.attack, c.seed) for c in mine} == {(a, s) for a in ("optimal_alie", "none") for s in (0, 1, 2)}
    # the fixed-tau cells are the adaptive grid's, the IID spread cells the tau-rule grid's: same keys, same rows
    adaptive, tau_rule = {c.key for c in GRIDS["adaptive"]()}, {c.key for c in GRIDS["tau-rule"]()}
    ablation = {c.key for c in GRIDS["adaptive-ablation"]()}
    assert all(c.key in adaptive for c in missed if c.tau_rule == "fixed" and c.validators == 4)
    assert all(c.key in ablation for c in missed if c.tau_rule == "fixed" and c.validators == 8 and not c.non_iid)
    assert all(c.key in tau_rule for c in missed if c.tau_rule == "spread" and not c.non_iid and c.validators == 4)
    # spread 0.5 (m = 4) also runs in every other BTARD column of the adaptive grid, on seeds 0-2
    # spread 0.5 also runs in every other BTARD column of the adaptive grid (m = 4), and non-IID with m = 8
    others = [c for c in cells if c.attack not in ("optimal_alie", "none")
              and (c.attack, c.non_iid) != ("free_rider_zeros", 0.5)]
    other_non_iid = {(a, 0.5, s) for a in NON_IID_ATTACKS if a not in ("none", "optimal_alie") for s in (0, 1, 2)}
    assert {(c.attack, c.non_iid, c.seed) for c in others if c.validators == 4} == (
        {(a, 0.0, s) for a in ADAPTIVE_GRID_ATTACKS if a != "optimal_alie" for s in (0, 1, 2)} | other_non_iid)
    assert {(c.attack, c.non_iid, c.seed) for c in others if c.validators == 8} == other_non_iid
    assert {c.tau_rule for c in others} == {"spread"}
    # first the m = 4 cells of the missed columns (attacked before clean on each seed) and spread 0.5 with
    # m = 8 non-IID, then the other columns; the m = 8 clean runs (a clean run's result does not depend on m) last
    first = [c for c in missed if not (c.validators == 8 and (c.attack == "none" or c.non_iid == 0.0
                                                              or c.tau_rule == "fixed"))]
    assert {c.key for c in cells[:len(first)]} == {c.key for c in first}
    # non-IID free riders (the cost of the banned attackers' missing shards), both rules, m = 4, seeds 0-2
    riders = [c for c in cells if (c.attack, c.non_iid) == ("free_rider_zeros", 0.5)]
    assert {(c.tau_rule, c.validators, c.seed) for c in riders} == {(r, m, s) for r in ("fixed", "spread")
                                                                   for m in (4, 8) for s in (0, 1, 2)}
    m8_clean = [c for c in cells if c.validators == 8 and c.attack == "none"]
    assert {c.key for c in cells[-len(m8_clean):]} == {c.key for c in m8_clean}
    assert cells[0].attack == "optimal_alie" and cells[0].seed == 0


def test_the_extra_seeds_grid_repeats_the_decision_cells_on_seeds_3_and_4_with_their_clean_runs():
    cells = GRIDS["adaptive-spread-seeds"]()
    assert len({c.key for c in cells}) == len(cells) and {c.seed for c in cells} == {3, 4}
    attacked = {(c.defence, c.non_iid, c.seed) for c in cells if c.attack == "optimal_alie"}
    clean = {(c.defence, c.non_iid, c.seed) for c in cells if c.attack == "none"}
    assert attacked == clean and len(attacked) == 3 * 2 * 2
    riders = {(c.tau_rule, c.seed) for c in cells if c.attack == "free_rider_zeros"}
    assert riders == {(r, s) for r in ("fixed", "spread") for s in (3, 4)}
    assert all(c.non_iid == 0.5 and c.validators == 4 for c in cells if c.attack == "free_rider_zeros")
    assert not {c.key for c in cells} & {c.key for c in GRIDS["adaptive-spread"]()}


def test_the_non_iid_ablation_pairs_each_setting_of_the_missed_column_with_its_clean_run():
    cells = GRIDS["noniid-ablation"]()
    assert len({c.key for c in cells}) == len(cells) == 16
    assert all(c.non_iid == 0.5 and c.tau_rule == "spread" for c in cells)
    attacked = {(c.tau_spread, c.validators, c.seed) for c in cells if c.attack == "optimal_alie"}
    clean = {(c.tau_spread, c.validators, c.seed) for c in cells if c.attack == "none"}
    assert attacked == clean == {(0.25, 8, s) for s in (0, 1, 2)} | {(0.5, 12, s) for s in range(5)}
    # a setting the decision grids already ran would be a duplicate row under a new grid's name
    assert not {c.key for c in cells} & {c.key for g in ("adaptive-spread", "adaptive-spread-seeds") for c in GRIDS[g]()}
    assert {c.defence for c in cells} == {"btard (tau spread 0.25, m=8, B=512)", "btard (tau spread 0.5, m=12, B=512)"}


def test_an_undo_cell_has_its_own_key_and_label_and_older_cells_run_without_the_undo():
    plain, undo = Cell(**COMMON), Cell(**COMMON, undo=True)
    assert json.loads(undo.key)[-1] == {"undo": True} and json.loads(undo.key)[:-1] == json.loads(plain.key)
    # named either way: the protocol's default (undo on) is not a cell's default (off, as every committed row)
    assert plain.sim_kwargs()["protocol_params"]["revert_on_recalc_ban"] is False
    assert undo.sim_kwargs()["protocol_params"]["revert_on_recalc_ban"] is True
    assert undo.defence == "btard (tau 1, m=4, B=512, undo)"
    row = {"aggregator": "btard", "tau": 1.0, "validators": 4,
           "args": {"global_batch": 512, "protocol_params": {"tau_rule": "fixed", "revert_on_recalc_ban": True}}}
    assert _defence_label(row) == undo.defence
    cells = GRIDS["undo"]()
    assert cells and all(c.undo for c in cells)
    for non_iid in (0.0, 0.5):  # every attacked cell has the clean run of its seed and data split
        mine = [c for c in cells if c.non_iid == non_iid]
        assert {c.seed for c in mine if c.attack == "none"} == {c.seed for c in mine} == {0, 1, 2}


def test_an_alarm_cell_has_its_own_key_and_label_and_older_cells_run_without_the_alarm():
    undo, alarm = Cell(**COMMON, undo=True), Cell(**COMMON, undo=True, alarm=2)
    assert json.loads(alarm.key)[-1] == {"alarm": 2} and json.loads(alarm.key)[:-1] == json.loads(undo.key)
    # named either way: the protocol's default (x2) is not a cell's default (1, off, as every committed row)
    assert undo.sim_kwargs()["protocol_params"]["alarm_factor"] == 1
    assert alarm.sim_kwargs()["protocol_params"]["alarm_factor"] == 2
    assert alarm.defence == "btard (tau 1, m=4, B=512, undo, alarm x2)"
    row = {"aggregator": "btard", "tau": 1.0, "validators": 4,
           "args": {"global_batch": 512, "protocol_params": {"tau_rule": "fixed", "revert_on_recalc_ban": True,
                                                             "alarm_factor": 2}}}
    assert _defence_label(row) == alarm.defence
    # a committed row from before the alarm (no alarm_factor recorded) ran without it
    row["args"]["protocol_params"].pop("alarm_factor")
    assert _defence_label(row) == undo.defence
    cells = GRIDS["alarm"]()
    assert cells and all(c.undo and c.alarm == 2 and c.validators == 4 for c in cells)
    for non_iid in (0.0, 0.5):  # every attacked cell has the clean run of its seed and data split
        mine = [c for c in cells if c.non_iid == non_iid]
        assert {c.seed for c in mine if c.attack == "none"} == {c.seed for c in mine} == {0, 1, 2}
    committed = {row["key"] for row in load_results(DEFAULT_RESULTS / "alarm.jsonl")}
    assert committed == {c.key for c in cells}
