"""Score-based KV eviction (NVIDIA's `kvpress` presses) at Memento's eviction moments, with Memento's budget.

Memento drops whole blocks; a press drops the entries its score ranks lowest, separately in every layer and
KV head. To compare them on the same footing a press acts exactly when Memento evicts (before the query at
each `Eviction.before` of the schedule, `leakage.memento.schedule`) and keeps, in every layer and KV head,
as many entries as Memento's cache holds at that moment (`press_moments`): the comparison is budget-matched
by construction. Between moments nothing is evicted.

    moments = press_moments(spans, EvictionConfig())             # [(before, keep), ...]
    run = press_forward(model, ids, moments, make_press("knorm")) # teacher-forced, physical eviction
    run.logits                                                   # (B, T, V)
    run.dropped_at                                               # (L, B, H_kv, T): when each entry left

`press_forward` feeds a batch chunk by chunk (the tokens between two moments in one forward, which computes
what token-by-token decoding computes, since nothing is evicted in between) and, at each moment, scores
every layer's cached keys with the press's own `score(module, hidden_states, keys, values, attentions,
kwargs)` (the hidden states and attention kwargs of the chunk just fed, as kvpress's forward hook passes
them) and physically keeps the top `keep` entries per KV head, as `ScorerPress.compress` does. We call the
scoring function rather than `press(model)`, whose hook compresses only while prefilling, and pick the
top-k ourselves to keep an exact entry count (kvpress derives it from a compression ratio) and to know
which positions left. `press_masks(run.dropped_at)` turns the decisions into per-layer, per-head attention
masks; one dense forward with them (`masked_forward`) computes what the eviction computed (the tests check
it for every press, as `leakage.engine.decode` is checked against `memento_mask`).

kvpress 0.5.5 declares transformers<5.3; its scoring functions work with the pinned transformers 5.x and
it is installed without its dependency pins (`constraints-nodeps.txt`, read by `.ci/run` and the README).
The presses' windows are scaled to toy traces (tens of tokens between moments, not thousands): `PRESSES`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from leakage.config import EvictionConfig
from leakage.engine.cache import SlotTable, attention_mask, cache_layers
from leakage.engine.views import hf_module, input_device
from leakage.memento.schedule import eviction_schedule
from leakage.memento.mask import still_cached
from leakage.memento.spans import TraceSpans


def _import_kvpress() -> None:
    """Import kvpress, undoing what its import does to transformers: it wraps every registered attention function
    (`patch_attention_functions`, for the head-wise masking of its AdaKV-style presses, which we do not use: we
    evict physically) in a wrapper with another call signature, which breaks attention functions registered
    before it (`leakage.engine.precision`'s). The registry is put back as it was."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if "kvpress" in sys.modules:
        return
    saved = {name: ALL_ATTENTION_FUNCTIONS[name] for name in ALL_ATTENTION_FUNCTIONS}
    importlib.import_module("kvpress")

    for name, function in saved.items():
        ALL_ATTENTION_FUNCTIONS[name] = function


def _presses() -> dict[str, Callable]:
    _import_kvpress()
    from kvpress import ExpectedAttentionPress, KnormPress, SnapKVPress, StreamingLLMPress

    return {
        "streaming_llm": lambda: StreamingLLMPress(n_sink=4),  # first 4 entries and the most recent ones
        "knorm": lambda: KnormPress(),  # keep the keys of smallest norm
        "snapkv": lambda: SnapKVPress(window_size=4, kernel_size=3),  # attention of the last 4 queries
        "expected_attention": lambda: ExpectedAttentionPress(n_future_positions=64, n_sink=4),
    }


PRESSES = ("streaming_llm", "knorm", "snapkv", "expected_attention")
"""The kvpress presses by name. Settings differ from kvpress's defaults only where those assume long contexts:
SnapKV's observation window (64 -> 4 queries: the chunk between two moments must be longer than it) and its
pooling kernel (5 -> 3), expected attention's horizon (512 -> 64 future positions)."""


def make_press(name: str):
    """A fresh kvpress press by name (`PRESSES`)."""
    presses = _presses()
    if name not in presses:
        raise ValueError(f"unknown press {name!r}; choose one of {sorted(presses)}")
    return presses[name]()


@dataclass(frozen=True)
class PressMoment:
    """Before the query at `before` is computed, every layer and KV head keeps `keep` of its cached entries."""

    before: int
    keep: int


def press_moments(spans: TraceSpans, eviction: EvictionConfig = EvictionConfig(),
                  budget: float | None = None) -> list[PressMoment]:
    """Memento's eviction moments of one parsed sequence and the budget at each.

    budget: None keeps what Memento's cache holds at that moment (positions before it minus every range
    evicted by then); a fraction in (0, 1] keeps that share of the positions before it (at least one).
    """
    if not eviction.evicts or eviction.restart:
        raise ValueError(f"presses act at Memento's eviction moments: need keep_last_n_blocks >= 0 and no restart, "
                         f"got {eviction}")
    if budget is not None and not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be a fraction in (0, 1] or None (Memento's), got {budget}")
    evictions = eviction_schedule(spans, eviction).evictions
    moments = []
    for before in sorted({e.before for e in evictions}):
        if budget is None:
            keep = before - sum(e.size for e in evictions if e.before <= before)
        else:
            keep = max(1, round(budget * before))
        moments.append(PressMoment(before, keep))
    return moments


@dataclass
class PressRun:
    """A teacher-forced batch under a press.

    logits: (B, T, V). dropped_at: (L, B, H_kv, T) long, the position of the first query that no longer sees
    each key (T: never dropped). held: (L, B, H_kv, S) long, the logical positions the final cache holds
    (ascending); keys / values: (L, B, H_kv, S, d_head), those entries as cached (post-RoPE keys).
    """

    logits: torch.Tensor
    dropped_at: torch.Tensor
    held: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor

    def retained(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values, present) at `positions` (B, P) long: keys and values (B, L, H_kv, P, d_head) as the final
        cache holds them, zero where an entry was dropped; present (B, L, H_kv, P) bool."""
        match = self.held[:, :, :, :, None] == positions[None, :, None, None, :]  # (L, B, H, S, P)
        present = match.any(3)  # (L, B, H, P)
        slot = match.to(torch.int64).argmax(3)  # (L, B, H, P); 0 where absent, masked below
        index = slot[..., None].expand(*slot.shape, self.keys.shape[-1])
        gate = present[..., None].to(self.keys.dtype)
        keys = self.keys.gather(3, index) * gate
        values = self.values.gather(3, index) * gate
        return keys.transpose(0, 1), values.transpose(0, 1), present.transpose(0, 1)


@contextlib.contextmanager
def _attention_inputs(attention_modules, rotary):
    """Record each attention module's latest hidden states and forward kwargs; lend it the model's rotary
    embedding (`module.rotary_emb`, which kvpress's expected-attention press reads) for the duration."""
    seen: dict[int, tuple[torch.Tensor, dict]] = {}

    def recorder(index):
        def hook(module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            seen[index] = (hidden, kwargs)
        return hook

    handles = [m.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, m in enumerate(attention_modules)]
    lent = [m for m in attention_modules if not hasattr(m, "rotary_emb")]
    for module in lent:
        module.rotary_emb = rotary
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
        for module in lent:
            del module.rotary_emb


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer (kvpress presses score through them): Llama-like
    architectures (`model.model.layers[i].self_attn` with `q_proj`, as kvpress requires); others are refused."""
    hf = hf_module(model)
    layers = getattr(getattr(hf, "model", None), "layers", None)
    if layers is None or not all(hasattr(getattr(layer, "self_attn", None), "q_proj") for layer in layers):
        raise ValueError(f"kvpress presses score through Llama-like attention (model.model.layers[i].self_attn.q_proj); "
                         f"{type(hf).__name__} has none")
    return [layer.self_attn for layer in layers]


@torch.no_grad()
def press_forward(model, ids: torch.Tensor, moments: Sequence[PressMoment], press) -> PressRun:
    """Teacher-force `ids` (B, T) (rows of one layout: the moments hold for every row) under `press` acting at
    `moments` (module docstring); physical eviction per layer and KV head."""
    hf = hf_module(model)
    B, T = ids.shape
    device = input_device(model)
    ids = ids.to(device)
    modules = attention_modules(model)
    cache = DynamicCache(config=hf.config)
    held = None  # (L, B, H, S) logical positions in the cache
    dropped_at = None
    logits = []
    bounds = [m.before for m in moments] + [T]
    if bounds != sorted(bounds) or bounds[0] < 1 or bounds[-1] > T or len(set(bounds)) != len(bounds):
        raise ValueError(f"press moments {[m.before for m in moments]} must increase strictly within 1..{T - 1}")
    start = 0
    with _attention_inputs(modules, hf.model.rotary_emb) as seen:
        for moment, end in zip([None, *moments], bounds):
            if moment is not None:
                held, dropped_at = _compress(press, modules, seen, cache, held, dropped_at, moment, T)
            q = end - start
            slots = 0 if held is None else held.shape[-1]
            table = SlotTable(valid=torch.ones(B, slots, dtype=torch.bool), positions=torch.zeros(B, slots, dtype=torch.long))
            mask = attention_mask(table, torch.ones(B, q, dtype=torch.bool), dtype=hf.dtype).to(device)
            positions = torch.arange(start, end, device=device)[None].expand(B, q)
            out = hf(input_ids=ids[:, start:end], position_ids=positions, attention_mask=mask, past_key_values=cache,
                     use_cache=True)
            logits.append(out.logits)
            fed = torch.arange(start, end, device=device).expand(len(modules), B, cache_layers(cache)[0].keys.shape[1], q)
            held = fed if held is None else torch.cat([held, fed], dim=-1)
            if dropped_at is None:
                dropped_at = torch.full((len(modules), B, fed.shape[2], T), T, dtype=torch.long, device=device)
            start = end
    layers = cache_layers(cache)
    return PressRun(logits=torch.cat(logits, dim=1), dropped_at=dropped_at, held=held,
                    keys=torch.stack([layer.keys for layer in layers]), values=torch.stack([layer.values for layer in layers]))


def _compress(press, modules, seen, cache, held, dropped_at, moment: PressMoment, T: int):
    """Keep `moment.keep` entries per layer and KV head, ranked by the press's score; record what left."""
    kept_positions = []
    for index, (module, layer) in enumerate(zip(modules, cache_layers(cache))):
        size = layer.keys.shape[2]
        if moment.keep > size:
            raise ValueError(f"press moment before position {moment.before}: budget {moment.keep} exceeds the "
                             f"{size} cached entries")
        if hasattr(press, "compression_ratio"):  # presses that rank by position (StreamingLLM) read it
            press.compression_ratio = 1.0 - (moment.keep + 0.5) / size
        hidden, kwargs = seen[index]
        scores = press.score(module, hidden, layer.keys, layer.values, None, kwargs)  # (B, H, S)
        order = scores.topk(moment.keep, dim=-1).indices.sort(dim=-1).values  # (B, H, keep), by slot
        gather = order[..., None].expand(*order.shape, layer.keys.shape[-1])
        layer.keys = layer.keys.gather(2, gather)
        layer.values = layer.values.gather(2, gather)
        kept_positions.append(held[index].gather(-1, order))
    kept = torch.stack(kept_positions)  # (L, B, H, keep)
    gone = torch.ones(*held.shape[:3], T, dtype=torch.bool, device=held.device)
    gone.scatter_(-1, kept, False)
    was_held = torch.zeros_like(gone)
    was_held.scatter_(-1, held, True)
    dropped_at = torch.where(gone & was_held & (dropped_at == T), torch.full_like(dropped_at, moment.before), dropped_at)
    return kept, dropped_at


def press_masks(dropped_at: torch.Tensor, n_heads: int) -> list[torch.Tensor]:
    """Per layer, the bool "may attend" mask (B, n_heads, T, T) of a press's decisions `dropped_at` (L, B, H_kv, T):
    query q sees key k when k <= q and q comes before the moment k was dropped (query heads share their KV
    head's entries, grouped as HF's `repeat_kv` groups them)."""
    L, B, H, T = dropped_at.shape
    if n_heads % H:
        raise ValueError(f"{n_heads} query heads cannot share {H} KV heads")
    query = torch.arange(T, device=dropped_at.device)
    causal = query[None, :] <= query[:, None]  # (T, T)
    return [(still_cached(query, layer) & causal).repeat_interleave(n_heads // H, dim=1)  # layer: (B, H, T)
            for layer in dropped_at]


@torch.no_grad()
def masked_forward(model, ids: torch.Tensor, layer_masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits (B, T, V) of one dense forward in which layer l attends through `layer_masks[l]` (B, heads, T, T)
    bool (`press_masks`), installed as each attention module's mask."""
    hf = hf_module(model)
    modules = attention_modules(model)
    if len(layer_masks) != len(modules):
        raise ValueError(f"{len(layer_masks)} masks for {len(modules)} layers")
    device = input_device(model)
    additive = [torch.zeros(m.shape, dtype=hf.dtype, device=device).masked_fill(~m.to(device), torch.finfo(hf.dtype).min)
                for m in layer_masks]

    def install(index):
        def hook(module, args, kwargs):
            kwargs["attention_mask"] = additive[index]
            return args, kwargs
        return hook

    handles = [m.register_forward_pre_hook(install(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        return hf(input_ids=ids.to(device), use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
