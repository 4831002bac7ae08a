"""Two checks behind choices in `leakage.training.rl`, on a trained SFT run, written as JSON:

1. the training forward's log-probabilities against the eviction decoder's (`logprob_agreement`), with
   the trainer as configured (float32) and with TRL's default bf16 autocast;
2. a few CISPO steps at a higher learning rate without warm-up (reward and KL per step), against the
   preset's first steps in the run's metrics.

    python experiments/rl_checks.py runs/digits-fast --out figures/rl_checks_digits_fast.json
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.training.rl import RLConfig, build_trainer, logprob_agreement, rl_train, sft_source


@dataclass(frozen=True)
class Options:
    """The checks' settings.

    source: SFT run folder (runs/NAME).
    out: the JSON report.
    task: the task rewarded.
    learning_rate: the trial's learning rate (no warm-up).
    steps: the trial's steps.
    """

    source: str
    out: str
    task: str = "digits"
    learning_rate: float = 2e-4
    steps: int = 3


def main() -> None:
    args = parse(Options, description=__doc__, options=("out",))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(2)
    config = RLConfig(task=args.task)
    checkpoint, task = sft_source(args.source, args.task)
    result = {"source": args.source, "task": args.task}
    with tempfile.TemporaryDirectory() as scratch:
        for name, overrides in (("float32", {}), ("bf16_autocast", {"bf16": True})):
            trainer = build_trainer(config, checkpoint, task, Path(scratch) / name, **overrides)
            result[f"logprobs_{name}"] = agreement = logprob_agreement(trainer, [0, 1])
            print(f"log-probs, {name}: {agreement}")
        run = Path(scratch) / "trial"
        rl_train(config, args.source, run, learning_rate=args.learning_rate, warmup_steps=0, max_steps=args.steps,
                 save_strategy="no")
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        result["trial"] = {"learning_rate": args.learning_rate, "warmup_steps": 0,
                           "steps": [{k: s.get(k) for k in ("step", "reward", "kl", "rollout/accuracy")}
                                     for s in steps if "reward" in s]}
        for s in result["trial"]["steps"]:
            print(f"lr {args.learning_rate}, step {s['step']}: reward {s['reward']:.3f}, KL {s['kl']:.4f}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
