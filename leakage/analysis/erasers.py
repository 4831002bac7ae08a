"""`leakage erasers`: every way to remove the channel, on one curve — how much of the erased block's
passcode each removes (the answer, and what a probe still reads) against how much task accuracy it costs
(the running sums computed after the eviction).

Each eraser edits the cache at the passcode block's eviction step, at the positions computed with the
block in view (`erasure.leaked_positions`), in every layer:

* `none`: the clean cache;
* `leace`: LEACE per layer (`concept_erasure`), fitted on reference examples (`erasure`);
* `random`: projection off a random subspace of LEACE's rank per layer (its control);
* `das`: the subspaces DAS finds (`das.fit_cells`: every searched cell at its smallest carrying k, or its
  largest fitted k), mean-ablated — the component in the subspace set to the reference examples' mean;
* `mean`: the entries set to the reference examples' mean;
* `resample`: the entries of the passcode twin (same memento text, another passcode);
* `restart`: the whole prefix recomputed with every memento blind to its block, as the ablation stage
  splices it;
* `learned`: a learned replacement of the entries (`Replacement`): per layer, x -> x - (x - mean) W, W
  (F x F) trained on the reference half erasers see to make passcode twins' entries identical while the
  running sums after the eviction keep the clean cache's predictions (`fit_replacement`).

Measured on validation examples, with the edited cache: the passcode answer (teacher-forced digits, the
target's passcode), the running-sum digits of the blocks after the eviction (teacher-forced), and on
reference examples no eraser was fitted on, the paper's MLP probe on the edited entries (accuracy with its
training budget, and the bits its validation cross-entropy saves over the uniform code: a budget-bound
estimate of what stays readable). Intervals are 95% bootstraps over examples (probe: over held-out
passcodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from leakage.analysis import das
from leakage.analysis.ablation import restart
from leakage.analysis.erasure import (kv_features, leace_eraser, leaked_positions, one_hot_digits, random_eraser,
                                      set_features)
from leakage.analysis.patching import KV, PatchRun, answer_correct, patch_run, patched_logits
from leakage.analysis.probe import ProbeConfig, fit_probe
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish
from leakage.analysis.twins import Progress, load_causal_model, passcode_pairs, passcode_run, run_name, twin
from leakage.engine.model import check_trained_task
from leakage.stats import cluster_bootstrap_mean
from leakage.training.tasks import Example, make_example

ERASERS = ("none", "leace", "random", "das", "mean", "resample", "restart", "learned")


@dataclass(frozen=True)
class ReplacementConfig:
    """How the `learned` eraser is trained (`fit_replacement`); the names say `replacement` because the
    erasers' flags share one namespace with the DAS search's `steps`, `batch_size` and `learning_rate`.

    replacement_steps: Adam steps.
    replacement_batch_size: reference examples per step.
    replacement_learning_rate: Adam's step size.
    twin_gap_weight: the twin gap's weight beside the running sums' KL divergence from the clean cache's
        predictions (nats per digit).
    """

    replacement_steps: int = 600
    replacement_batch_size: int = 64
    replacement_learning_rate: float = 1e-3
    twin_gap_weight: float = 1.0

    def __post_init__(self):
        if (self.replacement_steps < 1 or self.replacement_batch_size < 1 or self.replacement_learning_rate <= 0
                or self.twin_gap_weight < 0):
            raise ValueError(f"need steps >= 1, batch size >= 1, learning rate > 0, twin gap weight >= 0; got {self}")


@dataclass(frozen=True)
class ErasersSpec(das.DasSpec):
    """What `leakage erasers` runs on: a passcode checkpoint, the DAS search whose subspaces it ablates, the
    erasers to compare (`erasers`: names from `ERASERS`) and how the learned one trains (`replacement`)."""

    erasers: tuple[str, ...] = ERASERS
    replacement: ReplacementConfig = ReplacementConfig()

    def __post_init__(self):
        super().__post_init__()
        unknown = sorted(set(self.erasers) - set(ERASERS))
        if unknown:
            raise ValueError(f"unknown erasers {unknown}; choose from {list(ERASERS)}")


@dataclass
class Examples:
    """A set of examples and the caches an eraser reads: the memento run against the twins (target,
    source) and the same tokens' restart KV."""

    examples: list[Example]
    run: PatchRun
    restart: KV


def prepare(model, tokenizer, spec: ErasersSpec, examples: list[Example], twins: list[list[int]],
            digits: list[list[int]]) -> Examples:
    run = passcode_run(model, tokenizer, examples, twins, digits, spec.eviction)
    return Examples(examples, run, restart(model, tokenizer, examples, run, spec.eviction))


Eraser = Callable[[Examples], KV]


class Replacement(nn.Module):
    """The learned eraser's map: per layer l, the entries at `positions` (x: (B, F) laid out as
    `kv_features`) become x - (x - mean_l) W_l. W_l (F, F) starts at 0 (no edit); W_l = I is the mean
    eraser; a projection onto a subspace mean-ablates it."""

    def __init__(self, means: list[torch.Tensor], positions: list[int]):
        super().__init__()
        self.positions = positions
        self.register_buffer("means", torch.stack(means).float())
        n = self.means.shape[1]
        self.maps = nn.Parameter(torch.zeros(len(means), n, n))

    def replace(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return x - (x - self.means[layer]) @ self.maps[layer]

    def forward(self, kv: KV) -> KV:
        """A copy of `kv` with every layer's entries at the positions replaced; differentiable in the maps."""
        edited = KV(kv.keys.clone().float(), kv.values.clone().float())
        for layer in range(len(self.maps)):
            x = kv_features(kv, layer, self.positions).float()
            set_features(edited, layer, self.positions, self.replace(layer, x))
        return KV(edited.keys.to(kv.keys.dtype), edited.values.to(kv.values.dtype))

    def twin_gap(self, target: KV, source: KV) -> torch.Tensor:
        """||(x_target - x_source)(I - W)||^2 / ||x_target - x_source||^2 over every layer and pair: 1 with no
        edit, 0 when the replacement makes twins' entries identical."""
        kept = total = 0.0
        for layer in range(len(self.maps)):
            difference = (kv_features(target, layer, self.positions)
                          - kv_features(source, layer, self.positions)).float()
            kept = kept + (difference - difference @ self.maps[layer]).square().sum()
            total = total + difference.square().sum()
        return kept / total


def fit_replacement(logits_of: das.LogitsOf, sums: PatchRun, twins: PatchRun, positions: list[int],
                    config: ReplacementConfig, seed: int, chunk: int = 256) -> Replacement:
    """The learned eraser on reference examples: `sums` (their running-sum run, `sums_run`) and `twins` (the
    same examples against their passcode twins, row for row). Adam minimises, per batch, the KL divergence
    of the running sums' predictions on the replaced cache from the model's own on the clean cache (the task
    is kept, not improved: a cross-entropy against the true digits would let the map fit the reference
    examples) plus `config.twin_gap_weight` x the twin gap (`Replacement.twin_gap`); gradients reach the
    maps only (wrap the model in `das.frozen`)."""
    if len(sums.ids) != len(twins.ids):
        raise ValueError(f"the sums run has {len(sums.ids)} rows and the twin run {len(twins.ids)}: one per example")
    with torch.no_grad():
        clean = torch.cat([logits_of(part, part.target).log_softmax(-1).float() for part in
                           (sums.subset(torch.arange(i, min(i + chunk, len(sums.ids))))
                            for i in range(0, len(sums.ids), chunk))])
    means = [kv_features(twins.target, layer, positions).mean(0) for layer in range(twins.target.keys.shape[1])]
    replacement = Replacement(means, positions).to(means[0].device)
    optimiser = torch.optim.Adam(replacement.parameters(), lr=config.replacement_learning_rate)
    generator = torch.Generator().manual_seed(seed)
    order: list[torch.Tensor] = []
    for _ in range(config.replacement_steps):
        if not order:
            order = list(torch.randperm(len(sums.ids), generator=generator).split(config.replacement_batch_size))
        rows = order.pop(0)
        batch, pairs = sums.subset(rows), twins.subset(rows)
        edited = logits_of(batch, replacement(batch.target)).log_softmax(-1).float()
        kept = nn.functional.kl_div(edited.flatten(0, 1), clean[rows].flatten(0, 1), log_target=True,
                                    reduction="batchmean")
        loss = kept + config.twin_gap_weight * replacement.twin_gap(pairs.target, pairs.source)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return replacement.eval()


def fit_erasers(fitted: Examples, positions: list[int], cells: dict[das.Cell, das.RotatedSubspace], seed: int,
                replacement: Replacement | None = None) -> dict[str, Eraser]:
    """Every eraser, fitted on `fitted` (the reference examples erasers may see); `learned` only with the
    trained `replacement` (`fit_replacement`)."""
    target = fitted.run.target
    layers = range(target.keys.shape[1])
    leace = [leace_eraser(kv_features(target, layer, positions), one_hot_digits(fitted.examples)) for layer in layers]
    random = [random_eraser(kv_features(target, layer, positions), leace[layer].rank, seed + layer) for layer in layers]
    mean = KV(target.keys.mean(0, keepdim=True), target.values.mean(0, keepdim=True))
    centres = {cell: das.site_features(mean, cell) for cell in cells}

    def affine(per_layer) -> Eraser:
        def erase(data: Examples) -> KV:
            kv = data.run.target.clone()
            for layer, eraser in zip(layers, per_layer):
                set_features(kv, layer, positions, eraser(kv_features(kv, layer, positions)))
            return kv
        return erase

    def subspace_ablation(data: Examples) -> KV:
        kv = data.run.target
        for cell, subspace in cells.items():
            x = das.site_features(kv, cell)
            with torch.no_grad():
                kv = das.with_site(kv, cell, subspace(x, centres[cell].expand_as(x)))
        return kv

    def learned(data: Examples) -> KV:
        with torch.no_grad():
            return replacement(data.run.target)

    erasers = {"none": lambda data: data.run.target, "leace": affine(leace), "random": affine(random),
               "das": subspace_ablation, "mean": lambda data: data.run.target.replaced(mean, positions),
               "resample": lambda data: data.run.target.replaced(data.run.source, positions),
               "restart": lambda data: data.restart}
    return erasers if replacement is None else {**erasers, "learned": learned}


def sums_run(model, tokenizer, examples: list[Example], at: int, eviction) -> PatchRun:
    """A run whose queries predict the running-sum digits of the blocks after the eviction step, each
    teacher-forced on the example's own tokens (its answer: the true next token, twice)."""
    positions = [p for block in examples[0].sum_positions for p in block if p > at]
    if not positions:
        raise ValueError(f"no running-sum digit follows the eviction step {at}: nothing measures the task")
    if any([p for block in e.sum_positions for p in block if p > at] != positions for e in examples):
        raise ValueError("examples differ in layout; use fixed-length blocks (short_block_rate=0)")
    answer = [[(e.ids[p], e.ids[p]) for p in positions] for e in examples]
    return patch_run(model, tokenizer, [e.ids for e in examples], [e.ids for e in examples], eviction, at,
                     [p - 1 for p in positions], answer, prompt_len=[e.prompt_len for e in examples])


def probe_bits(loss_nats: float, digits: int) -> float:
    """Bits per passcode a probe's validation cross-entropy (nats per digit) saves over the uniform code."""
    return digits * (math.log2(10) - loss_nats / math.log(2))


def eraser_curve(model, tokenizer, spec: ErasersSpec, probe: ProbeConfig = ProbeConfig(), log: Log = lambda _: None,
                 progress: Progress = None) -> pd.DataFrame:
    """One row per eraser (module docstring)."""
    experiment, seed = spec.experiment, spec.experiment.seed
    cells, searched = {}, []  # the DAS search runs only for the das eraser
    if "das" in spec.erasers:
        search = das.fit_cells(model, tokenizer, spec, log, progress)
        cells = {cell: subspace for cell in search.subspaces if (subspace := search.carrying(cell)) is not None}
        searched = [search.frame]
    reference = [make_example(spec.task, tokenizer, seed + 1, i, "train") for i in range(experiment.reference)]
    halves = reference[:len(reference) // 2], reference[len(reference) // 2:]  # erasers never see the probe's rows
    rng = np.random.default_rng(seed + 3)
    sets = []
    for part in halves:  # their twins: the resample eraser's source
        twins = [twin(e, tokenizer, rng) for e in part]
        sets.append(prepare(model, tokenizer, spec, part, [t[0] for t in twins], [t[1] for t in twins]))
    fitted, probed = sets
    examples, twins, digits = passcode_pairs(spec.task, tokenizer, experiment.n, seed)
    val = prepare(model, tokenizer, spec, examples, twins, digits)
    positions = leaked_positions(val.run, examples[0])
    sums = sums_run(model, tokenizer, examples, val.run.at, spec.eviction)
    replacement = twin_gap = None
    if "learned" in spec.erasers:
        log("learned replacement")
        fitted_sums = sums_run(model, tokenizer, fitted.examples, val.run.at, spec.eviction)
        with das.frozen(model):
            replacement = fit_replacement(das.model_logits(model), fitted_sums, fitted.run, positions,
                                          spec.replacement, seed)
        with torch.no_grad():
            twin_gap = float(replacement.twin_gap(val.run.target, val.run.source))
    erasers = fit_erasers(fitted, positions, cells, seed, replacement)
    labels = torch.tensor([e.passcode_digits for e in probed.examples])
    groups = np.array([e.passcode for e in probed.examples])
    rows = []
    for name in spec.erasers:
        log(f"eraser {name}")
        erased_probe_set, erased = erasers[name](probed), erasers[name](val)
        features = torch.cat([kv_features(erased_probe_set, layer, positions)
                              for layer in range(erased.keys.shape[1])], 1).float()
        fitted_probe = fit_probe(features, labels, groups, probe, seed)
        answer = answer_correct(patched_logits(model, val.run, erased), val.run).double().numpy()
        task = answer_correct(patched_logits(model, sums, erased), sums).double().numpy()
        index = np.arange(len(examples))
        answer_low, answer_high = cluster_bootstrap_mean(answer, index, experiment.bootstrap, seed)
        sums_low, sums_high = cluster_bootstrap_mean(task, index, experiment.bootstrap, seed)
        rows.append({"experiment": "eraser", "eraser": name, "answer_accuracy": answer.mean(),
                     "answer_low": answer_low, "answer_high": answer_high, "sums_accuracy": task.mean(),
                     "sums_low": sums_low, "sums_high": sums_high,
                     "probe_accuracy": fitted_probe.accuracy, "probe_low": fitted_probe.ci95[0],
                     "probe_high": fitted_probe.ci95[1], "probe_budget": fitted_probe.n_train,
                     "probe_bits": probe_bits(fitted_probe.loss, labels.shape[1]),
                     "uniform_bits": labels.shape[1] * math.log2(10),
                     "das_cells": len(cells) if name == "das" else None,
                     "twin_gap": twin_gap if name == "learned" else None,  # on the validation twins
                     "chance": 0.1})
    frame = pd.DataFrame(rows)
    none = frame.set_index("eraser").loc["none"] if "none" in spec.erasers else None
    if none is not None:
        frame["answer_removed"] = none.answer_accuracy - frame.answer_accuracy
        frame["bits_removed"] = none.probe_bits - frame.probe_bits
        frame["sums_lost"] = none.sums_accuracy - frame.sums_accuracy
    return pd.concat([*searched, frame], ignore_index=True)


def headline(frame: pd.DataFrame) -> dict:
    """Per eraser (under `curve`): answer, running sums and probe (accuracy, bits)."""
    rows = frame[frame.experiment == "eraser"]
    return {"curve": {r.eraser: {"answer_accuracy": float(r.answer_accuracy),
                                 "sums_accuracy": float(r.sums_accuracy),
                                 "probe_accuracy": float(r.probe_accuracy), "probe_bits": float(r.probe_bits)}
                      for r in rows.itertuples()}}


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: ErasersSpec, out: str | Path | None = None, *, command: str | None = None, log: Log | None = None,
        progress: Progress = None, probe: ProbeConfig = ProbeConfig()) -> Record:
    """The eraser curve of a checkpoint (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_causal_model(spec)
    frame = eraser_curve(model, tokenizer, spec, probe, clock, progress)
    return finish(__name__, spec, headline(frame), frame, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """Leak removed against task accuracy lost, one point per eraser."""
    from leakage.plotting import plot_erasers

    return [plot_erasers(record.rows, beside(stem, ".png"), f"{run_name(record.spec.checkpoint)}: erasers")]
