"""`leakage eval`: task accuracy of a checkpoint under memento, restart and full-attention decoding.

    record = run(EvaluationSpec(checkpoint="runs/digits-fast/final", task=TaskConfig(task="digits")))
    record.results["memento/teacher_forced"]      # {"accuracy", "ci95_low", "ci95_high", "correct", "total"}

The accuracies are the task's `evaluations` (`TaskSpec`), or the spec's own, on `n` validation examples,
each with a Wilson 95% interval; for tasks that are a guess (`recall`, `passcode`), chance and the best
accuracy memento text alone allows come with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leakage.analysis.record import Clock, Log, Record, check_outputs, finish
from leakage.config import EvictionConfig
from leakage.engine.model import check_trained_task
from leakage.engine.precision import Precision, load_at_precision
from leakage.training.evaluate import calibration_ids, evaluate_examples, validation_examples
from leakage.training.tasks import TaskConfig, task_spec


@dataclass(frozen=True)
class EvaluationSpec:
    """What `leakage eval` measures.

    checkpoint: local HF checkpoint directory.
    task: the task and its shape (fixed-length blocks: no curriculum).
    eviction: the memento decoding (its restart and full-attention variants are scored too).
    n: validation examples.
    seed: seed of the validation examples.
    evaluations: (name, unit, method) of each accuracy; none: the task's own (`TaskSpec.evaluations`).
    precision: compute dtype and what the KV cache stores (`leakage.engine.precision`).
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: TaskConfig = TaskConfig()
    eviction: EvictionConfig = EvictionConfig()
    n: int = 256
    seed: int = 1
    evaluations: tuple[tuple[str, str, str], ...] | None = None
    precision: Precision = Precision()
    force: bool = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1 validation example, got {self.n}")


FILES = (".csv", ".json")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: EvaluationSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """Score the checkpoint (module docstring); write CSV + JSON at the stem `out` when given."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_at_precision(spec.checkpoint, spec.precision,
                                         lambda tok: calibration_ids(spec.task, tok, spec.seed))
    task = task_spec(spec.task.task)
    examples = validation_examples(spec.task, tokenizer, spec.n, spec.seed)
    clock(f"scoring {spec.n} examples")
    results = {"n_examples": spec.n,
               **evaluate_examples(model, tokenizer, examples, spec.evaluations or task.evaluations, spec.eviction)}
    if task.chance is not None:
        results["chance"] = task.chance
    if task.text_only is not None:
        results["text_only_bayes_optimal"] = task.text_only(spec.task)
    rows = pd.DataFrame([{"decoding": key.split("/")[0], "measure": key.split("/", 1)[1], **value}
                         for key, value in results.items() if isinstance(value, dict)])
    return finish(__name__, spec, results, rows, clock, command, out)
