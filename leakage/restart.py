"""The restart ablation (the paper's Table 3) with the memento text held identical.

    result = restart_ablation(model, tokenizer, examples, "digits")
    result.memento, result.restart      # Accuracy (Wilson intervals) over the task's scored units
    result.table                        # 2 x 2 paired counts; result.mcnemar_p: exact McNemar test

1. The normal run: eviction decoding in which the model writes its own running sums, mementos and
   answer (the free-running evaluation of `leakage.evaluate`; block digits and the passcode are given).
2. The restart run: the same examples decoded with `restart=True` (each memento's keys and values
   recomputed without its block), every token forced to the normal run's except the scored ones, which
   the model chooses again. The mementos are therefore the normal run's text, token for token; only
   their KV differs, which is what the ablation means to remove.
Scored units: the running sum of each block for `digits`, each answer digit for `recall` and
`passcode`. Units are paired (the same unit in both runs); McNemar's exact test uses the discordant
pairs. Units of one example are not independent, so the difference also gets a bootstrap interval
that resamples examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from leakage.config import EvictionConfig
from leakage.decode import Decoder, force_policy
from leakage.evaluate import Accuracy, free_run
from leakage.tasks import Example


def scored_units(example: Example, task: str) -> list[list[int]]:
    """Positions of each scored unit: a block's running-sum digits (`digits`) or one answer digit."""
    return example.sum_positions if task == "digits" else [[p] for p in example.answer_positions]


@dataclass
class RestartAblation:
    """Paired outcomes of the normal and the restart run: correct[run] is (n_units,) bool, example
    (n_units,) the example each unit belongs to."""

    task: str
    normal_correct: np.ndarray
    restart_correct: np.ndarray
    example: np.ndarray
    eviction: EvictionConfig

    @property
    def memento(self) -> Accuracy:
        return Accuracy(int(self.normal_correct.sum()), len(self.normal_correct))

    @property
    def restart(self) -> Accuracy:
        return Accuracy(int(self.restart_correct.sum()), len(self.restart_correct))

    @property
    def table(self) -> dict[str, int]:
        """Paired counts: both right, only the normal run right, only the restart run right, both wrong."""
        n, r = self.normal_correct, self.restart_correct
        return {"both": int((n & r).sum()), "memento_only": int((n & ~r).sum()),
                "restart_only": int((~n & r).sum()), "neither": int((~n & ~r).sum())}

    @property
    def mcnemar_p(self) -> float:
        """Exact two-sided McNemar test on the discordant pairs (binomial, p = 1/2)."""
        b, c = self.table["memento_only"], self.table["restart_only"]
        n, k = b + c, min(b, c)
        if n == 0:
            return 1.0
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)

    def difference_ci(self, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval of (memento - restart) accuracy, resampling examples."""
        ids, inverse = np.unique(self.example, return_inverse=True)
        delta = np.bincount(inverse, self.normal_correct.astype(float) - self.restart_correct.astype(float))
        units = np.bincount(inverse)
        draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_resamples, len(ids)))
        low, high = np.percentile(delta[draws].sum(1) / units[draws].sum(1), [2.5, 97.5])
        return float(low), float(high)

    def as_dict(self) -> dict:
        low, high = self.difference_ci()
        return {"task": self.task, "units": len(self.example), "examples": len(np.unique(self.example)),
                "memento": self.memento.as_dict(), "restart": self.restart.as_dict(),
                "drop": self.memento.value - self.restart.value, "drop_ci95": [low, high],
                "paired": self.table, "mcnemar_p": self.mcnemar_p, "eviction": vars(self.eviction)}


@torch.no_grad()
def rerun(model, tokenizer, examples: list[Example], sequences: list[list[int]], task: str,
          config: EvictionConfig) -> list[list[int]]:
    """Decode `examples` under `config`, every token forced to `sequences` (another run's) except the
    task's scored units, which the model chooses."""
    scored = [{p for unit in scored_units(e, task) for p in unit} for e in examples]
    decoder = Decoder(model, tokenizer, config, [e.ids[:e.prompt_len] for e in examples])
    decoder.run(force_policy(sequences, lambda row, position: position in scored[row]))
    return [row.ids for row in decoder.rows]


@torch.no_grad()
def restart_ablation(model, tokenizer, examples: list[Example], task: str,
                     eviction: EvictionConfig = EvictionConfig(), batch_size: int = 32) -> RestartAblation:
    """Normal vs restart decoding of `examples`, the restart run forced to the normal run's mementos."""
    if not eviction.evicts:
        raise ValueError("the restart ablation needs eviction (keep_last_n_blocks >= 0)")
    normal_config, restart_config = replace(eviction, restart=False), replace(eviction, restart=True)
    normal_ok, restart_ok, owner = [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        normal = free_run(model, tokenizer, chunk, normal_config)
        restarted = rerun(model, tokenizer, chunk, normal, task, restart_config)
        for i, (example, ours, theirs) in enumerate(zip(chunk, normal, restarted)):
            for unit in scored_units(example, task):
                truth = [example.ids[p] for p in unit]
                normal_ok.append([ours[p] for p in unit] == truth)
                restart_ok.append([theirs[p] for p in unit] == truth)
                owner.append(start + i)
    return RestartAblation(task, np.array(normal_ok), np.array(restart_ok), np.array(owner), eviction)
