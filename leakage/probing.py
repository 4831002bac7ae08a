"""The passcode probe experiment: conditions, controls and sweeps at one probe, as result rows.

For one checkpoint and one set of traces (a passcode in block k), `probe_conditions` captures keys and
values once per model and eviction spec, then fits the same probe under every condition:

* direct: the memento of block k (it saw the passcode);
* masked d: the memento of block k+d, after block k left the cache (d = 1 .. blocks - k - 1);
* causal control: the memento of block k-1, computed before the passcode existed (must be chance);
* shuffled labels, and the control task (Hewitt & Liang) at masked d=1, with selectivity and, for both
  the task and its control, the MDL online codelength (Voita & Titov);
* text only: the memento tokens' input embeddings, what the memento text carries (masked d=1);
* random init: the same architecture untrained (is the leak architectural?), direct and masked d=1;
* restart KV: the same traces with `restart=True` (memento KV recomputed without its block);
* retained position kinds of block k: `block_start`, `block_end` (kept under `mask_delimiters=False`),
  `summary_start`, `summary_end` (under both `summary_end_sees_block` settings);
* the leak spectrum: masked d=1 when the probe keeps only the feature directions whose standard
  deviation is at least 10^-j of the largest (where in the KV's variance the leak lives);
* bf16: the model run in bfloat16, the engine's precision (does the leak survive its rounding?).

`keep_sweep` repeats masked d = 1..3 under `keep_last_n_blocks` = 1..N, and `checkpoint_sweep` direct
and masked d=1 at training checkpoints from step 0 (random init) to the final model, beside each
checkpoint's task accuracy. Each row carries the layer (or "all"), the probe's accuracy with its 95%
interval, chance, and the paper's number where the paper reports one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from leakage.config import EvictionConfig, ProbeExperiment
from leakage.evaluate import task_accuracy
from leakage.mask import memento_mask
from leakage.model import load_model, untrained_like
from leakage.positions import Site
from leakage.probe import FLOAT32_EPS, ProbeConfig, control_labels, fit_probe, mdl_codelength, shuffled_labels
from leakage.probe_data import KVDataset, ProbeTrace, capture_dataset, site_name, site_of
from leakage.tasks import Example

PAPER_TOY = {  # the paper's toy transformer (facts: ../shared/reference/memento-facts.md); layer "last" = 3
    ("masked", 1, "all"): 0.249, ("masked", 1, 3): 0.262, ("masked", 1, 0): 0.131, ("masked", 2, "all"): 0.214,
    ("masked", 7, "all"): 0.13,
}
PAPER_TOY_CHECKPOINTS = "17-19% masked at every checkpoint while task accuracy climbs 77% -> 95%"
PAPER_QWEN3_8B = {("direct", "all"): 0.652, ("masked", "all"): 0.267, ("direct", "first"): 0.516,
                  ("masked", "first"): 0.108, ("direct", "last"): 0.649, ("masked", "last"): 0.265}
POSITION_KINDS = ("block_start", "block_end", "summary_start", "summary_end")
SPECTRUM = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
"""Relative standard deviations below which the leak spectrum drops feature directions."""

Log = Callable[[str], None]


def _row(condition: str, result, layer="all", distance=None, site="", n_layers: int = 0, **extra) -> dict:
    """One result row: the condition, where it was measured, the probe's scores, the paper's numbers."""
    named = {0: "first", n_layers - 1: "last"}.get(layer, layer) if layer != "all" else "all"
    return {"condition": condition, "distance": distance, "site": site, "layer": layer, **result.as_dict(),
            "paper_toy": PAPER_TOY.get((condition, distance, layer)),
            "paper_qwen3_8b": PAPER_QWEN3_8B.get((condition, named)) if distance in (0, 1) else None, **extra}


def _reused(row: dict) -> dict:
    """A row's probe scores without what belongs to its condition alone (MDL, selectivity), for reuse
    as a point of a sweep."""
    return {k: v for k, v in row.items() if not k.startswith("mdl_") and k != "selectivity"}


class _Prober:
    """Fits the experiment's probe on a dataset's site and turns the result into a row."""

    def __init__(self, experiment: ProbeExperiment, probe: ProbeConfig | None):
        self.experiment = experiment
        self.probe = probe or ProbeConfig(kind=experiment.kind)

    def fit(self, dataset: KVDataset, site: str, layers=None, labels=None, features=None, probe=None):
        if features is None:
            features = dataset.features(site, layers, self.experiment.pooling)
        return fit_probe(features, dataset.labels if labels is None else labels, dataset.groups,
                         self.experiment.kind, self.experiment.seed, probe or self.probe)

    def row(self, condition: str, dataset: KVDataset, part: str, d: int, layers=None, **extra) -> dict:
        result = self.fit(dataset, site_name(part, d), layers)
        k = self.experiment.passcode_block
        return _row(condition, result, "all" if layers is None else layers[0], d, f"{part}@{k + d}",
                    dataset.n_layers, **extra)


def probe_conditions(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
                     eviction: EvictionConfig = EvictionConfig(), random_model=None,
                     probe: ProbeConfig | None = None, log: Log = lambda _: None) -> list[dict]:
    """Every condition of the module docstring as result rows (see `_row`)."""
    prober = _Prober(experiment, probe)
    k = experiment.passcode_block
    distances = [d for d in range(-1, experiment.n_blocks - k) if k + d >= 0]
    sites = [("memento", d) for d in distances] + [(part, 0) for part in POSITION_KINDS]

    log(f"capturing {len(traces)} traces ({eviction})")
    main = capture_dataset(model, tokenizer, traces, eviction, sites)
    rows = []
    for d in distances:
        condition = "causal_control" if d < 0 else "direct" if d == 0 else "masked"
        rows.append(prober.row(condition, main, "memento", d))
        log(f"  {condition} d={d}: {rows[-1]['accuracy']:.3f}")
    if experiment.per_layer:
        for d in (0, 1):
            for layer in range(main.n_layers):
                rows.append(prober.row("direct" if d == 0 else "masked", main, "memento", d, [layer]))
    masked = site_name("memento", 1)
    task = next(r for r in rows if r["condition"] == "masked")
    controls = control_labels(main.groups, main.labels.shape[1], experiment.seed)
    control = prober.fit(main, masked, labels=controls)
    rows.append(_row("control_task", control, distance=1, site=f"memento@{k + 1}",
                     selectivity=task["accuracy"] - control.accuracy))
    if experiment.mdl:
        log("  MDL codelengths (masked d=1, and its control task)")
        for row, labels in ((task, main.labels), (rows[-1], controls)):
            mdl = mdl_codelength(main.features(masked, None, experiment.pooling), labels, main.groups,
                                 experiment.kind, experiment.seed, prober.probe)
            row.update(mdl_online_bits=mdl.online_bits, mdl_uniform_bits=mdl.uniform_bits,
                       mdl_compression=mdl.compression)
    shuffled = shuffled_labels(main.labels, main.groups, experiment.seed)
    rows.append(_row("shuffled_labels", prober.fit(main, masked, labels=shuffled), distance=1, site=f"memento@{k + 1}"))
    text = prober.fit(main, masked, features=main.text_features(masked, experiment.pooling))
    rows.append(_row("text_only", text, distance=1, site=f"memento@{k + 1}"))
    for part in POSITION_KINDS:
        rows.append(prober.row(f"position:{part}", main, part, 0, timing="engine"))
    if prober.probe.whiten:
        rows += leak_spectrum(prober, main, masked, "float32", task)
    del main

    log("capturing with the summary_end_sees_block timing")
    late = capture_dataset(model, tokenizer, traces, replace(eviction, summary_end_sees_block=True),
                           [("summary_end", 0), ("memento", 1)])
    rows.append(prober.row("position:summary_end", late, "summary_end", 0, timing="summary_end_sees_block"))
    rows.append(prober.row("masked", late, "memento", 1, timing="summary_end_sees_block"))
    log("capturing restart KV")
    restart = capture_dataset(model, tokenizer, traces, replace(eviction, restart=True), [("memento", 0), ("memento", 1)])
    rows.append(prober.row("restart_kv", restart, "memento", 1))
    rows.append(prober.row("restart_kv_direct", restart, "memento", 0))
    if random_model is not None:
        log("capturing the untrained model")
        untrained = capture_dataset(random_model, tokenizer, traces, eviction, [("memento", 0), ("memento", 1)])
        rows.append(prober.row("random_init", untrained, "memento", 1))
        rows.append(prober.row("random_init_direct", untrained, "memento", 0))
    if experiment.precision:
        log("capturing in bfloat16")
        half = capture_dataset(copy.deepcopy(model).to(torch.bfloat16), tokenizer, traces, eviction,
                               [("memento", 0), ("memento", 1)])
        rows.append(prober.row("bf16", half, "memento", 1, dtype="bfloat16"))
        rows.append(prober.row("bf16_direct", half, "memento", 0, dtype="bfloat16"))
        if prober.probe.whiten:
            rows += leak_spectrum(prober, half, masked, "bfloat16", rows[-2])
    return rows


def leak_spectrum(prober: _Prober, dataset: KVDataset, site: str, dtype: str, measured: dict) -> list[dict]:
    """Rows `spectrum` at `site`: the probe keeping only the directions whose standard deviation is at
    least each of `SPECTRUM` times the largest (whitening's cutoff moved up from float resolution), and
    `measured` (the probe at the default cutoff) as the spectrum's last point."""
    features = dataset.features(site, None, prober.experiment.pooling)
    default = prober.probe.relative_std_cutoff
    rows = [{**_reused(measured), "condition": "spectrum", "relative_std_cutoff": default, "dtype": dtype,
             "paper_toy": None, "paper_qwen3_8b": None}]
    for cutoff in SPECTRUM:
        if cutoff <= default:
            continue
        result = prober.fit(dataset, site, features=features,
                            probe=replace(prober.probe, resolution_ulps=cutoff / FLOAT32_EPS))
        k = prober.experiment.passcode_block
        rows.append(_row("spectrum", result, distance=1, site=f"memento@{k + 1}", relative_std_cutoff=cutoff,
                         dtype=dtype))
    return rows


def sees_passcode(trace: ProbeTrace, tokenizer, config: EvictionConfig, part: str, d: int) -> bool:
    """Whether the site's queries attend to the passcode tokens themselves under `config` (one trace)."""
    mask = memento_mask(torch.tensor(trace.ids), tokenizer, config=config)
    queries = trace.positions.select(site_of(part, d, trace.passcode_block))
    keys = trace.positions.select(Site("passcode"))
    return bool(mask[queries][:, keys].any())


def keep_sweep(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
               eviction: EvictionConfig = EvictionConfig(), probe: ProbeConfig | None = None,
               log: Log = lambda _: None) -> list[dict]:
    """Rows `keep`: mementos k+1 .. k+3 under keep_last_n_blocks = 1 .. `experiment.max_keep`, each
    marked whether it still sees the passcode block (`sees_passcode`)."""
    prober = _Prober(experiment, probe)
    distances = [d for d in (1, 2, 3) if experiment.passcode_block + d < experiment.n_blocks]
    rows = []
    for keep in range(1, experiment.max_keep + 1):
        config = replace(eviction, keep_last_n_blocks=keep)
        log(f"capturing with keep_last_n_blocks={keep}")
        data = capture_dataset(model, tokenizer, traces, config, [("memento", d) for d in distances])
        for d in distances:
            rows.append(prober.row("keep", data, "memento", d, keep_last_n_blocks=keep,
                                   sees_passcode=sees_passcode(traces[0], tokenizer, config, "memento", d)))
    return rows


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint: its global step (stage 1 then stage 2), stage, and directory (None: the
    random initialisation, step 0)."""

    step: int
    stage: int
    path: Path | None


def training_checkpoints(run_dir: str | Path, n: int) -> list[Checkpoint]:
    """Step 0, `n` checkpoints spread evenly over the run's stage-1 and stage-2 checkpoints, and `final`."""
    run_dir = Path(run_dir)
    saved, offset = [], 0
    for stage in (1, 2):
        found = sorted(((int(p.name.split("-")[1]), p) for p in (run_dir / f"stage{stage}").glob("checkpoint-*")))
        saved += [Checkpoint(offset + step, stage, path) for step, path in found]
        offset += found[-1][0] if found else 0
    if not (run_dir / "final" / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no final/ checkpoint: is it a `leakage train` run folder?")
    final = Checkpoint(offset, 2, run_dir / "final")
    inner = [c for c in saved if c.step < final.step]
    picked = [inner[round(i * (len(inner) - 1) / max(1, n - 1))] for i in range(n)] if n and inner else []
    return [Checkpoint(0, 0, None), *dict.fromkeys(picked), final]


def checkpoint_sweep(checkpoints: Sequence[Checkpoint], traces: list[ProbeTrace], experiment: ProbeExperiment,
                     examples: list[Example], task: str, eviction: EvictionConfig = EvictionConfig(),
                     probe: ProbeConfig | None = None, measured: dict | None = None,
                     log: Log = lambda _: None) -> list[dict]:
    """Rows `checkpoint`: direct and masked d=1 at each checkpoint, with its task accuracy (teacher-forced,
    `examples`, Wilson interval) under the same eviction. `measured` maps a checkpoint path (None: the
    random init) to rows already fitted on the same traces (direct, masked d=1), which are reused."""
    prober = _Prober(experiment, probe)
    final = next(c for c in reversed(checkpoints) if c.path is not None)
    measured = {(str(Path(k).resolve()) if k is not None else None): v for k, v in (measured or {}).items()}
    rows = []
    for checkpoint in checkpoints:
        model, tokenizer = load_model(checkpoint.path or final.path)
        if checkpoint.path is None:
            model = untrained_like(model, experiment.seed)
        accuracy = task_accuracy(model, tokenizer, examples, task, eviction)
        low, high = accuracy.ci95
        extra = dict(condition="checkpoint", step=checkpoint.step, stage=checkpoint.stage,
                     checkpoint=str(checkpoint.path or "random init"), task_accuracy=accuracy.value,
                     task_ci95_low=low, task_ci95_high=high, paper_toy=None, paper_qwen3_8b=None,
                     paper_note=PAPER_TOY_CHECKPOINTS)
        known = measured.get(str(checkpoint.path.resolve()) if checkpoint.path else None)
        log(f"checkpoint step {checkpoint.step}: task accuracy {accuracy.value:.3f}"
            + ("" if known else "; capturing"))
        if known is None:
            data = capture_dataset(model, tokenizer, traces, eviction, [("memento", 0), ("memento", 1)])
            known = [prober.row("checkpoint", data, "memento", d) for d in (0, 1)]
        rows += [{**_reused(row), **extra} for row in known]
    return rows


def probe_experiment(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
                     eviction: EvictionConfig = EvictionConfig(), checkpoint: str | Path | None = None,
                     examples: list[Example] | None = None, task: str | None = None,
                     probe: ProbeConfig | None = None, log: Log = lambda _: None) -> list[dict]:
    """Every condition, then the keep sweep, then the checkpoint sweep when `checkpoint` (the directory
    `model` came from) is the `final` model of a `leakage train` run and the task's `examples` are
    given: the rows of the whole passcode-probe experiment."""
    rows = probe_conditions(model, tokenizer, traces, experiment, eviction,
                            random_model=untrained_like(model, experiment.seed), probe=probe, log=log)
    if experiment.max_keep:
        rows += keep_sweep(model, tokenizer, traces, experiment, eviction, probe, log)
    if experiment.checkpoints and examples is not None and is_training_run_final(checkpoint):
        def pair(direct: str, masked: str) -> list[dict]:
            return [next(r for r in rows if r["condition"] == c and r["layer"] == "all" and
                         r.get("timing", "engine") == "engine") for c in (direct, masked)]

        measured = {checkpoint: pair("direct", "masked"), None: pair("random_init_direct", "random_init")}
        rows += checkpoint_sweep(training_checkpoints(Path(checkpoint).parent, experiment.checkpoints), traces,
                                 experiment, examples, task, eviction, probe, measured, log)
    return rows


def is_training_run_final(checkpoint: str | Path | None) -> bool:
    """Whether `checkpoint` is the `final/` model of a `leakage train` run (stage checkpoints beside it)."""
    if checkpoint is None:
        return False
    path = Path(checkpoint)
    return path.name == "final" and any((path.parent / f"stage{s}").is_dir() for s in (1, 2))
