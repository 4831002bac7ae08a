"""Task accuracy of a Memento model under eviction decoding (normal or restart), per scored unit.

A scored unit (`leakage.training.tasks.UNITS`) is a block's running sum (all its digits) or one answer
digit; it counts as right when every one of its tokens is. Two methods, both through the eviction decoder:

* teacher-forced: every previous token is the true one; a unit is right when the greedy prediction at
  each of its tokens is;
* free-running ("block digits given"): block digits, markers and the passcode are fed from the
  example, while the running sums, the mementos and the answer are the model's own greedy tokens, so an
  error propagates through the model's mementos; a unit is right when what the model wrote there is.

A task's `evaluations` (its `TaskSpec`) name the (unit, method) pairs `evaluate_examples` reports. Each
accuracy's 95% interval is over examples, the unit of independence: a cluster bootstrap that resamples
examples with all their units (a passcode's five digits, an example's running sums) when an example
holds several units, the Wilson score interval when each example is one unit (`Accuracy`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.engine.decode import Decoder, SequenceResult, force_policy, teacher_force
from leakage.engine.memory import row_batches
from leakage.stats import cluster_bootstrap_mean, wilson_interval
from leakage.training.tasks import Example, TaskConfig, make_example, task_spec, unit


BOOTSTRAP_RESAMPLES = 2000
EVAL_BATCH = 256
"""Examples decoded in lockstep at most (fewer where `leakage.engine.memory.rows_per_batch` says so): per-step
overhead dominates a small model's decoding, so 256 rows score the main job's task 2.0-2.2x as fast as 32, with
the same hits (`experiments/bench_eval.py`, `figures/bench_eval.json`)."""


@dataclass
class Accuracy:
    """Scored units, right or not, and the example each belongs to.

    hits: (units,) bool. example: (units,) the example of each unit. The 95% interval is over examples: the
    Wilson score interval when every unit is its own example, else a cluster bootstrap that resamples
    examples with all their units (`leakage.stats.cluster_bootstrap_mean`).
    """

    hits: np.ndarray
    example: np.ndarray

    def __post_init__(self):
        self.hits, self.example = np.asarray(self.hits, dtype=bool), np.asarray(self.example)
        if self.hits.shape != self.example.shape:
            raise ValueError(f"hits {self.hits.shape} and example {self.example.shape} must match")

    @classmethod
    def of_examples(cls, hits) -> "Accuracy":
        """One unit per example (e.g. a whole answer)."""
        hits = np.asarray(hits, dtype=bool)
        return cls(hits, np.arange(len(hits)))

    @property
    def correct(self) -> int:
        return int(self.hits.sum())

    @property
    def total(self) -> int:
        return len(self.hits)

    @property
    def examples(self) -> int:
        return len(np.unique(self.example))

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def clustered(self) -> bool:
        """Whether some example holds several units (then the interval is a cluster bootstrap)."""
        return self.examples < self.total

    @property
    def ci95(self) -> tuple[float, float]:
        if not self.clustered:
            return wilson_interval(self.correct, self.total)
        return cluster_bootstrap_mean(self.hits, self.example, BOOTSTRAP_RESAMPLES, seed=0)

    def as_dict(self) -> dict:
        lo, hi = self.ci95
        over = f"cluster bootstrap over {self.examples} examples" if self.clustered else f"Wilson, {self.total} examples"
        return {"accuracy": self.value, "ci95_low": lo, "ci95_high": hi, "correct": self.correct, "total": self.total,
                "examples": self.examples, "interval": over}


def model_written(example: Example) -> set[int]:
    """Positions the model writes in the free-running evaluation (and RL rollouts): the running sums,
    the mementos (unless a method inserts them: `Example.inserted`) and the answer; everything else (block
    digits, passcode, markers, gist tokens) is given."""
    written = {p for ps in example.sum_positions + example.memento_positions for p in ps} | set(example.answer_positions)
    return written - set(example.inserted)


def free_run_results(model, tokenizer, examples: list[Example], eviction: EvictionConfig) -> list[SequenceResult]:
    """Decode the examples in lockstep under `eviction`: the task's random inputs (block digits, passcode) and
    the markers are given, sum, memento and answer tokens are the model's greedy choices (`model_written`).
    Each result holds the decoded ids and the KV accounting of its row."""
    own = [model_written(e) for e in examples]
    decoder = Decoder(model, tokenizer, eviction, [e.ids[:e.prompt_len] for e in examples])
    return decoder.run(force_policy([e.ids for e in examples], lambda row, position: position in own[row]))


def free_run(model, tokenizer, examples: list[Example], eviction: EvictionConfig) -> list[list[int]]:
    """The ids of `free_run_results`: per example, the sequence the model decoded, aligned with its ids."""
    return [result.ids for result in free_run_results(model, tokenizer, examples, eviction)]


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
def accuracies(model, tokenizer, examples: list[Example], eviction: EvictionConfig, unit_names: tuple[str, ...],
               method: str = "teacher_forced", batch_size: int = EVAL_BATCH, memory_mb: int | None = None) -> dict[str, Accuracy]:
    """`Accuracy` of each of `unit_names` under `method` (module docstring), from one decoding pass in batches of
    `batch_size` examples at most, fewer where a forward over the longest would exceed `memory_mb` MiB (None:
    `$LEAKAGE_MEMORY_MB`, else 8192; `leakage.engine.memory.row_batches`)."""
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method {method!r}; choose one of {sorted(METHODS)}")
    longest = max((len(e.ids) for e in examples), default=0)
    positions_of = {name: unit(name).positions for name in unit_names}
    hits = {name: [] for name in unit_names}
    owner = {name: [] for name in unit_names}
    for rows in row_batches(model, longest, len(examples), memory_mb, most=batch_size):
        chunk = examples[rows]
        scored = METHODS[method](model, tokenizer, chunk, eviction)
        for i, (example, tokens) in enumerate(zip(chunk, scored), rows.start):
            for name, positions_in in positions_of.items():
                for positions in positions_in(example):
                    hits[name].append(all(tokens[p] == example.ids[p] for p in positions))
                    owner[name].append(i)
    return {name: Accuracy(np.array(hits[name], dtype=bool), np.array(owner[name], dtype=int)) for name in unit_names}


def accuracy(model, tokenizer, examples: list[Example], eviction: EvictionConfig, unit_name: str,
             method: str = "teacher_forced", batch_size: int = EVAL_BATCH, memory_mb: int | None = None) -> Accuracy:
    """Share of the examples' `unit_name` units that are right under `method` (module docstring)."""
    return accuracies(model, tokenizer, examples, eviction, (unit_name,), method, batch_size, memory_mb)[unit_name]


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
    each of the three decoding modes (one decoding pass per mode and method)."""
    results = {}
    for mode, config in decoding_modes(eviction).items():
        for method in dict.fromkeys(m for _, _, m in evaluations):
            units = tuple(dict.fromkeys(u for _, u, m in evaluations if m == method))
            scored = accuracies(model, tokenizer, examples, config, units, method)
            results.update({f"{mode}/{name}": scored[u].as_dict() for name, u, m in evaluations if m == method})
    return {f"{mode}/{name}": results[f"{mode}/{name}"] for mode in decoding_modes(eviction)
            for name, _, _ in evaluations}


def validation_examples(task: TaskConfig, tokenizer, n: int, seed: int) -> list[Example]:
    """The first `n` validation examples of `task` (seed `seed`)."""
    return [make_example(task, tokenizer, seed, i, "val") for i in range(n)]


CALIBRATION_EXAMPLES = 64
"""Examples that fp8 KV scales are calibrated on (`leakage.engine.precision.calibrate`)."""


def calibration_ids(task: TaskConfig, tokenizer, seed: int, n: int = CALIBRATION_EXAMPLES) -> list[list[int]]:
    """Token ids of the `n` validation examples of `task` drawn with seed + 7, which no scoring set of a run
    seeded `seed` uses: what a run's fp8 KV scales are calibrated on."""
    return [e.ids for e in validation_examples(task, tokenizer, n, seed + 7)]
