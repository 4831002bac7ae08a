"""`leakage erase`: LEACE erasure of the passcode from the retained KV, against a random subspace.

LEACE (`concept_erasure.LeaceFitter`) is fitted per layer on a reference set to erase the passcode
(one-hot digits) from the KV entries that saw its block; a probe is trained on the erased features of
held-out reference rows, and the answer is scored with the erased KV in the cache, at erasure strengths
0..1 — against an orthogonal projection off a random subspace of the same rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from leakage.analysis.patching import KV, PatchRun, answer_correct, logit_difference, patched_logits
from leakage.analysis.probe import ProbeConfig, fit_probe
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish
from leakage.analysis.twins import (CausalExperiment, CausalSpec, load_causal_model, passcode_pairs, passcode_run,
                                    run_name)
from leakage.config import EvictionConfig
from leakage.engine.model import check_trained_task
from leakage.stats import cluster_bootstrap_mean
from leakage.training.tasks import Example, TaskConfig, make_example


def leaked_positions(run: PatchRun, example: Example) -> list[int]:
    """Prefix positions the cache still holds at the eviction step that were computed with the passcode
    in view (from the passcode's first token on)."""
    start = example.passcode_positions[0]
    return [p for p in run.held[0].nonzero().flatten().tolist() if p >= start]


def kv_features(kv: KV, layer: int, positions: list[int]) -> torch.Tensor:
    """(B, F) float64: keys and values of `layer` at `positions`, every KV head, flattened."""
    keys, values = kv.keys[:, layer][:, :, positions], kv.values[:, layer][:, :, positions]
    return torch.cat([keys.flatten(1), values.flatten(1)], 1).double()


def set_features(kv: KV, layer: int, positions: list[int], features: torch.Tensor) -> None:
    """Write `features` (B, F, laid out as `kv_features`) back into `kv` at `layer` and `positions`, in place."""
    B, _, H, _, d = kv.keys.shape
    half = features.shape[1] // 2
    kv.keys[:, layer][:, :, positions] = features[:, :half].reshape(B, H, len(positions), d).to(kv.keys)
    kv.values[:, layer][:, :, positions] = features[:, half:].reshape(B, H, len(positions), d).to(kv.values)


def one_hot_digits(examples: list[Example]) -> torch.Tensor:
    """(N, digits * 10) float64: the passcode, one-hot per digit."""
    digits = torch.tensor([e.passcode_digits for e in examples])
    return torch.nn.functional.one_hot(digits, 10).flatten(1).double()


@dataclass
class Eraser:
    """An affine eraser x -> x - strength * (x - bias) @ right.T @ left.T (LEACE or its random control)."""

    left: torch.Tensor  # (F, r)
    right: torch.Tensor  # (r, F)
    bias: torch.Tensor  # (F,)

    @property
    def rank(self) -> int:
        return int(torch.linalg.matrix_rank(self.left))

    def __call__(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return x - strength * ((x - self.bias) @ self.right.T) @ self.left.T


def leace_eraser(x: torch.Tensor, z: torch.Tensor) -> Eraser:
    """LEACE from `concept_erasure`, fitted in float64 without shrinkage: the leak sits in directions
    with 1e-4..1e-12 of the top variance, which float32 or a shrunk covariance would not resolve."""
    from concept_erasure import LeaceFitter

    eraser = LeaceFitter.fit(x, z.to(x), shrinkage=False).eraser  # on x's device (the model's)
    return Eraser(eraser.proj_left, eraser.proj_right, eraser.bias)


def random_eraser(x: torch.Tensor, rank: int, seed: int) -> Eraser:
    """The control: orthogonal projection off a random subspace of the same rank (centred like LEACE)."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(x.shape[1], max(rank, 1), generator=generator, dtype=torch.float64))
    basis = basis[:, :rank].to(x.device)
    return Eraser(basis, basis.T, x.mean(0))


def erasure_curve(model, tokenizer, task: TaskConfig, eviction: EvictionConfig, experiment: CausalExperiment,
                  probe: ProbeConfig = ProbeConfig(), log: Log | None = None) -> pd.DataFrame:
    """Probe accuracy and answer accuracy with LEACE (or a random subspace of the same rank) applied to
    every layer's leaked KV entries, at each erasure strength."""
    reference = [make_example(task, tokenizer, experiment.seed + 1, i, "train") for i in range(experiment.reference)]
    fitted, probed_set = reference[:len(reference) // 2], reference[len(reference) // 2:]  # erasers never see the probe's rows
    examples, twins, digits = passcode_pairs(task, tokenizer, experiment.n, experiment.seed)
    fit_run, probe_run = (passcode_run(model, tokenizer, part, [e.ids for e in part],
                                       [e.passcode_digits for e in part], eviction) for part in (fitted, probed_set))
    run = passcode_run(model, tokenizer, examples, twins, digits, eviction)
    positions = leaked_positions(run, examples[0])
    z = one_hot_digits(fitted)
    labels = torch.tensor([e.passcode_digits for e in probed_set])
    groups = np.array([e.passcode for e in probed_set])
    L = run.target.keys.shape[1]
    erasers = {"leace": [], "random": []}
    for layer in range(L):
        x = kv_features(fit_run.target, layer, positions)
        erasers["leace"].append(leace_eraser(x, z))
        erasers["random"].append(random_eraser(x, erasers["leace"][-1].rank, experiment.seed + layer))
    rows = []
    for method, per_layer in erasers.items():
        for strength in experiment.strengths:
            if log:
                log(f"erasure: {method} at strength {strength}")
            erased_probe_set, erased = probe_run.target.clone(), run.target.clone()
            for layer, eraser in enumerate(per_layer):
                for kv in (erased_probe_set, erased):
                    set_features(kv, layer, positions, eraser(kv_features(kv, layer, positions), strength))
            features = torch.cat([kv_features(erased_probe_set, layer, positions) for layer in range(L)], 1).float()
            probed = fit_probe(features, labels, groups, probe, experiment.seed)
            logits = patched_logits(model, run, erased)
            correct, ld = answer_correct(logits, run).numpy(), logit_difference(logits, run).numpy()
            low, high = cluster_bootstrap_mean(correct, np.arange(len(correct)), experiment.bootstrap, experiment.seed)
            rows.append({"experiment": "erasure", "method": method, "strength": strength,
                         "rank": [e.rank for e in per_layer], "probe_accuracy": probed.accuracy,
                         "probe_low": probed.ci95[0], "probe_high": probed.ci95[1], "answer_accuracy": correct.mean(),
                         "answer_low": low, "answer_high": high,
                         "logit_difference": ld.mean(), "chance": 0.1})
    return pd.DataFrame(rows)


def headline(frame: pd.DataFrame) -> dict:
    """Probe and answer accuracy at full strength, per method (leace, random)."""
    full = frame[frame.strength == 1.0].set_index("method")
    return {method: {"probe_accuracy": float(full.probe_accuracy[method]),
                     "answer_accuracy": float(full.answer_accuracy[method])} for method in full.index}


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: CausalSpec, out: str | Path | None = None, *, command: str | None = None, log: Log | None = None,
        probe: ProbeConfig = ProbeConfig()) -> Record:
    """The erasure curve of a checkpoint (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_causal_model(spec)
    frame = erasure_curve(model, tokenizer, spec.task, spec.eviction, spec.experiment, probe, clock)
    return finish(__name__, spec, headline(frame), frame, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """Probe accuracy against answer accuracy along the erasure strengths, LEACE and random."""
    from leakage.plotting import plot_erasure

    return [plot_erasure(record.rows, beside(stem, ".png"), f"{run_name(record.spec.checkpoint)}: erase")]
