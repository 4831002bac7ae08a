"""Memento decoding: one decode loop, a block tracker per sequence, and physical KV eviction.

Every token keeps its original (logical) position id; the eviction schedule (`leakage.memento.schedule`,
the official engine's timing by default) says which entries leave the cache and when, and they are
removed from every layer's keys and values (`leakage.engine.cache`). This computes exactly what one dense
forward with `memento_mask` computes — the invariant the tests check:

    teacher_force(model, tok, ids, cfg).logits  ==  model(ids, attention_mask=additive_mask(memento_mask(ids, tok, eviction=cfg))).logits

`Decoder.run(choose_next, on_step)` is the one decode loop. `choose_next(step, decoder)` picks the
next token of every row (a *policy*); `on_step(step, cache)` sees every forward and may read or edit
the live cache by logical position (`leakage.engine.cache.LiveCache`): that is where KV patching and
ablation during decoding happen, and where the benchmark reads its timings. The entry points are
short policies on it:

* `generate(model, tokenizer, prompt_ids, eviction, ...)`: greedy or sampled decoding of a batch;
* `teacher_force(model, tokenizer, ids, eviction)`: feed given sequences, keep every position's logits;
* `force_policy(...)`: feed given tokens except where a predicate lets the model choose (free-running
  evaluation).

`model` may be the HF module, a TransformerLens `TransformerBridge` over it (hooks fire every step),
or an `nnsight.NNsight` wrapper (pass `intervention=fn(view)`, run inside each step's trace).

Restart mode: when the schedule asks for a recomputation, the row's entries from the rewind point
are dropped and recomputed together with the new token in that step's forward; the logits at the
recomputed positions (`Step.logits`) are those of the recomputation.

Malformed generated streams never crash a batch: the tracker runs with `strict=False`, records the
problem in `SequenceResult.malformed`, and treats the token as an ordinary token of its context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from leakage.engine.cache import LiveCache, SlotTable, attention_mask, compact
from leakage.engine.views import check_token_ids, hf_module, input_device, step_forward, vocab_size
from leakage.config import EvictionConfig
from leakage.memento.kv import KVTrace
from leakage.memento.mask import real_bounds
from leakage.memento.schedule import Eviction, events_at
from leakage.memento.spans import MarkerIds, SpanTracker, TraceSpans, as_marker_ids, parse_spans

@dataclass
class SequenceResult:
    """One decoded sequence.

    ids: prompt + response token ids. kv: cache size while each fed position was first computed (the
    last generated token, never fed back, has none). forced_block_ends: positions where
    `<|block_end|>` was forced by `max_block_tokens`. evictions: every eviction applied, in order.
    attended (only with `record_cache=True`): attended[p], the logical positions query p attended
    when its final keys/values were computed.
    """

    ids: list[int]
    prompt_len: int
    kv: KVTrace
    malformed: list[tuple[int, str]] = field(default_factory=list)
    forced_block_ends: list[int] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
    attended: list[list[int]] | None = None

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
class Step:
    """One forward of the decoder, as `choose_next` and `on_step` see it.

    index: 0 for the prefill, then 1, 2, ...
    positions: per row, the logical positions computed in this forward, in order (empty: row idle;
        more than one: the prefill, or a restart recomputation ending at the new token).
    logits: (B, q, V), row b's logits at `positions[b]`, right-padded.
    evictions: per row, the evictions applied in this step (before or after its forward).
    forward_seconds / evict_seconds: wall time of the forward, and of the tracker + schedule + compaction.
    """

    index: int
    positions: list[list[int]]
    logits: torch.Tensor
    evictions: list[list[Eviction]]
    forward_seconds: float
    evict_seconds: float

    def logits_of(self, row: int) -> torch.Tensor:
        """(n, V): row's logits at `positions[row]`."""
        return self.logits[row, :len(self.positions[row])]

    def next_logits(self, row: int) -> torch.Tensor:
        """(V,): the prediction for row's next token."""
        if not self.positions[row]:
            raise ValueError(f"row {row} computed nothing in step {self.index}: no next-token logits")
        return self.logits[row, len(self.positions[row]) - 1]


Policy = Callable[[Step, "Decoder"], list]
"""choose_next(step, decoder) -> one token id per row, or None (the row feeds nothing this step)."""
OnStep = Callable[[Step, LiveCache], None]


@dataclass
class _Row:
    ids: list[int]
    prompt_len: int
    tracker: SpanTracker
    counts: list[int] = field(default_factory=list)
    attended: list[list[int]] | None = None
    forced: list[int] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
    done: bool = False

    def result(self) -> SequenceResult:
        return SequenceResult(ids=self.ids, prompt_len=self.prompt_len,
                              kv=KVTrace(cached_tokens=self.counts, prompt_len=self.prompt_len),
                              malformed=list(self.tracker.errors), forced_block_ends=self.forced,
                              evictions=self.evictions, attended=self.attended)


class Decoder:
    """A batched cache, its slot table and one block tracker per row; `run` is the decode loop.

    `prefill()` encodes the prompts; each `step(tokens)` feeds one token per row (None: idle),
    applying the evictions and restart recomputations the schedule attaches to those tokens.
    `finish(row, token)` ends a row. `cache` is the live cache by logical position.
    The cache lives on the model's device (`input_device`: each forward's inputs are moved there); the slot
    table, the masks' bookkeeping and the logits a step returns stay on the CPU.
    """

    def __init__(self, model, tokenizer, eviction: EvictionConfig, prompts: list[list[int]],
                 record_cache: bool = False, intervention: Callable | None = None):
        if not prompts:
            raise ValueError("no prompts to decode")
        for b, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"empty prompt at batch index {b}: nothing to predict from")
        self.eviction = eviction
        self.markers = as_marker_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.forward = step_forward(model, intervention)
        self.device = input_device(model)
        self.vocab_size = vocab_size(model)
        self.kv = DynamicCache(config=hf_module(model).config)
        self.rows = [_Row(ids=list(p), prompt_len=len(p),
                          tracker=SpanTracker(self.markers, prompt_len=len(p), plain_prompt=False, strict=False),
                          attended=[] if record_cache else None)
                     for p in prompts]
        self.table = SlotTable.empty(len(prompts))
        self.cache = LiveCache(self.kv, self.table)
        self.cache_slots: list[int] = []
        self.steps = 0

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, choose_next: Policy, on_step: OnStep | None = None) -> list[SequenceResult]:
        """Prefill, then step until every row is done or `choose_next` feeds nothing. `on_step(step,
        cache)` runs after every forward (the prefill included), before the next tokens are chosen."""
        step = self.prefill()
        while True:
            if on_step is not None:
                on_step(step, self.cache)
            tokens = choose_next(step, self)
            if all(t is None for t in tokens):
                break
            step = self.step(tokens)
        return [row.result() for row in self.rows]

    def finish(self, row: int, token: int | None = None) -> None:
        """End a row; `token`, if given, is kept as its last output token but never fed."""
        if token is not None:
            self.rows[row].ids.append(token)
        self.rows[row].done = True

    # -- one forward over the new tokens of every row -----------------------------------------------
    def _run(self, tokens: list[list[int]], positions: list[list[int]], hidden: torch.Tensor | None = None):
        """Feed each row its new tokens (a row may have none) right-padded to q; returns logits (B, q, V)."""
        B, q = len(tokens), max(len(t) for t in tokens)
        check_token_ids(tokens, self.vocab_size, positions)
        ids = torch.tensor([t + [self.pad_id] * (q - len(t)) for t in tokens], dtype=torch.long).view(B, q)
        pos = torch.tensor([p + [0] * (q - len(p)) for p in positions], dtype=torch.long).view(B, q)
        new_valid = torch.arange(q)[None] < torch.tensor([len(t) for t in tokens])[:, None]
        mask = attention_mask(self.table, new_valid, hidden)
        self.cache_slots.append(self.table.n_slots + q)
        with torch.no_grad():  # the slot table stays on the CPU; the cache lives where the model computes
            logits = self.forward(ids.to(self.device), self.kv, mask.to(self.device), pos.to(self.device)).cpu()
        self.table.append(new_valid, pos)
        return logits

    def _record(self, b: int, new_positions: list[int], held: int, hidden: torch.Tensor | None = None) -> None:
        """KV count (`held`: entries physically held before the new tokens) and attended positions for the new
        tokens of row b."""
        row = self.rows[b]
        if not new_positions:
            return
        if row.attended is not None:
            visible = self.table.valid[b] if hidden is None else self.table.valid[b] & ~hidden[b]
            cached = sorted(self.table.positions[b][visible].tolist())
        for i, p in enumerate(new_positions):
            if p >= len(row.counts):
                row.counts.append(held + i + 1)
            if row.attended is not None:
                seen = cached + new_positions[:i + 1]
                if p < len(row.attended):
                    row.attended[p] = seen
                else:
                    row.attended.append(seen)

    def _compact(self, ranges: list[list[tuple[int, int]]]) -> None:
        """Physically remove each row's logical ranges [start, end) from the cache."""
        if not any(ranges):
            return
        drop = torch.zeros_like(self.table.valid)
        for b, row_ranges in enumerate(ranges):
            for lo, hi in row_ranges:
                drop[b] |= self.table.select(b, lo, hi)
        compact(self.kv, self.table, drop)

    # -- public steps -------------------------------------------------------------------------------
    def prefill(self) -> Step:
        """Encode every prompt (causal: prompts are plain text to the tracker) in one forward."""
        for row in self.rows:
            row.tracker.feed_all(row.ids)
        positions = [list(range(len(r.ids))) for r in self.rows]
        for b, (p, held) in enumerate(zip(positions, self.table.valid.sum(1).tolist())):
            self._record(b, p, held)
        start = time.perf_counter()
        logits = self._run([r.ids for r in self.rows], positions)
        return Step(0, positions, logits, [[] for _ in self.rows], time.perf_counter() - start, 0.0)

    def step(self, tokens: list[int | None]) -> Step:
        """Feed one token per row (None: row idle) with the evictions and recomputations it triggers."""
        if len(tokens) != len(self.rows):
            raise ValueError(f"step got {len(tokens)} tokens for {len(self.rows)} rows")
        start = time.perf_counter()
        now, later = [[] for _ in self.rows], [[] for _ in self.rows]  # ranges to drop before / after the forward
        applied = [[] for _ in self.rows]
        hidden_ranges: dict[int, tuple[int, int]] = {}
        new_tokens, new_positions = [], []
        for b, (row, token) in enumerate(zip(self.rows, tokens)):
            if token is None or row.done:
                new_tokens.append([])
                new_positions.append([])
                continue
            pos = len(row.ids)
            row.ids.append(token)
            row.tracker.feed(token)
            events = events_at(row.tracker.blocks, row.tracker.block_index[-1], pos, self.eviction)
            for event in events.evictions:
                (now if event.before == pos else later)[b].append((event.start, event.end))
                applied[b].append(event)
            recompute = events.recompute
            first = pos if recompute is None else recompute.start
            if recompute is not None:
                now[b].append((first, pos))  # the stale entries of the recomputed positions
                if recompute.hidden is not None:
                    hidden_ranges[b] = recompute.hidden
            new_positions.append(list(range(first, pos + 1)))
            new_tokens.append(row.ids[first:pos + 1])
        self._compact(now)
        hidden = None
        if hidden_ranges:
            hidden = torch.zeros_like(self.table.valid)
            for b, (lo, hi) in hidden_ranges.items():
                hidden[b] = self.table.select(b, lo, hi)
        for b, (p, held) in enumerate(zip(new_positions, self.table.valid.sum(1).tolist())):
            self._record(b, p, held, hidden)
        evict_seconds = time.perf_counter() - start
        start = time.perf_counter()
        logits = self._run(new_tokens, new_positions, hidden)
        forward_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self._compact(later)
        evict_seconds += time.perf_counter() - start
        for row, row_applied in zip(self.rows, applied):
            row.evictions += row_applied
        self.steps += 1
        return Step(self.steps, new_positions, logits, applied, forward_seconds, evict_seconds)


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


def forced_block_end(ids: list[int], tracker: SpanTracker, eviction: EvictionConfig, markers: MarkerIds) -> int | None:
    """`<|block_end|>` once the open block holds `max_block_tokens` tokens that are not Memento markers
    (the engine's block length cap); None otherwise."""
    if eviction.max_block_tokens is None or not tracker.blocks or tracker.blocks[-1].block_end is not None:
        return None
    held = markers.block_tokens(ids[tracker.blocks[-1].block_start + 1:])
    return markers.block_end if held >= eviction.max_block_tokens else None


def sampling_policy(tokenizer, eviction: EvictionConfig, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    stop_at_eos: bool = True) -> Policy:
    """Sample (or take the argmax of) every active row's next token; force `<|block_end|>` at the
    block length cap; end a row at EOS or after `max_new_tokens` (the last token is kept, not fed)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = tokenizer.eos_token_id

    def choose(step: Step, decoder: Decoder) -> list[int | None]:
        tokens: list[int | None] = []
        for b, row in enumerate(decoder.rows):
            if row.done:
                tokens.append(None)
                continue
            token = forced_block_end(row.ids, row.tracker, eviction, decoder.markers)
            if token is None:
                token = sample_next(step.next_logits(b), temperature, top_k, top_p, generator)
            else:
                row.forced.append(len(row.ids))
            if (stop_at_eos and token == eos) or len(row.ids) + 1 - row.prompt_len >= max_new_tokens:
                decoder.finish(b, token)
                tokens.append(None)
            else:
                tokens.append(token)
        return tokens

    return choose


def generate(model, tokenizer, prompt_ids, eviction: EvictionConfig = EvictionConfig(), *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_at_eos: bool = True, record_cache: bool = False, intervention: Callable | None = None,
             on_step: OnStep | None = None) -> GenerationResult:
    """Decode a batch of prompts with Memento block eviction.

    Args:
        prompt_ids: one prompt (list of ids / 1-D tensor) or a batch of them (ragged is fine).
        eviction: what to evict; `EVICTION_PRESETS["vanilla"]` is plain causal decoding.
        max_new_tokens / stop_at_eos: stopping rules per sequence (0 new tokens: nothing is generated).
        temperature, top_k, top_p, seed: sampling (temperature 0 = greedy); one generator for the batch.
        record_cache: keep per-position attended positions (see `SequenceResult`).
        intervention: for an nnsight view, `fn(view)` run inside every step's trace.
        on_step: `fn(step, cache)` after every forward (see `Decoder.run`).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive int or None, got {top_k}")
    prompts = _as_batch(prompt_ids)
    decoder = Decoder(model, tokenizer, eviction, prompts, record_cache, intervention)
    if max_new_tokens == 0:
        return GenerationResult(sequences=[r.result() for r in decoder.rows], cache_slots=[])
    policy = sampling_policy(tokenizer, eviction, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
    sequences = decoder.run(policy, on_step)
    return GenerationResult(sequences=sequences, cache_slots=decoder.cache_slots)


def force_policy(sequences: list[list[int]], model_chooses: Callable[[int, int], bool] | None = None,
                 pick: Callable[[int, int, torch.Tensor], int] | None = None) -> Policy:
    """Feed `sequences[b]` token by token, all rows in lockstep over absolute positions; where
    `model_chooses(row, position)` is True the row takes its own token instead (the free-running
    evaluation): `pick(row, position, logits (V,))`, the greedy token by default (a sampler makes RL
    rollouts). A row idles while its prompt is longer than the current position and ends with its
    sequence. The tokens the model chose are in the decoder's `rows[b].ids`."""
    position = [-1]  # the absolute position fed last
    last: dict[int, torch.Tensor] = {}  # row -> its latest next-token logits (rows may idle between)

    def choose(step: Step, decoder: Decoder) -> list[int | None]:
        last.update({b: step.next_logits(b) for b, p in enumerate(step.positions) if p})
        for b, (row, seq) in enumerate(zip(decoder.rows, sequences)):
            if not row.done and len(row.ids) >= len(seq):
                decoder.finish(b)
        active = [len(row.ids) for row in decoder.rows if not row.done]
        if not active:
            return [None] * len(decoder.rows)
        position[0] = t = max(position[0] + 1, min(active))
        tokens: list[int | None] = []
        for b, (row, seq) in enumerate(zip(decoder.rows, sequences)):
            if row.done or len(row.ids) != t:
                tokens.append(None)
            elif model_chooses is not None and model_chooses(b, t):
                tokens.append(int(last[b].argmax()) if pick is None else pick(b, t, last[b]))
            else:
                tokens.append(seq[t])
        return tokens

    return choose


def unpad(ids, tokenizer, padding_mask=None) -> list[list[int]]:
    """A batch as unpadded sequences. A 2-D tensor with `padding_mask` (B, T), 1 for real tokens (left or
    right padding), loses its padding; without one, a row holding the pad token id is refused (pads would
    be fed as tokens)."""
    if padding_mask is None:
        seqs = _as_batch(ids)
        pad = getattr(tokenizer, "pad_token_id", None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and pad is not None:
            for b, row in enumerate(seqs):
                if pad in row:
                    raise ValueError(f"row {b} holds the pad token id {pad} at positions "
                                     f"{[p for p, t in enumerate(row) if t == pad][:5]}: pass padding_mask= (1 for "
                                     "real tokens) or a list of unpadded sequences")
        return seqs
    ids, padding_mask = torch.as_tensor(ids), torch.as_tensor(padding_mask).bool()
    if ids.dim() != 2 or padding_mask.shape != ids.shape:
        raise ValueError(f"padding_mask {tuple(padding_mask.shape)} must match 2-D ids {tuple(ids.shape)}")
    seqs = []
    for b in range(ids.shape[0]):
        bounds = real_bounds(padding_mask[b], b)
        if bounds is None:
            raise ValueError(f"row {b} is all padding")
        seqs.append(ids[b, bounds[0]:bounds[1]].tolist())
    return seqs


def teacher_force(model, tokenizer, ids, eviction: EvictionConfig = EvictionConfig(), *,
                  prompt_len: int | Sequence[int | None] | None = None, padding_mask=None, record_cache: bool = False,
                  intervention: Callable | None = None, on_step: OnStep | None = None) -> TeacherForceResult:
    """Feed given sequences through eviction decoding one token at a time and return every position's logits.

    Args:
        ids: one sequence, a ragged batch of them, or a padded 2-D tensor with `padding_mask`.
        prompt_len: prompt length per sequence (prefilled in one forward); default: up to the first
            `<think>` (as `parse_spans` finds it).
        padding_mask: (B, T), 1 for real tokens, for a padded 2-D `ids` (see `unpad`).
    Returns logits (B, T_max, V) over the *unpadded* sequences: row b, position p holds the prediction
    for token p + 1 of sequence b (at positions a restart recomputed, the recomputation's).
    """
    seqs = unpad(ids, tokenizer, padding_mask)
    lens = prompt_len if isinstance(prompt_len, Sequence) else [prompt_len] * len(seqs)
    if len(lens) != len(seqs):
        raise ValueError(f"prompt_len has {len(lens)} entries for {len(seqs)} sequences")
    lens = [n if n is not None else parse_spans(s, tokenizer, strict=False).prompt_len for s, n in zip(seqs, lens)]
    for b, (s, n) in enumerate(zip(seqs, lens)):
        if not 0 <= n <= len(s) or not s:
            raise ValueError(f"sequence {b}: prompt_len {n} outside 0..{len(s)} (or an empty sequence)")
    lens = [max(n, 1) for n in lens]  # at least one prefilled token to predict from
    decoder = Decoder(model, tokenizer, eviction, [s[:n] for s, n in zip(seqs, lens)], record_cache, intervention)
    out = torch.zeros(0)

    def keep_logits(step: Step, cache: LiveCache) -> None:
        nonlocal out
        if step.index == 0:
            out = torch.zeros(len(seqs), max(len(s) for s in seqs), step.logits.shape[-1])
        for b, positions in enumerate(step.positions):
            if positions:
                out[b, positions[0]:positions[-1] + 1] = step.logits_of(b)
        if on_step is not None:
            on_step(step, cache)

    sequences = decoder.run(force_policy(seqs), keep_logits)
    return TeacherForceResult(logits=out, lengths=[len(s) for s in seqs], sequences=sequences)


def spans_of(result: SequenceResult, tokenizer) -> TraceSpans:
    """The lenient parse of a decoded sequence: the spans its evictions followed."""
    return parse_spans(result.ids, tokenizer, prompt_len=result.prompt_len, plain_prompt=False, strict=False)
