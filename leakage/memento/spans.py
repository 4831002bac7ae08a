"""Token ids -> per-position span kinds and block spans (the block tracker). Pure Python, no torch.

A Memento response is laid out as

    prompt <think> [<|block_start|> reasoning <|block_end|> <|summary_start|> memento <|summary_end|>]* </think> answer

`SpanTracker` is a small state machine fed one token at a time; `parse_spans` replays a finished
(or still-running) sequence through it. Ranges below are positions in the token sequence; a
`BlockSpan` records the positions of its four delimiters (``None`` while not yet produced).

Tokens between a block's `<|block_end|>` and its `<|summary_start|>`, or between a `<|summary_end|>`
and the next `<|block_start|>` (e.g. newlines), are of kind OTHER and never masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import Sequence

from leakage.config import BLOCK_END, BLOCK_START, SUMMARY_END, SUMMARY_START, THINK_END, THINK_START


class SpanKind(IntEnum):
    """What one token position is."""

    PROMPT = 0
    BLOCK = 1  # reasoning token strictly inside a block
    BLOCK_DELIM = 2  # <|block_start|> or <|block_end|>
    MEMENTO = 3  # token strictly inside a summary
    MEMENTO_DELIM = 4  # <|summary_start|> or <|summary_end|>
    ANSWER = 5  # after </think>
    OTHER = 6  # <think>, </think>, and text between blocks and summaries


class MalformedTraceError(ValueError):
    """A token stream that breaks the Memento format; `position` is the offending token's index."""

    def __init__(self, position: int, problem: str):
        super().__init__(f"malformed Memento trace at token position {position}: {problem}")
        self.position = position
        self.problem = problem


@dataclass(frozen=True)
class MarkerIds:
    """Token ids of the six format markers in one tokenizer's vocabulary."""

    block_start: int
    block_end: int
    summary_start: int
    summary_end: int
    think_start: int
    think_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "MarkerIds":
        """Read the marker ids from an HF tokenizer; raises if any marker is not a single known token."""
        ids = {}
        names = dict(block_start=BLOCK_START, block_end=BLOCK_END, summary_start=SUMMARY_START,
                     summary_end=SUMMARY_END, think_start=THINK_START, think_end=THINK_END)
        for name, token in names.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no token {token!r}; add the Memento tokens first "
                                 "(leakage.engine.model.add_memento_tokens)")
            ids[name] = token_id
        return cls(**ids)

    @cached_property
    def memento_ids(self) -> frozenset[int]:
        return frozenset((self.block_start, self.block_end, self.summary_start, self.summary_end))

    @cached_property
    def all_ids(self) -> frozenset[int]:
        return self.memento_ids | {self.think_start, self.think_end}

    def block_tokens(self, tokens) -> int:
        """How many of `tokens` are not Memento markers: what the engine's `max_block_tokens` cap counts."""
        return sum(token not in self.memento_ids for token in tokens)


def as_marker_ids(tokenizer_or_markers) -> MarkerIds:
    """Accept either a `MarkerIds` or an HF tokenizer."""
    if isinstance(tokenizer_or_markers, MarkerIds):
        return tokenizer_or_markers
    return MarkerIds.from_tokenizer(tokenizer_or_markers)


@dataclass
class BlockSpan:
    """Positions of one block's delimiters; `None` while the delimiter has not been produced."""

    index: int
    block_start: int
    block_end: int | None = None
    summary_start: int | None = None
    summary_end: int | None = None

    @property
    def is_complete(self) -> bool:
        """True once the memento is closed: from then on the block may be evicted."""
        return self.summary_end is not None

    def masked_range(self, mask_delimiters: bool) -> tuple[int, int]:
        """Half-open [start, end) of the positions evicted once this block is complete.

        Interior only (`mask_delimiters=False`), or `<|block_start|>` .. `<|block_end|>` inclusive.
        """
        if self.block_end is None:
            raise ValueError(f"block {self.index} is still open; it has no masked range yet")
        if mask_delimiters:
            return self.block_start, self.block_end + 1
        return self.block_start + 1, self.block_end


@dataclass
class TraceSpans:
    """Result of parsing one token sequence.

    `kinds[p]` is the `SpanKind` of position p; `block_index[p]` is the index of the block that
    position p belongs to (reasoning, block delimiters, memento, memento delimiters), else -1.
    """

    kinds: list[SpanKind]
    block_index: list[int]
    blocks: list[BlockSpan]
    prompt_len: int
    think_start: int | None = None
    think_end: int | None = None

    @property
    def open_block(self) -> BlockSpan | None:
        """The last block if its reasoning or its memento is still being generated."""
        if self.blocks and not self.blocks[-1].is_complete:
            return self.blocks[-1]
        return None

    @property
    def completed_blocks(self) -> list[BlockSpan]:
        return [b for b in self.blocks if b.is_complete]

    def __len__(self) -> int:
        return len(self.kinds)


class _Phase(IntEnum):
    PROMPT = 0
    THINKING = 1  # inside <think>, between blocks
    IN_BLOCK = 2
    BLOCK_CLOSED = 3  # <|block_end|> seen, summary not yet started
    IN_SUMMARY = 4
    ANSWER = 5


@dataclass
class SpanTracker:
    """Per-sequence state machine: feed token ids in order, get each position's kind.

    `prompt_len` fixes where the prompt ends. When it is `None`, the prompt is everything before the
    first `<think>` (the whole stream starts in the response if it opens with a Memento marker).
    With `plain_prompt=True`, any marker inside the prompt is an error; otherwise prompt tokens are
    never interpreted. Malformed streams raise `MalformedTraceError` naming the position.

    With `strict=False` (the decoder's policy for generated streams) a token that would be malformed
    is recorded in `errors` as (position, problem) and otherwise treated as an ordinary token of the
    current state (reasoning inside a block, memento inside a summary, ...): it changes no span, and
    the mask built from the same lenient parse still matches what the decoder evicts.
    """

    markers: MarkerIds
    prompt_len: int | None = None
    plain_prompt: bool = True
    strict: bool = True
    errors: list[tuple[int, str]] = field(default_factory=list)
    kinds: list[SpanKind] = field(default_factory=list)
    block_index: list[int] = field(default_factory=list)
    blocks: list[BlockSpan] = field(default_factory=list)
    think_start: int | None = None
    think_end: int | None = None
    _phase: _Phase = _Phase.PROMPT
    _prompt_end: int | None = None

    def __post_init__(self):
        self._prompt_end = self.prompt_len
        if self.prompt_len == 0:
            self._phase = _Phase.THINKING

    @property
    def position(self) -> int:
        """Position the next fed token will take."""
        return len(self.kinds)

    def feed(self, token_id: int) -> SpanKind:
        """Consume one token and return its kind."""
        pos = self.position
        try:
            kind, block = self._transition(int(token_id), pos)
        except MalformedTraceError as err:
            if self.strict:
                raise
            self.errors.append((err.position, err.problem))
            kind, block = self._plain_kind()
        self.kinds.append(kind)
        self.block_index.append(block)
        return kind

    def feed_all(self, ids: Sequence[int]) -> None:
        for token_id in ids:
            self.feed(token_id)

    def spans(self) -> TraceSpans:
        prompt_len = self._prompt_end if self._prompt_end is not None else len(self.kinds)
        return TraceSpans(kinds=list(self.kinds), block_index=list(self.block_index), blocks=self.blocks,
                          prompt_len=prompt_len, think_start=self.think_start, think_end=self.think_end)

    def _in_prompt(self, token_id: int, pos: int) -> bool:
        m = self.markers
        if self.prompt_len is not None:
            if pos >= self.prompt_len:
                return False
            if self.plain_prompt and token_id in m.all_ids:
                raise MalformedTraceError(pos, f"special token id {token_id} inside a plain prompt "
                                               f"(prompt is positions 0..{self.prompt_len - 1})")
            return True
        if token_id == m.think_start:
            self._prompt_end = pos
            return False
        if token_id in m.memento_ids:
            if self.plain_prompt and pos > 0:
                raise MalformedTraceError(pos, f"Memento marker id {token_id} in the prompt, before <think>")
            if pos == 0:  # the stream starts directly in the response
                self._prompt_end = 0
                return False
        if token_id == m.think_end and self.plain_prompt:
            raise MalformedTraceError(pos, "</think> in the prompt, before any <think>")
        return True

    def _transition(self, t: int, pos: int) -> tuple[SpanKind, int]:
        m = self.markers
        if self._phase == _Phase.PROMPT:
            if self._in_prompt(t, pos):
                return SpanKind.PROMPT, -1
            self._phase = _Phase.THINKING
            if self._prompt_end is None:
                self._prompt_end = pos

        phase = self._phase
        current = self.blocks[-1] if self.blocks else None

        if phase == _Phase.ANSWER:
            if t in m.all_ids:
                raise MalformedTraceError(pos, f"special token id {t} after </think> (in the answer)")
            return SpanKind.ANSWER, -1

        if t == m.think_start:
            if self.think_start is not None or phase != _Phase.THINKING or self.blocks:
                raise MalformedTraceError(pos, "second or misplaced <think>")
            self.think_start = pos
            return SpanKind.OTHER, -1

        if t == m.block_start:
            if phase == _Phase.IN_BLOCK:
                raise MalformedTraceError(pos, f"nested <|block_start|>: block {current.index} opened at "
                                               f"position {current.block_start} never closed")
            if phase == _Phase.IN_SUMMARY:
                raise MalformedTraceError(pos, f"<|block_start|> while the summary of block {current.index} "
                                               f"(opened at {current.summary_start}) is still open")
            if phase == _Phase.BLOCK_CLOSED:
                raise MalformedTraceError(pos, f"<|block_start|> but block {current.index} (closed at "
                                               f"{current.block_end}) has no summary")
            block = BlockSpan(index=len(self.blocks), block_start=pos)
            self.blocks.append(block)
            self._phase = _Phase.IN_BLOCK
            return SpanKind.BLOCK_DELIM, block.index

        if t == m.block_end:
            if phase != _Phase.IN_BLOCK:
                raise MalformedTraceError(pos, "<|block_end|> with no open block")
            current.block_end = pos
            self._phase = _Phase.BLOCK_CLOSED
            return SpanKind.BLOCK_DELIM, current.index

        if t == m.summary_start:
            if phase == _Phase.IN_BLOCK:
                raise MalformedTraceError(pos, f"<|summary_start|> but block {current.index} opened at "
                                               f"position {current.block_start} never closed")
            if phase == _Phase.IN_SUMMARY:
                raise MalformedTraceError(pos, f"nested <|summary_start|> inside the summary of block {current.index}")
            if phase != _Phase.BLOCK_CLOSED:
                if current is not None and current.is_complete:
                    raise MalformedTraceError(pos, f"second summary for block {current.index} "
                                                   f"(its summary ended at {current.summary_end})")
                raise MalformedTraceError(pos, "<|summary_start|> without a preceding closed block")
            current.summary_start = pos
            self._phase = _Phase.IN_SUMMARY
            return SpanKind.MEMENTO_DELIM, current.index

        if t == m.summary_end:
            if phase != _Phase.IN_SUMMARY:
                raise MalformedTraceError(pos, "<|summary_end|> with no open summary")
            current.summary_end = pos
            self._phase = _Phase.THINKING
            return SpanKind.MEMENTO_DELIM, current.index

        if t == m.think_end:
            if phase == _Phase.IN_BLOCK:
                raise MalformedTraceError(pos, f"</think> but block {current.index} opened at position "
                                               f"{current.block_start} never closed")
            if phase == _Phase.IN_SUMMARY:
                raise MalformedTraceError(pos, f"</think> but the summary of block {current.index} never closed")
            if phase == _Phase.BLOCK_CLOSED:
                raise MalformedTraceError(pos, f"</think> but block {current.index} has no summary")
            self.think_end = pos
            self._phase = _Phase.ANSWER
            return SpanKind.OTHER, -1

        return self._plain_kind()

    def _plain_kind(self) -> tuple[SpanKind, int]:
        """Kind and block index of an ordinary (non-marker) token in the current state."""
        if self._phase == _Phase.PROMPT:
            return SpanKind.PROMPT, -1
        if self._phase == _Phase.ANSWER:
            return SpanKind.ANSWER, -1
        if self._phase == _Phase.IN_BLOCK:
            return SpanKind.BLOCK, self.blocks[-1].index
        if self._phase == _Phase.IN_SUMMARY:
            return SpanKind.MEMENTO, self.blocks[-1].index
        return SpanKind.OTHER, -1


def parse_spans(ids: Sequence[int], tokenizer, *, prompt_len: int | None = None,
                plain_prompt: bool = True, strict: bool = True) -> TraceSpans:
    """Parse token ids into per-position kinds and block spans.

    Args:
        ids: 1-D sequence of token ids (list, tuple or 1-D tensor).
        tokenizer: an HF tokenizer holding the Memento markers, or a `MarkerIds`.
        prompt_len: number of prompt tokens; `None` = everything before the first `<think>`.
        plain_prompt: if True, a marker inside the prompt raises `MalformedTraceError`.
        strict: if False, malformed tokens are treated as ordinary tokens (see `SpanTracker`).

    An unfinished trailing block or summary (generation still running) is legal: see
    `TraceSpans.open_block`.
    """
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        raise ValueError("parse_spans takes one sequence (1-D ids); parse batch rows one at a time")
    tracker = SpanTracker(as_marker_ids(tokenizer), prompt_len=prompt_len, plain_prompt=plain_prompt, strict=strict)
    tracker.feed_all(ids)
    return tracker.spans()
