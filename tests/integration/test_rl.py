"""CISPO on TRL's GRPOTrainer with Memento rollouts, at smoke scale.

What must hold: the training forward's log-probabilities are the eviction decoder's (the memento mask
is in the loss), one CISPO step moves the weights, the KL term is zero while policy == reference, runs
resume and refuse to mix, and the command writes its analysis.
"""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from leakage.cli import main
from leakage.config import EvictionConfig
from leakage.training.rl import RLConfig, build_trainer, logprob_agreement, rl_train, sft_source
from leakage.training.rollout import Rollout, majority_accuracy, sample_rollouts
from leakage.training.tasks import make_example
from leakage.training.train import RunConfig, TrainingInterrupted, train, train_preset

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
SMOKE = RLConfig(task="digits", preset="smoke")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A smoke-trained 3-block digits model (its answers are partly right, so rewards vary)."""
    torch.set_num_threads(2)
    run_dir = tmp_path_factory.mktemp("sft") / "digits-smoke"
    from leakage.training.tasks import TaskConfig

    train(RunConfig(task=TaskConfig(task="digits", n_blocks=3, short_block_rate=0.8), preset=train_preset("smoke")),
          run_dir)
    return run_dir


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory, tiny) -> Path:
    """Another architecture: a random 2-layer GPT-2 with the synthetic vocabulary (learned positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny
    path = tmp_path_factory.mktemp("gpt2") / "gpt2"
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _padded(rollouts: list[Rollout], pad: int):
    """TRL's layout: left-padded prompts, right-padded completions, and their masks."""
    P = max(r.prompt_len for r in rollouts)
    C = max(len(r.ids) - r.prompt_len for r in rollouts)
    ids = torch.full((len(rollouts), P + C), pad)
    real = torch.zeros_like(ids)
    chosen = torch.zeros(len(rollouts), C)
    sampled = torch.zeros(len(rollouts), C)
    for b, r in enumerate(rollouts):
        completion, env_mask, logprobs = r.completion
        ids[b, P - r.prompt_len:P] = torch.tensor(r.ids[:r.prompt_len])
        ids[b, P:P + len(completion)] = torch.tensor(completion)
        real[b, P - r.prompt_len:P + len(completion)] = 1
        chosen[b, :len(completion)] = torch.tensor(env_mask, dtype=torch.float)
        sampled[b, :len(completion)] = torch.tensor(logprobs)
    return ids, real, C, chosen.bool(), sampled


@pytest.mark.parametrize("architecture, eviction", [
    ("qwen3", EvictionConfig()), ("qwen3", EvictionConfig(keep_last_n_blocks=1, mask_delimiters=True)),
    ("gpt2", EvictionConfig())], ids=["qwen3-memento", "qwen3-keep1-phi4", "gpt2-memento"])
def test_training_logprobs_equal_the_decoders(request, tmp_path, architecture, eviction):
    source = request.getfixturevalue("sft_run" if architecture == "qwen3" else "gpt2_checkpoint")
    checkpoint, task = sft_source(source, "digits")
    task = replace(task, n_blocks=3)
    trainer = build_trainer(SMOKE, checkpoint, task, tmp_path / "rl", eviction=eviction)
    tokenizer = trainer.processing_class
    # prompts of different lengths ("sum ?" and "recall block i digit j ?"): TRL left-pads them
    examples = [make_example(task, tokenizer, 0, i) for i in range(3)]
    examples += [make_example(replace(task, task="recall"), tokenizer, 0, i) for i in range(3)]
    assert len({e.prompt_len for e in examples}) > 1
    rollouts = sample_rollouts(trainer.model, tokenizer, examples, eviction, temperature=1.0, seed=3)
    ids, real, C, chosen, sampled = _padded(rollouts, tokenizer.pad_token_id)
    with torch.no_grad():
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, real, C,
                                                                     compute_entropy=True)
    assert chosen.sum() == sum(len(e.answer_positions) + 2 * len(e.sum_positions) * task.sum_digits
                               for e in examples)
    assert (logps - sampled)[chosen].abs().max() < 1e-4
    assert entropy.shape == logps.shape
    # the causal mask would not reproduce them: the memento mask is what makes them equal
    causal = trainer.model(input_ids=ids, attention_mask=real, labels=ids.masked_fill(real == 0, -100),
                           fused_lm_head=True).log_probs[:, -C:]
    assert (causal.detach() - sampled)[chosen].abs().max() > 1e-3


def test_one_cispo_step_moves_the_weights_with_zero_kl_at_the_reference(sft_run, tmp_path):
    checkpoint, task = sft_source(sft_run, "digits")
    config = replace(SMOKE, beta=0.5)  # a large KL weight: the KL term must still be exactly zero at step 1
    trainer = build_trainer(config, checkpoint, task, tmp_path / "rl", max_steps=1, save_strategy="no")
    assert trainer.loss_type == "cispo" and trainer.ref_model is not None
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    step = next(json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["step"] == 1 and "kl" in json.loads(line))
    assert step["reward_std"] > 0, "precondition: the group rewards differ, so the advantages are not all zero"
    assert step["kl"] == 0.0
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "one CISPO step changed no weight"
    reference = trainer.ref_model.state_dict()
    assert all(torch.equal(reference[k], before[k]) for k in before)  # the reference is the SFT model, frozen
    for key in ("rollout/peak_kv", "rollout/block_length", "rollout/memento_length", "rollout/accuracy",
                "cispo_clip_ratio"):
        assert key in step


class StopAfter(TrainerCallback):
    """Stops training after `step` optimizer steps (an interruption)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_continues_and_runs_never_mix(sft_run, tmp_path):
    out = tmp_path / "rl"
    with pytest.raises(TrainingInterrupted, match="step 1 of 2"):
        rl_train(SMOKE, sft_run, out, callbacks=[StopAfter(1)])
    assert (out / "checkpoint-1").is_dir() and not (out / "done.json").exists()
    with pytest.raises(ValueError, match="--resume"):
        rl_train(SMOKE, sft_run, out)
    with pytest.raises(ValueError, match="different configuration"):
        rl_train(replace(SMOKE, beta=0.01), sft_run, out, resume=True)
    rl_train(SMOKE, sft_run, out, resume=True)
    done = json.loads((out / "done.json").read_text())
    assert done["steps"] == 2 and done["resumed"]
    rl_train(SMOKE, sft_run, out, resume=True)  # finished: nothing to train
    assert json.loads((out / "done.json").read_text()) == done
    rl_train(SMOKE, sft_run, tmp_path / "straight")  # the same run, never interrupted: the same weights
    assert json.loads((tmp_path / "straight" / "done.json").read_text())["weights_sha256"] == done["weights_sha256"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no run"):
        rl_train(SMOKE, sft_run, tmp_path / "other")


def test_trl_pipeline_log_probs_agree_with_the_decoder(sft_run, tmp_path):
    """The same check through TRL's own padding and scoring (`logprob_agreement`), on the trainer's task."""
    checkpoint, task = sft_source(sft_run, "digits")
    trainer = build_trainer(SMOKE, checkpoint, task, tmp_path / "rl")
    agreement = logprob_agreement(trainer, [0, 1, 2])
    assert agreement["tokens"] == 3 * trainer.num_generations * (2 * task.n_blocks * task.sum_digits + task.sum_digits)
    assert agreement["max_abs_difference"] < 1e-4


def test_block_cap_below_the_given_blocks_is_refused(sft_run, tmp_path):
    checkpoint, task = sft_source(sft_run, "digits")
    with pytest.raises(ValueError, match="would cut block"):
        build_trainer(replace(SMOKE, max_block_tokens=5), checkpoint, task, tmp_path / "rl")
    build_trainer(replace(SMOKE, max_block_tokens=15), checkpoint, task, tmp_path / "rl")


def test_rl_command_writes_run_and_analysis(sft_run, tmp_path, capsys):
    report = tmp_path / "figures" / "rl_smoke"
    assert main(["rl", "--task", "digits", "--from", str(sft_run), "--out", str(tmp_path / "rl"),
                 "--preset", "smoke", "--report", str(report)]) == 0
    analysis = json.loads((tmp_path / "rl" / "analysis.json").read_text())
    for name in ("before", "after"):
        record = analysis["records"][name]
        assert set(record["maj@k"]) == {"1", "2"}
        assert {"direct", "masked_d1"} <= set(record["probe"])
        assert record["restart/sums"]["memento"]["total"] == 4 * 3
        assert len(record["per_example"]["pass@1"]) == 4
    difference = analysis["records"]["after_minus_before"]["restart_drop_sums"]
    assert difference["ci95_low"] <= difference["difference"] <= difference["ci95_high"]
    for suffix in (".csv", ".json", ".png"):
        assert report.with_suffix(suffix).is_file()
    assert (tmp_path / "figures" / "rl_smoke_metrics.jsonl").is_file()
    assert (tmp_path / "rl" / "final" / "config.json").is_file()


def _rollout(example, answer: list[int]) -> Rollout:
    ids = list(example.ids)
    for p, token in zip(example.answer_positions, answer):
        ids[p] = token
    return Rollout(example=example, ids=ids, chosen=[False] * len(ids), logprobs=[0.0] * len(ids), kv=None)


def test_rewards_and_majority_vote(tiny):
    _, tokenizer = tiny
    from leakage.training.tasks import TaskConfig

    example = make_example(TaskConfig(task="digits", n_blocks=2), tokenizer, 0, 0)
    truth = [example.ids[p] for p in example.answer_positions]
    wrong = [t + 1 if t + 1 != tokenizer.pad_token_id else t + 2 for t in truth]
    half = [truth[0], *wrong[1:]]
    assert _rollout(example, truth).reward("exact") == 1.0
    assert _rollout(example, half).reward("exact") == 0.0
    assert _rollout(example, half).reward("digit_share") == pytest.approx(1 / len(truth))
    with pytest.raises(ValueError, match="unknown reward"):
        _rollout(example, truth).reward("length")
    group = [_rollout(example, a) for a in (wrong, truth, truth, wrong, half)]
    assert majority_accuracy([group], 1).correct == 0
    assert majority_accuracy([group], 2).correct == 0  # a tie: the answer seen first wins
    assert majority_accuracy([group], 3).correct == 1
    assert majority_accuracy([group], 5).correct == 0  # wrong 2, truth 2, half 1: wrong seen first
    with pytest.raises(ValueError, match="maj@6"):
        majority_accuracy([group], 6)
