"""`leakage reproduce`: the main job on the embedded toy model and synthetic data.

Trains the `digits` and `recall` Memento models (`--tasks` adds `passcode`; two-stage SFT, resumable),
evaluates them under memento, restart and full-attention decoding, decodes with the trained digits model
to measure its KV cache, and writes the results with the paper's numbers beside ours:

    figures/reproduce_{preset}.json          every number below, with the command
    figures/training_{task}_{preset}.csv/png per-stage loss curves
    figures/kv_sawtooth_digits_{preset}.png  KV cache of the trained model, vanilla vs memento
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from leakage.config import EvictionConfig
from leakage.decode import generate
from leakage.evaluate import evaluate_checkpoint
from leakage.io import atomic_write_json, atomic_write_text
from leakage.kv import simulate_kv
from leakage.model import load_model
from leakage.plotting import plot_kv_sawtooth, plot_training_curves
from leakage.tasks import TRAINING_SHORT_BLOCK_RATE, TaskConfig, make_example
from leakage.train import RunConfig, train, train_preset

PAPER = {
    "toy_task_accuracy_final": 0.95,  # 4 layers, d_model 128, 10 blocks of 5 digits (facts: toy experiment)
    "toy_task_accuracy_checkpoint_range": [0.77, 0.95],
    "qwen3_8b_restart_drop_pp": -15.3,  # AIME24, 66.1% normal vs 50.8% restart
    "peak_kv_reduction": "2-3x",
    "kv_auc_reduction": "2-3.5x",
}


@dataclass(frozen=True)
class ReproduceConfig:
    preset: str = "fast"
    runs_dir: str = "runs"
    figures_dir: str = "figures"
    n_eval: int = 256
    seed: int = 0
    short_block_rate: float = TRAINING_SHORT_BLOCK_RATE  # training curriculum; evaluation uses full blocks
    tasks: tuple[str, ...] = ("digits", "recall")  # passcode: see docs/results.md


def run_dir(config: ReproduceConfig, task: str) -> Path:
    return Path(config.runs_dir) / f"{task}-{config.preset}"


def training_table(run_path: Path) -> pd.DataFrame:
    """metrics.jsonl as a table: stage, step, loss, eval_loss and task accuracies."""
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines])


def stage_times(run_path: Path) -> dict:
    out = {}
    for done in sorted(run_path.glob("stage*/done.json")):
        info = json.loads(done.read_text())
        out[done.parent.name] = {"wall_seconds": info.get("wall_seconds"), "steps": info["steps"],
                                 "best_eval_loss": info["best_eval_loss"], "resumed": info.get("resumed")}
    return out


def kv_of_trained_model(model, tokenizer, task: TaskConfig, seed: int) -> dict:
    """Let the trained model write a whole digits trace itself; measure its KV cache while decoding."""
    example = make_example(task, tokenizer, seed, 0, "val")
    prompt = example.ids[:example.prompt_len + 1]  # the prompt and <think>
    out = generate(model, tokenizer, prompt, EvictionConfig(), max_new_tokens=len(example.ids) + 40).sequences[0]
    fed = out.ids[:len(out.kv.cached_tokens)]
    vanilla = simulate_kv(fed, tokenizer, EvictionConfig(keep_last_n_blocks=-1), prompt_len=out.prompt_len,
                          plain_prompt=False, strict=False)
    return {"memento": out.kv, "vanilla": vanilla, "generated_tokens": len(out.response),
            "malformed": len(out.malformed), "text": tokenizer.decode(out.response)}


def reproduce(config: ReproduceConfig, log: Callable[[str], None] = lambda _: None) -> dict:
    """Train (or resume), evaluate, measure, and write figures; returns the report dict."""
    figures = Path(config.figures_dir)
    preset = train_preset(config.preset)
    report = {"command": f"leakage reproduce --preset {config.preset} --runs-dir {config.runs_dir} "
                         f"--figures-dir {config.figures_dir} --n-eval {config.n_eval} --seed {config.seed} "
                         f"--short-block-rate {config.short_block_rate} --tasks {' '.join(config.tasks)}",
              "paper": PAPER, "tasks": {}}
    for task_name in config.tasks:
        task = TaskConfig(task=task_name)  # evaluation: the paper's fixed 5-digit blocks
        training_task = replace(task, short_block_rate=config.short_block_rate)
        path = run_dir(config, task_name)
        log(f"[{task_name}] training ({config.preset}) in {path} (resumes if interrupted)")
        final = train(RunConfig(task=training_task, preset=preset, seed=config.seed), path, resume=True)
        model, tokenizer = load_model(final)
        log(f"[{task_name}] evaluating on {config.n_eval} validation examples")
        results = evaluate_checkpoint(model, tokenizer, task, config.n_eval, seed=config.seed + 1)
        table = training_table(path)
        stem = f"training_{task_name}_{config.preset}"
        atomic_write_text(figures / f"{stem}.csv", table.to_csv(index=False))
        plot_training_curves(table.to_dict("records"), figures / f"{stem}.png",
                             title=f"{task_name}: two-stage Memento SFT ({config.preset} preset)")
        times = stage_times(path)
        results["stages"] = times
        results["train_wall_seconds"] = sum(t["wall_seconds"] or 0 for t in times.values())
        if task_name == "digits":
            kv = kv_of_trained_model(model, tokenizer, task, config.seed + 2)
            plot_kv_sawtooth({"vanilla": kv["vanilla"], "memento": kv["memento"]},
                             figures / f"kv_sawtooth_digits_{config.preset}.png",
                             title="KV cache while the trained digits model writes a trace")
            results["decoded_trace_kv"] = {
                "generated_tokens": kv["generated_tokens"], "malformed_markers": kv["malformed"],
                "vanilla_peak": kv["vanilla"].peak, "memento_peak": kv["memento"].peak,
                "peak_ratio": kv["vanilla"].peak / kv["memento"].peak,
                "vanilla_auc": kv["vanilla"].auc, "memento_auc": kv["memento"].auc,
                "auc_ratio": kv["vanilla"].auc / kv["memento"].auc, "text": kv["text"]}
        report["tasks"][task_name] = results
        atomic_write_json(figures / f"reproduce_{config.preset}.json", report)
    return report
