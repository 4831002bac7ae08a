"""The passcode probe end to end at smoke scale: features equal the decoder's cache, splits are
label-unique, and the same command runs on another architecture and on real traces with an injected
passcode."""

import json

import pandas as pd
import pytest
import torch

from leakage.cli import main
from leakage.config import EvictionConfig
from leakage.engine.decode import teacher_force
from leakage.analysis.probe_data import capture_dataset, synthetic_traces
from leakage.training.tasks import TaskConfig

TASK = TaskConfig(task="digits", n_blocks=4, passcode_block=1)


def test_dataset_features_are_what_the_decoder_cache_holds(tiny):
    model, tokenizer = tiny
    traces = synthetic_traces(TASK, tokenizer, 6)
    data = capture_dataset(model, tokenizer, traces, EvictionConfig(), [("memento", 1), ("block_end", 0)], batch_size=4)
    assert data.kv["memento+1"].shape == (6, 4, 3, 2 * 2 * 32)  # (N, layer, memento tokens, K+V of 2 heads x 32)
    assert data.features("memento+1").shape == (6, 4 * 3 * 128)
    assert data.features("memento+1", layers=[3], pooling="mean").shape == (6, 128)
    assert data.text_features("memento+1").shape == (6, 3 * 128)
    for b, trace in enumerate(traces[:2]):
        held = {}

        def keep(step, cache):
            if step.positions[0]:
                held.update({p: (cache.keys(3)[0, :, p], cache.values(3)[0, :, p]) for p in cache.positions(0)})

        teacher_force(model, tokenizer, trace.ids, on_step=keep)
        for i, p in enumerate(trace.positions.select("memento@2")):
            keys, values = held[p]
            got = data.kv["memento+1"][b, 3, i]
            assert torch.allclose(got[:64], keys.flatten(), atol=1e-5) and torch.allclose(got[64:], values.flatten(), atol=1e-5)
    assert data.labels.tolist()[0] == list(traces[0].digits) and data.groups[0] == traces[0].group


def test_probe_cli_on_the_synthetic_task(tmp_path, capsys, tiny):
    """Every condition, the keep sweep and the checkpoint sweep of a (stand-in) `leakage train` run folder."""
    from leakage.engine.model import save_model

    run = tmp_path / "run"
    for folder in ("final", "stage1/checkpoint-3", "stage2/checkpoint-3", "stage2/checkpoint-6"):
        save_model(*tiny, run / folder)
    out = tmp_path / "probe.csv"
    assert main(["probe", str(run / "final"), "--n", "120", "--blocks", "4", "--kind", "linear", "--mdl",
                 "--no-per-layer", "--max-keep", "1", "--checkpoints", "2", "--n-eval", "8", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    conditions = set(table.condition)
    assert {"direct", "masked", "causal_control", "control_task", "shuffled_labels", "text_only", "restart_kv",
            "random_init", "random_init_direct", "position:block_end", "position:summary_end", "bf16", "spectrum",
            "keep", "checkpoint"} <= conditions
    assert set(table.distance.dropna().astype(int)) == {-1, 0, 1, 2}
    assert table.command.iloc[0].startswith("leakage probe ") and (table.n_val > 0).all()
    assert (table.ci95_low <= table.accuracy).all() and (table.accuracy <= table.ci95_high).all()
    measured = table[table.mdl_compression.notna()]
    assert sorted(measured.condition) == ["control_task", "masked"] and (measured.mdl_uniform_bits > 0).all()
    assert table.loc[table.condition == "control_task", "selectivity"].notna().all()
    sweep = table[table.condition == "checkpoint"]
    assert sorted(set(sweep.step)) == [0, 3, 6, 9] and sweep.task_accuracy.between(0, 1).all()
    assert sweep.loc[sweep.step == 0, "checkpoint"].iloc[0] == "random init"
    keep = table[table.condition == "keep"]
    # keep 1: block 2's memento is written while block 1 (the passcode's) is still in the cache
    assert keep.set_index("distance").sees_passcode.to_dict() == {1: True, 2: False}
    spectrum = table[table.condition == "spectrum"]
    assert set(spectrum.dtype) == {"float32", "bfloat16"} and spectrum.relative_std_cutoff.min() < 1e-5
    run = json.loads((tmp_path / "probe.json").read_text())  # the run's config and timing beside its results
    assert run["experiment"]["max_keep"] == 1 and run["phases"] and run["command"] == table.command.iloc[0]
    # every capture is a phase of its own (its end marked by the probes on it), and so is each checkpoint's scoring:
    # 6 captures of the final model (main, late timing, restart, untrained, bf16, keep 1) and 2 of checkpoints 3 and 6
    starts = [p["phase"].split()[0] for p in run["phases"]]
    assert starts.count("capturing") == starts.count("probing") == 8 and starts.count("scoring") == 4
    assert all(after == "probing" for before, after in zip(starts, starts[1:]) if before == "capturing")
    for figure in ("conditions", "layers", "sweeps"):
        assert (tmp_path / f"probe_{figure}.png").stat().st_size > 0


def test_probe_cli_on_another_architecture_and_real_traces(tmp_path, fixtures_dir):
    """A tiny LlamaForCausalLM built from a config, a BPE tokenizer with the Memento tokens added, and the
    fixture traces with an injected passcode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from leakage.engine.model import add_memento_tokens
    from leakage.pipeline.tokenizer import corpus_texts, train_stand_in_tokenizer

    files = [fixtures_dir / f"memento_example_{name}.json" for name in ("response", "code", "science")]
    tokenizer = train_stand_in_tokenizer(corpus_texts(files), vocab_size=2048)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    add_memento_tokens(model, tokenizer)
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(f.read_text().replace("\n", " ") + "\n" for f in files[:1]))
    out = tmp_path / "probe.csv"
    assert main(["probe", str(tmp_path / "llama"), "--traces", str(traces), "--n", "24", "--kind", "linear",
                 "--passcode-block", "0", "--blocks", "2", "--no-per-layer", "--no-mdl", "--pooling", "mean",
                 "--no-precision", "--no-spectrum", "--no-late-timing", "--max-keep", "0",  # the synthetic test has them
                 "--out", str(out)]) == 0  # a two-block prefix keeps the dense masks small
    table = pd.read_csv(out)
    assert {"direct", "masked", "restart_kv", "random_init"} <= set(table.condition) and table.n_traces.iloc[0] == 24


def test_capture_batches_fit_a_memory_budget_and_give_the_same_dataset(tiny):
    from leakage.engine.memory import forward_memory_bytes

    model, tokenizer = tiny
    traces = synthetic_traces(TaskConfig(task="digits", n_blocks=3, passcode_block=1), tokenizer, 12)
    sites = [("memento", 0), ("memento", 1)]
    whole = capture_dataset(model, tokenizer, traces, EvictionConfig(), sites)
    longest = max(len(t.ids) for t in traces)
    two_rows = 2 * forward_memory_bytes(model, longest) / 2 ** 20
    seen = []
    halves = capture_dataset(model, tokenizer, traces, EvictionConfig(), sites, memory_mb=int(two_rows) + 1,
                             progress=seen.append)
    assert seen == [2] * 6  # two rows a forward: what the budget holds
    for site in whole.kv:
        assert torch.allclose(whole.kv[site], halves.kv[site], atol=1e-5)
    with pytest.raises(ValueError, match=f"sequence of {longest} tokens needs about"):
        capture_dataset(model, tokenizer, traces, EvictionConfig(), sites, memory_mb=int(two_rows / 4))
