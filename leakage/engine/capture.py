"""Capture: activations at named sites of a batch, from one memento-masked forward.

    captured = capture(model, tokenizer, sequences, EvictionConfig(), {"m2": "memento@2"})
    captured.keys["m2"]     # (batch, layer, kv_head, position, d_head): post-norm, post-RoPE, as cached
    captured.values["m2"]   # (batch, layer, kv_head, position, d_head)

One dense forward over the right-padded batch with the memento mask of `eviction` (built once per
batch) computes, at every position, the keys and values that eviction decoding leaves in its cache
for that position (tested against `leakage.engine.decode` for every eviction spec). Keys and values are read
from the HF `DynamicCache` the forward fills, stored as the model's precision stores them
(`leakage.engine.precision.kv_storage`), so they are exactly what the cache holds, per KV head
(GQA-aware), for any HF causal LM and through any of the three views (HF module, TransformerLens
bridge, nnsight). Optionally also the residual stream entering each layer (`resid_pre`) and the
attention patterns of the sites' queries (`pattern`).

Sites are `leakage.memento.positions.Site`s (or their "part@block" strings); each row's positions come from
its own parse, plus task-declared parts when `positions` is given (`Example.positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from transformers import DynamicCache

from leakage.engine.cache import cache_layers
from leakage.config import EvictionConfig
from leakage.engine.views import check_token_ids, hf_module, input_device, is_bridge, is_nnsight, vocab_size
from leakage.engine.hooks import attn_pattern_hook, resid_pre_hook
from leakage.engine.precision import kv_storage
from leakage.memento.mask import additive_mask, memento_mask
from leakage.memento.positions import Site, TracePositions, trace_positions
from leakage.memento.spans import parse_spans

ACTIVATIONS = ("keys", "values", "resid_pre", "pattern")
AXES = {
    "keys": ("batch", "layer", "kv_head", "position", "d_head"),
    "values": ("batch", "layer", "kv_head", "position", "d_head"),
    "resid_pre": ("batch", "layer", "position", "d_model"),
    "pattern": ("batch", "layer", "head", "position", "key"),
}
"""Named axes of each captured activation (per site). `key` runs over the padded batch's positions."""


@dataclass
class Captured:
    """Activations per site name (each with the axes of `AXES`), and where the sites sit.

    positions[site]: (batch, position) long, each row's logical positions, -1 where a row has fewer;
    valid[site]: (batch, position) bool. logits: (batch, T, vocab) of the masked forward (None if not asked for).
    """

    sites: dict[str, Site]
    positions: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    keys: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    resid_pre: dict[str, torch.Tensor]
    pattern: dict[str, torch.Tensor]
    logits: torch.Tensor | None

    axes = AXES


def _named_sites(sites) -> dict[str, Site]:
    if isinstance(sites, Mapping):
        return {name: Site.parse(s) if isinstance(s, str) else s for name, s in sites.items()}
    parsed = [Site.parse(s) if isinstance(s, str) else s for s in sites]
    return {str(s): s for s in parsed}


class _AllKVCached(Exception):
    """Raised by `_KVOnlyCache` once the last layer's keys and values are in the cache."""


class _KVOnlyCache(DynamicCache):
    """A `DynamicCache` that ends the forward once its last layer is stored: what would follow (that layer's
    attention and MLP, the final norm, the LM head) changes no key or value (TransformerLens' `stop_at_layer`,
    for the HF module)."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        stored = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == len(self.layers) - 1:
            raise _AllKVCached
        return stored


def _forward(model, ids, mask, position_ids, want_resid: bool, want_pattern: bool, logits: bool = True):
    """(cache, logits or None, resid_pre per layer [L x (B, T, d)] or None, patterns [L x (B, H, T, T)] or None),
    the cache holding every layer's keys and values. On the HF module, when neither logits nor other activations
    are asked for, the cache is a `_KVOnlyCache`: the forward stops once the last layer's keys and values are in."""
    kv_only = not (logits or want_resid or want_pattern or is_bridge(model) or is_nnsight(model))
    cache = (_KVOnlyCache if kv_only else DynamicCache)(config=hf_module(model).config)
    kwargs = dict(attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
    if is_bridge(model):
        L = hf_module(model).config.num_hidden_layers
        names = ([resid_pre_hook(i) for i in range(L)] if want_resid else []) + \
                ([attn_pattern_hook(i) for i in range(L)] if want_pattern else [])
        out, acts = model.run_with_cache(ids, names_filter=lambda n: n in names, **kwargs)
        resid = [acts[resid_pre_hook(i)] for i in range(L)] if want_resid else None
        pattern = [acts[attn_pattern_hook(i)] for i in range(L)] if want_pattern else None
        return cache, out if logits else None, resid, pattern
    extra = dict(output_hidden_states=want_resid, output_attentions=want_pattern)
    if not logits:
        extra["logits_to_keep"] = 1  # the LM head over every position: a large share of a real vocabulary's cost
    if is_nnsight(model):
        with model.trace(ids, **kwargs, **extra):
            out = model.output.save()
    else:
        try:
            out = model(ids, **kwargs, **extra)
        except _AllKVCached:
            return cache, None, None, None
    L = len(cache_layers(cache))
    resid = list(out.hidden_states[:L]) if want_resid else None  # the input of each layer
    pattern = list(out.attentions) if want_pattern else None
    return cache, out.logits if logits else None, resid, pattern


@torch.no_grad()
def capture(model, tokenizer, sequences, eviction: EvictionConfig, sites, at: Sequence[str] = ("keys", "values"), *,
            prompt_len: int | Sequence[int | None] | None = None,
            positions: Sequence[TracePositions] | None = None, prefix_only: bool = False,
            logits: bool = True) -> Captured:
    """One memento-masked forward over a right-padded batch; activations `at` the named `sites`.

    Args:
        sequences: a batch of token-id sequences (ragged is fine), or a 2-D tensor without padding.
        eviction: the eviction spec whose memento mask the forward uses.
        sites: {name: Site or "part@block"}, or a list of them (named by their string form).
        at: activations to capture, a subset of `ACTIVATIONS`.
        prompt_len: per-row prompt lengths for the parse (default: up to `<think>`).
        positions: per-row `TracePositions` (e.g. `Example.positions`) to resolve task-declared parts;
            default: each row's structural parts from its own parse.
        prefix_only: forward only the batch's positions up to its last site position (the mask is the
            full sequence's, cut to that prefix: every captured activation is the same, since nothing
            at a position depends on later ones); `logits` then cover that prefix only.
        logits: False: no logits (`Captured.logits` is None), for callers that read keys and values alone; the HF
            module's forward then stops once the last layer's keys and values are cached, when only keys and
            values are asked for.
    Inputs are built on the CPU and moved to the model's input device (`leakage.engine.views.input_device`);
    captured tensors stay on the device they were computed on.
    Raises `KeyError` naming the row and site when a row lacks a site.
    """
    unknown = set(at) - set(ACTIVATIONS)
    if unknown:
        raise ValueError(f"unknown activations {sorted(unknown)}; choose from {ACTIVATIONS}")
    rows = [list(s) for s in (sequences.tolist() if isinstance(sequences, torch.Tensor) else sequences)]
    B, T = len(rows), max(len(r) for r in rows)
    lens = prompt_len if isinstance(prompt_len, Sequence) else [prompt_len] * B
    check_token_ids(rows, vocab_size(model))
    named = _named_sites(sites)
    if positions is None:
        positions = [trace_positions(parse_spans(r, tokenizer, prompt_len=n)) for r, n in zip(rows, lens)]
    if len(positions) != B:
        raise ValueError(f"positions has {len(positions)} entries for {B} sequences")

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((B, T), pad, dtype=torch.long)
    real = torch.zeros(B, T, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        real[b, :len(r)] = True
    mask = additive_mask(memento_mask(ids, tokenizer, eviction=eviction, padding_mask=real, prompt_len=list(lens)))
    where = {name: _site_positions(positions, site) for name, site in named.items()}  # (B, P), -1 = none
    if prefix_only:
        T = 1 + max([int(w.max()) for w in where.values() if w.numel()] + [0])
        ids, mask = ids[:, :T], mask[..., :T, :T]
    device = input_device(model)
    ids, mask = ids.to(device), mask.to(device)
    position_ids = torch.arange(T, device=device)[None].expand(B, T)
    cache, out_logits, resid, pattern = _forward(model, ids, mask, position_ids, "resid_pre" in at, "pattern" in at,
                                                 logits)

    layers = list(zip(kv_storage(model), cache_layers(cache)))  # as the cache stores them:
    keys = torch.stack([storage.keys(layer.keys) for storage, layer in layers], 1)  # (B, L, kv_heads, T, d_head)
    values = torch.stack([storage.values(layer.values) for storage, layer in layers], 1)
    out = Captured(sites=named, positions={}, valid={}, keys={}, values={}, resid_pre={}, pattern={},
                   logits=out_logits)
    for name in named:
        valid = (where[name] >= 0).to(device)
        index = where[name].clamp(min=0).to(device)  # (B, P); invalid slots read position 0 and are zeroed below
        out.positions[name], out.valid[name] = where[name], valid
        if "keys" in at:
            out.keys[name] = _gather(keys, index, valid, position_axis=3)
        if "values" in at:
            out.values[name] = _gather(values, index, valid, position_axis=3)
        if "resid_pre" in at:
            out.resid_pre[name] = _gather(torch.stack(resid, 1), index, valid, position_axis=2)
        if "pattern" in at:
            out.pattern[name] = _gather(torch.stack(pattern, 1), index, valid, position_axis=3)
    return out


def _site_positions(positions: Sequence[TracePositions], site: Site) -> torch.Tensor:
    """(B, P) long: each row's positions of `site`, right-padded with -1."""
    per_row = []
    for b, row_positions in enumerate(positions):
        try:
            per_row.append(row_positions.select(site))
        except KeyError as err:
            raise KeyError(f"row {b}: {err.args[0]}") from None
    where = torch.full((len(per_row), max(len(p) for p in per_row)), -1, dtype=torch.long)
    for b, p in enumerate(per_row):
        where[b, :len(p)] = torch.tensor(p, dtype=torch.long)
    return where


def _gather(tensor: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, position_axis: int) -> torch.Tensor:
    """tensor (B, ..., T at position_axis, ...) -> (B, ..., P, ...) at each row's `index` (B, P); zero where invalid."""
    shape = [1] * tensor.dim()
    shape[0], shape[position_axis] = index.shape
    expand = list(tensor.shape)
    expand[position_axis] = index.shape[1]
    gathered = tensor.gather(position_axis, index.view(shape).expand(expand))
    return gathered * valid.view(shape).to(gathered.dtype)
