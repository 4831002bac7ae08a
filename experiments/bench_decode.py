"""Vanilla vs Memento decoding on the same traces and model: KV, speed, overhead, fixed-budget throughput.

    python experiments/bench_decode.py --out figures/bench_decode.json

Traces are uniform synthetic Memento traces (blocks of reasoning tokens, short mementos) fed through
the decoder step by step (teacher forcing runs the same per-token forward as generation). The model is
the `tiny` preset; its weights do not affect speed. Reports:

* peak KV and KV AUC ratios (vanilla / memento), bytes at bf16 for this model;
* tokens/s for one sequence, vanilla and memento;
* per-token overhead of eviction decoding at equal cache length: each memento step's time against the
  vanilla step that ran with the same physical cache length, plus the time spent on eviction alone
  (tracker, schedule and compaction, as the decoder reports it to `on_step`). Single-sequence runs
  are repeated `--repeats` times, vanilla and memento
  alternating so that drift hits both alike; each step's time is its median over the repeats. The
  noise floor: the same ratio over the steps before the first eviction, where both runs do identical
  work (on a shared 2-core machine it drifts by +-10% from run to run, both ways). The overhead
  net of it, (1 + median step ratio) / (1 + noise-floor ratio) - 1, is the estimate to read;
* a fixed KV budget: the budget holds `--budget-seqs` vanilla sequences at their peak; as many memento
  sequences as fit at their peak are decoded as one batch; aggregate tokens/s of both, and the ratio.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.engine.decode import Decoder, force_policy
from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.memento.kv import kv_bytes_per_token_of, simulate_kv
from leakage.engine.model import build_model
from leakage.plotting import plot_kv_sawtooth
from leakage.memento.trace import MementoTrace
from leakage.provenance import script_command

@dataclass(frozen=True)
class Options:
    """The benchmark's settings.

    out: the JSON report.
    blocks: blocks of the synthetic trace.
    block_tokens: reasoning tokens per block.
    memento_tokens: tokens per memento.
    budget_seqs: vanilla sequences the KV budget holds.
    repeats: single-sequence runs per config (medians).
    threads: torch threads.
    plot: the sawtooth figure of the trace.
    """

    out: str = "figures/bench_decode.json"
    blocks: int = 10
    block_tokens: int = 60
    memento_tokens: int = 6
    budget_seqs: int = 6
    repeats: int = 5
    threads: int = 2
    plot: str = "figures/kv_sawtooth_bench.png"


VANILLA, MEMENTO = EVICTION_PRESETS["vanilla"], EVICTION_PRESETS["memento"]


def uniform_trace(tokenizer, n_blocks: int, block_tokens: int, memento_tokens: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    digits = lambda n: " ".join(str(d) for d in rng.integers(0, 10, n))  # noqa: E731
    trace = MementoTrace("what is the sum ?", [(digits(block_tokens), digits(memento_tokens))] * n_blocks,
                         digits(3))
    return trace.to_ids(tokenizer)


def run(model, tokenizer, seqs: list[list[int]], eviction: EvictionConfig, prompt_len: int) -> dict:
    """Decode `seqs` as one batch in lockstep (teacher forcing); per-step wall time and physical cache length.

    Timings come from the decoder's own `on_step` reports: each step's forward, and its eviction work
    (tracker, schedule and compaction).
    """
    decoder = Decoder(model, tokenizer, eviction, [s[:prompt_len] for s in seqs])
    step_times, slots, evict_seconds = [], [], []

    def timed(step, cache):
        if step.index == 0:
            return
        step_times.append(step.forward_seconds + step.evict_seconds)
        evict_seconds.append(step.evict_seconds)
        slots.append(decoder.cache_slots[-1])

    start = time.perf_counter()
    results = decoder.run(force_policy(seqs), timed)
    total = time.perf_counter() - start
    steps = len(seqs[0]) - prompt_len
    tracker_start = time.perf_counter()  # the tracker alone, replayed without a model
    for s in seqs:
        simulate_kv(s, tokenizer, eviction)
    tracker_seconds = time.perf_counter() - tracker_start
    return {"seconds": total, "tokens": steps * len(seqs), "tokens_per_s": steps * len(seqs) / total,
            "step_times": step_times, "slots": slots, "eviction_seconds": sum(evict_seconds),
            "tracker_seconds": tracker_seconds, "kv": [r.kv for r in results]}


def median_run(runs: list[dict]) -> dict:
    """Repeats of one `run` (same trace, same config) folded into one: medians of times, step by step."""
    return {**runs[0],
            **{key: float(np.median([r[key] for r in runs]))
               for key in ("seconds", "tokens_per_s", "eviction_seconds", "tracker_seconds")},
            "step_times": np.median([r["step_times"] for r in runs], axis=0).tolist()}


def main() -> None:
    args = parse(Options, description=__doc__)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    model, tokenizer = build_model("tiny", seed=0)
    trace = uniform_trace(tokenizer, args.blocks, args.block_tokens, args.memento_tokens, seed=0)
    prompt_len = trace.index(tokenizer.convert_tokens_to_ids("<think>"))
    run(model, tokenizer, [trace], VANILLA, prompt_len)  # warm-up

    repeats = {"vanilla": [], "memento": []}
    for _ in range(args.repeats):  # alternating, so that drift hits both configs alike
        for name, cfg in (("vanilla", VANILLA), ("memento", MEMENTO)):
            repeats[name].append(run(model, tokenizer, [trace], cfg, prompt_len))
    single = {name: median_run(runs) for name, runs in repeats.items()}
    kv_v, kv_m = single["vanilla"]["kv"][0], single["memento"]["kv"][0]
    bytes_per_token = kv_bytes_per_token_of(model.config, bytes_per_value=2)

    # per-token overhead at equal cache length: each memento step against the vanilla step that ran
    # with the same physical cache length (vanilla passes through every length once)
    vanilla_time = dict(zip(single["vanilla"]["slots"], single["vanilla"]["step_times"]))
    pairs = [(t, vanilla_time[s]) for s, t in zip(single["memento"]["slots"], single["memento"]["step_times"])
             if s in vanilla_time]
    memento_t, vanilla_t = np.array(pairs).T
    slots_m = single["memento"]["slots"]
    first_eviction = next(i for i in range(1, len(slots_m)) if slots_m[i] <= slots_m[i - 1])
    identical = (np.array(single["memento"]["step_times"][:first_eviction])
                 / np.array(single["vanilla"]["step_times"][:first_eviction]))

    # fixed KV budget: as many sequences as fit at their peak
    budget = args.budget_seqs * kv_v.peak
    n_memento = budget // kv_m.peak
    batch = {}
    for name, cfg, n in (("vanilla", VANILLA, args.budget_seqs), ("memento", MEMENTO, n_memento)):
        seqs = [uniform_trace(tokenizer, args.blocks, args.block_tokens, args.memento_tokens, seed=i) for i in range(n)]
        result = run(model, tokenizer, seqs, cfg, prompt_len)
        batch[name] = {"sequences": n, "peak_slots": max(result["slots"]), "seconds": result["seconds"],
                       "aggregate_tokens_per_s": result["tokens_per_s"]}
        print(name, batch[name])

    command = script_command("experiments/bench_decode.py")
    report = {
        "command": command,
        "machine": {"processor": platform.processor() or platform.machine(), "torch_threads": args.threads},
        "wall_seconds": time.perf_counter() - started,  # the whole benchmark, model build and warm-up included
        "model": {"preset": "tiny", "kv_bytes_per_token_bf16": bytes_per_token},
        "trace": {"tokens": len(trace), "prompt_tokens": prompt_len, "blocks": args.blocks,
                  "block_tokens": args.block_tokens, "memento_tokens": args.memento_tokens},
        "kv": {"vanilla_peak": kv_v.peak, "memento_peak": kv_m.peak, "peak_ratio": kv_v.peak / kv_m.peak,
               "vanilla_auc": kv_v.auc, "memento_auc": kv_m.auc, "auc_ratio": kv_v.auc / kv_m.auc,
               "vanilla_peak_bytes": kv_v.peak_bytes(bytes_per_token),
               "memento_peak_bytes": kv_m.peak_bytes(bytes_per_token)},
        "single_sequence": {name: {"tokens_per_s": r["tokens_per_s"], "seconds": r["seconds"],
                                   "eviction_seconds": r["eviction_seconds"],
                                   "tracker_seconds": r["tracker_seconds"]} for name, r in single.items()},
        "overhead_at_equal_cache_length": {
            "matched_steps": len(pairs),
            "total_time_ratio_minus_1": float(memento_t.sum() / vanilla_t.sum() - 1),
            "median_step_ratio_minus_1": float(np.median(memento_t / vanilla_t) - 1),
            "noise_floor_steps": first_eviction,
            "noise_floor_median_step_ratio_minus_1": float(np.median(identical) - 1),
            "net_of_noise_floor_median_step_ratio_minus_1":
                float(np.median(memento_t / vanilla_t) / np.median(identical) - 1),
            "eviction_share_of_memento_time": single["memento"]["eviction_seconds"] / single["memento"]["seconds"],
        },
        "fixed_kv_budget": {"budget_tokens": budget, **batch,
                            "throughput_ratio": batch["memento"]["aggregate_tokens_per_s"]
                            / batch["vanilla"]["aggregate_tokens_per_s"],
                            "sequences_ratio": n_memento / args.budget_seqs},
    }
    atomic_write_json(args.out, report)
    plot_kv_sawtooth({"vanilla": kv_v, "memento (keep_last_n_blocks=0)": kv_m}, args.plot,
                     title=f"{args.blocks} blocks x {args.block_tokens} tokens, mementos of {args.memento_tokens}")
    for key in ("kv", "single_sequence", "overhead_at_equal_cache_length", "fixed_kv_budget"):
        print(key, report[key])


if __name__ == "__main__":
    main()
