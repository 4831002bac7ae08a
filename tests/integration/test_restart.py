"""The restart ablation at smoke scale: the restart run keeps the normal run's mementos token for token
and re-chooses only the scored units; the paired table and the sign test over examples are the textbook ones."""

import numpy as np
import pytest

from leakage.cli import main
from leakage.config import EvictionConfig
from leakage.training.evaluate import free_run
from leakage.analysis.restart import RestartAblation, rerun, restart_ablation
from leakage.training.tasks import TaskConfig, make_example, unit

TASK = TaskConfig(task="digits", n_blocks=3)


def test_restart_run_keeps_the_normal_runs_mementos(tiny):
    model, tokenizer = tiny
    examples = [make_example(TASK, tokenizer, 1, i, "val") for i in range(4)]
    normal = free_run(model, tokenizer, examples, EvictionConfig())
    restarted = rerun(model, tokenizer, examples, normal, "sums", EvictionConfig(restart=True))
    for example, ours, theirs in zip(examples, normal, restarted):
        scored = {p for positions in unit("sums").positions(example) for p in positions}
        assert len(ours) == len(theirs) == len(example.ids)
        assert all(ours[p] == theirs[p] for p in range(len(ours)) if p not in scored)  # mementos included
        for memento in example.memento_positions:
            assert [theirs[p] for p in memento] == [ours[p] for p in memento]
    result = restart_ablation(model, tokenizer, examples, "sums", batch_size=3)
    assert len(result.example) == 4 * 3 and sum(result.table.values()) == 12
    assert result.memento.total == result.restart.total == 12


def test_the_sign_test_counts_examples_and_the_paired_table():
    normal = np.array([True] * 10 + [False] * 5 + [True] * 3)
    restart = np.array([False] * 10 + [False] * 5 + [True] * 3)
    result = RestartAblation("sums", normal, restart, np.arange(18) // 3)
    assert result.table == {"both": 3, "memento_only": 10, "restart_only": 0, "neither": 5}
    assert result.examples_table == {"memento_better": 4, "restart_better": 0, "tied": 2}  # examples of 3 units
    assert result.sign_test_p == pytest.approx(2 / 2 ** 4)  # the 4 untied examples all one way: units are not
    # independent draws, and the test counts examples, not the 10 discordant units
    same = RestartAblation("sums", normal, normal, np.arange(18) // 3)
    assert same.sign_test_p == 1.0 and same.difference_ci() == (0.0, 0.0)
    low, high = result.difference_ci()
    assert 0 < low <= 10 / 18 <= high


def test_restart_cli_writes_the_report_and_the_paired_units(tmp_path, tiny):
    from leakage.engine.model import save_model

    save_model(*tiny, tmp_path / "ckpt")
    out = tmp_path / "restart.json"
    assert main(["restart", str(tmp_path / "ckpt"), "--n", "4", "--blocks", "3", "--out", str(out)]) == 0
    import json

    report = json.loads(out.read_text())
    assert report["units"] == 12 and report["command"].startswith("leakage restart ")
    assert (tmp_path / "restart.csv").read_text().startswith("unit,example,memento_correct,restart_correct")
