"""Capture speed against training speed: tokens per second of the probe's memento-masked capture (forward
only) and of one training step (forward, backward, optimizer) on the same model and traces.

    python experiments/bench_capture.py --out figures/bench_capture.json

The model is the `tiny` preset (its weights do not affect speed); the traces are the probe's: 10-block
passcode-task traces with the passcode in block 1, captured at the probe's sites (the memento of every
block, the passcode block's delimiters) with `capture_dataset`, as `leakage probe` does. Training steps use
the same traces through the training collator (`MementoCollator`, batch 32, AdamW). Each rate is the median
over `repeats` timed passes after one warm-up pass.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from leakage.analysis.probe_data import capture_dataset, synthetic_traces
from leakage.analysis.probing import POSITION_KINDS
from leakage.config import EvictionConfig
from leakage.engine.model import build_model
from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.training.tasks import TaskConfig
from leakage.training.train import MementoCollator
from leakage.provenance import script_command


@dataclass(frozen=True)
class Options:
    """The benchmark's settings.

    out: the JSON report.
    traces: traces captured per pass.
    batch_size: rows per capture forward (the probe's default).
    repeats: timed passes.
    threads: torch threads.
    """

    out: str = "figures/bench_capture.json"
    traces: int = 2048
    batch_size: int = 64
    repeats: int = 3
    threads: int = 2


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    options = parse(Options, description=__doc__)
    torch.set_num_threads(options.threads)
    model, tokenizer = build_model("tiny")
    task = TaskConfig(task="passcode", n_blocks=10, passcode_block=1)
    traces = synthetic_traces(task, tokenizer, options.traces)
    sites = [("memento", d) for d in range(-1, 9)] + [(part, 0) for part in POSITION_KINDS]
    tokens = sum(len(t.ids) for t in traces)  # the capture reads up to the last site: the prefix, counted below
    captured_tokens = sum(1 + max(max(t.positions.select(f"memento@{9}")), max(t.positions.select("summary_end@1")))
                          for t in traces)
    capture_s = median_seconds(lambda: capture_dataset(model, tokenizer, traces, EvictionConfig(), sites,
                                                       batch_size=options.batch_size), options.repeats)

    collate = MementoCollator(tokenizer, EvictionConfig())
    features = [{"input_ids": t.ids, "prompt_len": len(t.positions.prompt)} for t in traces[:32 * 8]]
    batches = [collate(features[i:i + 32]) for i in range(0, len(features), 32)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_pass():
        model.train()
        for batch in batches:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()

    train_s = median_seconds(train_pass, options.repeats)
    train_tokens = sum(int((b["input_ids"] != tokenizer.pad_token_id).sum()) for b in batches)
    report = {"command": script_command("experiments/bench_capture.py"),
              "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": options.threads},
              "traces": options.traces, "trace_tokens": tokens / len(traces), "batch_size": options.batch_size,
              "capture": {"seconds": capture_s, "tokens_per_s": captured_tokens / capture_s,
                          "traces_per_s": len(traces) / capture_s},
              "training_step": {"seconds_per_batch_of_32": train_s / len(batches),
                                "tokens_per_s": train_tokens / train_s},
              "capture_over_training": (captured_tokens / capture_s) / (train_tokens / train_s)}
    atomic_write_json(options.out, report)
    print(json.dumps({k: report[k] for k in ("capture", "training_step", "capture_over_training")}, indent=2))


if __name__ == "__main__":
    main()
