"""`leakage selfcheck`: the parity checks to pass before trusting numbers at a precision on this machine.

    rows = selfcheck(SelfcheckSpec(precision="bf16_kv_fp8"))
    all(row["passed"] for row in rows)

On a model (a checkpoint, or a fresh preset) at one precision (`leakage.engine.precision`), over a few
synthetic passcode traces, each check gives the largest difference and the tolerance it must stay under:
* views: the memento-masked logits of the HF module, the TransformerLens bridge and nnsight (the compute
  dtype alone: the bridge brings its own attention, so stored-KV precisions are checked on the HF module);
* decode: eviction decoding (teacher-forced on a compacted cache) against one masked forward, for memento
  decoding, restart and keep_last_n_blocks=1;
* capture: the keys and values capture returns against what the decoder's cache stores;
* patch: patching nothing (the target's own prefix) against the clean masked forward.

Tolerances are stated per precision, not tuned: logits agree to `LOGIT_ATOL` in float32, and otherwise to
what the precision itself moves them (the masked forward's largest change from float32): two ways of
computing the same thing may round differently, but never by more than rounding does. Stored keys and
values agree to one rounding step of the coarsest format involved (`relative_step`) times the vector's
largest magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakage.analysis.patching import patch_run, patched_logits
from leakage.analysis.probe_data import synthetic_traces
from leakage.config import EvictionConfig
from leakage.engine.capture import capture
from leakage.engine.decode import teacher_force
from leakage.engine.model import build_model, load_checkpoint
from leakage.engine.precision import (FP8, INT_BITS, Precision, at_precision, kv_storage, precision_preset,
                                      with_precision)
from leakage.engine.views import input_device, to_bridge, to_nnsight
from leakage.memento.mask import additive_mask, memento_mask
from leakage.memento.positions import BLOCK_PARTS
from leakage.training.tasks import TaskConfig

LOGIT_ATOL = 1e-4
"""float32 logits of two computations of the same thing (different reduction orders) agree to this."""
KV_ATOL = 1e-5
"""float32 keys and values likewise."""
EVICTIONS = {"memento": EvictionConfig(), "restart": EvictionConfig(restart=True),
             "keep_last_n_blocks=1": EvictionConfig(keep_last_n_blocks=1)}


@dataclass(frozen=True)
class SelfcheckSpec:
    """What `leakage selfcheck` checks.

    checkpoint: local HF checkpoint directory (none: a fresh model of model_preset).
    model_preset: the preset of the fresh model.
    precision: precision preset (`leakage.engine.precision.PRECISION_PRESETS`).
    device: where the model computes ("cpu", "cuda", "cuda:1", ...; every check's inputs follow it).
    n_traces: synthetic passcode traces checked.
    seed: seed of the fresh model and the traces.
    """

    checkpoint: str | None = None
    model_preset: str = "tiny"
    precision: str = "float32"
    device: str = "cpu"
    n_traces: int = 3
    seed: int = 0

    def __post_init__(self):
        precision_preset(self.precision)
        torch.device(self.device)  # raises naming a malformed device string
        if self.n_traces < 1:
            raise ValueError(f"n_traces must be at least 1, got {self.n_traces}")


def relative_step(precision: Precision) -> float:
    """The coarsest rounding step, relative to a vector's largest magnitude, of the compute dtype and the
    stored format: float eps (bf16 2^-8, fp16 2^-11), e4m3 2^-3, e5m2 2^-2, intN 2 / (2^N - 1) (a min-max
    range spans twice the largest magnitude at most)."""
    steps = [torch.finfo(precision.dtype).eps if precision.dtype != torch.float32 else 0.0]
    if precision.kv in ("bfloat16", "float16"):
        steps.append(torch.finfo(getattr(torch, precision.kv)).eps)
    if precision.kv in FP8:
        steps.append(torch.finfo(FP8[precision.kv]).eps)
    if precision.kv in INT_BITS:
        steps.append(2 / (2 ** INT_BITS[precision.kv] - 1))
    return max(steps)


def _row(check: str, case: str, difference: float, tolerance: float) -> dict:
    return {"check": check, "case": case, "max_abs_difference": difference, "tolerance": tolerance,
            "passed": difference <= tolerance}


@torch.no_grad()
def selfcheck(spec: SelfcheckSpec) -> list[dict]:
    """Every check of the module docstring, one row each: check, case, max_abs_difference, tolerance, passed."""
    model, tokenizer = (load_checkpoint(spec.checkpoint) if spec.checkpoint
                        else build_model(spec.model_preset, seed=spec.seed))
    model = model.to(spec.device)
    device = input_device(model)
    precision = precision_preset(spec.precision)
    task = TaskConfig(task="passcode", n_blocks=3, passcode_block=1)
    traces = synthetic_traces(task, tokenizer, spec.n_traces, seed=spec.seed)
    rows_ids = [t.ids for t in traces]
    run_model = at_precision(model, tokenizer, precision, lambda _: rows_ids)
    computed = with_precision(model, Precision(compute=precision.compute))  # the compute dtype alone, for the views

    def masked(m, ids, eviction):
        mask = additive_mask(memento_mask(ids, tokenizer, eviction=eviction)).to(precision.dtype)
        return m(torch.tensor([ids], device=device), attention_mask=mask.to(device)).logits[0].float().cpu()

    reference = {}  # (ids, eviction) -> the float32 model's masked logits, computed once

    def moved(m, ids, eviction) -> float:
        key = (tuple(ids), eviction)
        if key not in reference:
            reference[key] = masked(model, ids, eviction)
        return float((masked(m, ids, eviction) - reference[key]).abs().max())

    out = []
    bridge, view = to_bridge(computed), to_nnsight(computed)
    for b, ids in enumerate(rows_ids):
        eviction = EVICTIONS["memento"]
        hf = masked(computed, ids, eviction)
        mask = additive_mask(memento_mask(ids, tokenizer, eviction=eviction)).to(precision.dtype).to(device)
        with view.trace(torch.tensor([ids], device=device), attention_mask=mask):
            through_nnsight = view.output.logits.save()
        through_nnsight = through_nnsight.cpu()
        through_bridge = bridge(torch.tensor([ids], device=device), attention_mask=mask).cpu()
        tolerance = max(LOGIT_ATOL, moved(computed, ids, eviction))
        out.append(_row("views", f"HF vs bridge, trace {b}", float((hf - through_bridge[0].float()).abs().max()),
                        tolerance))
        out.append(_row("views", f"HF vs nnsight, trace {b}", float((hf - through_nnsight[0].float()).abs().max()),
                        tolerance))
    for name, eviction in EVICTIONS.items():
        decoded = teacher_force(run_model, tokenizer, rows_ids, eviction).logits.float()
        for b, ids in enumerate(rows_ids):
            difference = float((decoded[b, :len(ids)] - masked(run_model, ids, eviction)).abs().max())
            out.append(_row("decode", f"{name}, trace {b}", difference,
                            max(LOGIT_ATOL, moved(run_model, ids, eviction))))
    out += capture_rows(run_model, tokenizer, rows_ids, precision)
    out += _patch_rows(run_model, tokenizer, traces, precision, masked, moved)
    return out


def capture_rows(run_model, tokenizer, rows_ids, precision: Precision) -> list[dict]:
    """capture's keys and values against the decoder's stored cache, memento decoding."""
    final = [{} for _ in rows_ids]  # row -> position -> [(keys, values) per layer], (kv_heads, d_head), as stored
    storage = kv_storage(run_model)

    def snapshot(step, cache):
        for b, positions in enumerate(step.positions):
            for p in positions:  # LayerStorage takes (B, kv_heads, T, d_head): this position as B = T = 1
                final[b][p] = [(s.keys(cache.keys(layer)[b, :, p][None, :, None])[0, :, 0],
                                s.values(cache.values(layer)[b, :, p][None, :, None])[0, :, 0])
                               for layer, s in enumerate(storage)]

    teacher_force(run_model, tokenizer, rows_ids, EVICTIONS["memento"], on_step=snapshot)
    sites = [f"{part}@{k}" for k in range(2) for part in BLOCK_PARTS]
    captured = capture(run_model, tokenizer, rows_ids, EVICTIONS["memento"], sites)
    difference, tolerance = 0.0, KV_ATOL
    for site in captured.sites:
        for b in range(len(rows_ids)):
            for i, p in enumerate(captured.positions[site][b].tolist()):
                if p < 0:
                    continue
                for layer, (keys, values) in enumerate(final[b][p]):
                    for got, want in ((captured.keys[site][b, layer, :, i], keys),
                                      (captured.values[site][b, layer, :, i], values)):
                        difference = max(difference, float((got.float() - want.float()).abs().max()))
                        tolerance = max(tolerance, relative_step(precision) * float(want.float().abs().max()))
    return [_row("capture", "stored keys and values at every block part", difference, tolerance)]


def _patch_rows(run_model, tokenizer, traces, precision: Precision, masked, moved) -> list[dict]:
    """Patching nothing at the passcode block's memento step against the clean masked forward."""
    out = []
    eviction = EVICTIONS["memento"]
    for b, trace in enumerate(traces):
        at = trace.positions.select("memento@2")[0]  # the cache as the memento after the passcode's reads it
        queries = [at, len(trace.ids) - 2]
        answer = torch.tensor([[[trace.ids[q + 1]] * 2 for q in queries]])
        run = patch_run(run_model, tokenizer, [trace.ids], [trace.ids], eviction, at, queries, answer)
        patched = patched_logits(run_model, run, run.target)[0].float()
        clean = masked(run_model, trace.ids, eviction)[queries]
        tolerance = max(LOGIT_ATOL, moved(run_model, trace.ids, eviction))
        out.append(_row("patch", f"nothing patched, trace {b}", float((patched - clean).abs().max()), tolerance))
    return out
