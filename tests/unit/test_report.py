"""The main job's reports: a run's claims from its stage records, what it says when the model did not learn what
an analysis needs, where it stands against the committed seeds, and the tables across seeds."""

import math

import pandas as pd
import pytest
from scipy import stats

from leakage import reproduce as reproduce_module
from leakage.report import CLAIMS, claims, learned, report_text, seeds_table, seeds_text
from leakage.reproduce import ReproduceConfig


def accuracy(value, half=0.02):
    return {"accuracy": value, "ci95_low": value - half, "ci95_high": value + half}


def records(sums=0.95, answer=0.8, masked=0.45, drop=0.6, patch=0.7, share=0.9, bits=1.5):
    """Stage records as `reproduce` writes them, with the numbers the report quotes."""
    return {
        "train": {"results": {"machine": {"torch": "2.x", "cpu": "x86_64", "cpu_capability": "AVX2", "threads": 2}},
                  "seconds": 600},
        "evaluate": {"results": {"memento/sums_teacher_forced": accuracy(sums),
                                 "memento/passcode_answer": accuracy(answer),
                                 "restart/passcode_answer": accuracy(0.1),
                                 "full_attention/passcode_answer": accuracy(0.3)}, "seconds": 20},
        "probe": {"results": {"masked_d1": {**accuracy(masked), "n_train": 7213}, "direct": accuracy(0.9),
                              "restart_kv": accuracy(0.1), "causal_control": accuracy(0.1),
                              "bits": {"masked_d1": {"bits_leaked": bits}, "restart_kv": {"bits_leaked": -0.01}}},
                  "seconds": 150},
        "restart": {"results": {"sums": {"drop": drop, "drop_ci95": [drop - 0.03, drop + 0.03], "examples": 256,
                                         "sign_test_p": 1e-40}}, "seconds": 15},
        "patch": {"results": {"top_layer_head": {"layer": 2, "kv_head": 1, "effect": patch, "effect_low": patch - 0.05,
                                                 "effect_high": patch + 0.05}}, "seconds": 25},
        "ablate": {"results": {"by_layer": {"restart/1": {"restart_share": share}, "restart/2": {"restart_share": 0.1},
                                            "restart/all": {"restart_share": 1.0}}}, "seconds": 11},
    }


def test_claims_read_the_stage_records():
    found = claims(records())
    assert found["sums"] == 0.95 and found["answer_memento_low"] == pytest.approx(0.78)
    assert found["restart_drop"] == pytest.approx(-60) and found["restart_drop_low"] == pytest.approx(-63)
    assert found["probe_budget"] == 7213 and found["bits_masked_d1"] == 1.5
    assert found["patch_top_site"] == "layer 2 head 1" and found["ablate_top_layer"] == "1"
    assert learned(found) == {"sums": True, "answer": True}
    assert learned(claims(records(sums=0.89, answer=0.11))) == {"sums": False, "answer": False}  # 0.11 - 0.02 < 0.1


def test_a_model_that_did_not_learn_the_channel_gets_no_patching_or_ablation_findings():
    config = ReproduceConfig(preset="smoke")
    text = report_text(config, records(sums=0.5, answer=0.1, patch=0.45, share=1.29))
    assert "did not learn to read the passcode" in text and "not reported as findings" in text
    assert "0.45" not in text and "129%" not in text
    assert "below the 90% target" in text
    learned_text = report_text(config, records())
    assert "layer 2 head 1 carries 0.7" in learned_text and "not reported as findings" not in learned_text


def test_the_report_puts_the_run_beside_the_committed_seed_range_and_says_when_it_falls_outside():
    committed = seeds_table({s: claims(records(sums=v)) for s, v in enumerate((0.92, 0.95, 0.97))})
    text = report_text(ReproduceConfig(preset="smoke"), records(sums=0.5), committed)
    sums_row = next(line for line in text.splitlines() if line.startswith("| running sums"))
    assert "95.0% [92.0%, 97.0%] (3 seeds): **below**" in sums_row
    inside = report_text(ReproduceConfig(preset="smoke"), records(sums=0.93), committed)
    assert "(3 seeds): inside" in next(line for line in inside.splitlines() if line.startswith("| running sums"))


def test_seeds_table_aggregates_over_seeds_and_the_channel_claims_over_the_seeds_that_read_it():
    per_seed = {0: claims(records(sums=0.91, patch=0.6)), 1: claims(records(sums=0.97, patch=0.8)),
                2: claims(records(sums=0.93, answer=0.1, patch=5.0))}
    table = seeds_table(per_seed).set_index("statistic")
    assert table.loc["median", "sums"] == pytest.approx(0.93) and table.loc["min", "sums"] == pytest.approx(0.91)
    low, high = stats.t.interval(0.95, 2, loc=(0.91 + 0.97 + 0.93) / 3, scale=stats.sem([0.91, 0.97, 0.93]))
    assert high > 1  # the t interval knows no bounds; an accuracy's interval stops at 1
    assert table.loc["mean_ci95_low", "sums"] == pytest.approx(low) and table.loc["mean_ci95_high", "sums"] == 1.0
    assert table.loc["max", "patch_top_effect"] == pytest.approx(0.8)  # seed 2 reads at chance: its 5.0 is no finding
    assert list(table.loc["seed", "learned_answer"]) == [True, True, False]


def test_seeds_text_states_each_claim_as_a_count_of_seeds():
    per_seed = {0: claims(records(sums=0.91)), 1: claims(records(sums=0.97)), 2: claims(records(sums=0.5, answer=0.1))}
    text = seeds_text(per_seed, seeds_table(per_seed), "leakage reproduce --seeds 3", 1800)
    assert "| running sums, teacher-forced, memento decoding | 2 of 3 seeds: >= 90% |" in text
    assert "defined in the 2 of 3 seeds whose answer is above chance" in text and "not learned" in text
    assert "in the 2 seeds whose answer is above chance" in text


def test_one_seed_has_no_interval_across_seeds():
    table = seeds_table({0: claims(records())}).set_index("statistic")
    assert math.isnan(table.loc["mean_ci95_low", "sums"]) and table.loc["median", "sums"] == 0.95
    assert "nan" not in seeds_text({0: claims(records())}, seeds_table({0: claims(records())}), "cmd", 60)


def test_reproduce_seeds_runs_each_seed_in_its_folder_and_writes_the_tables(tmp_path, monkeypatch):
    ran = []

    def one_seed(config, progress=None, log=lambda _: None):
        ran.append((config.seed, config.out, config.seeds))
        return records(sums=0.9 + config.seed / 100)

    monkeypatch.setattr(reproduce_module, "reproduce", one_seed)
    config = ReproduceConfig(preset="smoke", out=str(tmp_path / "seeds"), seeds=3, seed=4)
    reproduce_module.reproduce_seeds(config)
    assert ran == [(s, str(tmp_path / "seeds" / f"seed{s}"), 1) for s in (4, 5, 6)]
    table = pd.read_csv(tmp_path / "seeds" / "seeds.csv")
    assert list(table[table.statistic == "seed"].seed) == [4, 5, 6]
    assert "3 seeds" in (tmp_path / "seeds" / "SEEDS.md").read_text()
    assert {c.key for c in CLAIMS} & set(table.columns) >= {"sums", "restart_drop", "bits_masked_d1"}
