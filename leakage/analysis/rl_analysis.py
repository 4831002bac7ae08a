"""Before/after RL on one evaluation set: accuracy, maj@k, KV, memento length, and the implicit channel.

`compare_checkpoints(before, after, task, plan)` measures each checkpoint on the same validation
examples (`seed`) and returns one record per checkpoint:

* greedy free-running accuracy under memento decoding and under restart (the restart ablation of
  `leakage.analysis.restart`: the same memento text, its KV recomputed without the block), and the drop;
* sampled rollouts (`plan.eval_samples` per example, the RL temperature): pass@1 and maj@k for
  k = 1..eval_samples, on the whole answer, with example-bootstrap intervals for pass@1; and what
  their memento text holds (the running sums, or the passcode);
* KV: peak and AUC of the rollouts (the task's layout), and of free-format generation, where the model
  writes the whole trace from `<think>` (its own block and memento lengths, the block cap applied);
* the passcode probe on the retained KV: direct and masked distance 1 (`leakage.analysis.probing`).

`after_minus_before` holds the paired differences (same examples) of every per-example measure with
example-bootstrap intervals: pass@1, greedy accuracy under memento and restart decoding, restart drop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from leakage.analysis.probe import ProbeConfig
from leakage.analysis.probe_data import synthetic_traces
from leakage.analysis.probing import Checkpoint, ProbeExperiment, checkpoint_sweep
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish
from leakage.analysis.restart import restart_ablation
from leakage.config import EvictionConfig
from leakage.engine.decode import generate
from leakage.engine.model import load_model
from leakage.io import atomic_write_jsonl
from leakage.stats import cluster_bootstrap_mean
from leakage.training.evaluate import validation_examples
from leakage.training.rl import RL_PRESETS, RLConfig
from leakage.training.rollout import block_lengths, majority_accuracy, memento_lengths, sample_rollouts
from leakage.training.tasks import TaskConfig, task_spec


def bootstrap_mean(values: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of per-example values with a 95% bootstrap interval over examples."""
    values = np.asarray(values, dtype=float)
    low, high = cluster_bootstrap_mean(values, np.arange(len(values)), n_resamples, seed)
    return {"accuracy": float(values.mean()), "ci95_low": low, "ci95_high": high, "examples": len(values)}


def free_format(model, tokenizer, examples, eviction: EvictionConfig, extra_tokens: int = 40) -> dict:
    """The model writes the whole trace from the prompt and `<think>` (greedy): its peak KV, KV AUC,
    block and memento lengths, and how many markers came out malformed."""
    prompts = [e.ids[:e.prompt_len + 1] for e in examples]
    out = generate(model, tokenizer, prompts, eviction, max_new_tokens=max(len(e.ids) for e in examples) + extra_tokens)
    blocks = [n for s in out.sequences for n in block_lengths(s.ids, tokenizer)]
    mementos = [n for s in out.sequences for n in memento_lengths(s.ids, tokenizer)]
    return {"peak_kv": float(np.mean([s.kv.peak for s in out.sequences])),
            "kv_auc": float(np.mean([s.kv.auc for s in out.sequences])),
            "generated_tokens": float(np.mean([len(s.response) for s in out.sequences])),
            "blocks": len(blocks) / len(examples), "block_length": float(np.mean(blocks)) if blocks else None,
            "memento_length": float(np.mean(mementos)) if mementos else None,
            "forced_block_ends": sum(len(s.forced_block_ends) for s in out.sequences),
            "malformed_sequences": sum(bool(s.malformed) for s in out.sequences), "sequences": len(examples)}


def memento_text(rollouts) -> dict:
    """What the memento text of sampled rollouts holds: the share of memento digits equal to the true
    running sum's (what SFT taught), and, from the passcode's block on, the share equal to the passcode
    digit at the same index (chance 0.1: text carrying the passcode would raise it)."""
    sums = total = passcode = after = 0
    for r in rollouts:
        e = r.example
        for block, positions in enumerate(e.memento_positions):
            for j, p in enumerate(positions):
                total += 1
                sums += r.ids[p] == e.ids[p]
                if e.passcode is not None and block >= e.passcode_block and j < len(e.passcode_positions):
                    after += 1
                    passcode += r.ids[p] == e.ids[e.passcode_positions[j]]
    return {"sum_digits_right": sums / total, "passcode_digits": passcode / after if after else None,
            "passcode_chance": 0.1}


def measure(model, tokenizer, task: TaskConfig, n: int, samples: int, temperature: float,
            eviction: EvictionConfig, seed: int) -> dict:
    """Everything but the probe, for one model (see module docstring)."""
    examples = validation_examples(task, tokenizer, n, seed)
    record, per_example = {}, {}
    for name in task_spec(task.task).units:  # running sums, and/or each answer digit
        ablation = restart_ablation(model, tokenizer, examples, name, replace(eviction, max_block_tokens=None))
        record[f"restart/{name}"] = ablation.as_dict()
        units_per_example = np.bincount(ablation.example, minlength=n)
        for mode, correct in (("memento", ablation.normal_correct), ("restart", ablation.restart_correct)):
            per_example[f"greedy_{name}_{mode}"] = np.bincount(ablation.example, correct, minlength=n) / units_per_example
        per_example[f"restart_drop_{name}"] = (per_example[f"greedy_{name}_memento"]
                                               - per_example[f"greedy_{name}_restart"])
    groups = [[] for _ in examples]
    for draw in range(samples):
        for i, r in enumerate(sample_rollouts(model, tokenizer, examples, eviction, temperature, seed=seed + draw)):
            groups[i].append(r)
    exact = np.array([[r.answer == r.truth for r in g] for g in groups], dtype=float)
    per_example["pass@1"] = exact.mean(1)
    per_example["answer_digits@1"] = np.array([[r.reward("digit_share") for r in g] for g in groups]).mean(1)
    record["pass@1"] = bootstrap_mean(per_example["pass@1"])
    record["answer_digits@1"] = bootstrap_mean(per_example["answer_digits@1"])
    record["maj@k"] = {k: majority_accuracy(groups, k).as_dict() for k in range(1, samples + 1)}
    flat = [r for g in groups for r in g]
    record["rollout_kv"] = {"peak_kv": float(np.mean([r.kv.peak for r in flat])),
                            "kv_auc": float(np.mean([r.kv.auc for r in flat]))}
    record["memento_text"] = memento_text(flat)
    record["free_format"] = free_format(model, tokenizer, examples[:min(n, 64)], eviction)
    record["per_example"] = {name: values.tolist() for name, values in per_example.items()}
    return record


def paired_difference(before: np.ndarray, after: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> dict:
    """after - before of per-example values measured on the same examples, with a 95% bootstrap interval
    that resamples examples (the pairing is kept)."""
    delta = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    low, high = cluster_bootstrap_mean(delta, np.arange(len(delta)), n_resamples, seed)
    return {"difference": float(delta.mean()), "ci95_low": low, "ci95_high": high, "examples": len(delta)}


def compare_checkpoints(before: str | Path, after: str | Path, task: TaskConfig, n: int, samples: int,
                        probe_traces: int, temperature: float = 1.0, eviction: EvictionConfig = EvictionConfig(),
                        seed: int = 2, probe: ProbeConfig = ProbeConfig(), log: Log = lambda _: None) -> dict:
    """Before/after records (see module docstring) and the probe rows of both checkpoints."""
    records = {}
    for name, path in (("before", before), ("after", after)):
        log(f"measuring {name} ({path})")
        model, tokenizer = load_model(path)
        records[name] = measure(model, tokenizer, task, n, samples, temperature, eviction, seed)
    records["after_minus_before"] = {name: paired_difference(values, records["after"]["per_example"][name])
                                     for name, values in records["before"]["per_example"].items()}
    probe_task = replace(task, passcode_block=task.passcode_block if task.passcode_block is not None else 1)
    experiment = ProbeExperiment(n_blocks=task.n_blocks, passcode_block=probe_task.passcode_block, per_layer=False,
                                 mdl=False, precision=False, max_keep=0, checkpoints=0, seed=0)
    log(f"probing both checkpoints ({probe_traces} traces)")
    traces = synthetic_traces(probe_task, tokenizer, probe_traces, seed=0)
    examples = validation_examples(task, tokenizer, n, seed)
    rows = checkpoint_sweep([Checkpoint(0, "sft", Path(before)), Checkpoint(1, "rl", Path(after))], traces, experiment,
                            examples, task.task, replace(eviction, max_block_tokens=None), probe, log=log)
    for name, stage in (("before", "sft"), ("after", "rl")):
        records[name]["probe"] = {("direct" if r["distance"] == 0 else "masked_d1"):
                                  {k: r[k] for k in ("accuracy", "ci95_low", "ci95_high")}
                                  for r in rows if r["stage"] == stage}
    return records



def analysis_rows(records: dict) -> list[dict]:
    """The before/after records as flat rows: checkpoint, metric, value, 95% interval (where one exists)."""
    rows = []

    def add(checkpoint: str, metric: str, value, low=None, high=None, **extra):
        rows.append({"checkpoint": checkpoint, "metric": metric, "value": value, "ci95_low": low, "ci95_high": high,
                     **extra})

    for metric, r in records["after_minus_before"].items():
        add("after_minus_before", metric, r["difference"], r["ci95_low"], r["ci95_high"])
    for checkpoint in ("before", "after"):
        record = records[checkpoint]
        for name in ("pass@1", "answer_digits@1"):
            r = record[name]
            add(checkpoint, name, r["accuracy"], r["ci95_low"], r["ci95_high"])
        for k, r in record["maj@k"].items():
            add(checkpoint, f"maj@{k}", r["accuracy"], r["ci95_low"], r["ci95_high"], k=int(k))
        for unit in ("sums", "answer_digits"):
            r = record.get(f"restart/{unit}")
            if r is None:
                continue
            for mode in ("memento", "restart"):
                add(checkpoint, f"greedy_{unit}_{mode}", r[mode]["accuracy"], r[mode]["ci95_low"], r[mode]["ci95_high"])
            add(checkpoint, f"restart_drop_{unit}", r["drop"], *r["drop_ci95"], sign_test_p=r["sign_test_p"])
        for where in ("rollout_kv", "memento_text", "free_format"):
            for name, value in record[where].items():
                add(checkpoint, f"{where}/{name}", value)
        for name, r in record.get("probe", {}).items():
            add(checkpoint, f"probe_{name}", r["accuracy"], r["ci95_low"], r["ci95_high"])
    return rows


@dataclass(frozen=True)
class RLAnalysisSpec:
    """The before/after analysis of one `leakage rl` run.

    run: the RL run folder (its config names the SFT checkpoint it started from; `final/` is the RL model).
    probe: the passcode probe's config.
    seed: seed of the evaluation examples and rollouts.
    """

    run: str
    probe: ProbeConfig = ProbeConfig()
    seed: int = 2


FILES = (".csv", ".json", ".png", "_metrics.jsonl")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: RLAnalysisSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """Measure the SFT checkpoint and the RL model on the same examples (module docstring); the sizes are the
    RL preset's. Writes CSV, JSON, the Fig. 7-style figure and the run's metrics JSONL at `out`."""
    run_dir = Path(spec.run)
    check_outputs(out, FILES, [run_dir / "final", run_dir / "config.json", run_dir / "metrics.jsonl"])
    clock = Clock(log)
    trained = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    config = RLConfig(**trained["rl"])
    task = TaskConfig(**{**trained["task"], "passcode_blocks": tuple(trained["task"].get("passcode_blocks", ()))})
    plan, before, after = RL_PRESETS[config.preset], Path(trained["from"]), run_dir / "final"
    records = compare_checkpoints(before, after, task, plan.n_eval, plan.eval_samples, plan.probe_traces,
                                  config.temperature, seed=spec.seed, probe=spec.probe, log=clock)
    done = json.loads((run_dir / "done.json").read_text(encoding="utf-8"))
    results = {"from": str(before), "rl": trained["rl"], "task": trained["task"], "train_seconds": done["wall_seconds"],
               "records": records}
    return finish(__name__, spec, results, pd.DataFrame(analysis_rows(records)), clock, command, out, files,
                  checkpoints=(before, after))


def files(record: Record, stem: Path) -> list[Path]:
    """The Fig. 7-style figure (maj@k, RL curves, leakage before/after) and a copy of the run's metrics."""
    from leakage.plotting import plot_rl

    run_dir = Path(record.spec.run)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rl, source = record.results["rl"], record.results["from"]
    return [plot_rl(metrics, record.rows, beside(stem, ".png"), f"CISPO on {rl['task']} ({rl['preset']}) from {source}"),
            atomic_write_jsonl(beside(stem, "_metrics.jsonl"), metrics)]
