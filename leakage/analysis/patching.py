"""Activation patching of the retained KV cache, in the shape of TransformerLens's `patching.py`.

A `PatchRun` pairs a target batch with a source batch (same layout) and a step `at`: the cache as
eviction decoding holds it just before the query at `at` is computed. Every position before `at` has
its keys and values in that cache (those already evicted are masked, and stay masked); a patch
replaces some of them — by layer, KV head, position, keys and/or values — with the source's, and the
queries from `at` on are recomputed from the patched cache (the target's tokens, the measured `queries`
last). Nothing computed before `at`
changes, and a patch at an evicted position changes nothing: exactly an edit of the live cache in
`leakage.engine.decode.Decoder.run`'s `on_step` at that step.

    run = patch_run(model, tokenizer, clean, corrupted, EvictionConfig(), at, queries, answer)
    result = kv_patch_layer_head(model, run, which="keys")   # metric per (layer, kv_head, example)
    clean_metric, corrupted_metric = clean_and_corrupted(model, run)
    result.frame(clean_metric, corrupted_metric)             # 0 = clean, 1 = source, bootstrap CI per cell

`generic_kv_patch` takes a setter (which entries to replace for one index) and the names of its index
axes; the named variants (`kv_patch_layer`, `kv_patch_layer_head`, `kv_patch_layer_kind`,
`kv_patch_layer_position`) are partial applications of it, as `get_act_patch_*` are in TransformerLens.

Three paths compute the same patched logits (tested to 1e-5): the HF module (a `DynamicCache` holding
the patched prefix, then one forward over positions from `at`), a TransformerLens bridge (hooks on
`hook_rot_k` / `hook_v` overwrite every prefix position with the patched prefix in a forward over the
whole sequence) and nnsight (the same overwrite at the attention's key norm / key projection and
value projection, keys rotated back to before RoPE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from leakage.engine.cache import cache_layers
from leakage.config import EvictionConfig
from leakage.engine.memory import row_batches
from leakage.engine.views import check_token_ids, hf_module, input_device, is_bridge, is_nnsight, vocab_size
from leakage.engine.hooks import key_hook, value_hook
from leakage.memento.mask import additive_mask, memento_mask
from leakage.memento.positions import part_labels, trace_positions
from leakage.memento.spans import parse_spans
from leakage.stats import percentile_interval, resample

WHICH = ("keys", "values", "both")


@dataclass
class KV:
    """Keys and values of a prefix, (batch, layer, kv_head, position, d_head) each: post-RoPE keys and
    values exactly as the cache holds them."""

    keys: torch.Tensor
    values: torch.Tensor

    def clone(self) -> "KV":
        return KV(self.keys.clone(), self.values.clone())

    def replaced(self, source: "KV", positions: Sequence[int], keys: bool = True, values: bool = True) -> "KV":
        """A copy whose keys and/or values at `positions` (every layer and head) are `source`'s (a batch of
        one broadcasts)."""
        kv = self.clone()
        for part, chosen in (("keys", keys), ("values", values)):
            if chosen:
                getattr(kv, part)[:, :, :, list(positions)] = getattr(source, part)[:, :, :, list(positions)]
        return kv


@dataclass
class PatchRun:
    """A target batch, a source of replacement KV, and where to patch and measure.

    ids: (B, T) target tokens, T = last query + 1. mask: (B, T, T) the target's memento mask.
    at: the step whose cache is patched; positions [0, at) are the prefix.
    queries: the Q positions whose logits are measured (each predicts the token after it).
    answer: (B, Q, 2) long, at each query the target's and the source's next token (the logit
        difference is target minus source, over the queries where they differ).
    target / source: prefix KV (B, L, H, at, d). held: (B, at) bool, the prefix entries the cache holds
        at `at`. kinds: the structural part of every prefix position (`part_labels`).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    at: int
    queries: list[int]
    answer: torch.Tensor
    target: KV
    source: KV
    held: torch.Tensor
    kinds: list[str]

    def subset(self, rows) -> "PatchRun":
        """The run of the examples at `rows` (indices into the batch, or a slice of it), in that order."""
        rows = torch.arange(len(self.ids))[rows] if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long)
        pick = lambda kv: KV(kv.keys[rows], kv.values[rows])
        return replace(self, ids=self.ids[rows], mask=self.mask[rows], answer=self.answer[rows],
                       target=pick(self.target), source=pick(self.source), held=self.held[rows])

    def with_source(self, source: KV) -> "PatchRun":
        """The same run with another source of replacement KV (mean, zero, restart, ...)."""
        if source.keys.shape != self.target.keys.shape:
            raise ValueError(f"source KV shape {tuple(source.keys.shape)} != target {tuple(self.target.keys.shape)}")
        return replace(self, source=source)


def _batch(ids) -> torch.Tensor:
    rows = [list(r) for r in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"patching needs rows of one length (one layout); got lengths {sorted({len(r) for r in rows})}")
    return torch.tensor(rows, dtype=torch.long)


def _mask(ids: torch.Tensor, tokenizer, eviction: EvictionConfig, prompt_len: Sequence[int] | None) -> torch.Tensor:
    return memento_mask(ids, tokenizer, eviction=eviction, padding_mask=torch.ones_like(ids, dtype=torch.bool),
                        prompt_len=list(prompt_len) if prompt_len is not None else None)


@torch.no_grad()
def prefix_kv(model, ids: torch.Tensor, mask: torch.Tensor, at: int, memory_mb: int | None = None) -> KV:
    """Keys and values of positions [0, at) from masked forwards over them (`mask`: (B, T, T)), read from the
    cache they fill (the HF module of any view: every view computes the same), on the model's device; as many
    rows a forward as `memory_mb` holds (`leakage.engine.memory.rows_per_batch`)."""
    hf, device = hf_module(model), input_device(model)
    parts = []
    for rows in row_batches(model, at, len(ids), memory_mb):
        cache = DynamicCache(config=hf.config)
        batch = ids[rows, :at]
        hf(batch.to(device), attention_mask=additive_mask(mask[rows, :at, :at]).to(device), past_key_values=cache,
           position_ids=torch.arange(at, device=device)[None].expand(len(batch), at), use_cache=True)
        layers = cache_layers(cache)
        parts.append(KV(torch.stack([layer.keys for layer in layers], 1),
                        torch.stack([layer.values for layer in layers], 1)))
    return parts[0] if len(parts) == 1 else KV(torch.cat([p.keys for p in parts]), torch.cat([p.values for p in parts]))


@torch.no_grad()
def patch_run(model, tokenizer, ids, source_ids, eviction: EvictionConfig, at: int, queries: Sequence[int], answer,
              source_eviction: EvictionConfig | None = None, prompt_len: Sequence[int] | None = None) -> PatchRun:
    """A `PatchRun` of target `ids` and source `source_ids` (B, T) under `eviction` (the source under
    `source_eviction`, default the same: e.g. restart decoding for a restart splice of the same ids).
    answer: (B, Q, 2), the target's and the source's token after each of the `queries`."""
    ids, source = _batch(ids), _batch(source_ids)
    if ids.shape != source.shape:
        raise ValueError(f"target {tuple(ids.shape)} and source {tuple(source.shape)} differ in shape")
    queries = sorted(queries)
    if not queries or not 0 < at <= queries[0] or queries[-1] >= ids.shape[1]:
        raise ValueError(f"need 0 < at ({at}) <= every query ({queries}) < sequence length ({ids.shape[1]})")
    answer = torch.as_tensor(answer, dtype=torch.long)
    if answer.shape != (len(ids), len(queries), 2):
        raise ValueError(f"answer has shape {tuple(answer.shape)}; expected (batch, queries, 2) = "
                         f"({len(ids)}, {len(queries)}, 2)")
    check_token_ids(ids.tolist(), vocab_size(model))
    ids, source = ids[:, :queries[-1] + 1], source[:, :queries[-1] + 1]
    mask = _mask(ids, tokenizer, eviction, prompt_len)
    target = prefix_kv(model, ids, mask, at)
    if torch.equal(source, ids) and source_eviction in (None, eviction):  # the same run: its prefix is the target's
        source_kv = target.clone()
    else:
        source_kv = prefix_kv(model, source, _mask(source, tokenizer, source_eviction or eviction, prompt_len), at)
    spans = parse_spans(ids[0].tolist(), tokenizer, prompt_len=prompt_len[0] if prompt_len else None, strict=False)
    return PatchRun(ids=ids, mask=mask, at=at, queries=queries, answer=answer, target=target, source=source_kv,
                    held=mask[:, at, :at].clone(), kinds=part_labels(trace_positions(spans))[:at])


# -- the patched forward, three ways -------------------------------------------------------------------

def suffix_logits(model, run: PatchRun, kv: KV, memory_mb: int | None = None) -> torch.Tensor:
    """(B, Q, V): the logits at `run.queries` of the HF module with `kv` as the cache at step `run.at` (the
    queries from `at` on recomputed), on the CPU beside the run's answers (`kv` on the model's device), in
    batches of examples within `memory_mb` (`in_batches`). Differentiable in `kv` (what
    `leakage.analysis.das` trains through); `patched_logits` is the same without gradients, on any view."""
    return in_batches(_suffix_hf, model, run, kv, memory_mb)


def in_batches(forward: Callable[..., torch.Tensor], model, run: PatchRun, kv: KV,
               memory_mb: int | None = None) -> torch.Tensor:
    """`forward(model, run, kv)` -> (B, ...) over consecutive batches of the run's examples, as many a forward
    over the whole sequence as `memory_mb` MiB hold (None: `$LEAKAGE_MEMORY_MB`, else 8192;
    `leakage.engine.memory.rows_per_batch`), concatenated
    (gradients flow through as through one call)."""
    chunks = row_batches(model, run.ids.shape[1], len(run.ids), memory_mb)
    if len(chunks) == 1:
        return forward(model, run, kv)
    return torch.cat([forward(model, run.subset(rows), KV(kv.keys[rows], kv.values[rows])) for rows in chunks])


def _suffix_hf(model, run: PatchRun, kv: KV) -> torch.Tensor:
    cache = DynamicCache(config=hf_module(model).config)
    for layer in range(kv.keys.shape[1]):
        cache.update(kv.keys[:, layer], kv.values[:, layer], layer)
    B, at, T = len(run.ids), run.at, run.ids.shape[1]
    device = input_device(model)
    positions = torch.arange(at, T, device=device)[None].expand(B, T - at)
    logits = model(run.ids[:, at:].to(device), past_key_values=cache,
                   attention_mask=additive_mask(run.mask[:, at:]).to(device), position_ids=positions,
                   use_cache=True).logits
    return logits[:, [q - at for q in run.queries]].cpu()


def kv_patch_hooks(kv: KV) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks that make a forward over the whole sequence see `kv` (B, L, H, at, d)
    as the cache of positions [0, at): `hook_rot_k` / `hook_v` of every layer are overwritten there
    (hook tensors are (batch, pos, kv_heads, d_head))."""
    at = kv.keys.shape[3]

    def overwrite(tensor, hook, new):
        tensor = tensor.clone()
        tensor[:, :at] = new.transpose(1, 2).to(tensor.dtype)
        return tensor

    hooks = []
    for layer in range(kv.keys.shape[1]):
        hooks.append((key_hook(layer), partial(overwrite, new=kv.keys[:, layer])))
        hooks.append((value_hook(layer), partial(overwrite, new=kv.values[:, layer])))
    return hooks


def _suffix_bridge(bridge, run: PatchRun, kv: KV) -> torch.Tensor:
    device = input_device(bridge)
    ids = run.ids.to(device)
    logits = bridge.run_with_hooks(ids, attention_mask=additive_mask(run.mask).to(device),
                                   position_ids=torch.arange(ids.shape[1], device=device)[None].expand_as(ids),
                                   fwd_hooks=kv_patch_hooks(kv))
    return logits[:, run.queries].cpu()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def unrotate_keys(model, keys: torch.Tensor) -> torch.Tensor:
    """Post-RoPE keys (B, L, H, P, d) at positions 0..P-1 -> the keys before RoPE (RoPE is a rotation
    per position: its inverse rotates by minus the angle)."""
    hf = hf_module(model)
    B, _, _, P, _ = keys.shape
    cos, sin = hf.model.rotary_emb(keys[:, 0].transpose(1, 2), torch.arange(P, device=keys.device)[None].expand(B, P))  # (B, P, d)
    cos, sin = cos[:, None, None], sin[:, None, None]
    return keys * cos - _rotate_half(keys) * sin


def _suffix_nnsight(view, run: PatchRun, kv: KV) -> torch.Tensor:
    at = run.at
    unrotated = unrotate_keys(view, kv.keys)  # (B, L, H, at, d)
    B, L, H, _, d = kv.keys.shape
    layers = view.model.layers
    device = input_device(view)
    ids = run.ids.to(device)
    with view.trace(ids, attention_mask=additive_mask(run.mask).to(device),
                    position_ids=torch.arange(ids.shape[1], device=device)[None].expand_as(ids)):
        for layer in range(L):
            attn = layers[layer].self_attn
            if hasattr(hf_module(view).model.layers[layer].self_attn, "k_norm"):  # keys after QK-norm, before RoPE
                attn.k_norm.output[:, :at] = unrotated[:, layer].transpose(1, 2)
            else:  # no key norm: the projection is the key before RoPE
                attn.k_proj.output[:, :at] = unrotated[:, layer].transpose(1, 2).reshape(B, at, H * d)
            attn.v_proj.output[:, :at] = kv.values[:, layer].transpose(1, 2).reshape(B, at, H * d)
        logits = view.output.logits.save()
    return logits[:, run.queries].cpu()


@torch.no_grad()
def patched_logits(model, run: PatchRun, kv: KV, memory_mb: int | None = None) -> torch.Tensor:
    """(B, Q, V): the logits at `run.queries` when the cache at step `run.at` holds `kv` (any view), on the CPU;
    as many examples a forward as `memory_mb` holds (`leakage.engine.memory.rows_per_batch`)."""
    forward = _suffix_bridge if is_bridge(model) else _suffix_nnsight if is_nnsight(model) else _suffix_hf
    return in_batches(forward, model, run, kv, memory_mb)


# -- metrics --------------------------------------------------------------------------------------------

def logit_difference(logits: torch.Tensor, run: PatchRun) -> torch.Tensor:
    """(B,): logit of the target's token minus the source's, averaged over the queries where they differ
    (logits: (B, Q, V))."""
    target = logits.gather(-1, run.answer[..., :1])[..., 0]  # (B, Q)
    source = logits.gather(-1, run.answer[..., 1:])[..., 0]
    differ = (run.answer[..., 0] != run.answer[..., 1]).float()
    return ((target - source) * differ).sum(-1) / differ.sum(-1).clamp(min=1)


def answer_correct(logits: torch.Tensor, run: PatchRun) -> torch.Tensor:
    """(B,) float: share of the queries whose argmax is the target's token (logits: (B, Q, V))."""
    return (logits.argmax(-1) == run.answer[..., 0]).float().mean(-1)


Metric = Callable[[torch.Tensor, PatchRun], torch.Tensor]


# -- setters: which entries one index replaces ------------------------------------------------------------

def layer_setter(kv: torch.Tensor, source: torch.Tensor, index: tuple, run: PatchRun) -> None:
    (layer,) = index
    kv[:, layer] = source[:, layer]


def layer_head_setter(kv: torch.Tensor, source: torch.Tensor, index: tuple, run: PatchRun) -> None:
    layer, head = index
    kv[:, layer, head] = source[:, layer, head]


def layer_kind_setter(kv: torch.Tensor, source: torch.Tensor, index: tuple, run: PatchRun) -> None:
    layer, kind = index
    positions = [p for p, k in enumerate(run.kinds) if k == kind]
    kv[:, layer, :, positions] = source[:, layer, :, positions]


def layer_position_setter(kv: torch.Tensor, source: torch.Tensor, index: tuple, run: PatchRun) -> None:
    layer, position = index
    kv[:, layer, :, position] = source[:, layer, :, position]


def all_setter(kv: torch.Tensor, source: torch.Tensor, index: tuple, run: PatchRun) -> None:
    kv[:] = source


def _axis_values(model, run: PatchRun, name: str) -> list:
    L, H = run.target.keys.shape[1:3]
    if name == "layer":
        return list(range(L))
    if name == "kv_head":
        return list(range(H))
    if name == "kind":
        held = run.held.any(0)
        return sorted({k for p, k in enumerate(run.kinds) if held[p]}, key=run.kinds.index)
    if name == "position":
        return run.held.any(0).nonzero().flatten().tolist()
    raise ValueError(f"unknown index axis {name!r}; use layer, kv_head, kind or position")


@dataclass
class PatchResult:
    """metric: (*axes, B) per index and example; axes: the axis names; labels: each axis's values."""

    metric: torch.Tensor
    axes: tuple[str, ...]
    labels: tuple[list, ...]
    which: str

    def frame(self, clean: torch.Tensor | None = None, corrupted: torch.Tensor | None = None,
              n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
        """One row per index: mean metric with a 95% example-bootstrap interval; given the clean and
        corrupted metrics (B,), also the effect normalised to 0 = clean, 1 = corrupted (ratio of means)."""
        values = self.metric.reshape(-1, self.metric.shape[-1]).double().numpy()  # (cells, B)
        draws = resample(values.shape[1], n_resamples, seed)  # one set of example draws for every cell
        rows = []
        grid = np.stack(np.meshgrid(*[np.arange(len(l)) for l in self.labels], indexing="ij"), -1).reshape(-1, len(self.axes))
        for cell, index in zip(values, grid):
            row = {axis: labels[i] for axis, labels, i in zip(self.axes, self.labels, index)}
            low, high = percentile_interval(cell[draws].mean(1))
            row.update(which=self.which, metric=cell.mean(), metric_low=low, metric_high=high)
            if clean is not None and corrupted is not None:
                c, k = clean.double().numpy(), corrupted.double().numpy()
                low, high = percentile_interval(_normalised(cell[draws], c[draws], k[draws]))
                row.update(effect=_normalised(cell, c, k), effect_low=low, effect_high=high)
            rows.append(row)
        return pd.DataFrame(rows)


def _normalised(values: np.ndarray, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """(mean(values) - mean(clean)) / (mean(corrupted) - mean(clean)) over the last axis (examples)."""
    return (values.mean(-1) - clean.mean(-1)) / (corrupted.mean(-1) - clean.mean(-1))


@torch.no_grad()
def generic_kv_patch(model, run: PatchRun, patch_setter, index_axis_names: tuple[str, ...], which: str = "both",
                     metric: Metric = logit_difference, progress: Callable | None = None) -> PatchResult:
    """For every index over `index_axis_names`, replace the target's prefix entries `patch_setter` picks
    (keys, values or both) with the source's, run the patched forward and score it with `metric`.

    Returns a `PatchResult` of shape (*axes, B). `progress`, if given, wraps the index iterator (tqdm).
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    labels = tuple(_axis_values(model, run, name) for name in index_axis_names)
    shape = tuple(len(l) for l in labels)
    out = torch.zeros(*shape, len(run.ids))
    cells = list(np.ndindex(*shape))
    for cell in (progress(cells) if progress else cells):
        index = tuple(l[i] for l, i in zip(labels, cell))
        kv = run.target.clone()
        if which in ("keys", "both"):
            patch_setter(kv.keys, run.source.keys, index, run)
        if which in ("values", "both"):
            patch_setter(kv.values, run.source.values, index, run)
        out[cell] = metric(patched_logits(model, run, kv), run)
    return PatchResult(out, index_axis_names, labels, which)


kv_patch_layer = partial(generic_kv_patch, patch_setter=layer_setter, index_axis_names=("layer",))
kv_patch_layer_head = partial(generic_kv_patch, patch_setter=layer_head_setter, index_axis_names=("layer", "kv_head"))
kv_patch_layer_kind = partial(generic_kv_patch, patch_setter=layer_kind_setter, index_axis_names=("layer", "kind"))
kv_patch_layer_position = partial(generic_kv_patch, patch_setter=layer_position_setter,
                                  index_axis_names=("layer", "position"))


def clean_and_corrupted(model, run: PatchRun, metric: Metric = logit_difference) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) metric of the unpatched target and of the fully patched one (every prefix entry from the source)."""
    return metric(patched_logits(model, run, run.target), run), metric(patched_logits(model, run, run.source), run)
