"""`leakage benchmark`: eviction is not erasure, across methods — how much of an evicted passcode each way of
shrinking the KV cache leaves recoverable from the cache it keeps, and how much the model still uses.

Methods (`METHODS`), all on the same checkpoint, task and examples:

* `full`: no eviction (the upper bound: the passcode stays in view);
* `memento`: Memento's block eviction (`spec.eviction`), on a model trained with text mementos;
* `gist`: the same eviction on a model trained with LightThinker-style gist mementos (`TaskConfig.gist_tokens`:
  each block compressed into k inserted tokens the model never writes; k = the memento's length is
  budget-matched to Memento);
* `restart`: the same retained text recomputed without the evicted block (the channel removed);
* the kvpress presses (`leakage.engine.press.PRESSES`: `streaming_llm`, `knorm`, `snapkv`,
  `expected_attention`), acting at Memento's eviction moments and keeping, per layer and KV head, Memento's
  entry count there (budget-matched; `spec.budget` a fraction instead).

Per method, on validation examples (teacher-forced, one forward per batch):

* `answer_accuracy`: the passcode's answer digits, with the block that held it evicted (full: in view);
* `sums_accuracy`: every block's running sum (the task itself: the `digits` toy's measure);
* `answer_over_restart`: answer accuracy minus restart's on the same examples (paired; 95% bootstrap over
  examples): what the method's retained cache carries that the retained text alone does not;
* `passcode_retained`: the share of the passcode's entries (layers x KV heads x its tokens) the cache still
  holds at the answer: a press can keep the secret itself, which Memento never does;
* `nearest_retained`: the same share for the entries the probe reads (below): what of them the cache holds;
* `kv_peak`, `kv_auc`: entries per layer and KV head during the response (peak, and summed over steps),
  `kv_auc_share` against full attention;
* on reference examples (training passcodes), the paper's MLP probe on the keys and values the method's
  cache holds at the positions Memento keeps nearest the drop (the passcode block's `<|block_end|>`,
  summary delimiters and memento; entries the method's cache no longer holds at the answer, such as
  restart's evicted `<|block_end|>` or what a press dropped, read as zeros): `probe_accuracy` with its training
  budget `probe_budget` (training traces) and `probe_bits`, the bits per passcode its validation cross-entropy saves
  over the uniform code (a budget-bound lower estimate of what is readable).

    run(BenchmarkSpec("runs/reproduce-passcode4-fast-seed0/final"), out="figures/benchmark/seed0/benchmark")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from leakage.analysis.erasers import probe_bits
from leakage.analysis.probe import fit_probe, probe_preset
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish
from leakage.analysis.twins import run_name
from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.engine.capture import capture
from leakage.engine.model import check_trained_task, load_checkpoint
from leakage.engine.press import PRESSES, PressRun, make_press, press_forward, press_moments
from leakage.memento.kv import simulate_kv
from leakage.memento.mask import memento_mask
from leakage.memento.positions import Site
from leakage.memento.spans import parse_spans
from leakage.stats import cluster_bootstrap_mean, percentile_interval, resample
from leakage.training.evaluate import Accuracy
from leakage.training.tasks import Example, TaskConfig, make_example, task_spec, unit

EVICTION_METHODS = ("full", "memento", "gist", "restart")
METHODS = (*EVICTION_METHODS, *PRESSES)
NEAREST_PARTS = ("block_end", "summary_start", "memento", "summary_end")
"""The parts of the passcode block whose entries Memento keeps nearest the drop: what the probe reads."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """What `leakage benchmark` measures (module docstring).

    checkpoint: a passcode model (the main job's).
    task: the passcode task with fixed-length blocks (one layout: the presses act at the same moments in
        every row).
    eviction: Memento's eviction (the presses act at its moments, with its budget).
    methods: comma-separated `METHODS` (empty: every method the task's memento format allows: `gist` for gist
        mementos, `memento` for text).
    budget: None: every press keeps Memento's entry count at each moment; a fraction in (0, 1]: that share of
        the positions before it.
    n: validation examples (answer and running sums).
    probe_traces: reference examples the probe is trained and validated on (split by passcode).
    probe: probe preset (`leakage.analysis.probe.PROBE_PRESETS`).
    seed: seed of the examples and the probe.
    batch_size: examples per forward.
    bootstrap: example-bootstrap resamples of the paired difference.
    force: run even if the checkpoint was trained on another task.
    """

    checkpoint: str
    task: TaskConfig = TaskConfig(task="passcode", n_blocks=4, passcode_block=1)
    eviction: EvictionConfig = EvictionConfig()
    methods: tuple[str, ...] = ()
    budget: float | None = None
    n: int = 256
    probe_traces: int = 2000
    probe: str = "mlp"
    seed: int = 0
    batch_size: int = 128
    bootstrap: int = 1000
    force: bool = False

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        check_format(self.methods, self.task)
        if not task_spec(self.task.task).answers_passcode or self.task.passcode_block is None:
            raise ValueError(f"the benchmark needs the passcode task with one passcode_block, got {self.task}")
        if self.task.short_block_rate or self.task.passcode_blocks:
            raise ValueError("the benchmark needs fixed-length blocks and one passcode block (one layout)")
        if self.eviction.restart or not self.eviction.evicts:
            raise ValueError(f"eviction is Memento's (keep_last_n_blocks >= 0, no restart), got {self.eviction}")
        if self.n < 2 or self.probe_traces < 40 or self.batch_size < 1 or self.bootstrap < 10:
            raise ValueError("need n >= 2, probe_traces >= 40, batch_size >= 1 and bootstrap >= 10")
        probe_preset(self.probe)
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be a fraction in (0, 1] or None (Memento's), got {self.budget}")

    @property
    def method_names(self) -> tuple[str, ...]:
        """The methods measured: `methods`, or every one the task's memento format allows."""
        return self.methods or tuple(m for m in METHODS if m != _other_format(self.task))


def _other_format(task: TaskConfig) -> str:
    """The trained-eviction method a task's memento format rules out: `memento` needs text, `gist` gist tokens."""
    return "memento" if task.gist_tokens else "gist"


def check_format(methods: Sequence[str], task: TaskConfig) -> None:
    """Refuse `memento` on gist traces and `gist` on text ones (the trace format is the model's training)."""
    if _other_format(task) in methods:
        raise ValueError(f"method {_other_format(task)!r} does not apply to gist_tokens={task.gist_tokens}: `memento` "
                         "is eviction on text mementos (gist_tokens=0), `gist` on gist mementos (gist_tokens > 0)")


@dataclass
class Measured:
    """One method on a batch of examples: logits (B, T, V); the features the probe reads (B, F); the share of
    each row's passcode entries, and of the probed entries, still cached at the answer (B,) each; entries per
    layer and KV head cached while each response position was computed (B, T - prompt)."""

    logits: torch.Tensor
    features: torch.Tensor
    passcode_retained: np.ndarray
    nearest_retained: np.ndarray
    kv: list[list[int]]


def eviction_of(method: str, eviction: EvictionConfig) -> EvictionConfig:
    """The `EvictionConfig` of an eviction method (`EVICTION_METHODS`)."""
    return {"full": EVICTION_PRESETS["vanilla"], "memento": eviction, "gist": eviction,
            "restart": replace(eviction, restart=True)}[method]


def nearest_sites(block: int) -> dict[str, Site]:
    return {part: Site(part, block) for part in NEAREST_PARTS}


def _layout(examples: Sequence[Example]) -> None:
    """Refuse a batch whose rows differ in layout (the presses' moments and the probed positions are row 0's)."""
    layouts = {(len(e.ids), e.prompt_len, tuple(e.passcode_positions), tuple(e.answer_positions),
                tuple(map(tuple, e.memento_positions))) for e in examples}
    if len(layouts) != 1:
        raise ValueError(f"examples differ in layout ({len(layouts)} layouts, lengths "
                         f"{sorted({len(e.ids) for e in examples})[:3]}): use fixed-length blocks")


def measure(model, tokenizer, examples: Sequence[Example], method: str, spec: BenchmarkSpec) -> Measured:
    """`Measured` of `method` on `examples` (one layout), in one batch."""
    _layout(examples)
    example = examples[0]
    ids = torch.tensor([e.ids for e in examples])
    answer_query = example.answer_positions[0] - 1
    sites = nearest_sites(spec.task.passcode_block)
    spans = parse_spans(example.ids, tokenizer, prompt_len=example.prompt_len)
    where = torch.tensor([p for site in sites.values() for p in example.positions.select(site)])
    passcode = torch.tensor(example.passcode_positions)
    if method in EVICTION_METHODS:
        eviction = eviction_of(method, spec.eviction)
        captured = capture(model, tokenizer, ids, eviction, sites, prompt_len=[e.prompt_len for e in examples],
                           positions=[e.positions for e in examples])
        sees = memento_mask(example.ids, tokenizer, eviction=eviction, prompt_len=example.prompt_len)[answer_query]
        held = sees[where].to(captured.logits.dtype)[:, None]  # (P, 1): entries the answer's cache still holds
        keys = torch.cat([captured.keys[name] for name in sites], dim=3) * held  # (B, L, H, P, D)
        values = torch.cat([captured.values[name] for name in sites], dim=3) * held
        retained = float(sees[passcode].float().mean())
        nearest_retained = np.full(len(examples), float(sees[where].float().mean()))
        kv = simulate_kv(example.ids, tokenizer, eviction, prompt_len=example.prompt_len).response_steps
        logits = captured.logits
        passcode_retained = np.full(len(examples), retained)
    else:
        moments = press_moments(spans, spec.eviction, spec.budget)
        run = press_forward(model, ids, moments, make_press(method))
        keys, values, present = run.retained(where[None].expand(len(examples), -1))
        nearest_retained = present.float().mean((1, 2, 3)).cpu().numpy()
        passcode_retained = (run.dropped_at[..., passcode] > answer_query).float().mean((0, 2, 3)).cpu().numpy()
        kv = press_kv(run, example.prompt_len)
        logits = run.logits
    features = torch.cat([keys.flatten(1), values.flatten(1)], dim=1).float().cpu()
    return Measured(logits.float().cpu(), features, passcode_retained, nearest_retained, [kv] * len(examples))


def press_kv(run: PressRun, prompt_len: int) -> list[int]:
    """Entries per layer and KV head cached while each response position was computed (row 0; every layer,
    head and row of one layout holds the same count)."""
    dropped = run.dropped_at[0, 0, 0].cpu()  # (T,)
    return [p + 1 - int((dropped <= p).sum()) for p in range(prompt_len, dropped.shape[0])]


def answer_hits(logits: torch.Tensor, examples: Sequence[Example]) -> np.ndarray:
    """(B, D) bool: each answer digit's teacher-forced prediction is right."""
    return np.array([[int(logits[b, p - 1].argmax()) == e.ids[p] for p in e.answer_positions]
                     for b, e in enumerate(examples)], dtype=bool)


def sums_hits(logits: torch.Tensor, examples: Sequence[Example]) -> tuple[list[bool], list[int]]:
    """Every running sum (all its digits right), and the example of each."""
    hits, owner = [], []
    for b, e in enumerate(examples):
        for positions in unit("sums").positions(e):
            hits.append(all(int(logits[b, p - 1].argmax()) == e.ids[p] for p in positions))
            owner.append(b)
    return hits, owner


def _batches(items: Sequence, size: int):
    """(offset, items[offset:offset + size]) for consecutive batches of `items`."""
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def method_row(model, tokenizer, method: str, spec: BenchmarkSpec, examples: list[Example],
               references: list[Example], restart_answers: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """One method's row (module docstring) and its answer hits (n, D)."""
    answers, sums, owners, retained, nearest, kv = [], [], [], [], [], None
    for start, chunk in _batches(examples, spec.batch_size):
        measured = measure(model, tokenizer, chunk, method, spec)
        answers.append(answer_hits(measured.logits, chunk))
        hits, owner = sums_hits(measured.logits, chunk)
        sums += hits
        owners += [start + o for o in owner]
        retained.append(measured.passcode_retained)
        nearest.append(measured.nearest_retained)
        kv = measured.kv[0]
    answer = np.concatenate(answers)
    answer_acc = Accuracy(answer.ravel(), np.repeat(np.arange(len(answer)), answer.shape[1]))
    sums_acc = Accuracy(np.array(sums), np.array(owners))
    features = torch.cat([measure(model, tokenizer, chunk, method, spec).features
                          for _, chunk in _batches(references, spec.batch_size)])
    labels = torch.tensor([e.passcode_digits for e in references])
    groups = torch.tensor([int("".join(map(str, e.passcode_digits))) for e in references])
    probe = fit_probe(features, labels, groups, probe_preset(spec.probe), seed=spec.seed)
    row = {"method": method, "kind": "eviction" if method in EVICTION_METHODS else "press",
           "budget": "memento" if spec.budget is None or method in EVICTION_METHODS else spec.budget,
           **_accuracy("answer", answer_acc), **_accuracy("sums", sums_acc),
           "passcode_retained": float(np.concatenate(retained).mean()),
           "nearest_retained": float(np.concatenate(nearest).mean()),
           "kv_peak": max(kv), "kv_auc": sum(kv),
           "probe_accuracy": probe.accuracy, "probe_low": probe.ci95[0], "probe_high": probe.ci95[1],
           "probe_budget": probe.n_train, "probe_chance": probe.chance,
           **bits_interval(probe, features, labels, groups, spec.bootstrap), "probe_features": features.shape[1]}
    if restart_answers is not None:
        row.update(paired_difference(answer, restart_answers, spec.bootstrap, spec.seed))
    return row, answer


@torch.no_grad()
def bits_interval(probe, features: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_resamples: int) -> dict:
    """`probe_bits` (bits per passcode the fitted probe's validation cross-entropy saves over the uniform code)
    with a 95% bootstrap over held-out passcodes."""
    rows = probe.val_rows
    logits = probe.probe(features[rows])  # (n_val, D, 10)
    nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[rows], reduction="none")  # (n_val, D)
    saved = (math.log2(10) - nats / math.log(2)).numpy()  # bits per digit, per row
    lo, hi = cluster_bootstrap_mean(saved, groups[rows].numpy(), n_resamples, probe.seed)
    digits = labels.shape[1]
    return {"probe_bits": probe_bits(probe.loss, digits), "probe_bits_low": digits * lo, "probe_bits_high": digits * hi}


def _accuracy(name: str, accuracy: Accuracy) -> dict:
    lo, hi = accuracy.ci95
    return {f"{name}_accuracy": accuracy.value, f"{name}_low": lo, f"{name}_high": hi, f"{name}_units": accuracy.total}


def paired_difference(hits: np.ndarray, reference: np.ndarray, n_resamples: int, seed: int) -> dict:
    """Mean per-example accuracy difference `hits` - `reference` (n, D) with a 95% bootstrap over examples."""
    difference = hits.mean(1) - reference.mean(1)
    draws = resample(len(difference), n_resamples, seed)
    lo, hi = percentile_interval(difference[draws].mean(1))
    return {"answer_over_restart": float(difference.mean()), "over_restart_low": lo, "over_restart_high": hi}


def benchmark_rows(model, tokenizer, spec: BenchmarkSpec, log: Log = lambda _: None) -> pd.DataFrame:
    """One row per method (module docstring); restart is always measured first, as every row's reference."""
    examples = [make_example(spec.task, tokenizer, spec.seed, i, "val") for i in range(spec.n)]
    references = [make_example(spec.task, tokenizer, spec.seed + 1, i, "train") for i in range(spec.probe_traces)]
    restart_row, restart_answers = method_row(model, tokenizer, "restart", spec, examples, references, None)
    restart_row.update(paired_difference(restart_answers, restart_answers, spec.bootstrap, spec.seed))
    rows = []
    for method in spec.method_names:
        row = restart_row if method == "restart" else method_row(model, tokenizer, method, spec, examples,
                                                                  references, restart_answers)[0]
        log(f"{method}: answer {row['answer_accuracy']:.3f}, sums {row['sums_accuracy']:.3f}, probe "
            f"{row['probe_accuracy']:.3f} ({row['probe_bits']:.2f} bits), passcode retained "
            f"{row['passcode_retained']:.2f}, KV AUC {row['kv_auc']}")
        rows.append(row)
    frame = pd.DataFrame(rows)
    full = eviction_kv(spec, tokenizer, "full")
    frame["kv_auc_share"] = frame.kv_auc / full
    return frame


def eviction_kv(spec: BenchmarkSpec, tokenizer, method: str) -> int:
    """KV AUC of an eviction method on the task's layout."""
    example = make_example(spec.task, tokenizer, spec.seed, 0, "val")
    return simulate_kv(example.ids, tokenizer, eviction_of(method, spec.eviction), prompt_len=example.prompt_len).auc


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: BenchmarkSpec, out: str | Path | None = None, *, command: str | None = None,
        log: Log | None = None) -> Record:
    """The benchmark table of one checkpoint (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_checkpoint(spec.checkpoint)
    frame = benchmark_rows(model, tokenizer, spec, clock)
    results = {"benchmark": {row.method: {"answer_accuracy": row.answer_accuracy, "probe_bits": row.probe_bits,
                                          "answer_over_restart": row.answer_over_restart,
                                          "kv_auc_share": row.kv_auc_share}
                             for row in frame.itertuples()}}
    return finish(__name__, spec, results, frame, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """Leak against KV budget, one point per method."""
    from leakage.plotting import plot_benchmark

    return [plot_benchmark(record.rows, beside(stem, ".png"),
                           f"leak vs KV budget across eviction methods ({run_name(record.spec.checkpoint)})")]
