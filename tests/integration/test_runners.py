"""The runners: one `run(spec, out) -> Record` per analysis, one writer, tasks and ablation kinds as data,
and a library that leaves the caller's random stream and plot style alone."""

import json

import numpy as np
import pytest
import torch

from leakage.analysis import ablation, evaluation, probing, restart
from leakage.analysis.record import Record, write_record
from leakage.analysis.twins import CausalExperiment, CausalSpec, twin_run
from leakage.engine.model import build_model, checkpoint_sha256, load_checkpoint, save_model
from leakage.provenance import code_fingerprint
from leakage.training.tasks import TASKS, Question, TaskConfig, TaskSpec, register_task


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("runners") / "ckpt"
    save_model(*tiny, path)
    return str(path)


def _ask_block_sum(config, contents, rng):
    """A toy task: the running sum after block 0, asked by its block."""
    return Question("block 0 sum ?", contents.written_sums[0])


@pytest.fixture
def block_sum_task(monkeypatch):
    """A new task, defined in one place: this `TaskSpec`. Nothing else in the package changes."""
    monkeypatch.setitem(TASKS, "block_sum", None)  # monkeypatch restores the registry after the test
    return register_task(TaskSpec("block_sum", _ask_block_sum, words=("block", "sum", "?"), units=("answer_digits",),
                                  evaluations=(("answer", "answer_digits", "teacher_forced"),), chance=0.1))


def test_a_new_task_runs_through_evaluate_probe_and_restart(block_sum_task, checkpoint, tmp_path):
    task = TaskConfig(task="block_sum", n_blocks=3, passcode_block=1)
    evaluated = evaluation.run(evaluation.EvaluationSpec(checkpoint, task, n=4), tmp_path / "eval")
    assert evaluated.results["memento/answer"]["total"] == 4 * 3 and evaluated.results["chance"] == 0.1
    ablated = restart.run(restart.RestartSpec(checkpoint, task, n=4))
    assert ablated.results["scored_unit"] == "answer_digits" and ablated.results["units"] == 12
    experiment = probing.ProbeExperiment(n_blocks=3, per_layer=False, mdl=False, precision=False, max_keep=0,
                                         checkpoints=0)
    probed = probing.run(probing.ProbeSpec(checkpoint, task="block_sum", n=120, experiment=experiment,
                                           probe=probing.ProbeConfig(kind="linear", max_epochs=2)))
    assert {"direct", "masked", "causal_control"} <= set(probed.rows.condition)
    with pytest.raises(ValueError, match="outside the synthetic vocabulary"):
        register_task(TaskSpec("x", _ask_block_sum, words=("zebra",), units=("answer_digits",), evaluations=()))


def test_a_new_ablation_kind_is_one_entry(monkeypatch, tiny):
    """Reverse the batch's retained KV (each example gets another's block content): one function, one entry."""
    from leakage.analysis.patching import KV

    def reverse(model, tokenizer, examples, run, eviction):
        return KV(run.target.keys.flip(0), run.target.values.flip(0))

    monkeypatch.setitem(ablation.ABLATIONS, "reverse", reverse)
    model, tokenizer = tiny
    spec = CausalSpec("unused", TaskConfig(task="passcode", n_blocks=3, passcode_block=0),
                      experiment=CausalExperiment(n=4, bootstrap=10))
    examples, run = twin_run(model, tokenizer, spec)
    frame = ablation.ablation_sweep(model, tokenizer, examples, run, spec.eviction, bootstrap=10)
    assert set(frame.source) == {"resample", "mean", "restart", "zero", "reverse"}


def test_the_record_writer(tmp_path, checkpoint):
    import pandas as pd

    spec = evaluation.EvaluationSpec(checkpoint, n=2)
    record = Record("evaluation", spec, {"n_examples": 2}, pd.DataFrame([{"a": 1}]),
                    {checkpoint: checkpoint_sha256(checkpoint)}, 1.5, [], command="leakage eval x",
                    code=code_fingerprint("leakage.analysis.evaluation"))
    written = write_record(record, tmp_path / "out.v1.csv")
    assert [p.name for p in written] == ["out.v1.csv", "out.v1.json"]
    data = json.loads((tmp_path / "out.v1.json").read_text())
    assert data["analysis"] == "evaluation" and data["n"] == 2 and data["task"]["task"] == "digits"
    assert data["weights_sha256"][checkpoint] == checkpoint_sha256(checkpoint) and data["code"]["sources_sha256"]
    assert (tmp_path / "out.v1.csv").read_text().splitlines()[0] == "a,command"
    clash = Record("evaluation", spec, {"n": 3}, None, {}, 0.0)
    with pytest.raises(ValueError, match=r"\['n'\] named both as settings and as results"):
        clash.to_json()


def test_a_runner_run_twice_gives_the_same_record(checkpoint):
    spec = restart.RestartSpec(checkpoint, TaskConfig(task="digits", n_blocks=3), n=4)
    first, second = restart.run(spec).to_json(), restart.run(spec).to_json()
    for key in ("seconds", "phases"):
        first.pop(key), second.pop(key)
    assert first == second


def test_the_library_leaves_the_callers_random_stream_and_style_alone(tmp_path):
    import matplotlib
    from leakage.analysis.probe import ProbeConfig, fit_probe
    from leakage.memento.kv import KVTrace
    from leakage.plotting import plot_kv_sawtooth

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, _ = build_model("tiny", seed=5)
    labels = torch.randint(0, 10, (200, 2), generator=torch.Generator().manual_seed(0))
    fit_probe(torch.randn(200, 4, generator=torch.Generator().manual_seed(1)), labels, np.arange(200),
              ProbeConfig(kind="mlp", max_epochs=2))
    assert torch.equal(torch.rand(3), expected)
    before = dict(matplotlib.rcParams)
    plot_kv_sawtooth({"a": KVTrace([1, 2, 3], 1)}, tmp_path / "kv.png")
    assert dict(matplotlib.rcParams) == before


def test_a_checkpoint_never_trained_on_the_format_warns(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from leakage.engine.model import FormatWarning, build_tokenizer

    tokenizer = build_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1,
                               n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.warns(FormatWarning, match="never trained on the Memento format"):
        load_checkpoint(tmp_path)
