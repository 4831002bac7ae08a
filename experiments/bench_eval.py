"""Evaluation speed against the lockstep batch: seconds to score the main job's task through the eviction
decoder, teacher-forced and free-running, at each batch size, and whether every batch size gives the same hits.

    python experiments/bench_eval.py --out figures/bench_eval.json

The model is the `tiny` preset (its weights do not affect speed: both methods decode every position of
every example, whatever the model writes); the examples are the main job's 4-block passcode task
(`leakage.training.evaluate.validation_examples`). Each time is the median over `repeats` timed passes after
one warm-up pass, on this machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from leakage.config import EvictionConfig
from leakage.engine.model import build_model
from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.provenance import script_command
from leakage.training.evaluate import EVAL_BATCH, METHODS, accuracies, validation_examples
from leakage.training.tasks import TaskConfig


@dataclass(frozen=True)
class Options:
    """The benchmark's settings.

    out: the JSON report.
    examples: examples scored per pass.
    batch_sizes: lockstep batch sizes compared (comma-separated).
    repeats: timed passes per batch size.
    threads: torch threads.
    """

    out: str = "figures/bench_eval.json"
    examples: int = 512
    batch_sizes: tuple[int, ...] = (32, 64, 128, EVAL_BATCH)
    repeats: int = 2
    threads: int = 2


def main() -> None:
    options = parse(Options, description=__doc__)
    torch.set_num_threads(options.threads)
    model, tokenizer = build_model("tiny")
    examples = validation_examples(TaskConfig(task="passcode", n_blocks=4, passcode_block=1), tokenizer,
                                   options.examples, 1)
    units = ("sums", "answer_digits")
    methods = {}
    for method in METHODS:
        seconds, hits = {}, {}
        for size in options.batch_sizes:
            def score():
                return accuracies(model, tokenizer, examples, EvictionConfig(), units, method, batch_size=size)

            score()  # warm-up
            times = []
            for _ in range(options.repeats):
                start = time.perf_counter()
                scored = score()
                times.append(time.perf_counter() - start)
            seconds[size] = statistics.median(times)
            hits[size] = np.concatenate([scored[u].hits for u in units])
        first = options.batch_sizes[0]
        methods[method] = {"seconds": {str(size): s for size, s in seconds.items()},
                           "speedup_over_first": {str(size): seconds[first] / s for size, s in seconds.items()},
                           "same_hits_at_every_size": all((h == hits[first]).all() for h in hits.values())}
    report = {"command": script_command("experiments/bench_eval.py"),
              "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": options.threads},
              "examples": options.examples, "example_tokens": sum(len(e.ids) for e in examples) / len(examples),
              "default_batch": EVAL_BATCH, "methods": methods}
    atomic_write_json(options.out, report)
    print(json.dumps(methods, indent=2))


if __name__ == "__main__":
    main()
