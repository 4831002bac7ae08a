"""Spans + `EvictionConfig` -> the memento attention mask. Pure torch; never touches a model.

`mask[q, k]` is True when query position q may attend to key position k. The mask is what one
dense forward needs to compute exactly what eviction decoding computes (`leakage.engine.decode`): it is
read off the eviction schedule (`leakage.memento.schedule`, the one place the rule lives):

* causal: k <= q;
* an `Eviction` of [start, end) before position b hides those keys from every query q >= b;
* a `Recompute` (restart) of [start, at]: those rows are computed in the step that feeds `at`, so
  they see what `at` sees (every eviction with `before <= at`), minus its `hidden` range.

Worked example: 2 blocks, `keep_last_n_blocks=0`, `mask_delimiters=False`, the engine's timing
(B = block delimiter, r = reasoning, S = summary delimiter, m = memento, P = prompt, T = <think>)::

    >>> print(format_mask(mask, spans))   # rows: queries, columns: keys
               P T B r r B S m S B r B S m S
     0 P       1 . . . . . . . . . . . . . .
     1 T       1 1 . . . . . . . . . . . . .
     2 B       1 1 1 . . . . . . . . . . . .
     3 r       1 1 1 1 . . . . . . . . . . .
     4 r       1 1 1 1 1 . . . . . . . . . .
     5 B       1 1 1 1 1 1 . . . . . . . . .
     6 S       1 1 1 1 1 1 1 . . . . . . . .
     7 m       1 1 1 1 1 1 1 1 . . . . . . .
     8 S       1 1 1 0 0 1 1 1 1 . . . . . .
     9 B       1 1 1 0 0 1 1 1 1 1 . . . . .
    10 r       1 1 1 0 0 1 1 1 1 1 1 . . . .
    11 B       1 1 1 0 0 1 1 1 1 1 1 1 . . .
    12 S       1 1 1 0 0 1 1 1 1 1 1 1 1 . .
    13 m       1 1 1 0 0 1 1 1 1 1 1 1 1 1 .
    14 S       1 1 1 0 0 1 1 1 1 1 1 0 1 1 1

Block 0's `<|summary_end|>` (position 8) is sampled, the block's reasoning (3, 4) is evicted, and only
then is position 8 fed: its own row no longer sees them (with `summary_end_sees_block=True` row 8 would
still see them and they would vanish from row 9 on). The memento (6-8) and the delimiters (2, 5) stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from leakage.config import EvictionConfig
from leakage.memento.schedule import EvictionSchedule, eviction_schedule
from leakage.memento.spans import SpanKind, TraceSpans, as_marker_ids, parse_spans

_NEVER = torch.iinfo(torch.long).max


@dataclass(frozen=True)
class Unrolled:
    """Restart decoding unrolled into one forward: every version of every computed row, and who sees whom.

    Restart decoding computes the memento span twice: first token by token while its block is visible
    (those rows predict the memento's tokens), then again, after the eviction, in the step that feeds
    `<|summary_end|>` (the recomputed keys and values are what later tokens see). An unrolled sequence
    holds both versions: rows are (logical position, step computed in); a recomputed range [s, a]
    appears as the stale copy s..a-1 followed by the recomputation s..a. Without restart, every
    position appears once and the unrolled sequence is the sequence itself.

    index: (T',) long, the logical position (token and RoPE position) of each row.
    step: (T',) long, the decoding step whose forward computed the row.
    final: (T',) bool, the row is the version the cache ends up holding (False: a stale copy).
    predicts: (T',) bool, the row's logits are the decoder's prediction of token index + 1 (exactly one
        row per logical position).
    mask: (T', T') bool, row q may attend row k.
    """

    index: torch.Tensor
    step: torch.Tensor
    final: torch.Tensor
    predicts: torch.Tensor
    mask: torch.Tensor


def unroll(spans: TraceSpans, eviction: EvictionConfig = EvictionConfig()) -> Unrolled:
    """The unrolled forward of one parsed sequence under `eviction` (see `Unrolled`).

    Row q sees key row k when k is causal (index[k] <= index[q]), the key version exists at q's step
    (step[k] <= step[q], and a stale copy is gone once its recomputation ran), the key's position has
    not been evicted before q's step, and (legacy timing) the recomputation does not hide it.
    """
    T = len(spans)
    schedule = eviction_schedule(spans, eviction) if eviction.evicts else EvictionSchedule((), ())
    hidden_from = torch.full((T,), _NEVER)  # per logical key: the first step that no longer sees it
    for event in schedule.evictions:
        hidden_from[event.start:event.end] = torch.clamp(hidden_from[event.start:event.end], max=event.before)
    recompute_at = {r.at: r for r in schedule.recomputes}
    stale_until = torch.full((T,), _NEVER)  # per logical position: the step its first version is replaced
    for r in schedule.recomputes:
        stale_until[r.start:r.at] = r.at
    stale = stale_until.tolist()
    index, step, final, replaced = [], [], [], []
    for p in range(T):
        if p in recompute_at:  # the recomputation, rows start..p, all in step p
            rows = list(range(recompute_at[p].start, p + 1))
            index += rows
            step += [p] * len(rows)
            final += [True] * len(rows)
            replaced += [_NEVER] * len(rows)
        else:
            index.append(p)
            step.append(p)
            final.append(stale[p] == _NEVER)
            replaced.append(stale[p])
    index_t, step_t = torch.tensor(index, dtype=torch.long), torch.tensor(step, dtype=torch.long)
    final_t, replaced_t = torch.tensor(final), torch.tensor(replaced, dtype=torch.long)
    mask = ((index_t[None, :] <= index_t[:, None]) & (step_t[None, :] <= step_t[:, None])
            & (step_t[:, None] < replaced_t[None, :]) & still_cached(step_t, hidden_from[index_t]))
    for r in schedule.recomputes:
        if r.hidden is not None:
            lo, hi = r.hidden
            rows = step_t == r.at
            mask[rows[:, None] & ((index_t >= lo) & (index_t < hi))[None, :]] = False
    predicts = ~final_t | (stale_until[index_t] == _NEVER)  # a recomputed row predicts where no stale copy did
    return Unrolled(index=index_t, step=step_t, final=final_t, predicts=predicts, mask=mask)


def still_cached(query_step: torch.Tensor, hidden_from: torch.Tensor) -> torch.Tensor:
    """The eviction rule as a mask: (..., Q, K) bool, True where a query computed in step `query_step` (Q,) still
    finds key k in the cache, i.e. before the step `hidden_from[..., k]` (..., K) that evicted it (`_NEVER`: never
    evicted). The memento schedule's evictions (`unroll`) and a press's per-head decisions
    (`leakage.engine.press.press_masks`) both become masks through it."""
    return query_step[:, None] < hidden_from[..., None, :]


def mask_from_spans(spans: TraceSpans, eviction: EvictionConfig = EvictionConfig()) -> torch.Tensor:
    """Bool "may attend" matrix [T, T] for one parsed sequence under `eviction` (see module docstring):
    the final rows of its unrolled forward (`unroll`)."""
    unrolled = unroll(spans, eviction)
    final = unrolled.final
    return unrolled.mask[final][:, final]


def memento_mask(ids, tokenizer, keep_last_n_blocks: int = 0, mask_delimiters: bool = False,
                 restart: bool = False, *, eviction: EvictionConfig | None = None,
                 keep_last_block_for_answer: bool = False, summary_end_sees_block: bool = False,
                 padding_mask: torch.Tensor | None = None, prompt_len: int | Sequence[int] | None = None,
                 plain_prompt: bool = True, strict: bool = True) -> torch.Tensor:
    """The memento attention mask for token ids, True = may attend.

    Args:
        ids: 1-D [T] token ids -> returns [T, T]; 2-D [B, T] padded batch -> returns [B, T, T].
        tokenizer: HF tokenizer with the Memento markers, or a `leakage.memento.spans.MarkerIds`.
        eviction: the eviction spec (`EvictionConfig`). The flat keywords (keep_last_n_blocks,
            mask_delimiters, restart, keep_last_block_for_answer, summary_end_sees_block) are a
            shorthand for it; pass one or the other.
        padding_mask: [B, T], 1/True for real tokens (left or right padding, real tokens contiguous).
            Default for 2-D ids: `ids != tokenizer.pad_token_id` when the tokenizer has a pad token.
        prompt_len / plain_prompt / strict: passed to `parse_spans` (prompt_len per row for a batch).

    Padding rows (queries at pad positions) attend only to themselves, so that no softmax row is
    empty; pad keys are never attended by real queries.
    """
    flat = EvictionConfig(keep_last_n_blocks=keep_last_n_blocks, mask_delimiters=mask_delimiters, restart=restart,
                          keep_last_block_for_answer=keep_last_block_for_answer,
                          summary_end_sees_block=summary_end_sees_block)
    if eviction is None:
        eviction = flat
    elif flat != EvictionConfig():
        raise ValueError("memento_mask: pass either eviction= or the flat keywords, not both")
    ids = torch.as_tensor(ids)
    markers = as_marker_ids(tokenizer)
    if ids.dim() == 1:
        spans = parse_spans(ids.tolist(), markers, prompt_len=prompt_len, plain_prompt=plain_prompt, strict=strict)
        return mask_from_spans(spans, eviction)
    if ids.dim() != 2:
        raise ValueError(f"ids must be 1-D [T] or 2-D [B, T], got shape {tuple(ids.shape)}")

    B, T = ids.shape
    if padding_mask is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        padding_mask = ids != pad_id if pad_id is not None else torch.ones_like(ids, dtype=torch.bool)
    padding_mask = torch.as_tensor(padding_mask).bool()
    if padding_mask.shape != ids.shape:
        raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} != ids shape {tuple(ids.shape)}")
    prompt_lens = prompt_len if isinstance(prompt_len, Sequence) else [prompt_len] * B
    if len(prompt_lens) != B:
        raise ValueError(f"prompt_len has {len(prompt_lens)} entries for a batch of {B} rows")

    out = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # (B, T, T): pad rows see themselves
    marker_ids = torch.tensor(sorted(markers.all_ids))
    by_layout: dict[tuple, torch.Tensor] = {}  # a row's mask depends only on where its markers sit
    for row in range(B):
        bounds = real_bounds(padding_mask[row], row)
        if bounds is None:
            continue
        start, stop = bounds
        tokens = ids[row, start:stop]
        where = torch.isin(tokens, marker_ids).nonzero().flatten()
        layout = (stop - start, prompt_lens[row], tuple(where.tolist()), tuple(tokens[where].tolist()))
        if layout not in by_layout:
            try:
                spans = parse_spans(tokens.tolist(), markers, prompt_len=prompt_lens[row], plain_prompt=plain_prompt,
                                    strict=strict)
            except ValueError as err:
                raise ValueError(f"batch row {row} (real tokens from position {start}): {err}") from err
            by_layout[layout] = mask_from_spans(spans, eviction)
        out[row, start:stop, start:stop] = by_layout[layout]
    return out


def real_bounds(real: torch.Tensor, row: int = 0) -> tuple[int, int] | None:
    """[start, stop) of one row's real tokens from its padding mask (T,); None for an all-pad row.

    Raises if the real tokens are not contiguous (padding in the middle).
    """
    where = real.nonzero().flatten()
    if len(where) == 0:
        return None
    if where[-1] - where[0] + 1 != len(where):
        raise ValueError(f"batch row {row}: real tokens are not contiguous (padding in the middle, "
                         f"first gap after position {_first_gap(where)})")
    return int(where[0]), int(where[-1]) + 1


def _first_gap(real: torch.Tensor) -> int:
    gaps = (real[1:] - real[:-1] != 1).nonzero().flatten()
    return int(real[gaps[0]])


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bool mask [T, T] or [B, T, T] -> the additive float form HF accepts, [B, 1, T, T].

    0 where attention is allowed, the dtype's most negative finite value where it is not.
    """
    if mask.dim() == 2:
        mask = mask[None]
    zeros = torch.zeros(mask.shape, dtype=dtype)
    return zeros.masked_fill(~mask, torch.finfo(dtype).min)[:, None]  # (B, 1, T, T)


_KIND_LETTERS = {SpanKind.PROMPT: "P", SpanKind.BLOCK: "r", SpanKind.BLOCK_DELIM: "B", SpanKind.MEMENTO: "m",
                 SpanKind.MEMENTO_DELIM: "S", SpanKind.ANSWER: "a", SpanKind.OTHER: "T"}


def format_mask(mask: torch.Tensor, spans: TraceSpans | None = None) -> str:
    """Render a [T, T] bool mask as a 0/1 grid ('.' above the diagonal), labelled by span kind."""
    T = mask.shape[0]
    letters = [_KIND_LETTERS[k] for k in spans.kinds] if spans is not None else ["" for _ in range(T)]
    lines = ["           " + " ".join(letters)]
    for q in range(T):
        cells = ["." if k > q else str(int(mask[q, k])) for k in range(T)]
        lines.append(f"{q:>2} {letters[q]:<7} " + " ".join(cells))
    return "\n".join(lines)
