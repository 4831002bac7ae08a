"""Capture and probe on a real-size architecture (random weights, built from its config), on this CPU.

    python experiments/bench_real_size.py --out figures/bench_real_size.json

For each model (`MODELS`: Qwen3-0.6B's config, and the same config cut to fewer layers for the scaling
with depth) and each trace length (passcode-task traces with as many blocks as reach the length), a fresh
subprocess builds the model (the real 151,936-token vocabulary, so embeddings and the LM head are real
size), captures the probe's sites (the memento after the passcode's, the last block's memento, so that the
forward runs over the whole trace, and the passcode block's delimiters) of `traces` traces with
`capture_dataset` under the capture memory budget, and fits the linear probe on the captured features; it reports wall time, tokens per second and the process's peak resident memory
(`ru_maxrss`: the whole process, model included). The JSON holds every point, and the fitted scaling of
capture time with trace length (the exponent of time ~ length^a) and with layers.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from leakage.config import ModelPreset
from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.provenance import script_command

QWEN3_0_6B = ModelPreset(n_layers=28, d_model=1024, n_heads=16, n_kv_heads=8, d_head=128, d_mlp=3072,
                         max_positions=40_960, rope_theta=1_000_000.0)
"""Qwen3-0.6B's config (config.json of Qwen/Qwen3-0.6B): 28 layers, GQA 16/8, head 128, MLP 3072."""
VOCAB = 151_936
MODELS = {"qwen3-0.6b": QWEN3_0_6B, "qwen3-0.6b-7-layers": ModelPreset(**{**asdict(QWEN3_0_6B), "n_layers": 7})}


@dataclass(frozen=True)
class Options:
    """The benchmark's settings.

    out: the JSON report.
    models: models of `MODELS` to measure.
    lengths: trace lengths (tokens, about) to measure.
    traces: traces captured per point (the probe needs at least 20).
    memory_mb: the capture's memory budget (`capture_dataset`'s memory_mb).
    threads: torch threads.
    """

    out: str = "figures/bench_real_size.json"
    models: tuple[str, ...] = ("qwen3-0.6b-7-layers", "qwen3-0.6b")
    lengths: tuple[int, ...] = (512, 1024, 2048)
    traces: int = 20
    memory_mb: int = 4096
    threads: int = 2


def point(model_name: str, length: int, traces: int, memory_mb: int, threads: int) -> dict:
    """One (model, length) point, measured in this process (run it in a fresh one: `ru_maxrss` is a peak)."""
    import resource

    import torch

    from leakage.analysis.probe import ProbeConfig, fit_probe
    from leakage.analysis.probe_data import capture_dataset, site_name, synthetic_traces
    from leakage.config import EvictionConfig
    from leakage.engine.model import build_model
    from leakage.training.tasks import TaskConfig

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model, tokenizer = build_model(MODELS[model_name], seed=0)
    model.resize_token_embeddings(VOCAB)
    built = time.perf_counter() - start
    per_block = len(synthetic_traces(TaskConfig(task="passcode", n_blocks=4), tokenizer, 1)[0].ids) / 4
    task = TaskConfig(task="passcode", n_blocks=max(3, round(length / per_block)), passcode_block=1)
    probe_traces = synthetic_traces(task, tokenizer, traces)
    last = task.n_blocks - 1 - task.passcode_block  # the last block's memento: the capture reads the whole trace
    sites = [("memento", 1), ("memento", last), ("block_end", 0), ("summary_end", 0)]
    start = time.perf_counter()
    data = capture_dataset(model, tokenizer, probe_traces, EvictionConfig(), sites, memory_mb=memory_mb)
    capture_s = time.perf_counter() - start
    prefix = sum(1 + max(t.positions.select(f"memento@{task.n_blocks - 1}")) for t in probe_traces)
    start = time.perf_counter()
    features = data.features(site_name("memento", 1))
    result = fit_probe(features, data.labels, data.groups, ProbeConfig(kind="linear", max_epochs=20), seed=0)
    probe_s = time.perf_counter() - start
    return {"model": model_name, "layers": MODELS[model_name].n_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trace_tokens": float(np.mean([len(t.ids) for t in probe_traces])), "traces": traces,
            "captured_tokens": prefix, "build_seconds": built, "capture_seconds": capture_s,
            "capture_tokens_per_s": prefix / capture_s, "features": int(features.shape[1]),
            "probe_seconds": probe_s, "probe_accuracy_random_weights": result.accuracy,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def exponent(xs, ys) -> float:
    """The least-squares slope of log y on log x: y ~ x^a."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--point":
        print(json.dumps(point(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))))
        return
    options = parse(Options, description=__doc__)
    points = []
    for model_name in options.models:
        for length in options.lengths:
            done = subprocess.run([sys.executable, __file__, "--point", model_name, str(length), str(options.traces),
                                   str(options.memory_mb), str(options.threads)], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{model_name} at {length} tokens failed:\n{done.stderr[-2000:]}")
            points.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print({k: points[-1][k] for k in ("model", "trace_tokens", "capture_seconds", "capture_tokens_per_s",
                                              "probe_seconds", "peak_rss_mb")})
    scaling = {}
    for model_name in options.models:
        mine = [p for p in points if p["model"] == model_name]
        if len(mine) > 1:
            scaling[f"{model_name}: capture seconds ~ trace tokens^a"] = exponent(
                [p["trace_tokens"] for p in mine], [p["capture_seconds"] for p in mine])
            scaling[f"{model_name}: peak memory ~ trace tokens^a"] = exponent(
                [p["trace_tokens"] for p in mine], [p["peak_rss_mb"] for p in mine])
    for length in options.lengths:
        mine = [p for p in points if p["trace_tokens"] and abs(math.log(p["trace_tokens"] / length)) < 0.5]
        if len({p["layers"] for p in mine}) > 1:
            scaling[f"~{length} tokens: capture seconds ~ layers^a"] = exponent(
                [p["layers"] for p in mine], [p["capture_seconds"] for p in mine])
    command = script_command("experiments/bench_real_size.py")
    atomic_write_json(options.out, {"command": command, "options": asdict(options), "points": points,
                                    "scaling": scaling, "machine": {"processor": platform.processor() or
                                                                    platform.machine(), "threads": options.threads}})
    print(json.dumps(scaling, indent=1))


if __name__ == "__main__":
    main()
