"""`leakage precision`: the passcode channel of one checkpoint at each compute and stored-KV precision.

    record = run(PrecisionSpec("runs/reproduce-passcode4-fast-seed0/final"))
    record.rows   # one row per precision and measure

For every precision (`leakage.engine.precision`: compute dtype and what the KV cache stores), on a copy
of the checkpoint that computes and stores that way:
* used: the passcode's answer digits, teacher-forced, under memento decoding and under restart decoding
  (the memento text identical, the block's KV recomputed without it), and the restart drop between them
  (percentage points, restart minus memento on the same units; interval: a bootstrap over examples, as
  `leakage.analysis.restart` draws it);
* present: the probe (`spec.probe`, on `probe_traces` traces; its budget is the training rows) at the
  memento of the block after the passcode's (masked d=1) and at the passcode block's retained delimiters
  (its four boundary tokens together), with the MDL online code length in bits leaked per passcode when
  `bits` is set, and with `budgets` its learning curve (the same probe trained on fewer traces);
* used, causally: activation patching on passcode twins (`leakage.analysis.twins`: the same example with
  another passcode, memento text identical), at the step that evicts the passcode block, measured at the
  answer digits: how often the answer follows the twin's passcode when the whole retained cache is the
  twin's (`patch_twin_cache`: the share of answer digits, where the two passcodes differ, predicted as the
  twin's; interval over examples), and each layer's share of that move (`patch_layer{L}`: the logit
  difference normalised to 0 = clean, 1 = the twin's whole cache, keys and values of that layer patched).
fp8 scales are calibrated once per precision on `calibration` task examples that neither scoring set uses
(`leakage.training.evaluate.calibration_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from leakage.analysis.patching import clean_and_corrupted, kv_patch_layer, patched_logits
from leakage.analysis.probe import ProbeConfig, fit_probe, mdl_codelength
from leakage.analysis.probe_data import ProbeTrace, capture_dataset, site_name, synthetic_traces
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish
from leakage.analysis.twins import passcode_pairs, passcode_run, result_frame
from leakage.config import EvictionConfig
from leakage.engine.model import check_trained_task, load_checkpoint
from leakage.engine.precision import FP8, at_precision, precision_preset
from leakage.stats import cluster_bootstrap_mean
from leakage.training.evaluate import CALIBRATION_EXAMPLES, Accuracy, accuracy, calibration_ids, validation_examples
from leakage.training.tasks import Example, TaskConfig

DELIMITERS = ("block_start", "block_end", "summary_start", "summary_end")
"""The passcode block's boundary tokens, retained after its eviction (mask_delimiters off)."""


@dataclass(frozen=True)
class PrecisionSpec:
    """What `leakage precision` measures.

    checkpoint: local HF checkpoint directory of a passcode-task model.
    task: the passcode task and its shape.
    precisions: precision presets (`leakage.engine.precision.PRECISION_PRESETS`), the first the reference.
    eviction: the memento decoding (its restart variant is scored too).
    n_eval: validation examples for the answer accuracies.
    probe_traces: traces of the probe datasets.
    probe: the probe (the paper's MLP by default).
    bits: also the MDL code length (bits leaked per passcode) of each probe.
    budgets: probe-training trace counts of each probe's learning curve (none: the whole training part only).
    patching: also activation patching on `n_eval` passcode twins (module docstring).
    calibration: task examples the fp8 scales are calibrated on.
    seed: seed of the examples, traces and probes.
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: TaskConfig = TaskConfig(task="passcode", n_blocks=4, passcode_block=1)
    precisions: tuple[str, ...] = ("float32", "bf16", "fp16", "kv_bf16", "kv_fp16", "kv_fp8", "kv_fp8_head",
                                   "kv_fp8_unit", "kv_fp8_e5m2", "kv_int8", "kv_int4", "bf16_kv_fp8")
    eviction: EvictionConfig = EvictionConfig()
    n_eval: int = 256
    probe_traces: int = 6_000
    probe: ProbeConfig = ProbeConfig()
    bits: bool = True
    budgets: tuple[int, ...] = ()
    patching: bool = True
    calibration: int = CALIBRATION_EXAMPLES
    seed: int = 0
    force: bool = False

    def __post_init__(self):
        for name in self.precisions:
            precision_preset(name)
        if not self.precisions:
            raise ValueError("precisions: name at least one precision preset")
        if self.task.passcode_block is None or self.task.passcode_block + 1 >= self.task.n_blocks:
            raise ValueError("the task needs a passcode block followed by another block (masked d=1)")
        if min(self.n_eval, self.probe_traces, self.calibration) < 1:
            raise ValueError("n_eval, probe_traces and calibration must be at least 1")
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive trace counts, got {self.budgets}")
        if self.patching and self.n_eval < 2:
            raise ValueError("patching needs n_eval of at least 2 twin pairs")


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def measure(model, tokenizer, spec: PrecisionSpec, name: str, examples: list[Example], traces: list[ProbeTrace],
            log: Log = lambda _: None) -> list[dict]:
    """The rows of one precision preset `name` (module docstring) on the float32 `model`: the answer scored
    on `examples`, the probes fitted on `traces`."""
    precision = precision_preset(name)
    run_model = at_precision(model, tokenizer, precision,
                             lambda tok: calibration_ids(spec.task, tok, spec.seed, spec.calibration))
    common = {"precision": name, "compute": precision.compute, "kv": precision.kv,
              "kv_scale": precision.kv_scale if precision.kv in FP8 else None}
    scored = {mode: accuracy(run_model, tokenizer, examples, replace(spec.eviction, restart=mode == "restart"),
                             "answer_digits") for mode in ("memento", "restart")}
    rows = [{**common, "measure": f"answer_{mode}", **a.as_dict()} for mode, a in scored.items()]
    delta = scored["restart"].hits.astype(float) - scored["memento"].hits.astype(float)  # the same units, paired
    low, high = cluster_bootstrap_mean(delta, scored["memento"].example, 2000, spec.seed)
    rows.append({**common, "measure": "restart_drop", "points": 100 * delta.mean(), "ci95_low": 100 * low,
                 "ci95_high": 100 * high, "interval": f"cluster bootstrap over {len(examples)} examples, paired"})
    data = capture_dataset(run_model, tokenizer, traces, spec.eviction,
                           [("memento", 1)] + [(part, 0) for part in DELIMITERS])
    features = {"masked_d1": data.features(site_name("memento", 1)),
                "delimiters": torch.cat([data.features(site_name(part, 0)) for part in DELIMITERS], 1)}
    probes = []
    for site, x in features.items():
        result = fit_probe(x, data.labels, data.groups, spec.probe, spec.seed)
        row = {**common, "measure": f"probe_{site}", **result.as_dict(), "probe_budget": result.n_train}
        row.pop("per_digit")
        if spec.bits:
            mdl = mdl_codelength(x, data.labels, data.groups, spec.probe, spec.seed)
            row.update(bits_leaked=mdl.bits_leaked, uniform_bits_per_passcode=mdl.uniform_bits / mdl.rows,
                       mdl_rows=mdl.rows)
        probes.append(row)
        for budget in spec.budgets:
            result = fit_probe(x, data.labels, data.groups, spec.probe, spec.seed, budget)
            curve = {**common, "measure": f"curve_{site}", "budget": budget, **result.as_dict(),
                     "probe_budget": result.n_train}
            curve.pop("per_digit")
            probes.append(curve)
    rows += probes
    patched = patching_rows(run_model, tokenizer, spec) if spec.patching else []
    rows += [{**common, **row} for row in patched]
    log(f"  {name}: answer memento {scored['memento'].value:.3f}, restart {scored['restart'].value:.3f}; "
        f"probe masked d=1 {probes[0]['accuracy']:.3f}" + (f" ({probes[0]['bits_leaked']:.2f} bits)" if spec.bits else "")
        + (f"; answer follows the twin's cache {patched[0]['accuracy']:.3f}" if patched else ""))
    return rows


def patching_rows(model, tokenizer, spec: PrecisionSpec) -> list[dict]:
    """Rows `patch_twin_cache` (the answer digits that follow the twin's passcode under its whole retained
    cache) and `patch_layer{L}` (layer L's normalised logit-difference effect) on `spec.n_eval` twin pairs
    (module docstring); every interval a bootstrap over the pairs."""
    examples, twins, digits = passcode_pairs(spec.task, tokenizer, spec.n_eval, spec.seed)
    run = passcode_run(model, tokenizer, examples, twins, digits, spec.eviction)
    differ = run.answer[..., 0] != run.answer[..., 1]  # (B, Q): the digits where the passcodes differ
    follows = (patched_logits(model, run, run.source).argmax(-1) == run.answer[..., 1])[differ].numpy()
    pair = torch.arange(len(examples))[:, None].expand_as(differ)[differ].numpy()  # a twin pair is one example
    rows = [{"measure": "patch_twin_cache", **Accuracy(follows, pair).as_dict()}]
    clean, corrupted = clean_and_corrupted(model, run)
    layers = result_frame(kv_patch_layer(model, run, which="both"), "patch_layer", "twin", clean, corrupted,
                          bootstrap=1000, seed=spec.seed)
    for layer in layers.itertuples():
        rows.append({"measure": f"patch_layer{layer.layer}", "layer": int(layer.layer), "effect": layer.effect,
                     "ci95_low": layer.effect_low, "ci95_high": layer.effect_high,
                     "interval": f"bootstrap over {len(examples)} twin pairs"})
    return rows


def run(spec: PrecisionSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """Every precision of `spec` on its checkpoint (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_checkpoint(spec.checkpoint)
    examples = validation_examples(spec.task, tokenizer, spec.n_eval, spec.seed + 1)
    traces = synthetic_traces(spec.task, tokenizer, spec.probe_traces, seed=spec.seed)
    rows = []
    for name in spec.precisions:
        clock(f"precision {name}")
        rows += measure(model, tokenizer, spec, name, examples, traces, clock)
    table = pd.DataFrame(rows)
    results = {f"{r['precision']}/{r['measure']}": r.get("accuracy", r.get("points")) for r in rows}
    return finish(__name__, spec, results, table, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """Precision x {used (answer under memento and restart), present (probe accuracy)}: one panel each."""
    from leakage.plotting import plot_precision_channel

    return [plot_precision_channel(record.rows, beside(stem, ".png"), title=f"{record.spec.checkpoint}")]
