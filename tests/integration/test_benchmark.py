"""The leakage benchmark and `leakage audit` on a briefly trained passcode model: restart (the span truly
recomputed away) carries nothing and reads at chance, Memento's cache does carry the passcode, every press is
budget-matched, and the audit command prints its two numbers with intervals."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from leakage.analysis import benchmark
from leakage.analysis.benchmark import BenchmarkSpec, measure
from leakage.analysis.probe import ProbeConfig, fit_probe
from leakage.analysis.twins import passcode_pairs
from leakage.cli import main
from leakage.engine.model import load_model
from leakage.training.tasks import make_example
from tests.bounds import at_chance_on_seeds, probe_reads_at_chance
from tests.integration.conftest import PASSCODE_TASK


@pytest.fixture(scope="module")
def trained(passcode_checkpoint):
    model, tokenizer = load_model(passcode_checkpoint)
    return model, tokenizer, BenchmarkSpec(str(passcode_checkpoint), task=PASSCODE_TASK, n=16, probe_traces=80,
                                           probe="smoke", bootstrap=50)


def twin_features(model, tokenizer, spec, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    examples, twins, _ = passcode_pairs(PASSCODE_TASK, tokenizer, 8, seed=0)
    twinned = [replace(example, ids=ids) for example, ids in zip(examples, twins)]
    return measure(model, tokenizer, examples, method, spec).features, measure(model, tokenizer, twinned, method,
                                                                                  spec).features


@pytest.mark.parametrize("method, identical", [("restart", True), ("memento", False), ("knorm", False)])
def test_only_restart_leaves_the_retained_features_identical_across_passcode_twins(trained, method, identical):
    features, twins = twin_features(*trained, method)
    assert torch.equal(features, twins) == identical


def test_the_benchmarks_restart_features_read_at_chance(trained):
    model, tokenizer, spec = trained
    references = [make_example(PASSCODE_TASK, tokenizer, 1, i, "train") for i in range(600)]
    features = measure(model, tokenizer, references, "restart", spec).features
    labels = torch.tensor([e.passcode_digits for e in references])
    groups = torch.tensor([int("".join(map(str, e.passcode_digits))) for e in references])
    reads = [probe_reads_at_chance(fit_probe(features, labels, groups, ProbeConfig(kind="linear", n_bootstrap=100),
                                             seed), groups, labels.shape[1]) for seed in range(3)]
    assert at_chance_on_seeds(reads)


def test_benchmark_rows_are_budget_matched_and_restart_is_their_reference(trained, tmp_path):
    model, tokenizer, spec = trained
    methods = ("full", "memento", "restart", "knorm", "streaming_llm")
    record = benchmark.run(replace(spec, methods=methods), tmp_path / "bench")
    rows = record.rows.set_index("method")
    assert rows.loc["full", "passcode_retained"] == 1.0 and rows.loc["memento", "passcode_retained"] == 0.0
    assert rows.loc["memento", "nearest_retained"] == 1.0 and rows.loc["restart", "nearest_retained"] < 1.0
    assert rows.loc["restart", "answer_over_restart"] == 0.0
    for press in ("knorm", "streaming_llm"):  # Memento's budget, entry for entry
        assert rows.loc[press, ["kv_peak", "kv_auc"]].tolist() == rows.loc["memento", ["kv_peak", "kv_auc"]].tolist()
    assert rows.loc["full", "kv_auc_share"] == 1.0 and rows.loc["memento", "kv_auc_share"] < 1.0
    assert np.all(rows.probe_bits_low <= rows.probe_bits) and np.all(rows.probe_bits <= rows.probe_bits_high)
    assert {p.suffix for p in record.files} == {".csv", ".json", ".png"}


def test_the_audit_command_prints_bits_and_answer_accuracy_with_intervals(passcode_checkpoint, tmp_path, capsys):
    code = main(["audit", str(passcode_checkpoint), "--method", "snapkv", "--budget", "0.5", "--blocks", "3",
                 "--passcode-block", "1", "--n", "16", "--probe-traces", "80", "--probe", "smoke", "--bootstrap",
                 "50", "--out", str(tmp_path / "audit")])
    shown = capsys.readouterr().out
    assert code == 0
    assert "bits of the evicted span recoverable from retained KV" in shown
    assert "answer accuracy on the evicted secret" in shown
    audit = json.loads((tmp_path / "audit.json").read_text())["audit"]
    assert audit["bits_low"] <= audit["bits_recoverable"] <= audit["bits_high"]
    assert audit["answer_low"] <= audit["answer_accuracy"] <= audit["answer_high"]
    assert audit["kv_auc_share"] < 1.0


def test_the_audit_refuses_an_unknown_method(passcode_checkpoint, capsys):
    assert main(["audit", str(passcode_checkpoint), "--method", "h2o"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_gist_and_memento_each_apply_to_their_own_memento_format(passcode_checkpoint, capsys):
    from leakage.analysis.audit import AuditSpec
    from leakage.config import EvictionConfig
    from leakage.memento.kv import simulate_kv

    gist_task = replace(PASSCODE_TASK, gist_tokens=PASSCODE_TASK.sum_digits)
    assert "memento" in BenchmarkSpec("m", task=PASSCODE_TASK).method_names
    assert "gist" not in BenchmarkSpec("m", task=PASSCODE_TASK).method_names
    names = BenchmarkSpec("m", task=gist_task).method_names
    assert "gist" in names and "memento" not in names and "restart" in names and "snapkv" in names
    with pytest.raises(ValueError, match="does not apply"):
        BenchmarkSpec("m", task=gist_task, methods=("memento",))
    with pytest.raises(ValueError, match="does not apply"):
        AuditSpec("m", task=PASSCODE_TASK, method="gist")
    # k gist tokens per block, k = the memento's length: entry for entry Memento's KV budget
    _, tokenizer = load_model(passcode_checkpoint)
    text, gist = (make_example(task, tokenizer, 0, 0, "val") for task in (PASSCODE_TASK, gist_task))
    eviction = EvictionConfig()
    assert simulate_kv(gist.ids, tokenizer, eviction).response_steps == simulate_kv(text.ids, tokenizer,
                                                                                    eviction).response_steps
    # a text-trained checkpoint is refused gist traces
    assert main(["benchmark", str(passcode_checkpoint), "--blocks", "3", "--passcode-block", "1", "--gist-tokens",
                 "3", "--methods", "gist"]) == 2
    assert "trained with gist_tokens=0" in capsys.readouterr().err
