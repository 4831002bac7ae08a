"""Task accuracy of a Memento model under eviction decoding (normal or restart), per scored unit.

A scored unit (`leakage.training.tasks.UNITS`) is a block's running sum (all its digits) or one answer
digit; it counts as right when every one of its tokens is. Two methods, both through the eviction decoder:

* teacher-forced: every previous token is the true one; a unit is right when the greedy prediction at
  each of its tokens is;
* free-running ("block digits given"): block digits, markers and the passcode are fed from the
  example, while the running sums, the mementos and the answer are the model's own greedy tokens, so an
  error propagates through the model's mementos; a unit is right when what the model wrote there is.

A task's `evaluations` (its `TaskSpec`) name the (unit, method) pairs `evaluate_examples` reports, each
with a Wilson 95% interval (`leakage.stats`). For `passcode` (five answer digits of one sequence) that
interval treats the digits as independent draws, a little narrower than a per-sequence bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.engine.decode import Decoder, force_policy, teacher_force
from leakage.stats import wilson_interval
from leakage.training.tasks import Example, TaskConfig, make_example, task_spec, unit


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


def model_written(example: Example) -> set[int]:
    """Positions the model writes in the free-running evaluation (and RL rollouts): the running sums,
    the mementos and the answer; everything else (block digits, passcode, markers) is given."""
    return {p for ps in example.sum_positions + example.memento_positions for p in ps} | set(example.answer_positions)


def free_run(model, tokenizer, examples: list[Example], eviction: EvictionConfig) -> list[list[int]]:
    """Decode the examples in lockstep; sum, memento and answer tokens are the model's greedy choices."""
    own = [model_written(e) for e in examples]
    decoder = Decoder(model, tokenizer, eviction, [e.ids[:e.prompt_len] for e in examples])
    decoder.run(force_policy([e.ids for e in examples], lambda row, position: position in own[row]))
    return [row.ids for row in decoder.rows]


def _teacher_forced_tokens(model, tokenizer, examples: list[Example], eviction: EvictionConfig) -> list[list[int]]:
    """Each example with every position replaced by the greedy prediction from its true prefix (position 0
    keeps its token), from teacher-forced eviction decoding."""
    result = teacher_force(model, tokenizer, [e.ids for e in examples], eviction,
                           prompt_len=[e.prompt_len for e in examples])
    predicted = [result.logits[b, :len(e.ids)].argmax(-1).tolist() for b, e in enumerate(examples)]
    return [[e.ids[0], *p[:-1]] for e, p in zip(examples, predicted)]


METHODS: dict[str, Callable[..., list[list[int]]]] = {"teacher_forced": _teacher_forced_tokens,
                                                      "free_running": free_run}
"""How the tokens a unit is scored on are produced: (model, tokenizer, examples, eviction) -> per example,
a sequence aligned with its ids."""


@torch.no_grad()
def accuracy(model, tokenizer, examples: list[Example], eviction: EvictionConfig, unit_name: str,
             method: str = "teacher_forced", batch_size: int = 32) -> Accuracy:
    """Share of the examples' `unit_name` units that are right under `method` (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method {method!r}; choose one of {sorted(METHODS)}")
    positions_of = unit(unit_name).positions
    correct = total = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        for example, tokens in zip(chunk, METHODS[method](model, tokenizer, chunk, eviction)):
            for positions in positions_of(example):
                total += 1
                correct += all(tokens[p] == example.ids[p] for p in positions)
    return Accuracy(correct, total)


def task_accuracy(model, tokenizer, examples: list[Example], task: str, eviction: EvictionConfig) -> Accuracy:
    """The task's teacher-forced score on its headline unit (`TaskSpec.units[0]`)."""
    return accuracy(model, tokenizer, examples, eviction, task_spec(task).units[0])


def decoding_modes(eviction: EvictionConfig = EvictionConfig()) -> dict[str, EvictionConfig]:
    """The three decodings a checkpoint is scored under: memento (`eviction`), restart, full attention."""
    return {"memento": replace(eviction, restart=False), "restart": replace(eviction, restart=True),
            "full_attention": EVICTION_PRESETS["vanilla"]}


def evaluate_examples(model, tokenizer, examples: list[Example], evaluations: tuple[tuple[str, str, str], ...],
                      eviction: EvictionConfig = EvictionConfig()) -> dict[str, dict]:
    """`{mode}/{name}` -> accuracy (`Accuracy.as_dict`) of every (name, unit, method) in `evaluations` under
    each of the three decoding modes."""
    return {f"{mode}/{name}": accuracy(model, tokenizer, examples, config, unit_name, method).as_dict()
            for mode, config in decoding_modes(eviction).items() for name, unit_name, method in evaluations}


def validation_examples(task: TaskConfig, tokenizer, n: int, seed: int) -> list[Example]:
    """The first `n` validation examples of `task` (seed `seed`)."""
    return [make_example(task, tokenizer, seed, i, "val") for i in range(n)]
