"""Memento decoding: a block tracker per sequence plus physical KV eviction, on an HF causal LM.

Every token keeps its original (logical) position id; once a block's memento is complete its entries
are removed from every layer's keys and values (`leakage.cache`). This computes exactly what one dense
forward with `memento_mask` computes — the invariant the tests check:

    teacher_force(model, tok, ids, cfg).logits  ==  model(ids, attention_mask=memento_mask(ids, tok, **cfg.mask_kwargs()))

Entry points:
* `generate(model, tokenizer, prompt_ids, config, ...)`: greedy or sampled decoding of a batch.
* `teacher_force(model, tokenizer, ids, config)`: feed given sequences step by step, keep the logits.

`model` may be the HF module, a TransformerLens `TransformerBridge` over it (hooks fire every step),
or an `nnsight.NNsight` wrapper (pass `intervention=fn(view)`, run inside each step's trace).

Restart mode: when a memento completes, its entries (and a retained `<|block_end|>`) are dropped and
re-encoded in one forward with the block hidden; the next token is predicted from that re-encoding.
In `teacher_force` results the logits at re-encoded positions are those of the re-encoding pass.

Malformed generated streams never crash a batch: the tracker runs with `strict=False`, records the
problem in `SequenceResult.malformed`, and treats the token as an ordinary token of its context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from leakage.cache import SlotTable, attention_mask, compact
from leakage.config import EvictionConfig
from leakage.kv import KVTrace
from leakage.spans import SpanKind, SpanTracker, TraceSpans, as_marker_ids, parse_spans

Forward = Callable[[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor], torch.Tensor]
"""(input_ids (B, q), cache, additive mask (B, 1, q, S+q), position_ids (B, q)) -> logits (B, q, V)."""


def _is_nnsight(model) -> bool:
    return any(cls.__name__ == "NNsight" for cls in type(model).__mro__)


def _is_bridge(model) -> bool:
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)


def hf_module(model):
    """The underlying HF module of an HF model, a TransformerBridge or an NNsight wrapper."""
    if _is_bridge(model):
        return model.original_model
    if _is_nnsight(model):
        return model._module
    return model


def forward_fn(model, intervention: Callable | None = None) -> Forward:
    """One decode-step forward for any of the three model views."""
    if _is_nnsight(model):
        def nnsight_forward(ids, cache, mask, positions):
            with model.trace(ids, past_key_values=cache, attention_mask=mask, position_ids=positions,
                             use_cache=True):
                if intervention is not None:
                    intervention(model)
                logits = model.output.logits.save()
            return logits
        return nnsight_forward
    if intervention is not None:
        raise ValueError("intervention= needs an nnsight.NNsight view; use bridge hooks for a TransformerBridge")
    if _is_bridge(model):  # returns logits directly
        return lambda ids, cache, mask, positions: model(ids, past_key_values=cache, attention_mask=mask,
                                                         position_ids=positions, use_cache=True)
    return lambda ids, cache, mask, positions: model(ids, past_key_values=cache, attention_mask=mask,
                                                     position_ids=positions, use_cache=True).logits


@dataclass
class SequenceResult:
    """One decoded sequence.

    ids: prompt + response token ids. kv: cache size while each fed position was computed (the last
    generated token, never fed back, has none). forced_block_ends: positions where `<|block_end|>`
    was forced by `max_block_tokens`. Recorded only with `record_cache=True`: attended[p], the
    logical positions query p attended; cache_after[p], the positions held in the cache once step p
    and its evictions are done (None for prompt positions before the last, prefilled together).
    """

    ids: list[int]
    prompt_len: int
    kv: KVTrace
    malformed: list[tuple[int, str]] = field(default_factory=list)
    forced_block_ends: list[int] = field(default_factory=list)
    attended: list[list[int]] | None = None
    cache_after: list[list[int] | None] | None = None

    @property
    def response(self) -> list[int]:
        return self.ids[self.prompt_len:]


@dataclass
class GenerationResult:
    sequences: list[SequenceResult]
    cache_slots: list[int]  # physical length S of the cache tensors at each forward (max over rows)

    @property
    def tokens(self) -> list[list[int]]:
        """Generated tokens per sequence (prompt excluded)."""
        return [s.response for s in self.sequences]


@dataclass
class TeacherForceResult:
    logits: torch.Tensor  # (B, T_max, V), zero beyond each row's length
    lengths: list[int]
    sequences: list[SequenceResult]


@dataclass
class _Row:
    ids: list[int]
    prompt_len: int
    tracker: SpanTracker
    counts: list[int] = field(default_factory=list)
    attended: list[list[int]] | None = None
    cache_after: list[list[int] | None] | None = None
    forced: list[int] = field(default_factory=list)
    done: bool = False

    def result(self) -> SequenceResult:
        return SequenceResult(ids=self.ids, prompt_len=self.prompt_len,
                              kv=KVTrace(cached_tokens=self.counts, prompt_len=self.prompt_len),
                              malformed=list(self.tracker.errors), forced_block_ends=self.forced,
                              attended=self.attended, cache_after=self.cache_after)


class Decoder:
    """The stepping API under `generate`/`teacher_force`: a batched cache, its slot table, one tracker per row.

    `prefill()` encodes the prompts; each `step(tokens)` feeds one token per row (None: idle) and
    applies the evictions (and restart re-encodings) those tokens trigger. Use it directly to time or
    intervene between steps; `rows[b].ids`, `table` and `cache` expose the state.
    """

    def __init__(self, model, tokenizer, config: EvictionConfig, prompts: list[list[int]],
                 record_cache: bool = False, intervention: Callable | None = None):
        self.config = config
        self.markers = as_marker_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.forward = forward_fn(model, intervention)
        self.cache = DynamicCache(config=hf_module(model).config)
        self.rows = [_Row(ids=list(p), prompt_len=len(p),
                          tracker=SpanTracker(self.markers, prompt_len=len(p), plain_prompt=False, strict=False),
                          attended=[] if record_cache else None, cache_after=[] if record_cache else None)
                     for p in prompts]
        self.table = SlotTable.empty(len(prompts))
        self.cache_slots: list[int] = []

    # -- one forward over q new tokens per row -------------------------------------------------
    def _run(self, tokens: list[list[int]], positions: list[list[int]], hidden: torch.Tensor | None = None):
        """Feed each row its new tokens (a row may have none) right-padded to q; returns logits (B, q, V)."""
        B, q = len(tokens), max(len(t) for t in tokens)
        ids = torch.full((B, q), self.pad_id)
        pos = torch.zeros(B, q, dtype=torch.long)
        new_valid = torch.zeros(B, q, dtype=torch.bool)
        for b, (t, p) in enumerate(zip(tokens, positions)):
            ids[b, :len(t)] = torch.tensor(t, dtype=torch.long)
            pos[b, :len(p)] = torch.tensor(p, dtype=torch.long)
            new_valid[b, :len(t)] = True
        mask = attention_mask(self.table, new_valid, hidden)
        self.cache_slots.append(self.table.n_slots + q)
        with torch.no_grad():
            logits = self.forward(ids, self.cache, mask, pos)
        self.table.append(new_valid, pos)
        return logits

    def _record(self, b: int, new_positions: list[int], hidden: torch.Tensor | None = None) -> None:
        """KV count and attended positions for the new tokens of row b (before they are appended)."""
        row = self.rows[b]
        visible = self.table.valid[b] if hidden is None else self.table.valid[b] & ~hidden[b]
        cached = sorted(self.table.positions[b][visible].tolist())
        for i, p in enumerate(new_positions):
            if p >= len(row.counts):
                row.counts.append(len(cached) + i + 1)
            if row.attended is not None:
                seen = cached + new_positions[:i + 1]
                if p < len(row.attended):
                    row.attended[p] = seen
                else:
                    row.attended.append(seen)

    def _evict(self, drop: torch.Tensor, b: int, block_index: int) -> None:
        if block_index < 0:
            return
        lo, hi = self.rows[b].tracker.blocks[block_index].masked_range(self.config.mask_delimiters)
        drop[b] |= self.table.select(b, lo, hi)

    # -- public steps -----------------------------------------------------------------------------
    def prefill(self) -> torch.Tensor:
        """Encode every prompt (causal, no blocks in prompts); returns logits (B, P_max, V), row-aligned left."""
        for row in self.rows:
            row.tracker.feed_all(row.ids)
        positions = [list(range(len(r.ids))) for r in self.rows]
        for b, p in enumerate(positions):
            self._record(b, p)
        logits = self._run([r.ids for r in self.rows], positions)
        self._record_cache_after([list(range(len(r.ids))) for r in self.rows])
        return logits

    def _record_cache_after(self, new_positions: list[list[int]]) -> None:
        for b, row in enumerate(self.rows):
            if row.cache_after is None or not new_positions[b]:
                continue
            row.cache_after += [None] * (len(new_positions[b]) - 1) + [self.table.row_positions(b)]

    def step(self, tokens: list[int | None]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Feed one token per row (None: row idle). Returns next-token logits (B, V) and, for rows
        that re-encoded a memento (restart), the re-encoding's logits (span, V) keyed by row."""
        cfg, keep = self.config, self.config.keep_last_n_blocks
        drop = torch.zeros_like(self.table.valid)
        new_tokens, new_positions, completed = [], [], []
        for b, (row, token) in enumerate(zip(self.rows, tokens)):
            if token is None:
                new_tokens.append([])
                new_positions.append([])
                continue
            pos = len(row.ids)
            row.ids.append(token)
            kind = row.tracker.feed(token)
            blocks = row.tracker.blocks
            if cfg.evicts and kind == SpanKind.BLOCK_DELIM and blocks[-1].block_start == pos:
                if cfg.keep_last_block_for_answer:
                    self._evict(drop, b, len(blocks) - 2 - keep)  # deferred eviction, before this step
            if kind == SpanKind.MEMENTO_DELIM and blocks[-1].summary_end == pos:
                completed.append(b)
            new_tokens.append([token])
            new_positions.append([pos])
        if drop.any():
            compact(self.cache, self.table, drop)
        for b, p in enumerate(new_positions):
            self._record(b, p)
        logits = self._run(new_tokens, new_positions)[:, -1]  # (B, V)

        reencoded = self._restart(completed) if cfg.restart and completed else {}
        for b, span_logits in reencoded.items():
            logits[b] = span_logits[-1]
        if cfg.evicts and not cfg.keep_last_block_for_answer and completed:
            drop = torch.zeros_like(self.table.valid)
            for b in completed:
                self._evict(drop, b, len(self.rows[b].tracker.blocks) - 1 - keep)
            compact(self.cache, self.table, drop)
        self._record_cache_after(new_positions)
        return logits, reencoded

    def _restart(self, rows: list[int]) -> dict[int, torch.Tensor]:
        """Drop each completed memento's entries and re-encode them with their block hidden."""
        drop = torch.zeros_like(self.table.valid)
        spans = {}
        for b in rows:
            block = self.rows[b].tracker.blocks[-1]
            _, start = block.masked_range(self.config.mask_delimiters)
            spans[b] = (block, start)
            drop[b] |= self.table.select(b, start, block.summary_end + 1)
        compact(self.cache, self.table, drop)
        hidden = torch.zeros_like(self.table.valid)
        tokens, positions = [[] for _ in self.rows], [[] for _ in self.rows]
        for b, (block, start) in spans.items():
            lo, hi = block.masked_range(self.config.mask_delimiters)
            hidden[b] = self.table.select(b, lo, hi)
            positions[b] = list(range(start, block.summary_end + 1))
            tokens[b] = self.rows[b].ids[start:block.summary_end + 1]
            self._record(b, positions[b], hidden)
        logits = self._run(tokens, positions, hidden)
        return {b: logits[b, :len(positions[b])] for b in spans}


def _as_batch(ids) -> list[list[int]]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = list(ids)
    if ids and isinstance(ids[0], int):
        return [ids]
    return [list(r) for r in ids]


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """Pick the next token from logits (V,): greedy when temperature == 0, else sampled (top-k, top-p)."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        cutoff = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(0, order, outside), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def generate(model, tokenizer, prompt_ids, config: EvictionConfig = EvictionConfig(), *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_at_eos: bool = True, record_cache: bool = False,
             intervention: Callable | None = None) -> GenerationResult:
    """Decode a batch of prompts with Memento block eviction.

    Args:
        prompt_ids: one prompt (list of ids / 1-D tensor) or a batch of them (ragged is fine).
        config: what to evict; `EvictionConfig(keep_last_n_blocks=-1)` is vanilla decoding.
        max_new_tokens / stop_at_eos: stopping rules per sequence.
        temperature, top_k, top_p, seed: sampling (temperature 0 = greedy); one generator for the batch.
        record_cache: keep per-position attended / cached positions (see `SequenceResult`).
        intervention: for an nnsight view, `fn(view)` run inside every step's trace.
    """
    prompts = _as_batch(prompt_ids)
    if any(len(p) == 0 for p in prompts):
        raise ValueError(f"empty prompt at batch index {[len(p) for p in prompts].index(0)}: nothing to predict from")
    decoder = Decoder(model, tokenizer, config, prompts, record_cache, intervention)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = tokenizer.eos_token_id
    prefill_logits = decoder.prefill()
    next_logits = torch.stack([prefill_logits[b, len(p) - 1] for b, p in enumerate(prompts)])
    generated = [0] * len(prompts)
    while True:
        tokens: list[int | None] = []
        for b, row in enumerate(decoder.rows):
            if row.done:
                tokens.append(None)
                continue
            token = _forced_token(row, config, decoder.markers)
            if token is None:
                token = sample_next(next_logits[b], temperature, top_k, top_p, generator)
            else:
                row.forced.append(len(row.ids))
            generated[b] += 1
            if (stop_at_eos and token == eos) or generated[b] >= max_new_tokens:
                row.ids.append(token)  # kept in the output, never fed back
                row.done = True
                tokens.append(None)
            else:
                tokens.append(token)
        if all(t is None for t in tokens):
            break
        next_logits, _ = decoder.step(tokens)
    return GenerationResult(sequences=[r.result() for r in decoder.rows], cache_slots=decoder.cache_slots)


def _forced_token(row: _Row, config: EvictionConfig, markers) -> int | None:
    """`<|block_end|>` when the open block already holds `max_block_tokens` reasoning tokens."""
    if config.max_block_tokens is None:
        return None
    spans = row.tracker
    if not spans.blocks or spans.blocks[-1].block_end is not None:
        return None
    reasoning = len(row.ids) - spans.blocks[-1].block_start - 1
    return markers.block_end if reasoning >= config.max_block_tokens else None


def teacher_force(model, tokenizer, ids, config: EvictionConfig = EvictionConfig(), *,
                  prompt_len: int | Sequence[int | None] | None = None, record_cache: bool = False,
                  intervention: Callable | None = None) -> TeacherForceResult:
    """Feed given sequences through eviction decoding one token at a time and return every position's logits.

    Args:
        ids: one sequence or a ragged batch of them.
        prompt_len: prompt length per sequence (prefilled in one forward); default: up to the first
            `<think>` (as `parse_spans` finds it).
    Returns logits (B, T_max, V): row b, position p holds the prediction for token p + 1.
    """
    seqs = _as_batch(ids)
    lens = prompt_len if isinstance(prompt_len, Sequence) else [prompt_len] * len(seqs)
    lens = [n if n is not None else parse_spans(s, tokenizer, strict=False).prompt_len for s, n in zip(seqs, lens)]
    lens = [max(n, 1) for n in lens]  # at least one prefilled token to predict from
    decoder = Decoder(model, tokenizer, config, [s[:n] for s, n in zip(seqs, lens)], record_cache, intervention)
    T = max(len(s) for s in seqs)
    prefill = decoder.prefill()
    out = torch.zeros(len(seqs), T, prefill.shape[-1])
    for b, n in enumerate(lens):
        out[b, :n] = prefill[b, :n]
    for t in range(min(lens), T):
        tokens = [s[t] if n <= t < len(s) else None for s, n in zip(seqs, lens)]
        if all(tok is None for tok in tokens):
            continue
        logits, reencoded = decoder.step(tokens)
        for b, tok in enumerate(tokens):
            if tok is not None:
                out[b, t] = logits[b]
        for b, span_logits in reencoded.items():
            end = t + 1
            out[b, end - len(span_logits):end] = span_logits
    return TeacherForceResult(logits=out, lengths=[len(s) for s in seqs],
                              sequences=[r.result() for r in decoder.rows])


def spans_of(result: SequenceResult, tokenizer) -> TraceSpans:
    """The lenient parse of a decoded sequence: the spans its evictions followed."""
    return parse_spans(result.ids, tokenizer, prompt_len=result.prompt_len, plain_prompt=False, strict=False)
