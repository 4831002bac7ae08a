"""The restart ablation (the paper's Table 3) with the memento text held identical.

    result = restart_ablation(model, tokenizer, examples, "sums")
    result.memento, result.restart      # Accuracy of the scored units, intervals over examples
    result.examples_table               # examples where memento / restart decoding did better, or tied
    result.sign_test_p                  # exact sign test over examples

1. The normal run: eviction decoding in which the model writes its own running sums, mementos and
   answer (the free-running evaluation of `leakage.training.evaluate`; block digits and the passcode are
   given).
2. The restart run: the same examples decoded with `restart=True` (each memento's keys and values
   recomputed without its block), every token forced to the normal run's except the scored ones, which
   the model chooses again. The mementos are therefore the normal run's text, token for token; only
   their KV differs, which is what the ablation means to remove.
Scored units (`leakage.training.tasks.UNITS`): the running sum of each block (`sums`) or each answer
digit (`answer_digits`); a task's default is its headline unit. The unit of independence is the example
(its units share one passcode, one trace): each example's accuracy under the two runs is paired, the test
is the exact sign test over examples (those where memento decoding scored higher against those where
restart did; McNemar's test when an example is one unit), and the drop's interval is a bootstrap that
resamples examples. The unit-level 2 x 2 table is kept as a description, not as a test.

`run(RestartSpec(checkpoint=...))` is `leakage restart`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from leakage.analysis.record import Clock, Log, Record, check_outputs, finish
from leakage.config import EvictionConfig
from leakage.engine.decode import Decoder, force_policy
from leakage.engine.model import check_trained_task
from leakage.engine.precision import Precision, load_at_precision
from leakage.stats import cluster_bootstrap_mean, mcnemar_exact
from leakage.training.evaluate import Accuracy, calibration_ids, free_run, validation_examples
from leakage.training.tasks import Example, TaskConfig, task_spec, unit


@dataclass
class RestartAblation:
    """Paired outcomes of the normal and the restart run: correct[run] is (n_units,) bool, example
    (n_units,) the example each unit belongs to; `unit` names the scored unit."""

    unit: str
    normal_correct: np.ndarray
    restart_correct: np.ndarray
    example: np.ndarray

    @property
    def memento(self) -> Accuracy:
        return Accuracy(self.normal_correct, self.example)

    @property
    def restart(self) -> Accuracy:
        return Accuracy(self.restart_correct, self.example)

    @property
    def table(self) -> dict[str, int]:
        """Paired counts: both right, only the normal run right, only the restart run right, both wrong."""
        n, r = self.normal_correct, self.restart_correct
        return {"both": int((n & r).sum()), "memento_only": int((n & ~r).sum()),
                "restart_only": int((~n & r).sum()), "neither": int((~n & ~r).sum())}

    @property
    def examples_table(self) -> dict[str, int]:
        """Examples whose units memento decoding got more of right, those restart decoding did, and ties."""
        ids, inverse = np.unique(self.example, return_inverse=True)
        delta = np.bincount(inverse, self.normal_correct.astype(float) - self.restart_correct.astype(float))
        return {"memento_better": int((delta > 0).sum()), "restart_better": int((delta < 0).sum()),
                "tied": int((delta == 0).sum())}

    @property
    def sign_test_p(self) -> float:
        """Exact two-sided sign test over examples (`leakage.stats.mcnemar_exact` of the untied examples)."""
        table = self.examples_table
        return mcnemar_exact(table["memento_better"], table["restart_better"])

    def difference_ci(self, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval of (memento - restart) accuracy, resampling examples."""
        delta = self.normal_correct.astype(float) - self.restart_correct.astype(float)
        return cluster_bootstrap_mean(delta, self.example, n_resamples, seed)

    def as_dict(self) -> dict:
        low, high = self.difference_ci()
        return {"scored_unit": self.unit, "units": len(self.example), "examples": len(np.unique(self.example)),
                "memento": self.memento.as_dict(), "restart": self.restart.as_dict(),
                "drop": self.memento.value - self.restart.value, "drop_ci95": [low, high],
                "drop_ci95_over": "examples (cluster bootstrap)", "paired_units": self.table,
                "paired_examples": self.examples_table, "sign_test_p": self.sign_test_p}

    def units_frame(self) -> pd.DataFrame:
        """One row per scored unit: its example and whether each run got it right."""
        return pd.DataFrame({"unit": np.arange(len(self.example)), "example": self.example,
                             "memento_correct": self.normal_correct, "restart_correct": self.restart_correct})


@torch.no_grad()
def rerun(model, tokenizer, examples: list[Example], sequences: list[list[int]], unit_name: str,
          eviction: EvictionConfig) -> list[list[int]]:
    """Decode `examples` under `eviction`, every token forced to `sequences` (another run's) except the
    `unit_name` units, which the model chooses."""
    positions_of = unit(unit_name).positions
    scored = [{p for positions in positions_of(e) for p in positions} for e in examples]
    decoder = Decoder(model, tokenizer, eviction, [e.ids[:e.prompt_len] for e in examples])
    decoder.run(force_policy(sequences, lambda row, position: position in scored[row]))
    return [row.ids for row in decoder.rows]


@torch.no_grad()
def restart_ablation(model, tokenizer, examples: list[Example], unit_name: str,
                     eviction: EvictionConfig = EvictionConfig(), batch_size: int = 32) -> RestartAblation:
    """Normal vs restart decoding of `examples` scored on `unit_name`, the restart run forced to the normal
    run's mementos."""
    if not eviction.evicts:
        raise ValueError("the restart ablation needs eviction (keep_last_n_blocks >= 0)")
    positions_of = unit(unit_name).positions
    normal_config, restart_config = replace(eviction, restart=False), replace(eviction, restart=True)
    normal_ok, restart_ok, owner = [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        normal = free_run(model, tokenizer, chunk, normal_config)
        restarted = rerun(model, tokenizer, chunk, normal, unit_name, restart_config)
        for i, (example, ours, theirs) in enumerate(zip(chunk, normal, restarted)):
            for positions in positions_of(example):
                truth = [example.ids[p] for p in positions]
                normal_ok.append([ours[p] for p in positions] == truth)
                restart_ok.append([theirs[p] for p in positions] == truth)
                owner.append(start + i)
    return RestartAblation(unit_name, np.array(normal_ok), np.array(restart_ok), np.array(owner))


@dataclass(frozen=True)
class RestartSpec:
    """What `leakage restart` measures.

    checkpoint: local HF checkpoint directory.
    task: the task and its shape (fixed-length blocks: no curriculum).
    eviction: the memento decoding (the restart run is its restart variant).
    n: validation examples.
    seed: seed of the validation examples.
    unit: the scored unit, sums or answer_digits (none: the task's headline unit).
    precision: compute dtype and what the KV cache stores (`leakage.engine.precision`).
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: TaskConfig = TaskConfig()
    eviction: EvictionConfig = EvictionConfig()
    n: int = 256
    seed: int = 1
    unit: str | None = None
    precision: Precision = Precision()
    force: bool = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1 validation example, got {self.n}")
        if self.unit is not None:
            unit(self.unit)
        if not self.eviction.evicts:
            raise ValueError("the restart ablation needs eviction (keep_last_n_blocks >= 0)")


FILES = (".csv", ".json")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: RestartSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """The restart ablation on the task's validation examples; rows: the paired units (module docstring)."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_at_precision(spec.checkpoint, spec.precision,
                                         lambda tok: calibration_ids(spec.task, tok, spec.seed))
    scored = spec.unit or task_spec(spec.task.task).units[0]
    examples = validation_examples(spec.task, tokenizer, spec.n, spec.seed)
    clock(f"normal and restart decoding of {spec.n} examples ({scored})")
    result = restart_ablation(model, tokenizer, examples, scored, spec.eviction)
    return finish(__name__, spec, result.as_dict(), result.units_frame(), clock, command, out)
