"""Causal experiments on the implicit KV channel of the passcode task: patching, ablation, erasure.

Every experiment starts from `passcode_pairs`: a validation example (passcode in block k) and its twin
with another passcode (first digit different), everything else identical — so the memento text is the
same token for token and only what the evicted block left in the retained KV differs. The cache is
patched at the step that evicts block k (`eviction_step`), and every answer digit is measured, teacher
forced on the target's answer (the trained models read the first digit no better than chance, but the
later ones, cued by the digits before them, well above it: docs/results.md).

* `patching_maps`: the target run is the clean example, the source its twin; per layer x KV head and per
  layer x retained position kind, keys, values or both; the logit difference (clean digit minus twin
  digit, averaged over the answer digits where they differ) normalised to 0 = clean, 1 = twin.
* `ablation_sweep`: the held KV of every layer (and layer x head) replaced by a resample (the twin: same
  memento text, other block content), the mean over the batch, the restart KV of the same tokens
  (recomputed without the block), or zeros (a contrast only); answer digit accuracy, and the share of
  the all-layer restart drop each layer explains.
* `erasure_curve`: LEACE (`concept_erasure.LeaceFitter`) fitted per layer on a reference set to erase
  the passcode (one-hot digits) from the KV entries that saw block k; a probe on the erased features,
  and the answer accuracy with the erased KV in the cache, at erasure strengths 0..1 — against a random
  subspace of the same rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
import torch

from leakage.config import CausalExperiment, EvictionConfig
from leakage.patching import (KV, PatchResult, PatchRun, answer_correct, clean_and_corrupted, kv_patch_layer,
                              kv_patch_layer_head, kv_patch_layer_kind, logit_difference, mean_kv, patch_run,
                              patched_logits, zero_kv)
from leakage.probe import ProbeConfig, fit_probe
from leakage.schedule import eviction_schedule
from leakage.spans import parse_spans
from leakage.tasks import Example, TaskConfig, make_example

Progress = Callable | None


def digit_token(tokenizer, digit: int) -> int:
    return tokenizer.convert_tokens_to_ids(str(digit))


def twin(example: Example, tokenizer, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """The example with another random passcode whose first digit differs, in its block and its answer:
    (ids, the twin's digits)."""
    digits = example.passcode_digits
    other = rng.integers(0, 10, len(digits)).tolist()
    if other[0] == digits[0]:
        other[0] = (digits[0] + int(rng.integers(1, 10))) % 10
    ids = list(example.ids)
    for positions in (example.passcode_positions, example.answer_positions):
        for position, digit in zip(positions, other):
            ids[position] = digit_token(tokenizer, digit)
    return ids, other


def passcode_pairs(task: TaskConfig, tokenizer, n: int, seed: int, split: str = "val"):
    """(examples, twin ids, twin digits) for `n` examples of `split`."""
    if task.passcode_block is None:
        raise ValueError("the causal experiments need a task with a passcode_block")
    examples = [make_example(task, tokenizer, seed, i, split) for i in range(n)]
    rng = np.random.default_rng(seed)
    twins = [twin(e, tokenizer, rng) for e in examples]
    return examples, [t[0] for t in twins], [t[1] for t in twins]


def eviction_step(example: Example, tokenizer, config: EvictionConfig) -> int:
    """The first query that no longer sees the passcode block (the step its eviction precedes)."""
    spans = parse_spans(example.ids, tokenizer, prompt_len=example.prompt_len)
    for eviction in eviction_schedule(spans, config).evictions:
        if eviction.block == example.passcode_block:
            return eviction.before
    raise ValueError(f"block {example.passcode_block} is never evicted under {config}")


def passcode_run(model, tokenizer, examples: list[Example], source_ids: list[list[int]],
                 source_digits: list[list[int]], config: EvictionConfig,
                 source_config: EvictionConfig | None = None) -> PatchRun:
    """The `PatchRun` of `examples` against `source_ids` (whose passcode is `source_digits`), patched at
    the passcode block's eviction and measured at the queries that predict the answer digits."""
    steps = {eviction_step(e, tokenizer, config) for e in examples}
    answers = {tuple(e.answer_positions) for e in examples}
    if len(steps) != 1 or len(answers) != 1:
        raise ValueError(f"examples differ in layout (eviction steps {sorted(steps)}, answer positions "
                         f"{sorted(answers)[:3]}); use fixed-length blocks (short_block_rate=0)")
    (at,), (positions,) = steps, answers
    answer = [[(e.ids[p], digit_token(tokenizer, d)) for p, d in zip(positions, digits)]
              for e, digits in zip(examples, source_digits)]
    return patch_run(model, tokenizer, [e.ids for e in examples], source_ids, config, at,
                     [p - 1 for p in positions], answer, source_config=source_config,
                     prompt_len=[e.prompt_len for e in examples])


def _frame(result: PatchResult, experiment: str, source: str, clean=None, corrupted=None, bootstrap: int = 1000,
           seed: int = 0) -> pd.DataFrame:
    frame = result.frame(clean, corrupted, n_resamples=bootstrap, seed=seed)
    frame.insert(0, "source", source)
    frame.insert(0, "experiment", experiment)
    return frame


def reference_rows(model, run: PatchRun, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The unpatched run and the fully patched one (every held entry from the source): the logit
    difference and each answer digit's accuracy, with 95% example-bootstrap intervals."""
    frames = []
    for source, kv in (("clean", run.target), ("twin_cache", run.source)):
        logits = patched_logits(model, run, kv)  # (B, Q, V)
        ld = PatchResult(logit_difference(logits, run)[None], ("answer_digit",), (["all"],), "both")
        digits = (logits.argmax(-1) == run.answer[..., 0]).float().T  # (Q, B)
        accuracy = PatchResult(digits, ("answer_digit",), (list(range(len(run.queries))),), "both")
        for result, measure in ((ld, "logit_difference"), (accuracy, "accuracy")):
            frame = _frame(result, "reference", source, bootstrap=bootstrap, seed=seed)
            frame.insert(2, "measure", measure)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def patching_maps(model, run: PatchRun, bootstrap: int = 1000, seed: int = 0, progress: Progress = None) -> pd.DataFrame:
    """Normalised logit-difference effects: layer x KV head and layer x position kind; keys, values, both;
    and the reference rows (`reference_rows`)."""
    clean, corrupted = clean_and_corrupted(model, run)
    frames = [reference_rows(model, run, bootstrap, seed)]
    for which in ("keys", "values", "both"):
        for variant, name in ((kv_patch_layer_head, "layer_head"), (kv_patch_layer_kind, "layer_kind")):
            result = variant(model, run, which=which, progress=progress)
            frames.append(_frame(result, f"patch_{name}", "twin", clean, corrupted, bootstrap, seed))
    return pd.concat(frames, ignore_index=True)


def ablation_sources(model, tokenizer, examples: list[Example], run: PatchRun, config: EvictionConfig) -> dict[str, KV]:
    """Replacement KV of the ablation sweep: resample (the twin), mean, restart (same tokens), zero."""
    restart = passcode_run(model, tokenizer, examples, [e.ids for e in examples],
                           [e.passcode_digits for e in examples], config,
                           source_config=replace(config, restart=True)).source
    return {"resample": run.source, "mean": mean_kv(run.target), "restart": restart, "zero": zero_kv(run.target)}


def ablation_sweep(model, tokenizer, examples: list[Example], run: PatchRun, config: EvictionConfig,
                   bootstrap: int = 1000, seed: int = 0, progress: Progress = None) -> pd.DataFrame:
    """Answer digit accuracy with the held KV of each layer, each layer x head, and all layers
    replaced by each ablation source; `restart_share`: the layer's drop over the all-layer restart drop."""
    clean = answer_correct(patched_logits(model, run, run.target), run)
    frames = []
    for name, source in ablation_sources(model, tokenizer, examples, run, config).items():
        ablated = run.with_source(source)
        everything = answer_correct(patched_logits(model, ablated, source), ablated)
        for variant, label in ((kv_patch_layer, "layer"), (kv_patch_layer_head, "layer_head")):
            result = variant(model, ablated, metric=answer_correct, progress=progress)
            frames.append(_frame(result, f"ablate_{label}", name, bootstrap=bootstrap, seed=seed))
        every = PatchResult(everything[None], ("layer",), (["all"],), "both")
        frames.append(_frame(every, "ablate_layer", name, bootstrap=bootstrap, seed=seed))
    frame = pd.concat(frames, ignore_index=True)
    frame["clean"] = float(clean.mean())
    restart_all = frame[(frame.source == "restart") & (frame.layer == "all")].metric.iloc[0]
    frame["restart_share"] = (frame.clean - frame.metric) / (frame.clean - restart_all)
    return frame


# -- concept erasure --------------------------------------------------------------------------------------

def leaked_positions(run: PatchRun, example: Example) -> list[int]:
    """Prefix positions the cache still holds at the eviction step that were computed with the passcode
    in view (from the passcode's first token on)."""
    start = example.passcode_positions[0]
    return [p for p in run.held[0].nonzero().flatten().tolist() if p >= start]


def kv_features(kv: KV, layer: int, positions: list[int]) -> torch.Tensor:
    """(B, F) float64: keys and values of `layer` at `positions`, every KV head, flattened."""
    keys, values = kv.keys[:, layer][:, :, positions], kv.values[:, layer][:, :, positions]
    return torch.cat([keys.flatten(1), values.flatten(1)], 1).double()


def _set_features(kv: KV, layer: int, positions: list[int], features: torch.Tensor) -> None:
    B, _, H, _, d = kv.keys.shape
    half = features.shape[1] // 2
    kv.keys[:, layer][:, :, positions] = features[:, :half].reshape(B, H, len(positions), d).to(kv.keys.dtype)
    kv.values[:, layer][:, :, positions] = features[:, half:].reshape(B, H, len(positions), d).to(kv.values.dtype)


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

    eraser = LeaceFitter.fit(x, z, shrinkage=False).eraser
    return Eraser(eraser.proj_left, eraser.proj_right, eraser.bias)


def random_eraser(x: torch.Tensor, rank: int, seed: int) -> Eraser:
    """The control: orthogonal projection off a random subspace of the same rank (centred like LEACE)."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(x.shape[1], max(rank, 1), generator=generator, dtype=torch.float64))
    basis = basis[:, :rank]
    return Eraser(basis, basis.T, x.mean(0))


def erasure_curve(model, tokenizer, task: TaskConfig, config: EvictionConfig, experiment: CausalExperiment,
                  probe: ProbeConfig | None = None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Probe accuracy and answer accuracy with LEACE (or a random subspace of the same rank) applied to
    every layer's leaked KV entries, at each erasure strength."""
    reference = [make_example(task, tokenizer, experiment.seed + 1, i, "train") for i in range(experiment.reference)]
    fitted, probed_set = reference[:len(reference) // 2], reference[len(reference) // 2:]  # erasers never see the probe's rows
    examples, twins, digits = passcode_pairs(task, tokenizer, experiment.n, experiment.seed)
    fit_run, probe_run = (passcode_run(model, tokenizer, part, [e.ids for e in part],
                                       [e.passcode_digits for e in part], config) for part in (fitted, probed_set))
    run = passcode_run(model, tokenizer, examples, twins, digits, config)
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
                    _set_features(kv, layer, positions, eraser(kv_features(kv, layer, positions), strength))
            features = torch.cat([kv_features(erased_probe_set, layer, positions) for layer in range(L)], 1).float()
            probed = fit_probe(features, labels, groups, kind=(probe.kind if probe else "mlp"),
                               seed=experiment.seed, config=probe)
            logits = patched_logits(model, run, erased)
            correct, ld = answer_correct(logits, run).numpy(), logit_difference(logits, run).numpy()
            draws = np.random.default_rng(experiment.seed).integers(0, len(correct), (experiment.bootstrap, len(correct)))
            boot = correct[draws].mean(1)
            rows.append({"experiment": "erasure", "method": method, "strength": strength,
                         "rank": [e.rank for e in per_layer], "probe_accuracy": probed.accuracy,
                         "probe_low": probed.ci95[0], "probe_high": probed.ci95[1], "answer_accuracy": correct.mean(),
                         "answer_low": np.percentile(boot, 2.5), "answer_high": np.percentile(boot, 97.5),
                         "logit_difference": ld.mean(), "chance": 0.1})
    return pd.DataFrame(rows)


# -- capacity of the channel against distance -------------------------------------------------------------

def bits_per_passcode(accuracy: float, digits: int, chance: float = 0.1) -> float:
    """Information the answer carries about the passcode, digits x log2(10) x (acc - chance) / (1 - chance):
    the share of each digit's entropy above chance (a linear approximation of the mutual information)."""
    return digits * np.log2(1 / chance) * (accuracy - chance) / (1 - chance)


def capacity_rows(model, tokenizer, task: TaskConfig, n: int, seed: int = 1,
                  eviction: EvictionConfig = EvictionConfig()) -> list[dict]:
    """Answer-digit accuracy of a passcode model under memento, restart and full-attention decoding,
    with the passcode `n_blocks - passcode_block` mementos before the answer, and bits per passcode."""
    from leakage.evaluate import evaluate_checkpoint

    task = replace(task, short_block_rate=0.0)
    distance = task.n_blocks - task.passcode_block
    results = evaluate_checkpoint(model, tokenizer, task, n, seed, eviction)
    rows = []
    for mode in ("memento", "restart", "full_attention"):
        r = results[f"{mode}/answer"]
        rows.append({"distance": distance, "n_blocks": task.n_blocks, "passcode_block": task.passcode_block,
                     "decoding": mode, "accuracy": r["accuracy"], "ci95_low": r["ci95_low"],
                     "ci95_high": r["ci95_high"], "digits": r["total"],
                     "bits": bits_per_passcode(r["accuracy"], task.passcode_digits),
                     "bits_low": bits_per_passcode(r["ci95_low"], task.passcode_digits),
                     "bits_high": bits_per_passcode(r["ci95_high"], task.passcode_digits)})
    return rows
