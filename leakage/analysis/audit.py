"""`leakage audit CHECKPOINT --method NAME --budget B`: does an eviction policy really remove a secret?

Injects a passcode into one block of the passcode task, lets `method` (a `leakage.analysis.benchmark`
method: Memento's eviction, gist compression, restart, full attention or a kvpress press at Memento's moments) evict it, and
reports the two numbers a practitioner needs, each with its 95% interval:

* bits of the evicted span recoverable from the retained KV: what the paper's MLP probe, trained on
  `probe_traces` reference examples, reads about the passcode from the entries the method keeps nearest the
  drop (bits per passcode its cross-entropy saves over the uniform code; bootstrap over held-out passcodes);
* answer accuracy on the evicted secret: the model's own answer digits, teacher-forced (bootstrap over
  examples), beside the same under restart (the text kept, the channel removed).

The checkpoint must speak the synthetic task's vocabulary (a model `leakage train` or `leakage reproduce`
trained); `--budget none` is Memento's entry count at each eviction moment, a fraction that share of the
positions before it.

    run(AuditSpec("runs/reproduce-passcode4-fast-seed0/final", method="snapkv"))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from leakage.analysis.benchmark import METHODS, BenchmarkSpec, benchmark_rows, check_format
from leakage.analysis.record import Clock, Log, Record, check_outputs, finish
from leakage.engine.model import check_trained_task, load_checkpoint


@dataclass(frozen=True)
class AuditSpec(BenchmarkSpec):
    """What `leakage audit` runs: `BenchmarkSpec`'s settings for one method.

    method: the eviction policy audited (`leakage.analysis.benchmark.METHODS`; `gist` on a gist-trained model).
    """

    method: str = "memento"

    def __post_init__(self):
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        check_format((self.method,), self.task)


FILES = (".csv", ".json")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: AuditSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """The audit of `spec.method` on `spec.checkpoint` (module docstring): its benchmark row and restart's."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_checkpoint(spec.checkpoint)
    methods = tuple(dict.fromkeys((spec.method, "restart")))
    frame = benchmark_rows(model, tokenizer, replace(spec, methods=methods), clock)
    row, restart = frame.iloc[0], frame[frame.method == "restart"].iloc[0]
    results = {"audit": {
        "bits_recoverable": row.probe_bits, "bits_low": row.probe_bits_low, "bits_high": row.probe_bits_high,
        "probe_budget": int(row.probe_budget), "answer_accuracy": row.answer_accuracy, "answer_low": row.answer_low,
        "answer_high": row.answer_high, "restart_answer_accuracy": restart.answer_accuracy,
        "answer_over_restart": row.answer_over_restart, "passcode_retained": row.passcode_retained,
        "nearest_retained": row.nearest_retained,
        "kv_auc_share": row.kv_auc_share}}
    return finish(__name__, spec, results, frame, clock, command, out)
