"""CISPO fine-tuning of a Memento model on TRL's `GRPOTrainer`, on rollouts from the eviction decoder.

The paper's RL recipe: CISPO (the importance weight is clipped and detached, so every token keeps a
gradient), groups of G rollouts per prompt sampled at temperature 1.0 with block masking exactly as at
inference, a training forward under the same memento mask, a KL penalty (beta 0.001) against the SFT
checkpoint, and a block length cap. TRL provides the loss (`loss_type="cispo"`), the group-normalised
advantages, the KL term and the Trainer machinery (checkpoints, resume, accelerate/DeepSpeed);
`MementoGRPOTrainer` changes two things, both documented on the class:

* rollouts come from `leakage.training.rollout.sample_rollouts` (TRL's `rollout_func` hook): the environment's
  tokens (block digits, passcode, markers) carry `env_mask = 0`, so only the model's own tokens enter
  the loss and the KL;
* the per-token log-probabilities are computed under the memento mask with logical position ids
  (`leakage.memento.mask.memento_mask`, the eviction schedule's mask), not TRL's causal mask, so they equal the
  decoder's log-probabilities of the same rollout (tested to 1e-4).

Run folder::

    runs/NAME-rl/config.json        the RL config, the task and the SFT checkpoint it starts from
    runs/NAME-rl/metrics.jsonl      every logged metric: reward, accuracy, KL, clip ratio, block and
                                    memento length, peak KV per rollout, validation accuracy
    runs/NAME-rl/checkpoint-N/      Trainer checkpoints (resume with --resume)
    runs/NAME-rl/final/             the RL model, HF format
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from leakage.config import EvictionConfig
from leakage.training.evaluate import free_run
from leakage.io import atomic_write_json
from leakage.memento.mask import additive_mask, memento_mask
from leakage.engine.model import load_model, save_model
from leakage.training.rollout import REWARDS, block_lengths, check_block_cap, memento_lengths, sample_rollouts
from leakage.training.tasks import TaskConfig, make_example
from leakage.provenance import code_fingerprint
from leakage.training.train import (MetricsLogger, TrainedRun, TrainingInterrupted, checkpoint_bytes, disk_full_named,
                                    last_complete_checkpoint, prepare_run_dir, require_space, trim_metrics,
                                    weights_fingerprint)


@dataclass(frozen=True)
class RLPreset:
    """How long and how wide to run RL. A step is one optimizer step on one batch of fresh rollouts."""

    steps: int
    prompts_per_step: int
    group_size: int  # G rollouts per prompt
    learning_rate: float
    warmup_steps: int  # linear warmup from 0 (Adam's first steps are sign-sized)
    save_every: int
    eval_every: int  # validation accuracy (greedy, free-running) during training
    n_val: int  # validation examples for that curve
    n_eval: int  # examples of the before/after analysis
    eval_samples: int  # rollouts per analysis example (pass@1, maj@1..k)
    probe_traces: int  # traces of the before/after passcode probe

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "group_size", "save_every", "eval_every", "n_val", "n_eval",
                     "eval_samples", "probe_traces"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (advantages are relative to the group), got "
                             f"{self.group_size}")


RL_PRESETS: dict[str, RLPreset] = {
    "smoke": RLPreset(steps=2, prompts_per_step=2, group_size=4, learning_rate=1e-3, warmup_steps=0, save_every=1,
                      eval_every=1, n_val=4, n_eval=4, eval_samples=2, probe_traces=200),
    # ~3.3 s per step on 2 CPU cores for a 10-block task; the analysis adds ~8 minutes
    "fast": RLPreset(steps=150, prompts_per_step=8, group_size=8, learning_rate=5e-5, warmup_steps=10, save_every=25,
                     eval_every=25, n_val=64, n_eval=256, eval_samples=8, probe_traces=10_000),
}


@dataclass(frozen=True)
class RLConfig:
    """One RL run.

    task: the task rewarded (digits, recall or passcode); its shape comes from the SFT run's config.
    preset: smoke or fast (`RL_PRESETS`).
    reward: digit_share (share of answer digits right) or exact (1 when the whole answer is right).
    beta: KL penalty against the SFT checkpoint (the paper: 0.001).
    epsilon_high: CISPO's upper bound on the detached importance weight (ScaleRL's 5.0).
    num_iterations: optimisation passes over each batch of rollouts (1: on-policy, weight exactly 1).
    temperature: rollout sampling temperature (the paper: 1.0).
    max_block_tokens: the block length cap (none: no cap); refused below the task's given block length.
    seed: rollouts, data order and initialisation of the optimizer state.
    """

    task: str = "digits"
    preset: str = "fast"
    reward: str = "digit_share"
    beta: float = 0.001
    epsilon_high: float = 5.0
    num_iterations: int = 1
    temperature: float = 1.0
    max_block_tokens: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.preset not in RL_PRESETS:
            raise KeyError(f"unknown RL preset {self.preset!r}; choose one of {sorted(RL_PRESETS)}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; choose one of {REWARDS}")
        if self.beta < 0 or self.epsilon_high <= 0 or self.num_iterations < 1 or not self.temperature > 0:
            raise ValueError("beta must be >= 0, epsilon_high > 0, num_iterations >= 1 and temperature > 0")

    @property
    def plan(self) -> RLPreset:
        return RL_PRESETS[self.preset]


RL_FILES = ("config.json", "metrics.jsonl", "final", "done.json", "analysis*", "checkpoint-*")
"""What an RL run folder holds (module docstring); `overwrite` removes exactly these."""


def sft_source(source: str | Path, task: str) -> tuple[Path, TaskConfig]:
    """The checkpoint and task of an SFT run folder (`runs/NAME`: `final/` and `config.json`), or of a
    bare checkpoint directory (then the task's default shape). The task is evaluated as in the paper:
    fixed-length blocks (`TrainedRun.evaluation_task`)."""
    source = Path(source)
    if (source / "final").is_dir() and (source / "config.json").is_file():
        run = TrainedRun(source)
        return run.final, run.evaluation_task(task)
    if (source / "config.json").is_file():
        return source, TaskConfig(task=task)
    raise FileNotFoundError(f"{source} is neither a `leakage train` run folder (final/ and config.json) nor an HF "
                            "checkpoint directory (config.json)")


def rollout_layout(input_ids: torch.Tensor, real: torch.Tensor, prompt_width: int, tokenizer,
                   eviction: EvictionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The memento mask (B, T, T) bool and logical position ids (B, T) of TRL's padded batch.

    input_ids, real: (B, T), a left-padded prompt block of width `prompt_width` followed by a
    right-padded completion; `real` is 1 on real tokens. Each row is parsed as the decoder's tracker
    parsed it (prompt = the row's real prompt tokens, lenient), so the mask is the decoder's.
    """
    prompt_lens = real[:, :prompt_width].sum(1).tolist()
    mask = memento_mask(input_ids.cpu(), tokenizer, eviction=eviction, padding_mask=real.cpu().bool(),
                        prompt_len=prompt_lens, plain_prompt=False, strict=False)
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    return mask.to(input_ids.device), positions


def _group_examples(task: TaskConfig, tokenizer, seed: int, indices: list[int], split: str = "train"):
    return [make_example(task, tokenizer, seed, i, split) for i in indices]


@functools.cache
def _trainer_classes():
    """TRL imported on first use: `leakage` imports without it. Built once (one trainer class)."""
    from trl import GRPOConfig, GRPOTrainer

    class MementoGRPOTrainer(GRPOTrainer):
        """`GRPOTrainer` with Memento rollouts and the memento mask in the training forward.

        1. `rollout_func` is `self.rollout`: each dataset row names a task example (`index`); the
           generation batch (each row repeated G times by TRL's sampler) is decoded by
           `sample_rollouts` under `eviction`, and returned with `env_mask` (1: the model's tokens).
           TRL passes a rollout function only the prompts, so `_generate_and_score_completions` keeps
           the batch's rows for it.
        2. `_get_per_token_logps_and_entropies` runs the same fused log-prob head TRL uses, but with
           the 4D memento mask (additive) and logical position ids of `rollout_layout`; it is used for
           the policy, the old policy and the reference model alike.
        """

        def __init__(self, *args, task: TaskConfig, config: RLConfig, eviction: EvictionConfig, **kwargs):
            self.task, self.config, self.eviction = task, config, eviction
            self._rows: list[dict] = []
            super().__init__(*args, rollout_func=self.rollout, **kwargs)

        def _generate_and_score_completions(self, inputs):
            self._rows = inputs
            return super()._generate_and_score_completions(inputs)

        def rollout(self, prompts: list, trainer) -> dict:
            tokenizer = self.processing_class
            examples = _group_examples(self.task, tokenizer, self.config.seed, [row["index"] for row in self._rows])
            was_training = self.model.training
            self.model.eval()
            model = self.accelerator.unwrap_model(self.model)
            out = sample_rollouts(model, tokenizer, examples, self.eviction, self.config.temperature,
                                  seed=self.config.seed * 1_000_003 + self.state.global_step)
            self.model.train(was_training)
            completions = [r.completion for r in out]
            blocks = [n for r in out for n in block_lengths(r.ids, tokenizer)]
            mementos = [n for r in out for n in memento_lengths(r.ids, tokenizer)]
            for name, value in (("rollout/accuracy", sum(r.reward("exact") for r in out) / len(out)),
                                ("rollout/answer_digits", sum(r.reward("digit_share") for r in out) / len(out)),
                                ("rollout/peak_kv", sum(r.kv.peak for r in out) / len(out)),
                                ("rollout/kv_auc", sum(r.kv.auc for r in out) / len(out)),
                                ("rollout/block_length", sum(blocks) / max(len(blocks), 1)),
                                ("rollout/memento_length", sum(mementos) / max(len(mementos), 1))):
                self._log_metric(name, value)
            return {"prompt_ids": [r.ids[:r.prompt_len] for r in out], "completion_ids": [c[0] for c in completions],
                    "env_mask": [c[1] for c in completions], "logprobs": [c[2] for c in completions],
                    "answer_digits": [r.digits_right for r in out], "answer_length": [len(r.truth) for r in out],
                    "answer_exact": [float(r.answer == r.truth) for r in out]}

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **multimodal):
            if any(v is not None for v in multimodal.values()):
                raise ValueError("Memento RL takes text only")
            batch_size = batch_size or input_ids.size(0)
            dtype = next(model.parameters()).dtype
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                ids, real = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
                mask, positions = rollout_layout(ids, real, ids.size(1) - logits_to_keep, self.processing_class,
                                                 self.eviction)
                labels = ids.masked_fill(real == 0, -100)
                labels[:, :-logits_to_keep] = -100
                with self.accelerator.autocast():
                    out = model(input_ids=ids, attention_mask=additive_mask(mask, dtype).to(ids.device),
                                position_ids=positions, labels=labels, fused_lm_head=True)
                logps.append(out.log_probs[:, -logits_to_keep:])
                if compute_entropy:
                    entropies.append(out.entropy[:, -logits_to_keep:])
            return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    return GRPOConfig, MementoGRPOTrainer


@torch.no_grad()
def logprob_agreement(trainer, indices: list[int]) -> dict:
    """Run TRL's own rollout-and-score pipeline on the task examples `indices` (each repeated G times, as
    TRL's sampler does) and compare the training forward's log-probabilities with the decoder's at every
    token the model sampled: {"max_abs_difference", "mean_abs_difference", "tokens"}."""
    G = trainer.num_generations
    batch = trainer._generate_and_score_completions([{"prompt": "", "index": i} for i in indices for _ in range(G)])
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    real = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, real, batch["completion_ids"].size(1))
    sampled = (batch["completion_mask"] * batch["tool_mask"]).bool()
    difference = (logps - batch["sampling_per_token_logps"])[sampled].abs()
    return {"max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
            "tokens": int(sampled.sum())}


def answer_reward(kind: str):
    """The rule-based reward TRL calls: from the answer the rollout wrote (fields the rollout returned)."""
    def reward(prompts, completions, answer_digits, answer_length, answer_exact, **_) -> list[float]:
        if kind == "exact":
            return list(answer_exact)
        return [right / n for right, n in zip(answer_digits, answer_length)]
    reward.__name__ = f"answer_{kind}"
    return reward


class ValidationCallback(TrainerCallback):
    """Every `eval_every` steps (and at step 0): greedy free-running answer accuracy on validation
    examples, logged as `val/accuracy` (whole answer) and `val/answer_digits`."""

    def __init__(self, tokenizer, examples, eviction: EvictionConfig, every: int):
        self.tokenizer, self.examples, self.eviction, self.every = tokenizer, examples, eviction, every
        self.trainer = None

    def _measure(self, model) -> dict:
        was_training = model.training
        model.eval()
        written = free_run(model, self.tokenizer, self.examples, self.eviction)
        model.train(was_training)
        exact = digits = total = 0
        for example, ids in zip(self.examples, written):
            right = [ids[p] == example.ids[p] for p in example.answer_positions]
            exact += all(right)
            digits += sum(right)
            total += len(right)
        return {"val/accuracy": exact / len(self.examples), "val/answer_digits": digits / total}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and state.is_world_process_zero:
            self.trainer.log(self._measure(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and state.is_world_process_zero:
            self.trainer.log(self._measure(model))


def grpo_arguments(config: RLConfig, out: Path, **overrides):
    """TRL's GRPOConfig for a run: one optimizer step per generation batch of prompts_per_step x G rollouts.

    TRL defaults to bf16 autocast; here the training forward runs in the model's dtype, as the decoder
    does, so that its log-probabilities are the rollouts' (bf16 autocast moved them by up to 0.68:
    `experiments/rl_checks.py`)."""
    GRPOConfig, _ = _trainer_classes()
    p = config.plan
    kwargs = dict(
        output_dir=str(out), max_steps=p.steps, per_device_train_batch_size=p.prompts_per_step * p.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=p.group_size,
        num_iterations=config.num_iterations, learning_rate=p.learning_rate, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, lr_scheduler_type="constant_with_warmup", warmup_steps=p.warmup_steps, max_grad_norm=1.0, loss_type="cispo",
        epsilon_high=config.epsilon_high, beta=config.beta, temperature=config.temperature, seed=config.seed,
        data_seed=config.seed, logging_steps=1, save_strategy="steps", save_steps=p.save_every, report_to="none",
        disable_dropout=True, bf16=False, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def rl_dataset(config: RLConfig, tokenizer, task: TaskConfig):
    """One row per prompt of the run: the task prompt (for TRL's logs) and the example index."""
    from datasets import Dataset

    p = config.plan
    n = p.steps * p.prompts_per_step
    example = make_example(task, tokenizer, config.seed, 0, "train")
    prompt = tokenizer.decode(example.ids[:example.prompt_len])
    return Dataset.from_dict({"prompt": [prompt] * n, "index": list(range(n))})


def build_trainer(config: RLConfig, checkpoint: Path, task: TaskConfig, out: Path,
                  eviction: EvictionConfig = EvictionConfig(), callbacks: list | None = None, **overrides):
    """The configured `MementoGRPOTrainer` on the SFT checkpoint (the policy; TRL loads the reference
    from the same directory), with the run's logger and validation curve."""
    if eviction.restart:
        raise ValueError("RL trains under memento decoding; the restart ablation has no single training mask")
    eviction = replace(eviction, max_block_tokens=config.max_block_tokens)
    _, Trainer = _trainer_classes()
    model, tokenizer = load_model(checkpoint)
    model.train()
    p = config.plan
    check_block_cap(_group_examples(task, tokenizer, config.seed, range(p.prompts_per_step)), tokenizer,
                    config.max_block_tokens)
    val = _group_examples(task, tokenizer, config.seed + 1, list(range(p.n_val)), "val")
    validation = ValidationCallback(tokenizer, val, eviction, p.eval_every)
    trainer = Trainer(model=model, reward_funcs=[answer_reward(config.reward)],
                      args=grpo_arguments(config, out, **overrides), train_dataset=rl_dataset(config, tokenizer, task),
                      processing_class=tokenizer, task=task, config=config, eviction=eviction,
                      callbacks=[MetricsLogger(out / "metrics.jsonl", stage="rl"), validation, *(callbacks or [])])
    validation.trainer = trainer
    return trainer


def run_config(config: RLConfig, checkpoint: Path, task: TaskConfig) -> dict:
    """What an RL run folder's `config.json` (and its final model's `leakage.json`) holds: the config, the
    task, the SFT checkpoint and its weights' fingerprint, and the fingerprint of the code that trains it."""
    return json.loads(json.dumps({"rl": asdict(config), "task": asdict(task), "from": str(checkpoint),
                                  "from_weights_sha256": weights_fingerprint(load_model(checkpoint)[0]),
                                  "code": code_fingerprint("leakage.training.rl")}))


def rl_train(config: RLConfig, source: str | Path, out: str | Path, resume: bool = False, overwrite: bool = False,
             callbacks: list | None = None, **overrides) -> Path:
    """Run CISPO from an SFT run (or checkpoint) into `out`; returns `out/final`.

    An existing run folder is resumed (`resume`, same config only) or replaced (`overwrite`), never mixed;
    resuming a finished run (`done.json`) trains nothing and returns its `final/`.
    """
    checkpoint, task = sft_source(source, config.task)
    out = Path(out)
    record = run_config(config, checkpoint, task)
    prepare_run_dir(record, out, resume, overwrite, RL_FILES)
    if resume and (out / "done.json").is_file() and (out / "final").is_dir():
        return out / "final"
    trainer = build_trainer(config, checkpoint, task, out, callbacks=callbacks, **overrides)  # validates first
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", record)
    resumed = last_complete_checkpoint(out) if resume else None
    has_checkpoint = resumed is not None
    if resume:
        trim_metrics(out / "metrics.jsonl", "rl", int(resumed.name.split("-")[1]) if resumed else 0)
    require_space(out, 3 * checkpoint_bytes(trainer.model))
    start = time.perf_counter()
    with disk_full_named(out):
        trainer.train(resume_from_checkpoint=str(resumed) if resumed else None)
    if trainer.state.global_step < trainer.args.max_steps:
        raise TrainingInterrupted(f"RL stopped at step {trainer.state.global_step} of {trainer.args.max_steps}; "
                                  "resume with resume=True (--resume)")
    final = save_model(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, out / "final",
                       record)
    atomic_write_json(out / "done.json", {"steps": trainer.state.global_step, "wall_seconds": time.perf_counter() - start,
                                          "resumed": has_checkpoint,
                                          "weights_sha256": weights_fingerprint(trainer.model)})
    return final
