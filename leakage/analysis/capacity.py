"""Capacity of the implicit KV channel against distance: answer-digit accuracy and bits per passcode of
passcode models whose passcode sits `n_blocks - passcode_block` mementos before the answer, under
memento, restart and full-attention decoding. Each model is scored on its own task, as its `leakage
train` run folder records it (`TrainedRun.evaluation_task`).

    run(CapacitySpec(runs=("runs/passcode4-d1-fast", "runs/passcode4-d2-fast")), out="figures/capacity")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish
from leakage.config import EvictionConfig
from leakage.engine.model import load_checkpoint
from leakage.training.evaluate import evaluate_examples, validation_examples
from leakage.training.tasks import TaskConfig
from leakage.training.train import TrainedRun

ANSWER = (("answer", "answer_digits", "teacher_forced"),)


def bits_per_passcode(accuracy: float, digits: int, chance: float = 0.1) -> float:
    """Information the answer carries about the passcode, digits x log2(10) x (acc - chance) / (1 - chance):
    the share of each digit's entropy above chance (a linear approximation of the mutual information)."""
    return digits * np.log2(1 / chance) * (accuracy - chance) / (1 - chance)


def capacity_rows(model, tokenizer, task: TaskConfig, n: int, seed: int = 1,
                  eviction: EvictionConfig = EvictionConfig()) -> list[dict]:
    """Answer-digit accuracy of a passcode model (`task`: its evaluation task) under memento, restart and
    full-attention decoding, with its distance and bits per passcode."""
    distance = task.n_blocks - task.passcode_block
    results = evaluate_examples(model, tokenizer, validation_examples(task, tokenizer, n, seed), ANSWER, eviction)
    rows = []
    for mode in ("memento", "restart", "full_attention"):
        r = results[f"{mode}/answer"]
        rows.append({"distance": distance, "n_blocks": task.n_blocks, "passcode_block": task.passcode_block,
                     "decoding": mode, "accuracy": r["accuracy"], "ci95_low": r["ci95_low"],
                     "ci95_high": r["ci95_high"], "digits": r["total"],
                     "bits": bits_per_passcode(r["accuracy"], task.passcode_digits),
                     "bits_low": bits_per_passcode(r["ci95_low"], task.passcode_digits),
                     "bits_high": bits_per_passcode(r["ci95_high"], task.passcode_digits)})
    return rows


@dataclass(frozen=True)
class CapacitySpec:
    """What `leakage capacity` measures.

    runs: `leakage train` run folders of passcode models.
    n: validation examples per model.
    seed: seed of the validation examples.
    eviction: the memento decoding (restart and full attention are scored too).
    """

    runs: tuple[str, ...]
    n: int = 256
    seed: int = 1
    eviction: EvictionConfig = EvictionConfig()

    def __post_init__(self):
        if not self.runs or self.n < 1:
            raise ValueError(f"capacity needs at least one run folder and n >= 1 examples, got {self.runs} and {self.n}")


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: CapacitySpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """Capacity rows of every run (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, spec.runs)
    clock = Clock(log)
    rows, tasks, finals = [], {}, []
    for run_dir in spec.runs:
        trained = TrainedRun(Path(run_dir))
        task = trained.evaluation_task()
        model, tokenizer = load_checkpoint(trained.final)
        found = [{"run": run_dir, **row} for row in capacity_rows(model, tokenizer, task, spec.n, spec.seed,
                                                                   spec.eviction)]
        clock(f"{run_dir}: distance {found[0]['distance']}: "
              + ", ".join(f"{r['decoding']} {r['accuracy']:.3f}" for r in found))
        rows += found
        tasks[run_dir] = trained.config.to_dict()["task"]
        finals.append(trained.final)
    return finish(__name__, spec, {"tasks": tasks}, pd.DataFrame(rows), clock, command, out, figures,
                  checkpoints=finals)


def figures(record: Record, stem: Path) -> list[Path]:
    """Bits per passcode against distance, per decoding."""
    from leakage.plotting import plot_capacity

    return [plot_capacity(record.rows, beside(stem, ".png"), "channel capacity against distance (passcode models)")]
