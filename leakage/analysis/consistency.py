"""Train/inference consistency: do two ways of computing the same model input agree, token by token?

Two checks for one checkpoint and a batch of traces:

* timing: the memento-masked forward under the engine's eviction timing (`summary_end_sees_block=
  False`, the default) against the earlier timing (`True`), per structural part of the trace: how much
  the logits and the retained keys/values move when the `<|summary_end|>` row does or does not see its
  block. A model trained under one timing and served under the other sees the difference.
* engine: for each timing, teacher-forced eviction decoding (physical compaction, step by step)
  against the one dense masked forward training uses: logits and every position's final keys/values.
  These must agree to float precision; anything more is a bug.

`run(ConsistencySpec(checkpoint=...))` is `leakage consistency`: both checks on a task's validation traces.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from leakage.analysis.record import Clock, Log, Record, check_outputs, finish
from leakage.config import EvictionConfig
from leakage.engine.capture import capture
from leakage.engine.decode import teacher_force
from leakage.engine.model import check_trained_task, load_checkpoint
from leakage.memento.positions import TracePositions, part_labels
from leakage.training.evaluate import validation_examples
from leakage.training.tasks import TaskConfig


def _kv_all_positions(model, tokenizer, sequences, eviction, positions):
    """Per row: keys and values (L, kv_heads, T, d_head) at every position, from one masked forward."""
    parts = [dict(p.parts, all=tuple(range(p.length))) for p in positions]
    named = [replace(p, parts=extra) for p, extra in zip(positions, parts)]
    captured = capture(model, tokenizer, sequences, eviction, {"all": "all"}, positions=named)
    lengths = [p.length for p in positions]
    keys = [captured.keys["all"][b, :, :, :n] for b, n in enumerate(lengths)]
    values = [captured.values["all"][b, :, :, :n] for b, n in enumerate(lengths)]
    return captured.logits, keys, values


def _by_part(labels: list[list[str]], per_position: list[torch.Tensor]) -> dict[str, dict]:
    """{part: {max, mean, positions}} of a per-position measurement, over every row."""
    pooled = defaultdict(list)
    for row_labels, row_values in zip(labels, per_position):
        for label, value in zip(row_labels, row_values.tolist()):
            pooled[label].append(value)
    return {part: {"max": max(v), "mean": sum(v) / len(v), "positions": len(v)} for part, v in sorted(pooled.items())}


@torch.no_grad()
def consistency_report(model, tokenizer, sequences: list[list[int]], positions: list[TracePositions],
                       eviction: EvictionConfig = EvictionConfig()) -> dict:
    """The two checks of the module docstring for `eviction` and its `summary_end_sees_block` twin."""
    engine = replace(eviction, summary_end_sees_block=False)
    late = replace(eviction, summary_end_sees_block=True)
    labels = [part_labels(p) for p in positions]
    lengths = [p.length for p in positions]
    dense = {name: _kv_all_positions(model, tokenizer, sequences, cfg, positions)
             for name, cfg in (("engine", engine), ("summary_end_sees_block", late))}

    (logits_a, keys_a, values_a), (logits_b, keys_b, values_b) = dense["engine"], dense["summary_end_sees_block"]
    logit_diff, kl, flips, key_diff, value_diff = [], [], [], [], []
    for b, n in enumerate(lengths):
        a, c = logits_a[b, :n].float(), logits_b[b, :n].float()
        logit_diff.append((a - c).abs().amax(-1))
        kl.append((a.log_softmax(-1).exp() * (a.log_softmax(-1) - c.log_softmax(-1))).sum(-1))
        flips.append((a.argmax(-1) != c.argmax(-1)).float())
        key_diff.append((keys_a[b] - keys_b[b]).abs().amax(dim=(0, 1, 3)))  # over layers, heads, d_head
        value_diff.append((values_a[b] - values_b[b]).abs().amax(dim=(0, 1, 3)))
    report = {"config": {k: v for k, v in vars(eviction).items()}, "sequences": len(sequences),
              "tokens": sum(lengths),
              "timing": {"max_abs_logit_diff": _by_part(labels, logit_diff),
                         "kl_engine_to_summary_end_sees_block": _by_part(labels, kl),
                         "argmax_changed": _by_part(labels, flips),
                         "max_abs_key_diff": _by_part(labels, key_diff),
                         "max_abs_value_diff": _by_part(labels, value_diff)},
              "engine": {}}

    for name, cfg in (("engine", engine), ("summary_end_sees_block", late)):
        dense_logits, dense_keys, dense_values = dense[name]
        final: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in sequences]

        def snapshot(step, cache):
            for b, fed in enumerate(step.positions):
                for p in fed:
                    final[b][p] = (torch.stack([cache.keys(layer)[b, :, p] for layer in range(cache.n_layers)]),
                                   torch.stack([cache.values(layer)[b, :, p] for layer in range(cache.n_layers)]))

        decoded = teacher_force(model, tokenizer, sequences, cfg, prompt_len=[len(p.prompt) for p in positions],
                                on_step=snapshot)
        logit_gap = max(float((decoded.logits[b, :n] - dense_logits[b, :n]).abs().max()) for b, n in enumerate(lengths))
        kv_gap = max(max(float((final[b][p][0] - dense_keys[b][:, :, p]).abs().max()),
                         float((final[b][p][1] - dense_values[b][:, :, p]).abs().max()))
                     for b, n in enumerate(lengths) for p in range(n))
        report["engine"][name] = {"max_abs_logit_diff_decoder_vs_masked_forward": logit_gap,
                                  "max_abs_kv_diff_decoder_vs_masked_forward": kv_gap}
    return report


@dataclass(frozen=True)
class ConsistencySpec:
    """What `leakage consistency` checks.

    checkpoint: local HF checkpoint directory.
    task: the task whose validation traces are fed.
    eviction: the eviction spec (both timings of it are compared).
    n: validation traces of the task.
    seed: seed of the traces.
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: TaskConfig = TaskConfig()
    eviction: EvictionConfig = EvictionConfig()
    n: int = 32
    seed: int = 1
    force: bool = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1 trace, got {self.n}")


FILES = (".csv", ".json")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: ConsistencySpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """Both checks on the task's validation traces; rows: one per (measure, part) of the timing check."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_checkpoint(spec.checkpoint)
    examples = validation_examples(spec.task, tokenizer, spec.n, spec.seed)
    clock(f"checking {spec.n} traces")
    report = consistency_report(model, tokenizer, [e.ids for e in examples], [e.positions for e in examples],
                                replace(spec.eviction, summary_end_sees_block=False))
    rows = pd.DataFrame([{"measure": measure, "part": part, **stats}
                         for measure, parts in report["timing"].items() for part, stats in parts.items()])
    return finish(__name__, spec, report, rows, clock, command, out)
