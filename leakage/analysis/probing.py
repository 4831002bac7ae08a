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

`run(ProbeSpec(checkpoint=...))` is `leakage probe`: the whole experiment on a checkpoint, on synthetic
traces or on real OpenMementos traces with an injected passcode.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from leakage.analysis.probe import FLOAT32_EPS, ProbeConfig, control_labels, fit_probe, mdl_codelength, shuffled_labels
from leakage.analysis.probe_data import (KVDataset, ProbeTrace, capture_dataset, injected_traces, site_name, site_of,
                                         synthetic_traces)
from leakage.analysis.record import Clock, Record, beside, check_outputs, finish
from leakage.config import EvictionConfig
from leakage.engine.model import check_trained_task, load_checkpoint, load_model, untrained_like
from leakage.memento.mask import memento_mask
from leakage.memento.positions import Site
from leakage.memento.trace import read_openmementos
from leakage.training.evaluate import task_accuracy, validation_examples
from leakage.training.tasks import Example, TaskConfig, task_spec
from leakage.training.train import TrainedRun

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


@dataclass(frozen=True)
class ProbeExperiment:
    """What one probing run measures.

    n_blocks: blocks per trace (sites run up to the last block).
    passcode_block: the block holding the passcode (k).
    pooling: concat (per-token), mean or last.
    per_layer: also fit every layer alone (direct and masked d=1).
    mdl: also measure the online codelength (MDL) of the masked d=1 task and of its control task.
    precision: also capture with the model in bfloat16 (the engine's precision).
    spectrum: also the leak spectrum of masked d=1 (whitened probes only): the probe as whitening's cutoff rises.
    late_timing: also capture under the `summary_end_sees_block` timing (position:summary_end and masked d=1).
    max_keep: the keep_last_n_blocks sweep runs 1 .. max_keep (0: no sweep).
    checkpoints: training checkpoints between step 0 and the final model in the checkpoint sweep
        (0: no sweep; needs the checkpoint's `leakage train` run folder).
    seed: probe seed (splits and initialisation).
    budgets: probe-training trace counts of the learning curves of every curve condition (none: no curves).
    bits: also the MDL online code length of every curve condition, in bits per passcode.
    curve_conditions: the conditions that get curves and bits (empty: every one of them: causal_control,
        direct, masked_d1..4, position:*, control_task, shuffled_labels, restart_kv, random_init).
    """

    n_blocks: int = 10
    passcode_block: int = 1
    pooling: str = "concat"
    per_layer: bool = True
    mdl: bool = True
    precision: bool = True
    spectrum: bool = True
    late_timing: bool = True
    max_keep: int = 2
    checkpoints: int = 4
    seed: int = 0
    budgets: tuple[int, ...] = ()
    bits: bool = False
    curve_conditions: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.passcode_block < self.n_blocks - 1:
            raise ValueError(f"passcode_block {self.passcode_block} leaves no block after it among {self.n_blocks}: the "
                             "masked probe reads the memento of a later block (passcode_block + 1 < n_blocks)")
        if self.pooling not in ("concat", "mean", "last"):
            raise ValueError(f"pooling must be concat, mean or last, got {self.pooling!r}")
        if self.max_keep < 0 or self.checkpoints < 0:
            raise ValueError(f"max_keep and checkpoints must be >= 0, got {self.max_keep} and {self.checkpoints}")


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

    def __init__(self, experiment: ProbeExperiment, probe: ProbeConfig):
        self.experiment = experiment
        self.probe = probe

    def fit(self, dataset: KVDataset, site: str, layers=None, labels=None, features=None, probe=None, budget=None):
        if features is None:
            features = dataset.features(site, layers, self.experiment.pooling)
        return fit_probe(features, dataset.labels if labels is None else labels, dataset.groups,
                         probe or self.probe, self.experiment.seed, budget)

    def curves(self, name: str, dataset: KVDataset, part: str, d: int, labels=None, log: Log = lambda _: None,
               **extra) -> list[dict]:
        """Rows `curve` (the probe at each of the experiment's budgets) and `bits` (the MDL code length per
        passcode) of one condition: `name`, at `part` of block passcode_block + d, with `labels` (default the
        passcode)."""
        experiment, k = self.experiment, self.experiment.passcode_block
        if experiment.curve_conditions and name not in experiment.curve_conditions:
            return []
        site = site_name(part, d)
        labels = dataset.labels if labels is None else labels
        common = {"of": name, "distance": d, "site": f"{part}@{k + d}", "layer": "all", **extra}
        rows = []
        for budget in experiment.budgets:
            try:
                result = self.fit(dataset, site, labels=labels, budget=budget)
            except ValueError as err:
                log(f"  {name}: budget {budget} skipped ({err})")
                continue
            rows.append({"condition": "curve", "budget": budget, **common, **result.as_dict()})
        if experiment.bits:
            mdl = mdl_codelength(dataset.features(site, None, experiment.pooling), labels, dataset.groups, self.probe,
                                 experiment.seed)
            rows.append({"condition": "bits", **common, "bits_per_passcode": mdl.bits_per_passcode,
                         "uniform_bits_per_passcode": mdl.uniform_bits / mdl.rows, "bits_leaked": mdl.bits_leaked,
                         "mdl_rows": mdl.rows})
        if rows:
            log(f"  {name}: " + ", ".join(f"{r['budget']}: {r['accuracy']:.3f}" for r in rows if "budget" in r)
                + (f"; {rows[-1]['bits_leaked']:.2f} bits leaked per passcode" if experiment.bits else ""))
        return rows

    def row(self, condition: str, dataset: KVDataset, part: str, d: int, layers=None, **extra) -> dict:
        result = self.fit(dataset, site_name(part, d), layers)
        k = self.experiment.passcode_block
        return _row(condition, result, "all" if layers is None else layers[0], d, f"{part}@{k + d}",
                    dataset.n_layers, **extra)


def probe_conditions(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
                     eviction: EvictionConfig = EvictionConfig(), random_model=None,
                     probe: ProbeConfig = ProbeConfig(), log: Log = lambda _: None) -> list[dict]:
    """Every condition of the module docstring as result rows (see `_row`)."""
    prober = _Prober(experiment, probe)
    k = experiment.passcode_block
    distances = [d for d in range(-1, experiment.n_blocks - k) if k + d >= 0]
    sites = [("memento", d) for d in distances] + [(part, 0) for part in POSITION_KINDS]

    main = _captured(log, f"{len(traces)} traces ({eviction})", model, tokenizer, traces, eviction, sites)
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
                                 prober.probe, experiment.seed)
            row.update(mdl_online_bits=mdl.online_bits, mdl_uniform_bits=mdl.uniform_bits,
                       mdl_compression=mdl.compression)
    shuffled = shuffled_labels(main.labels, main.groups, experiment.seed)
    rows.append(_row("shuffled_labels", prober.fit(main, masked, labels=shuffled), distance=1, site=f"memento@{k + 1}"))
    text = prober.fit(main, masked, features=main.text_features(masked, experiment.pooling))
    rows.append(_row("text_only", text, distance=1, site=f"memento@{k + 1}"))
    for part in POSITION_KINDS:
        rows.append(prober.row(f"position:{part}", main, part, 0, timing="engine"))
    if prober.probe.whiten and experiment.spectrum:
        rows += leak_spectrum(prober, main, masked, "float32", task)
    if experiment.budgets or experiment.bits:
        log("learning curves and code lengths")
        for d in [d for d in distances if d <= 4]:
            rows += prober.curves("causal_control" if d < 0 else "direct" if d == 0 else f"masked_d{d}", main,
                                  "memento", d, log=log)
        for part in POSITION_KINDS:
            rows += prober.curves(f"position:{part}", main, part, 0, log=log)
        rows += prober.curves("control_task", main, "memento", 1, labels=controls, log=log)
        rows += prober.curves("shuffled_labels", main, "memento", 1, labels=shuffled, log=log)
    del main

    if experiment.late_timing:
        late = _captured(log, "with the summary_end_sees_block timing", model, tokenizer, traces,
                         replace(eviction, summary_end_sees_block=True), [("summary_end", 0), ("memento", 1)])
        rows.append(prober.row("position:summary_end", late, "summary_end", 0, timing="summary_end_sees_block"))
        rows.append(prober.row("masked", late, "memento", 1, timing="summary_end_sees_block"))
    restart = _captured(log, "restart KV", model, tokenizer, traces, replace(eviction, restart=True),
                        [("memento", 0), ("memento", 1)])
    rows.append(prober.row("restart_kv", restart, "memento", 1))
    rows.append(prober.row("restart_kv_direct", restart, "memento", 0))
    rows += prober.curves("restart_kv", restart, "memento", 1, log=log)
    if random_model is not None:
        untrained = _captured(log, "the untrained model", random_model, tokenizer, traces, eviction,
                              [("memento", 0), ("memento", 1)])
        rows.append(prober.row("random_init", untrained, "memento", 1))
        rows.append(prober.row("random_init_direct", untrained, "memento", 0))
        rows += prober.curves("random_init", untrained, "memento", 1, log=log)
    if experiment.precision:
        half = _captured(log, "in bfloat16", copy.deepcopy(model).to(torch.bfloat16), tokenizer, traces, eviction,
                         [("memento", 0), ("memento", 1)])
        rows.append(prober.row("bf16", half, "memento", 1, dtype="bfloat16"))
        rows.append(prober.row("bf16_direct", half, "memento", 0, dtype="bfloat16"))
        if prober.probe.whiten and experiment.spectrum:
            rows += leak_spectrum(prober, half, masked, "bfloat16", rows[-2])
    return rows


def _captured(log: Log, what: str, model, tokenizer, traces: list[ProbeTrace], eviction: EvictionConfig,
              sites: list[tuple[str, int]]) -> KVDataset:
    """`capture_dataset` as a phase of its own in the run's log: "capturing {what}" marks its start and "probing
    {what}" its end (where the probes on it begin), so a run's phases tell capture time from fitting time."""
    log(f"capturing {what}")
    data = capture_dataset(model, tokenizer, traces, eviction, sites)
    log(f"probing {what}")
    return data


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


def sees_passcode(trace: ProbeTrace, tokenizer, eviction: EvictionConfig, part: str, d: int) -> bool:
    """Whether the site's queries attend to the passcode tokens themselves under `eviction` (one trace)."""
    mask = memento_mask(torch.tensor(trace.ids), tokenizer, eviction=eviction)
    queries = trace.positions.select(site_of(part, d, trace.passcode_block))
    keys = trace.positions.select(Site("passcode"))
    return bool(mask[queries][:, keys].any())


def keep_sweep(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
               eviction: EvictionConfig = EvictionConfig(), probe: ProbeConfig = ProbeConfig(),
               log: Log = lambda _: None) -> list[dict]:
    """Rows `keep`: mementos k+1 .. k+3 under keep_last_n_blocks = 1 .. `experiment.max_keep`, each
    marked whether it still sees the passcode block (`sees_passcode`)."""
    prober = _Prober(experiment, probe)
    distances = [d for d in (1, 2, 3) if experiment.passcode_block + d < experiment.n_blocks]
    rows = []
    for keep in range(1, experiment.max_keep + 1):
        kept = replace(eviction, keep_last_n_blocks=keep)
        data = _captured(log, f"with keep_last_n_blocks={keep}", model, tokenizer, traces, kept,
                         [("memento", d) for d in distances])
        for d in distances:
            rows.append(prober.row("keep", data, "memento", d, keep_last_n_blocks=keep,
                                   sees_passcode=sees_passcode(traces[0], tokenizer, kept, "memento", d)))
    return rows


@dataclass(frozen=True)
class Checkpoint:
    """A model of a checkpoint sweep: its step (stage 1's steps, then stage 2's), stage (an int, or a name
    such as "sft" / "rl"), and directory (None: the random initialisation, step 0)."""

    step: int
    stage: int | str
    path: Path | None


def training_checkpoints(run: TrainedRun, n: int) -> list[Checkpoint]:
    """Step 0, `n` checkpoints spread evenly over the run's stage-1 and stage-2 checkpoints, and `final`."""
    saved = [Checkpoint(c.step, c.stage, c.path) for c in run.checkpoints()]
    final = Checkpoint(saved[-1].step if saved else 0, 2, run.final)
    inner = [c for c in saved if c.step < final.step]
    picked = [inner[round(i * (len(inner) - 1) / max(1, n - 1))] for i in range(n)] if n and inner else []
    return [Checkpoint(0, 0, None), *dict.fromkeys(picked), final]


def checkpoint_sweep(checkpoints: Sequence[Checkpoint], traces: list[ProbeTrace], experiment: ProbeExperiment,
                     examples: list[Example], task: str, eviction: EvictionConfig = EvictionConfig(),
                     probe: ProbeConfig = ProbeConfig(), measured: dict | None = None,
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
        log(f"scoring checkpoint step {checkpoint.step}")
        accuracy = task_accuracy(model, tokenizer, examples, task, eviction)
        low, high = accuracy.ci95
        extra = dict(condition="checkpoint", step=checkpoint.step, stage=checkpoint.stage,
                     checkpoint=str(checkpoint.path or "random init"), task_accuracy=accuracy.value,
                     task_ci95_low=low, task_ci95_high=high, paper_toy=None, paper_qwen3_8b=None,
                     paper_note=PAPER_TOY_CHECKPOINTS)
        known = measured.get(str(checkpoint.path.resolve()) if checkpoint.path else None)
        if known is None:
            data = _captured(log, f"checkpoint step {checkpoint.step} (task accuracy {accuracy.value:.3f})", model,
                             tokenizer, traces, eviction, [("memento", 0), ("memento", 1)])
            known = [prober.row("checkpoint", data, "memento", d) for d in (0, 1)]
        else:
            log(f"  checkpoint step {checkpoint.step}: task accuracy {accuracy.value:.3f}; its probes are fitted above")
        rows += [{**_reused(row), **extra} for row in known]
    return rows


def probe_experiment(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
                     eviction: EvictionConfig = EvictionConfig(), run: TrainedRun | None = None,
                     examples: list[Example] | None = None, task: str | None = None,
                     probe: ProbeConfig = ProbeConfig(), log: Log = lambda _: None) -> list[dict]:
    """Every condition, then the keep sweep, then the checkpoint sweep when `run` (the `leakage train` run
    whose final model `model` is) and the task's `examples` are given: the rows of the whole experiment."""
    rows = probe_conditions(model, tokenizer, traces, experiment, eviction,
                            random_model=untrained_like(model, experiment.seed), probe=probe, log=log)
    if experiment.max_keep:
        rows += keep_sweep(model, tokenizer, traces, experiment, eviction, probe, log)
    if experiment.checkpoints and examples is not None and run is not None:
        def pair(direct: str, masked: str) -> list[dict]:
            return [next(r for r in rows if r["condition"] == c and r["layer"] == "all" and
                         r.get("timing", "engine") == "engine") for c in (direct, masked)]

        measured = {run.final: pair("direct", "masked"), None: pair("random_init_direct", "random_init")}
        rows += checkpoint_sweep(training_checkpoints(run, experiment.checkpoints), traces, experiment, examples,
                                 task, eviction, probe, measured, log)
    return rows


@dataclass(frozen=True)
class ProbeSpec:
    """What `leakage probe` measures.

    checkpoint: local HF checkpoint directory (its tokenizer has the Memento tokens).
    task: synthetic traces of this task.
    traces: an OpenMementos JSON/JSONL file: real traces with an injected passcode instead.
    n: traces (the paper: 50K; 20K at least).
    trace_seed: seed of the traces.
    n_eval: validation examples for each checkpoint's task accuracy (checkpoint sweep).
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: str = "digits"
    traces: str | None = None
    n: int = 22_000
    trace_seed: int = 0
    n_eval: int = 256
    experiment: ProbeExperiment = ProbeExperiment()
    probe: ProbeConfig = ProbeConfig()
    eviction: EvictionConfig = EvictionConfig()
    force: bool = False

    def __post_init__(self):
        task_spec(self.task)
        if self.n < MIN_TRACES:
            raise ValueError(f"n must be at least {MIN_TRACES} traces (a probe's interval needs validation passcodes), "
                             f"got {self.n}")
        if self.n_eval < 1:
            raise ValueError(f"n_eval must be at least 1, got {self.n_eval}")
        if self.traces is not None and not Path(self.traces).is_file():
            raise FileNotFoundError(f"--traces {self.traces}: no such file")


MIN_TRACES = 20
"""The fewest traces a probe run takes: a fifth of them validate, and an interval needs a few passcodes."""
FILES = (".csv", ".json", "_conditions.png", "_layers.png", "_sweeps.png", "_budget.png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: ProbeSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """The whole probe experiment on a checkpoint (module docstring); CSV, JSON and three figures at `out`."""
    check_outputs(out, FILES, [spec.checkpoint, spec.traces])
    if not spec.traces:
        check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_checkpoint(spec.checkpoint)
    experiment, examples, trained = spec.experiment, None, None
    if spec.traces:
        records = read_openmementos(spec.traces)
        if not records:
            raise ValueError(f"--traces {spec.traces}: no records")
        traces = injected_traces(records, tokenizer, spec.n, experiment.passcode_block, seed=spec.trace_seed,
                                 max_blocks=experiment.n_blocks)
        experiment = replace(experiment, n_blocks=min(len(t.positions.blocks) for t in traces))
    else:
        task = TaskConfig(task=spec.task, n_blocks=experiment.n_blocks, passcode_block=experiment.passcode_block)
        traces = synthetic_traces(task, tokenizer, spec.n, seed=spec.trace_seed)
        trained = TrainedRun.of(spec.checkpoint)
        if experiment.checkpoints and trained is None:
            clock(f"{spec.checkpoint} is not the final/ model of a `leakage train` run: checkpoint sweep skipped")
        examples = validation_examples(task, tokenizer, spec.n_eval, 1)
    clock(f"{len(traces)} traces ready")
    rows = probe_experiment(model, tokenizer, traces, experiment, spec.eviction, trained, examples, spec.task,
                            spec.probe, clock)
    table = pd.DataFrame(rows).drop(columns=["per_digit"]).assign(n_traces=len(traces))
    table["checkpoint"] = table["checkpoint"].fillna(spec.checkpoint) if "checkpoint" in table else spec.checkpoint
    return finish(__name__, spec, {"n_traces": len(traces), "probed_experiment": asdict(experiment)}, table, clock,
                  command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """Fig. 10 (conditions), Table 4 (layers) and the sweeps panel of a probe record."""
    from leakage.plotting import (plot_probe_budget, plot_probe_conditions, plot_probe_layers, plot_probe_sweeps,
                                  probe_rows)

    spec, rows = record.spec, probe_rows(record.rows)
    title = f"passcode probe ({spec.probe.kind}), {spec.checkpoint}, {record.results['n_traces']:,} traces"
    drawn = [plot_probe_conditions(rows, beside(stem, "_conditions.png"), title=title),
             plot_probe_layers(rows, beside(stem, "_layers.png"), title=title),
             plot_probe_sweeps(rows, beside(stem, "_sweeps.png"), title=title)]
    if any(r["condition"] in ("curve", "bits") for r in rows):
        drawn.append(plot_probe_budget(rows, beside(stem, "_budget.png"), title=title))
    return drawn
