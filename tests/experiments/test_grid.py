import json

import pytest

from worker_client import experiments
from worker_client.experiments import (
    GRIDS,
    PAPER_VALIDATORS,
    Cell,
    last_ban_delay,
    load_results,
    markdown_table,
    paired_gaps,
)

SIM_KEYS = {"final_accuracy", "accuracy_curve", "byzantine", "bans", "honest_banned", "seconds_per_step", "args"}
GRID_KEYS = {"task", "peers", "attack", "aggregator", "tau", "seed", "attack_every"}


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("results")
    path = experiments.run_grid("smoke", results_dir=results_dir, jobs=2, progress=False)
    return results_dir, path


def test_the_smoke_grid_writes_one_line_per_cell_with_the_sim_and_grid_keys(smoke_results):
    _, path = smoke_results
    rows = load_results(path)
    assert len(rows) == len(GRIDS["smoke"]())
    for row in rows:
        assert SIM_KEYS | GRID_KEYS <= set(row), set(SIM_KEYS | GRID_KEYS) - set(row)
        assert 0.0 <= row["final_accuracy"] <= 1.0
        assert row["accuracy_curve"][-1][0] <= row["steps"]
    clean = {r["aggregator"]: r for r in rows if r["attack"] == "none"}
    assert clean["btard"]["final_accuracy"] > 0.5, "the clean smoke run should learn"
    attacked = [r for r in rows if r["aggregator"] == "btard" and r["attack"] != "none"]
    assert attacked and all(r["honest_banned"] == 0 for r in attacked)
    assert all(set(r["byzantine"]) <= {b["peer"] for b in r["bans"]} for r in attacked)


def test_the_report_has_a_table_and_a_plot_per_attack(smoke_results):
    results_dir, _ = smoke_results
    md, plots = experiments.report("smoke", results_dir=results_dir)
    text = md.read_text()
    assert "| defence | none | sign_flip b=3 |" in text
    assert "btard (tau 1, m=2)" in text and "banned@" in text
    assert "same seed" in text and "last five evaluations" in text
    assert {p.name for p in plots} == {"smoke-none.png", "smoke-sign_flip_b3.png"}
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_grid_resumes_without_rerunning_cells(smoke_results, monkeypatch):
    results_dir, path = smoke_results
    before = path.read_text()

    def boom(cell):  # pragma: no cover - must not be called
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(experiments, "_run_cell", boom)
    experiments.run_grid("smoke", results_dir=results_dir, jobs=1, progress=False)
    assert path.read_text() == before


def test_a_torn_last_line_is_skipped_and_that_cell_reruns(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"key": "a", "final_accuracy": 0.5}) + "\n{\"key\": \"b\", \"fin")
    rows = load_results(path)
    assert [r["key"] for r in rows] == ["a"]
    assert "not valid JSON" in capsys.readouterr().err


def test_the_paper_grid_covers_every_attack_and_defence_and_bulyan_only_where_it_can_run():
    cells = GRIDS["paper"]()
    attacks = {c.attack for c in cells}
    assert attacks == {"none", "sign_flip", "random_direction", "label_flip", "delayed", "ipm", "alie"}
    defences = {c.defence for c in cells}
    assert {"mean", "median", "trimmed_mean", "krum", "geometric_median", "centered_clip (tau 1)",
            "centered_clip (tau 10)", f"btard (tau 1, m={PAPER_VALIDATORS}, B=512)",
            f"btard (tau 10, m={PAPER_VALIDATORS}, B=512)"} <= defences
    assert all(c.validators == PAPER_VALIDATORS and c.global_batch == 16 * 32 for c in cells if c.aggregator == "btard")
    assert all(c.validators is None and not c.global_batch for c in cells if c.aggregator != "btard")
    assert all(c.peers >= 4 * c.byzantine + 3 for c in cells if c.aggregator == "bulyan")
    assert any(c.aggregator == "bulyan" for c in cells)
    assert {c.seed for c in cells} == {0, 1, 2}
    assert any(c.attack_every == 10 for c in cells)
    assert len({c.key for c in cells}) == len(cells)


def test_ban_delay_counts_from_the_attack_start_and_needs_every_attacker():
    row = {"byzantine": ["p1", "p2"], "attack_start": 50,
           "bans": [{"peer": "p1", "step": 60}, {"peer": "p2", "step": 75}]}
    assert last_ban_delay(row) == 25
    row["bans"].pop()
    assert last_ban_delay(row) is None


def test_the_table_shows_mean_and_std_over_seeds():
    base = {"task": "t", "peers": 4, "byzantine_count": 0, "attack": "none", "aggregator": "mean", "tau": 1.0,
            "attack_every": 1, "byzantine": [], "bans": [], "honest_banned": 0}
    rows = [dict(base, seed=0, final_accuracy=0.80), dict(base, seed=1, final_accuracy=0.90)]
    text = markdown_table(rows, title="t")
    assert "| mean | 85.0 ± 7.1 |" in text


def test_cells_are_keyed_by_what_defines_them():
    a = Cell(task="t", peers=16, byzantine=7, attack="alie", aggregator="btard", tau=1.0, seed=0)
    b = Cell(task="t", peers=16, byzantine=7, attack="alie", aggregator="btard", tau=1.0, seed=1)
    assert a.key != b.key and a.defence == "btard (tau 1, m=2)" and a.column == "alie b=7"
    m4 = Cell(task="t", peers=16, byzantine=7, attack="alie", aggregator="btard", tau=1.0, seed=0, validators=4)
    assert m4.key != a.key and m4.defence == "btard (tau 1, m=4)"
    split = Cell(task="t", peers=16, byzantine=7, attack="alie", aggregator="btard", tau=1.0, seed=0, validators=4,
                 global_batch=512)
    assert split.key != m4.key and split.defence == "btard (tau 1, m=4, B=512)"
    assert split.sim_kwargs()["global_batch"] == 512 and "global_batch" not in m4.key


def _row(attack, seed, curve, aggregator="btard", validators=4):
    return {"task": "t", "peers": 16, "byzantine_count": 0 if attack == "none" else 7, "attack": attack,
            "aggregator": aggregator, "tau": 1.0, "attack_every": 1, "seed": seed, "validators": validators,
            "byzantine": [], "bans": [], "honest_banned": 0, "final_accuracy": curve[-1],
            "accuracy_curve": [[10 * (i + 1), a] for i, a in enumerate(curve)]}


def test_btard_is_compared_with_the_clean_run_of_the_same_seed_and_validator_count():
    rows = [_row("none", 0, [0.5, 0.90, 0.90, 0.90, 0.90, 0.92]), _row("none", 1, [0.5, 0.80, 0.80, 0.80, 0.80, 0.80]),
            _row("none", 0, [0.1] * 6, validators=2),  # another m: not this row's baseline
            _row("alie", 0, [0.5, 0.90, 0.90, 0.90, 0.90, 0.90]), _row("alie", 1, [0.5, 0.79, 0.79, 0.79, 0.79, 0.79]),
            _row("alie", 0, [0.9] * 6, aggregator="mean")]  # not BTARD: no paired gap
    gaps = paired_gaps(rows)
    assert set(gaps) == {("btard (tau 1, m=4)", "alie b=7")}
    (last0, tail0), (last1, tail1) = sorted(gaps[("btard (tau 1, m=4)", "alie b=7")], key=lambda g: g[0])
    assert round(last0, 6) == -2.0 and round(tail0, 6) == -0.4
    assert round(last1, 6) == -1.0 and round(tail1, 6) == -1.0
    text = markdown_table(rows, title="t")
    assert "| btard (tau 1, m=4) | -1.5 (-2.0) / -0.7 (-1.0) |" in text


def test_baselines_told_the_true_f_run_only_where_their_precondition_holds():
    cells = GRIDS["paper"]()
    krum = [c for c in cells if c.aggregator == "krum"]
    assert krum and all(c.peers >= 2 * c.byzantine + 3 for c in krum)
    assert {c.byzantine for c in krum} == {0, 3}  # 7 attackers need n >= 17
    assert {c.byzantine for c in cells if c.aggregator == "trimmed_mean"} == {0, 7}  # n > 2f holds for 7 of 16
    preagg = GRIDS["preagg"]()
    assert {c.aggregator for c in preagg} == {f"{p}+{r}" for p in ("nnm", "bucketing")
                                             for r in ("centered_clip", "krum", "median")}
    assert not any(c.aggregator == "nnm+krum" and c.byzantine == 7 for c in preagg)
    assert not any(c.aggregator == "bucketing+krum" and c.byzantine >= 3 for c in preagg)


def test_reconfigured_baselines_get_a_new_key_and_their_old_rows_leave_the_table(tmp_path):
    old = Cell(task="t", peers=16, byzantine=7, attack="alie", aggregator="mean", tau=1.0, seed=0)
    new = Cell(task="t", peers=16, byzantine=7, attack="alie", aggregator="trimmed_mean", tau=1.0, seed=0)
    assert '{"baselines": 2}' in new.key and "baselines" not in old.key
    base = {"task": "t", "peers": 16, "byzantine_count": 7, "attack": "sign_flip", "tau": 1.0, "attack_every": 1,
            "seed": 0, "byzantine": [], "bans": [], "honest_banned": 0, "accuracy_curve": [[10, 0.5]]}
    rows = [dict(base, aggregator="trimmed_mean", final_accuracy=0.108),                      # version 1
            dict(base, aggregator="trimmed_mean", final_accuracy=0.85, baseline_version=2),
            dict(base, aggregator="mean", final_accuracy=0.10)]                                # unchanged rule
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md, _ = experiments.report("g", results_dir=tmp_path)
    text = md.read_text()
    assert "| trimmed_mean | 85.0 |" in text and "10.8" not in text and "| mean | 10.0 |" in text
    assert "1 cells of trimmed_mean measured with the version-1 baselines" in text


def test_the_kardam_grid_delays_workers_and_keys_cells_by_staleness():
    cells = GRIDS["kardam"]()
    kardam = [c for c in cells if c.aggregator == "kardam"]
    assert {c.staleness for c in kardam} == {0, 4} and all(c.peers >= 3 * c.byzantine + 1 for c in kardam)
    assert {c.defence for c in kardam} == {"kardam (staleness 0)", "kardam (staleness 4)"}
    assert all(c.sim_kwargs().get("staleness", 0) == c.staleness for c in kardam)
    assert len({c.key for c in cells}) == len(cells)


def test_the_adaptive_grid_gives_btard_every_adaptive_and_non_iid_column_first():
    from worker_client.experiments import ADAPTIVE_GRID_ATTACKS, BTARD_ONLY_ATTACKS, NON_IID_ATTACKS

    cells = GRIDS["adaptive"]()
    assert len({c.key for c in cells}) == len(cells) and {c.seed for c in cells} == {0, 1, 2}
    btard = [c for c in cells if c.aggregator == "btard"]
    assert {(c.attack, c.non_iid) for c in btard} == ({(a, 0.0) for a in ["none", *ADAPTIVE_GRID_ATTACKS]}
                                                      | {(a, 0.5) for a in NON_IID_ATTACKS})
    assert cells[0].aggregator == "btard" and cells[0].attack == "none" and cells[0].seed == 0
    first = len(experiments.ADAPTIVE_FIRST) + len(experiments.NON_IID_FIRST)  # BTARD's first columns, seed 0
    assert all(c.aggregator == "btard" and c.seed == 0 for c in cells[:first])
    assert {(c.attack, c.non_iid) for c in cells[:first]} == ({(a, 0.0) for a in experiments.ADAPTIVE_FIRST}
                                                              | {(a, 0.5) for a in experiments.NON_IID_FIRST})
    assert {c.steps for c in cells} == {experiments.ADAPTIVE_STEPS}
    baselines = [c for c in cells if c.aggregator != "btard"]
    assert {c.aggregator for c in baselines} == {"mean", "median", "geometric_median", "centered_clip"}
    assert not any(c.attack in BTARD_ONLY_ATTACKS for c in baselines)
    alie = next(c for c in cells if c.attack == "alie" and c.non_iid)
    assert alie.column == "alie b=7 non-iid 0.5" and alie.sim_kwargs()["non_iid"] == 0.5
    iid = Cell(**{**alie.__dict__, "non_iid": 0.0})
    assert iid.key != alie.key and "non_iid" not in iid.key and "non_iid" not in iid.sim_kwargs()


def test_a_non_iid_run_is_paired_with_the_non_iid_clean_run_and_baselines_are_paired_when_asked():
    def row(attack, alpha, acc, aggregator="btard"):
        r = _row(attack, 0, [acc] * 5, aggregator=aggregator)
        r["args"] = {"non_iid": alpha}
        return r

    rows = [row("none", 0.0, 0.90), row("none", 0.5, 0.80), row("alie", 0.0, 0.89), row("alie", 0.5, 0.78),
            row("none", 0.5, 0.85, "mean"), row("alie", 0.5, 0.60, "mean")]
    gaps = paired_gaps(rows)
    assert [round(g, 6) for g, _ in gaps[("btard (tau 1, m=4)", "alie b=7 non-iid 0.5")]] == [-2.0]
    assert [round(g, 6) for g, _ in gaps[("btard (tau 1, m=4)", "alie b=7")]] == [-1.0]
    assert ("mean", "alie b=7 non-iid 0.5") not in gaps
    every = paired_gaps(rows, every_defence=True)
    assert [round(g, 6) for g, _ in every[("mean", "alie b=7 non-iid 0.5")]] == [-25.0]
    text = markdown_table(rows, title="t", every_defence_gap=True)
    columns = text.split("\n")[4]
    assert columns.index("alie b=7 |") < columns.index("none non-iid 0.5")  # IID columns first
    assert "Every defence against its own clean run" in text
