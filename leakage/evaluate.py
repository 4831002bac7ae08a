"""Task accuracy of a Memento model under eviction decoding (normal or restart).

Two ways to score the `digits` task, both through the eviction decoder:
* teacher-forced: every previous token is the true one; a block counts as correct when the greedy
  prediction at each of its running-sum digits is right;
* free-running ("block digits given"): block digits, markers and the passcode are fed from the
  example, while the running sums, the mementos and the answer are the model's own greedy tokens, so
  an error propagates through the model's mementos. A block counts as correct when the sum the model
  wrote equals the true running sum.
`recall` and `passcode` are scored on the greedy answer digits, teacher-forced: the share of answer
digits predicted correctly (one per `recall` example, five per `passcode` example; the paper's probe
score is this mean digit accuracy). Their Wilson interval treats digits as independent draws, which
for `passcode` (five digits of one sequence) is a little narrower than a per-sequence bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from leakage.config import EvictionConfig
from leakage.decode import Decoder, force_policy, teacher_force
from leakage.tasks import Example, TaskConfig, make_example, recall_text_only_accuracy


@dataclass
class Accuracy:
    """Correct out of total, with a Wilson 95% interval."""

    correct: int
    total: int

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def as_dict(self) -> dict:
        lo, hi = self.ci95
        return {"accuracy": self.value, "ci95_low": lo, "ci95_high": hi, "correct": self.correct, "total": self.total}


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _predictions(model, tokenizer, examples: list[Example], config: EvictionConfig, batch_size: int):
    """Greedy next-token predictions (B, T) from teacher-forced eviction decoding, in batches."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        result = teacher_force(model, tokenizer, [e.ids for e in chunk], config,
                               prompt_len=[e.prompt_len for e in chunk])
        out += [result.logits[b, :len(e.ids)].argmax(-1) for b, e in enumerate(chunk)]
    return out


def _teacher_forced_accuracy(model, tokenizer, examples: list[Example], config: EvictionConfig, batch_size: int,
                             groups: Callable[[Example], list[list[int]]]) -> Accuracy:
    """Share of position groups (`groups(example)`) whose every token is the greedy prediction (true prefix)."""
    correct = total = 0
    for example, pred in zip(examples, _predictions(model, tokenizer, examples, config, batch_size)):
        for positions in groups(example):
            total += 1
            correct += all(int(pred[p - 1]) == example.ids[p] for p in positions)
    return Accuracy(correct, total)


@torch.no_grad()
def block_accuracy_teacher_forced(model, tokenizer, examples: list[Example], config: EvictionConfig,
                                  batch_size: int = 32) -> Accuracy:
    """Share of blocks whose running-sum digits are all predicted correctly (true prefix)."""
    return _teacher_forced_accuracy(model, tokenizer, examples, config, batch_size, lambda e: e.sum_positions)


@torch.no_grad()
def block_accuracy_free_running(model, tokenizer, examples: list[Example], config: EvictionConfig,
                                batch_size: int = 32) -> Accuracy:
    """Share of blocks whose running sum the model writes exactly, block digits given (see module doc)."""
    correct = total = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        written = free_run(model, tokenizer, chunk, config)
        for example, ids in zip(chunk, written):
            for positions in example.sum_positions:
                total += 1
                correct += [ids[p] for p in positions] == [example.ids[p] for p in positions]
    return Accuracy(correct, total)


def model_written(example: Example) -> set[int]:
    """Positions the model writes in the free-running evaluation (and RL rollouts): the running sums,
    the mementos and the answer; everything else (block digits, passcode, markers) is given."""
    return {p for ps in example.sum_positions + example.memento_positions for p in ps} | set(example.answer_positions)


def free_run(model, tokenizer, examples: list[Example], config: EvictionConfig) -> list[list[int]]:
    """Decode the examples in lockstep; sum, memento and answer tokens are the model's greedy choices."""
    own = [model_written(e) for e in examples]
    decoder = Decoder(model, tokenizer, config, [e.ids[:e.prompt_len] for e in examples])
    decoder.run(force_policy([e.ids for e in examples], lambda row, position: position in own[row]))
    return [row.ids for row in decoder.rows]


@torch.no_grad()
def answer_accuracy(model, tokenizer, examples: list[Example], config: EvictionConfig,
                    batch_size: int = 32) -> Accuracy:
    """Share of answer digits that are the greedy prediction (true prefix), over all examples."""
    return _teacher_forced_accuracy(model, tokenizer, examples, config, batch_size,
                                    lambda e: [[p] for p in e.answer_positions])


def task_accuracy(model, tokenizer, examples: list[Example], task: str, config: EvictionConfig) -> Accuracy:
    """The task's teacher-forced score: block accuracy for `digits`, answer-digit accuracy otherwise."""
    score = block_accuracy_teacher_forced if task == "digits" else answer_accuracy
    return score(model, tokenizer, examples, config)


def decoding_modes(eviction: EvictionConfig = EvictionConfig()) -> dict[str, EvictionConfig]:
    """The three decodings a checkpoint is scored under: memento (`eviction`), restart, full attention."""
    return {"memento": replace(eviction, restart=False), "restart": replace(eviction, restart=True),
            "full_attention": EvictionConfig(keep_last_n_blocks=-1)}


def evaluate_checkpoint(model, tokenizer, task: TaskConfig, n: int, seed: int = 1,
                        eviction: EvictionConfig = EvictionConfig()) -> dict:
    """Accuracy on `n` validation examples under memento, restart and full-attention decoding.

    digits: free-running and teacher-forced block accuracy; recall and passcode: answer-digit accuracy,
    with chance and the best accuracy memento text alone allows (for passcode, chance: no memento holds
    anything about it). Each accuracy carries a Wilson 95% interval.
    """
    examples = [make_example(task, tokenizer, seed, i, "val") for i in range(n)]
    configs = decoding_modes(eviction)
    scorers = ({"free_running": block_accuracy_free_running, "teacher_forced": block_accuracy_teacher_forced}
               if task.task == "digits" else {"answer": answer_accuracy})
    results = {"task": task.task, "n_examples": n, "seed": seed, "eviction": asdict(eviction)}
    for mode, config in configs.items():
        for name, scorer in scorers.items():
            results[f"{mode}/{name}"] = scorer(model, tokenizer, examples, config).as_dict()
    if task.task != "digits":
        results["chance"] = 0.1
        results["text_only_bayes_optimal"] = (recall_text_only_accuracy(task.digits_per_block)
                                              if task.task == "recall" else 0.1)
    return results
