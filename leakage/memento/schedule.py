"""The eviction schedule: spans + `EvictionConfig` -> which logical ranges leave the cache, and when.

This module is the one place the eviction rule lives. `leakage.memento.mask` (the dense training/analysis
mask), `leakage.memento.kv.simulate_kv` (model-free KV accounting) and `leakage.engine.decode.Decoder` (physical
eviction while decoding) all consume it; nobody else re-derives eviction.

Two kinds of event, both pure data:

* `Eviction(block, start, end, before)`: block `block`'s positions [start, end) leave the cache before
  the query at position `before` is computed, so `before` and every later query no longer see them.
* `Recompute(block, start, at, hidden)`: restart mode. Positions [start, at] are (re)computed in the
  step that feeds position `at`, after that step's evictions, so they see exactly what `at` sees;
  `hidden` is a range they additionally do not see although it stays in the cache (legacy timing only).

Default timing: the official engine's (microsoft/memento, vLLM overlay: `BlockMaskingProcessor`,
driven by the scheduler on every *sampled* token). The tracker sees a token when it is sampled and
compacts at once, before the forward pass that feeds that token:

* `keep_last_n_blocks = N >= 0`: block j's `<|summary_end|>` at position s evicts block j-N before
  query s, so the `<|summary_end|>` row (and its cached key/value) never sees the block it closes;
* `keep_last_block_for_answer` (the engine implements it for N = 0 only; for N > 0 it changes
  nothing): block j is evicted at the next `<|block_start|>` instead, before that delimiter's query;
  the block(s) before `</think>` are never evicted and stay visible to the answer;
* `restart`: the evicted range is always `<|block_start|>` .. `<|block_end|>` inclusive (whatever
  `mask_delimiters` says), and computation rewinds to the `<|summary_start|>` of the block whose
  summary just ended: [summary_start, trigger] is recomputed without the evicted range.

`EvictionConfig(summary_end_sees_block=True)` is this package's earlier timing, kept as a named,
non-default option (the paper's unreleased training mask may have used it): evictions take effect one
query later (from s + 1), and restart re-encodes block j's retained tail (`<|block_end|>` when
delimiters are kept, the gap tokens and the memento through `<|summary_end|>`) with block j hidden,
as soon as j's memento completes, whatever N; `keep_last_block_for_answer` defers block j to block
j+N+1's `<|block_start|>` for every N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from leakage.config import EvictionConfig
from leakage.memento.spans import BlockSpan, TraceSpans


@dataclass(frozen=True)
class Eviction:
    """Block `block`'s logical positions [start, end) are gone for every query at `before` or later.

    trigger: the position of the token whose sampling triggered it (`<|summary_end|>`, or the next
    `<|block_start|>` when deferred); `before` is `trigger` (the engine) or `trigger + 1`
    (`summary_end_sees_block`).
    """

    block: int
    start: int
    end: int
    trigger: int
    before: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Recompute:
    """Restart: positions [start, at] are recomputed in the step that feeds `at`, after its evictions.

    hidden: a half-open range the recomputed positions do not see although it stays in the cache
    (only under `summary_end_sees_block=True`; the engine recomputes after evicting instead).
    """

    block: int
    start: int
    at: int
    hidden: tuple[int, int] | None = None


@dataclass(frozen=True)
class StepEvents:
    """What the token at one position triggers: evictions (their `before` is this position or the next)
    and at most one recomputation ending at this position."""

    evictions: tuple[Eviction, ...] = ()
    recompute: Recompute | None = None


NO_EVENTS = StepEvents()


def evicted_range(block: BlockSpan, eviction: EvictionConfig) -> tuple[int, int]:
    """Half-open [start, end) of the positions that leave the cache when `block` is evicted."""
    if eviction.restart and not eviction.summary_end_sees_block:
        return block.masked_range(mask_delimiters=True)  # the engine's restart range, whatever mask_delimiters says
    return block.masked_range(eviction.mask_delimiters)


def _defers(eviction: EvictionConfig) -> bool:
    """Whether evictions wait for the next `<|block_start|>` (keep_last_block_for_answer, as implemented)."""
    if not eviction.keep_last_block_for_answer:
        return False
    return eviction.summary_end_sees_block or eviction.keep_last_n_blocks == 0


def events_at(blocks: Sequence[BlockSpan], block: int, position: int, eviction: EvictionConfig) -> StepEvents:
    """The events the token at `position` triggers, O(1).

    Args:
        blocks: the sequence's blocks as parsed so far (a `SpanTracker`'s or a `TraceSpans`'s).
        block: the block index of `position` (`TraceSpans.block_index[position]`; -1 outside blocks).
        position: a logical position whose token has been fed to the tracker.
    """
    if not eviction.evicts or block < 0:
        return NO_EVENTS
    keep = eviction.keep_last_n_blocks
    current = blocks[block]
    legacy = eviction.summary_end_sees_block
    if position == current.block_start and _defers(eviction):
        target = block - 1 - keep  # the block this delimiter lets go of
        if target < 0:
            return NO_EVENTS
        lo, hi = evicted_range(blocks[target], eviction)
        event = Eviction(target, lo, hi, trigger=position, before=position)
        if eviction.restart and not legacy:  # rewind to the flushed block's summary
            return StepEvents((event,), Recompute(target, blocks[target].summary_start, position))
        return StepEvents((event,))
    if position != current.summary_end:
        return NO_EVENTS
    evictions: tuple[Eviction, ...] = ()
    target = block - keep
    if target >= 0 and not _defers(eviction):
        lo, hi = evicted_range(blocks[target], eviction)
        evictions = (Eviction(target, lo, hi, trigger=position, before=position + 1 if legacy else position),)
    recompute = None
    if eviction.restart and legacy:  # re-encode this block's retained tail without the block
        lo, hi = current.masked_range(eviction.mask_delimiters)
        recompute = Recompute(block, hi, position, hidden=(lo, hi))
    elif eviction.restart and evictions:  # the engine: rewind to the summary that triggered the eviction
        recompute = Recompute(block, current.summary_start, position)
    return StepEvents(evictions, recompute)


@dataclass(frozen=True)
class EvictionSchedule:
    """Every event of one sequence, in the order they happen."""

    evictions: tuple[Eviction, ...]
    recomputes: tuple[Recompute, ...]


def eviction_schedule(spans: TraceSpans, eviction: EvictionConfig) -> EvictionSchedule:
    """All eviction and restart events of one parsed sequence under `eviction`. O(T)."""
    evictions, recomputes = [], []
    for position, block in enumerate(spans.block_index):
        events = events_at(spans.blocks, block, position, eviction)
        evictions += events.evictions
        if events.recompute is not None:
            recomputes.append(events.recompute)
    return EvictionSchedule(tuple(evictions), tuple(recomputes))
