"""Passcode twins: the shared start of the causal experiments (patching, ablation, erasure).

Every causal experiment starts from `passcode_pairs`: a validation example (passcode in block k) and its
twin with another passcode (first digit different), everything else identical — so the memento text is
the same token for token and only what the evicted block left in the retained KV differs. The cache is
patched at the step that evicts block k (`eviction_step`), and every answer digit is measured, teacher
forced on the target's answer (`passcode_run`; the trained models read the first digit no better than
chance, but the later ones, cued by the digits before them, well above it: docs/results.md).

`CausalSpec` is what the three runners (`patch_maps`, `ablation`, `erasure`) share: a checkpoint, a task
whose answer is the passcode, the eviction, and the experiment's sizes (`CausalExperiment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from leakage.analysis.patching import PatchResult, PatchRun, patch_run
from leakage.config import EvictionConfig
from leakage.engine.precision import Precision, load_at_precision
from leakage.memento.schedule import eviction_schedule
from leakage.memento.spans import parse_spans
from leakage.training.evaluate import calibration_ids
from leakage.training.tasks import Example, TaskConfig, make_example, task_spec

Progress = Callable | None


@dataclass(frozen=True)
class CausalExperiment:
    """The causal experiments on one checkpoint of the passcode task.

    n: evaluation pairs (validation passcodes).
    reference: reference examples (training passcodes): half fit LEACE and the random control, half the probe.
    strengths: comma-separated erasure strengths (0 = none, 1 = full LEACE).
    bootstrap: example-bootstrap resamples for every interval.
    seed: seed of the examples, twins, random subspaces and probes.
    """

    n: int = 512
    reference: int = 4096
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.n < 2 or self.reference < 8:
            raise ValueError(f"n must be at least 2 pairs and reference at least 8 examples, got {self.n} and "
                             f"{self.reference}")
        if self.bootstrap < 10:
            raise ValueError(f"bootstrap must be at least 10 resamples, got {self.bootstrap}")
        if not self.strengths or any(not 0.0 <= s <= 1.0 for s in self.strengths):
            raise ValueError(f"erasure strengths must lie in [0, 1] (0: none, 1: full LEACE), got {self.strengths}")


@dataclass(frozen=True)
class CausalSpec:
    """What `leakage patch`, `ablate` and `erase` run on.

    checkpoint: local HF checkpoint of a passcode model.
    task: a task whose answer is the passcode (`TaskSpec.answers_passcode`), and its shape.
    eviction: the memento decoding whose cache is edited.
    experiment: sizes and seed.
    precision: compute dtype and what the KV cache stores (`leakage.engine.precision`).
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: TaskConfig = TaskConfig(task="passcode")
    eviction: EvictionConfig = EvictionConfig()
    experiment: CausalExperiment = CausalExperiment()
    precision: Precision = Precision()
    force: bool = False

    def __post_init__(self):
        if not task_spec(self.task.task).answers_passcode:
            raise ValueError(f"the causal experiments need a task whose answer is the passcode; "
                             f"{self.task.task!r} answers something else")
        if self.task.passcode_block is None or self.task.passcode_blocks:
            raise ValueError("the causal experiments need one passcode_block (no mixture)")
        if not self.eviction.evicts or self.eviction.restart:
            raise ValueError("the causal experiments edit the cache of memento decoding: keep_last_n_blocks >= 0, "
                             "no restart")
        k, keep, last = self.task.passcode_block, self.eviction.keep_last_n_blocks, self.task.n_blocks - 1
        deferred = self.eviction.keep_last_block_for_answer and keep == 0
        if k + keep > last or (deferred and k + 1 > last):
            raise ValueError(f"passcode_block {k} is never evicted before the answer with {self.task.n_blocks} blocks "
                             f"and keep_last_n_blocks={keep}" + (" (kept for the answer)" if deferred else ""))


def load_causal_model(spec: CausalSpec):
    """(model, tokenizer) of `spec`: its checkpoint at its precision, fp8 scales calibrated on task examples
    no causal stage scores (`leakage.training.evaluate.calibration_ids`)."""
    return load_at_precision(spec.checkpoint, spec.precision,
                             lambda tokenizer: calibration_ids(spec.task, tokenizer, spec.experiment.seed))


def digit_token(tokenizer, digit: int) -> int:
    return tokenizer.convert_tokens_to_ids(str(digit))


def twin(example: Example, tokenizer, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """The example with another random passcode whose first digit differs, in its block and its answer:
    (ids, the twin's digits)."""
    digits = example.passcode_digits
    other = rng.integers(0, 10, len(digits)).tolist()
    if other[0] == digits[0]:
        other[0] = (digits[0] + int(rng.integers(1, 10))) % 10
    return with_passcode(example, tokenizer, other), other


def with_passcode(example: Example, tokenizer, digits: list[int]) -> list[int]:
    """The example's ids with `digits` as its passcode, in its block and in its answer."""
    ids = list(example.ids)
    for positions in (example.passcode_positions, example.answer_positions):
        for position, digit in zip(positions, digits):
            ids[position] = digit_token(tokenizer, digit)
    return ids


def passcode_pairs(task: TaskConfig, tokenizer, n: int, seed: int, split: str = "val"):
    """(examples, twin ids, twin digits) for `n` examples of `split`."""
    if task.passcode_block is None:
        raise ValueError("the causal experiments need a task with a passcode_block")
    examples = [make_example(task, tokenizer, seed, i, split) for i in range(n)]
    rng = np.random.default_rng(seed)
    twins = [twin(e, tokenizer, rng) for e in examples]
    return examples, [t[0] for t in twins], [t[1] for t in twins]


def eviction_step(example: Example, tokenizer, eviction: EvictionConfig) -> int:
    """The first query that no longer sees the passcode block (the step its eviction precedes)."""
    spans = parse_spans(example.ids, tokenizer, prompt_len=example.prompt_len)
    for event in eviction_schedule(spans, eviction).evictions:
        if event.block == example.passcode_block:
            return event.before
    raise ValueError(f"block {example.passcode_block} is never evicted under {eviction}")


def passcode_run(model, tokenizer, examples: list[Example], source_ids: list[list[int]],
                 source_digits: list[list[int]], eviction: EvictionConfig,
                 source_eviction: EvictionConfig | None = None) -> PatchRun:
    """The `PatchRun` of `examples` against `source_ids` (whose passcode is `source_digits`), patched at
    the passcode block's eviction and measured at the queries that predict the answer digits."""
    steps = {eviction_step(e, tokenizer, eviction) for e in examples}
    answers = {tuple(e.answer_positions) for e in examples}
    if len(steps) != 1 or len(answers) != 1:
        raise ValueError(f"examples differ in layout (eviction steps {sorted(steps)}, answer positions "
                         f"{sorted(answers)[:3]}); use fixed-length blocks (short_block_rate=0)")
    (at,), (positions,) = steps, answers
    answer = [[(e.ids[p], digit_token(tokenizer, d)) for p, d in zip(positions, digits)]
              for e, digits in zip(examples, source_digits)]
    return patch_run(model, tokenizer, [e.ids for e in examples], source_ids, eviction, at,
                     [p - 1 for p in positions], answer, source_eviction=source_eviction,
                     prompt_len=[e.prompt_len for e in examples])


def result_frame(result: PatchResult, experiment: str, source: str, clean=None, corrupted=None, bootstrap: int = 1000,
           seed: int = 0) -> pd.DataFrame:
    """`result.frame` (bootstrap intervals; normalised effects given clean and corrupted) with the
    experiment and the source of the replacement KV as its first columns."""
    frame = result.frame(clean, corrupted, n_resamples=bootstrap, seed=seed)
    frame.insert(0, "source", source)
    frame.insert(0, "experiment", experiment)
    return frame




def twin_run(model, tokenizer, spec: CausalSpec) -> tuple[list[Example], PatchRun]:
    """The spec's validation examples and their `PatchRun` against the twins (patched at the passcode
    block's eviction, measured at the answer digits)."""
    examples, twins, digits = passcode_pairs(spec.task, tokenizer, spec.experiment.n, spec.experiment.seed)
    return examples, passcode_run(model, tokenizer, examples, twins, digits, spec.eviction)


def run_name(checkpoint: str) -> str:
    """A checkpoint's name in figure titles: its run folder's name, or the path itself."""
    return Path(checkpoint).parent.name or checkpoint
