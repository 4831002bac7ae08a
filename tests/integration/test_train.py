"""Two-stage SFT on transformers.Trainer: collator masks, resume, DDP, evaluation."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from leakage.config import EvictionConfig
from leakage.stats import wilson_interval
from leakage.training.evaluate import accuracy, free_run
from leakage.memento.mask import additive_mask, memento_mask
from leakage.engine.model import load_model
from leakage.training.tasks import TaskConfig, make_example
from leakage.training.train import (MementoCollator, RunConfig, TaskDataset, TrainingInterrupted, train, train_preset,
                                    training_arguments)

SMOKE = train_preset("smoke")
TASK = TaskConfig(n_blocks=3)  # short sequences keep these tests fast


def test_collator_masks_are_the_foundation_masks(tiny):
    _, tokenizer = tiny
    data = TaskDataset(TaskConfig(n_blocks=4), tokenizer, size=5, seed=0)
    features = [data[i] for i in range(5)]
    for eviction in (EvictionConfig(keep_last_n_blocks=-1), EvictionConfig(), EvictionConfig(keep_last_n_blocks=1)):
        batch = MementoCollator(tokenizer, eviction)(features)
        assert batch["attention_mask"].shape[:2] == (5, 1) and batch["attention_mask"].dtype == torch.float32
        allowed = batch["attention_mask"][:, 0] == 0
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            expected = memento_mask(f["input_ids"], tokenizer, eviction=eviction)
            assert torch.equal(allowed[b, :n, :n], expected)
            assert not allowed[b, :n, n:].any()
            labels = batch["labels"][b]
            assert (labels[:f["prompt_len"]] == -100).all() and (labels[n:] == -100).all()
            assert labels[f["prompt_len"]:n].tolist() == f["input_ids"][f["prompt_len"]:]


def test_dataset_keeps_each_row_as_made_and_collating_leaves_rows_unchanged(tiny):
    """Epochs after the first reuse the rows made in the first: they must equal rows made afresh (no example
    keyed to another index) and survive collation untouched (the collator may not write into them)."""
    _, tokenizer = tiny
    task = TaskConfig(task="passcode", n_blocks=3, passcode_block=1, short_block_rate=0.5)
    kept = TaskDataset(task, tokenizer, size=6, seed=3, loss_on_random_inputs=False)
    first = [kept[i] for i in (4, 0, 5, 1, 3, 2)]
    collate = MementoCollator(tokenizer, EvictionConfig())
    batches = [collate(first), collate([kept[i] for i in (4, 0, 5, 1, 3, 2)])]
    for key in batches[0]:
        assert torch.equal(batches[0][key], batches[1][key])
    for index in range(6):
        fresh = TaskDataset(task, tokenizer, size=6, seed=3, loss_on_random_inputs=False)[index]
        assert kept[index] == fresh and kept[index]["untrained"]


class StopAt(TrainerCallback):
    """Simulates an interruption: in stage `stage`, save a checkpoint at `step` and stop."""

    def __init__(self, stage, step):
        self.stage, self.step = stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith(f"stage{self.stage}") and state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def _weights(path):
    model, _ = load_model(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_interruptions_equals_straight_run(tmp_path):
    run = RunConfig(task=TASK, preset=SMOKE, stages=(1, 2), seed=3)
    straight = _weights(train(run, tmp_path / "straight"))
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted, match="stage 1 stopped at step 2 of 6"):
        train(run, resumed_dir, callbacks=[StopAt(1, 2)])
    with pytest.raises(TrainingInterrupted, match="stage 2 stopped at step 4 of 6"):
        train(run, resumed_dir, resume=True, callbacks=[StopAt(2, 4)])
    assert (resumed_dir / "stage1" / "done.json").is_file() and not (resumed_dir / "stage2" / "done.json").exists()
    resumed = _weights(train(run, resumed_dir, resume=True))
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_same_machine_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path):
    """Determinism where it is on offer (docs/results.md, "Determinism"): two runs of one seed on one machine are
    bit-identical; floats of another CPU are not promised."""
    run = RunConfig(task=TASK, preset=SMOKE, stages=(1, 2), seed=5)
    first, second = _weights(train(run, tmp_path / "a")), _weights(train(run, tmp_path / "b"))
    assert all(torch.equal(first[name], second[name]) for name in first)
    other = _weights(train(replace(run, seed=6), tmp_path / "c"))
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_the_bf16_recipe_is_fast_in_bf16_mixed_precision(tmp_path):
    assert train_preset("fast-bf16") == replace(train_preset("fast"), bf16=True)
    run = RunConfig(task=TASK, preset=replace(SMOKE, bf16=True), stages=(1,))
    assert training_arguments(run, 1, tmp_path).bf16  # Trainer autocasts the forward to bf16
    assert not training_arguments(replace(run, preset=SMOKE), 1, tmp_path).bf16


def test_training_batches_are_causal(tiny):
    """The collator's mask really masks: no logit depends on a later token."""
    model, tokenizer = tiny
    data = TaskDataset(TASK, tokenizer, size=3, seed=0)
    batch = MementoCollator(tokenizer, EvictionConfig())([data[i] for i in range(3)])
    changed = batch["input_ids"].clone()
    changed[:, 20] = (changed[:, 20] + 1) % 10 + 5
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = model(input_ids=changed, attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a[:, :20], b[:, :20]) and not torch.equal(a[:, 20:], b[:, 20:])


def test_a_run_folder_never_mixes_runs(tmp_path):
    run = RunConfig(task=TASK, preset=SMOKE, stages=(1,))
    train(run, tmp_path / "run")
    other = RunConfig(task=TASK, preset=SMOKE, stages=(1,), seed=9)
    for resume in (False, True):
        with pytest.raises(ValueError, match="different configuration.*seed"):
            train(other, tmp_path / "run", resume=resume)
    with pytest.raises(ValueError, match="already holds this run; pass --resume"):
        train(run, tmp_path / "run")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    done = json.loads((tmp_path / "run" / "stage1" / "done.json").read_text())
    assert not Path(done["best_checkpoint"]).is_absolute() and done["best_checkpoint"].startswith("stage1/")
    # a copied run folder resumes from its own checkpoints, from any working directory
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.rmtree(tmp_path / "run")
    assert train(run, tmp_path / "copy", resume=True) == tmp_path / "copy" / "final"
    assert (tmp_path / "copy" / "metrics.jsonl").read_text() == metrics  # nothing retrained
    (tmp_path / "copy" / "mine.txt").write_text("kept")
    train(other, tmp_path / "copy", overwrite=True)
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["seed"] == 9
    assert (tmp_path / "copy" / "mine.txt").read_text() == "kept"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.csv").write_text("x")
    with pytest.raises(ValueError, match="holds no run"):
        train(run, tmp_path / "foreign")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_training_keeps_ranks_in_sync_and_learns(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "leakage.cli", "train", "--preset", "smoke", "--stages", "2", "--stage2-steps", "8",
           "--blocks", "3", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / "stage2" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1], "ranks ended with different weights"
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0]


def test_teacher_forced_block_accuracy_agrees_with_dense_forward(tiny):
    model, tokenizer = tiny
    examples = [make_example(TASK, tokenizer, 0, i) for i in range(4)]
    config = EvictionConfig()
    correct = total = 0
    for e in examples:
        mask = memento_mask(e.ids, tokenizer, eviction=config)
        with torch.no_grad():
            pred = model(torch.tensor([e.ids]), attention_mask=additive_mask(mask)).logits[0].argmax(-1)
        for positions in e.sum_positions:
            total += 1
            correct += all(int(pred[p - 1]) == e.ids[p] for p in positions)
    acc = accuracy(model, tokenizer, examples, config, "sums")
    assert (acc.correct, acc.total) == (correct, total)


def test_evaluation_batches_fit_a_memory_budget_and_score_the_same(tiny, monkeypatch):
    """A budget that holds one row's forward (`forward_memory_bytes`) decodes one example at a time, to the same
    hits; a budget below one row is refused, naming the length."""
    from leakage.engine.memory import forward_memory_bytes
    from leakage.training import evaluate

    model, tokenizer = tiny
    examples = [make_example(TASK, tokenizer, 0, i) for i in range(4)]
    whole = accuracy(model, tokenizer, examples, EvictionConfig(), "sums")
    longest = max(len(e.ids) for e in examples)
    one_row = forward_memory_bytes(model, longest) / 2 ** 20
    sizes, decode = [], evaluate.METHODS["teacher_forced"]
    monkeypatch.setitem(evaluate.METHODS, "teacher_forced", lambda m, t, chunk, c: sizes.append(len(chunk)) or
                        decode(m, t, chunk, c))
    budget = math.ceil(one_row)  # whole megabytes that hold one row and not two
    assert one_row <= budget < 2 * one_row
    small = accuracy(model, tokenizer, examples, EvictionConfig(), "sums", memory_mb=budget)
    assert sizes == [1] * 4 and (small.hits == whole.hits).all()
    with pytest.raises(ValueError, match=f"sequence of {longest} tokens needs about"):
        accuracy(model, tokenizer, examples, EvictionConfig(), "sums", memory_mb=0)


def test_answer_accuracy_scores_every_answer_digit_like_a_dense_forward(tiny):
    model, tokenizer = tiny
    examples = [make_example(TaskConfig(task="passcode", n_blocks=3), tokenizer, 0, i) for i in range(3)]
    config = EvictionConfig()
    correct = 0
    for e in examples:
        mask = memento_mask(e.ids, tokenizer, eviction=config)
        with torch.no_grad():
            pred = model(torch.tensor([e.ids]), attention_mask=additive_mask(mask)).logits[0].argmax(-1)
        correct += sum(int(pred[p - 1]) == e.ids[p] for p in e.answer_positions)
    acc = accuracy(model, tokenizer, examples, config, "answer_digits")
    assert (acc.correct, acc.total) == (correct, 15)


def test_free_running_feeds_given_digits_and_writes_model_sums(tiny):
    model, tokenizer = tiny
    examples = [make_example(TASK, tokenizer, 0, i) for i in range(2)]
    written = free_run(model, tokenizer, examples, EvictionConfig())
    for e, ids in zip(examples, written):
        own = {p for ps in e.sum_positions + e.memento_positions for p in ps} | set(e.answer_positions)
        assert len(ids) == len(e.ids)
        assert all(ids[p] == e.ids[p] for p in range(len(ids)) if p not in own)


def test_warmup_stable_decay_holds_the_peak_then_decays_over_its_share(tmp_path):
    from transformers import get_scheduler

    preset = replace(train_preset("smoke"), stage2_steps=100, warmup=0.1, schedule="warmup_stable_decay", decay=0.2)
    args = training_arguments(RunConfig(task=TASK, preset=preset), 2, tmp_path)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=preset.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(100),
                              num_training_steps=100, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    peak = preset.learning_rate
    assert rates[0] == 0 and rates[5] < peak  # warm-up: 10 steps
    assert all(r == pytest.approx(peak) for r in rates[10:80])  # stable
    assert all(a > b for a, b in zip(rates[80:], rates[81:])) and rates[-1] < 0.01 * peak  # the last 20 decay


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0


def test_cli_train_and_eval_smoke(tmp_path, capsys):
    from leakage.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--blocks", "3", "--out", str(out)]) == 0
    assert (out / "final" / "config.json").is_file() and (out / "final" / "tokenizer.json").is_file()
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {1, 2}
    assert main(["eval", "--checkpoint", str(out / "final"), "--blocks", "3", "--n", "4",
                 "--out", str(tmp_path / "eval.json")]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["memento/free_running"]["total"] == 12


def test_reproduce_smoke_writes_every_file_its_report_names_and_a_rerun_skips_done_stages(reproduced, capsys):
    import re

    from leakage.cli import main
    from tests.integration.conftest import REPRODUCE

    out = reproduced / "out"
    report = (out / "REPORT.md").read_text()
    named = set(re.findall(r"[\w/]+\.(?:csv|png|json)", report))
    assert {"probe.csv", "patch.png", "ablate.csv", "restart.json", "kv_sawtooth.png", "evaluate.json"} <= named
    for name in named:
        assert (out / name).is_file(), f"REPORT.md names {name}, which was not written"
    for stage in ("train", "evaluate", "kv", "probe", "restart", "patch", "ablate"):
        record = json.loads((out / "stages" / f"{stage}.json").read_text())
        assert "error" not in record, record.get("traceback")
    assert "failed" not in report
    capsys.readouterr()
    assert main(REPRODUCE) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 7 and "running" not in printed


def test_reproduce_reports_a_failing_stage_and_runs_the_others(reproduced, monkeypatch):
    from leakage import reproduce

    def broken(ctx):
        raise RuntimeError("planted failure")

    for name in ("kv", "probe"):  # done in the copy: forget them, and break them
        (reproduced / "out" / "stages" / f"{name}.json").unlink()
        monkeypatch.setitem(reproduce.STAGES, name, broken)
    records = reproduce.reproduce(reproduce.ReproduceConfig(preset="smoke", out="out", runs_dir="runs"))
    assert "planted failure" in records["kv"]["error"] and "planted failure" in records["probe"]["error"]
    assert "error" not in records["restart"]
    report = (reproduced / "out" / "REPORT.md").read_text()
    assert "| kv |" in report and "failed: RuntimeError: planted failure" in report


def test_reproduce_extras_run_the_erasure_and_the_restart_trained_control(tmp_path, monkeypatch):
    from leakage import reproduce

    def not_under_test(ctx):
        raise RuntimeError("not under test")

    for name in ("evaluate", "kv", "probe", "restart", "patch", "ablate"):  # tested above; only the extras here
        monkeypatch.setitem(reproduce.STAGES, name, not_under_test)
    config = reproduce.ReproduceConfig(preset="smoke", out=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"),
                                       extras=True)
    records = reproduce.reproduce(config)
    for stage in ("erase", "control"):
        assert "error" not in records[stage], records[stage].get("traceback")
    assert records["control"]["results"]["restart/sums_teacher_forced"]["total"] > 0
    assert (tmp_path / "runs" / "reproduce-passcode3-restart-smoke-seed0" / "final").is_dir()  # the seed is in the name
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "LEACE on the retained KV" in report and "Restart-trained control" in report
