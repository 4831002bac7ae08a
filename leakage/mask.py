"""Spans + eviction spec -> the memento attention mask. Pure torch; never touches a model.

Semantics (`mask[q, k]` is True when query position q may attend to key position k):

* causal: k <= q;
* `keep_last_n_blocks = -1`: nothing else (vanilla causal attention);
* `keep_last_n_blocks = N >= 0`: once block i+N's `<|summary_end|>` sits at position s (for N = 0:
  block i's own), every query q > s loses block i's *masked range* — the reasoning tokens strictly
  between `<|block_start|>` and `<|block_end|>`, or the whole block including both delimiters when
  `mask_delimiters=True`. So the N most recently completed blocks stay visible. Memento tokens (and
  everything outside blocks) are never masked;
* `restart=True`: additionally, every position from the end of block i's masked range through its
  `<|summary_end|>` (the retained `<|block_end|>` if delimiters are kept, and the whole memento) is
  encoded as if block i's masked tokens did not exist. The memento text is unchanged, but its
  keys/values no longer saw the block: the restart ablation of the implicit KV channel.

Worked example: 2 blocks, `keep_last_n_blocks=0`, `mask_delimiters=False` (B = block delimiter,
r = reasoning, S = summary delimiter, m = memento, P = prompt, T = <think>)::

    >>> print(format_mask(mask))          # rows: queries, columns: keys
               P T B r r B S m S B r B S m S
     0 P       1 . . . . . . . . . . . . . .
     1 T       1 1 . . . . . . . . . . . . .
     2 B       1 1 1 . . . . . . . . . . . .
     3 r       1 1 1 1 . . . . . . . . . . .
     4 r       1 1 1 1 1 . . . . . . . . . .
     5 B       1 1 1 1 1 1 . . . . . . . . .
     6 S       1 1 1 1 1 1 1 . . . . . . . .
     7 m       1 1 1 1 1 1 1 1 . . . . . . .
     8 S       1 1 1 1 1 1 1 1 1 . . . . . .
     9 B       1 1 1 0 0 1 1 1 1 1 . . . . .
    10 r       1 1 1 0 0 1 1 1 1 1 1 . . . .
    11 B       1 1 1 0 0 1 1 1 1 1 1 1 . . .
    12 S       1 1 1 0 0 1 1 1 1 1 1 1 1 . .
    13 m       1 1 1 0 0 1 1 1 1 1 1 1 1 1 .
    14 S       1 1 1 0 0 1 1 1 1 1 1 1 1 1 1

After block 0's `<|summary_end|>` (position 8) its two reasoning tokens (3, 4) are gone for every later
query; the memento (6-8) and the delimiters (2, 5) stay. ("." marks the causal upper triangle.)
"""

from __future__ import annotations

from typing import Sequence

import torch

from leakage.spans import SpanKind, TraceSpans, as_marker_ids, parse_spans

_NEVER = torch.iinfo(torch.long).max


def mask_from_spans(spans: TraceSpans, keep_last_n_blocks: int = 0, mask_delimiters: bool = False,
                    restart: bool = False, keep_last_block_for_answer: bool = False) -> torch.Tensor:
    """Bool "may attend" matrix [T, T] for one parsed sequence (see module docstring).

    `keep_last_block_for_answer` defers each eviction from block i+N's `<|summary_end|>` to the next
    `<|block_start|>` (that delimiter already no longer sees block i): the block(s) before `</think>`
    are then never evicted and stay visible to the answer.
    """
    if keep_last_n_blocks < -1:
        raise ValueError(f"keep_last_n_blocks must be -1, 0 or a positive int, got {keep_last_n_blocks}")
    T = len(spans)
    query = torch.arange(T)[:, None]  # (T, 1)
    key = torch.arange(T)[None, :]  # (1, T)
    allowed = key <= query  # (T, T) causal
    if keep_last_n_blocks == -1:
        return allowed

    blocks = spans.blocks
    hidden_from = torch.full((T,), _NEVER)  # per key: first query position that can no longer see it
    restart_lo = torch.full((T,), _NEVER)  # per key: queries in [restart_lo, restart_hi] re-encode without it
    restart_hi = torch.full((T,), -1)
    for block in blocks:
        if block.block_end is None:
            continue
        lo, hi = block.masked_range(mask_delimiters)
        evicting = block.index + keep_last_n_blocks
        if keep_last_block_for_answer:
            if evicting + 1 < len(blocks):
                hidden_from[lo:hi] = blocks[evicting + 1].block_start
        elif evicting < len(blocks) and blocks[evicting].is_complete:
            hidden_from[lo:hi] = blocks[evicting].summary_end + 1
        if restart and block.is_complete:
            restart_lo[lo:hi] = hi
            restart_hi[lo:hi] = block.summary_end
    allowed &= query < hidden_from[None, :]
    if restart:
        allowed &= ~((query >= restart_lo[None, :]) & (query <= restart_hi[None, :]))
    return allowed


def memento_mask(ids, tokenizer, keep_last_n_blocks: int = 0, mask_delimiters: bool = False,
                 restart: bool = False, *, keep_last_block_for_answer: bool = False, padding_mask: torch.Tensor | None = None,
                 prompt_len: int | Sequence[int] | None = None, plain_prompt: bool = True,
                 strict: bool = True) -> torch.Tensor:
    """The memento attention mask for token ids, True = may attend.

    Args:
        ids: 1-D [T] token ids -> returns [T, T]; 2-D [B, T] padded batch -> returns [B, T, T].
        tokenizer: HF tokenizer with the Memento markers, or a `leakage.spans.MarkerIds`.
        keep_last_n_blocks: -1 plain causal, 0 mask every completed block, N keep the last N.
        mask_delimiters: also mask `<|block_start|>`/`<|block_end|>` (Phi-4 style) if True.
        restart: mementos are encoded without their own block (restart ablation).
        keep_last_block_for_answer: evict at the next `<|block_start|>` instead (see `mask_from_spans`).
        padding_mask: [B, T], 1/True for real tokens (left or right padding, real tokens contiguous).
            Default for 2-D ids: `ids != tokenizer.pad_token_id` when the tokenizer has a pad token.
        prompt_len / plain_prompt / strict: passed to `parse_spans` (prompt_len per row for a batch).

    Padding rows (queries at pad positions) attend only to themselves, so that no softmax row is
    empty; pad keys are never attended by real queries.
    """
    ids = torch.as_tensor(ids)
    markers = as_marker_ids(tokenizer)
    spec = dict(keep_last_n_blocks=keep_last_n_blocks, mask_delimiters=mask_delimiters, restart=restart,
                keep_last_block_for_answer=keep_last_block_for_answer)
    if ids.dim() == 1:
        spans = parse_spans(ids.tolist(), markers, prompt_len=prompt_len, plain_prompt=plain_prompt, strict=strict)
        return mask_from_spans(spans, **spec)
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

    out = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # (B, T, T): pad rows see themselves
    for row in range(B):
        real = padding_mask[row].nonzero().flatten()
        if len(real) == 0:
            continue
        if real[-1] - real[0] + 1 != len(real):
            raise ValueError(f"batch row {row}: real tokens are not contiguous (padding in the middle, "
                             f"first gap after position {_first_gap(real)})")
        start, stop = int(real[0]), int(real[-1]) + 1
        try:
            spans = parse_spans(ids[row, start:stop].tolist(), markers, prompt_len=prompt_lens[row],
                                plain_prompt=plain_prompt, strict=strict)
        except ValueError as err:
            raise ValueError(f"batch row {row} (real tokens from position {start}): {err}") from err
        out[row, start:stop, start:stop] = mask_from_spans(spans, **spec)
    return out


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
