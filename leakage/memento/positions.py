"""Positions, named once: where every part of a Memento sequence sits, for one row.

`trace_positions(spans, parts)` names the structural parts from the parsed spans — prompt,
`<think>`, and per block k: `block_start`, `interior` (its reasoning), `block_end`,
`summary_start`, `memento`, `summary_end`; then `</think>` and the answer — plus any named sub-spans a
task declared when it rendered the trace (`parts`, e.g. "passcode", "sum/3"; see
`leakage.memento.trace.Named`). A `Site` names a selection ("memento of block 2" is `Site("memento", 2)`,
written "memento@2"); `TracePositions.select(site)` turns it into this row's positions. Analyses ask
for sites and never do offset arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from leakage.memento.spans import TraceSpans

BLOCK_PARTS = ("block_start", "interior", "block_end", "summary_start", "memento", "summary_end")
"""Parts every block has, in trace order."""
TRACE_PARTS = ("prompt", "think_start", "think_end", "answer")
"""Parts of the whole sequence."""


@dataclass(frozen=True)
class Site:
    """A named selection of positions: a block part of block `block`, a trace part, or a task part."""

    part: str
    block: int | None = None

    def __post_init__(self):
        if self.part in BLOCK_PARTS and self.block is None:
            raise ValueError(f"site {self.part!r} needs a block index ({self.part}@K)")
        if self.part in TRACE_PARTS and self.block is not None:
            raise ValueError(f"site {self.part!r} belongs to the whole trace; it takes no block index")

    def __str__(self) -> str:
        return self.part if self.block is None else f"{self.part}@{self.block}"

    @classmethod
    def parse(cls, text: str) -> "Site":
        """'memento@2' -> Site('memento', 2); 'passcode' -> Site('passcode')."""
        part, _, block = text.partition("@")
        try:
            return cls(part, int(block) if block else None)
        except ValueError as err:
            raise ValueError(f"bad site {text!r}: {err}") from None


@dataclass(frozen=True)
class BlockPositions:
    """Positions of one block's parts (`None` while a delimiter has not been produced)."""

    index: int
    block_start: int
    interior: tuple[int, ...]
    block_end: int | None
    summary_start: int | None
    memento: tuple[int, ...]
    summary_end: int | None


@dataclass(frozen=True)
class TracePositions:
    """Every named part of one sequence. `parts` holds task-declared sub-spans by name."""

    length: int
    prompt: tuple[int, ...]
    think_start: int | None
    blocks: tuple[BlockPositions, ...]
    think_end: int | None
    answer: tuple[int, ...]
    parts: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def select(self, site: Site | str) -> list[int]:
        """This row's positions of `site`; raises `KeyError` naming what is missing."""
        site = Site.parse(site) if isinstance(site, str) else site
        if site.part in BLOCK_PARTS:
            if not 0 <= site.block < len(self.blocks) and not -len(self.blocks) <= site.block < 0:
                raise KeyError(f"site {site}: the sequence has {len(self.blocks)} blocks")
            value = getattr(self.blocks[site.block], site.part)
        elif site.part in TRACE_PARTS:
            value = getattr(self, site.part)
        else:
            name = site.part if site.block is None else str(site)
            if name not in self.parts:
                raise KeyError(f"site {site}: no such part; this sequence names {sorted(self.parts)}")
            value = self.parts[name]
        if value is None:
            raise KeyError(f"site {site}: not produced in this sequence (unfinished block or trace)")
        return [value] if isinstance(value, int) else list(value)


def trace_positions(spans: TraceSpans, parts: Mapping[str, tuple[int, ...]] | None = None) -> TracePositions:
    """Name every part of a parsed sequence (and attach task-declared `parts`)."""
    blocks = []
    T = len(spans)
    for b in spans.blocks:
        interior_end = b.block_end if b.block_end is not None else T
        memento = ()
        if b.summary_start is not None:
            memento = tuple(range(b.summary_start + 1, b.summary_end if b.summary_end is not None else T))
        blocks.append(BlockPositions(index=b.index, block_start=b.block_start,
                                     interior=tuple(range(b.block_start + 1, interior_end)), block_end=b.block_end,
                                     summary_start=b.summary_start, memento=memento, summary_end=b.summary_end))
    answer = tuple(range(spans.think_end + 1, T)) if spans.think_end is not None else ()
    return TracePositions(length=T, prompt=tuple(range(spans.prompt_len)), think_start=spans.think_start,
                          blocks=tuple(blocks), think_end=spans.think_end, answer=answer,
                          parts={name: tuple(p) for name, p in (parts or {}).items()})


def part_labels(positions: TracePositions) -> list[str]:
    """The structural part of every position (a `BLOCK_PARTS` or `TRACE_PARTS` name, or "other" for
    tokens between blocks and summaries), e.g. to break a per-token measurement down by part."""
    labels = ["other"] * positions.length
    for name in TRACE_PARTS:
        value = getattr(positions, name)
        for p in ([value] if isinstance(value, int) else value or ()):
            labels[p] = name
    for block in positions.blocks:
        for name in BLOCK_PARTS:
            value = getattr(block, name)
            for p in ([value] if isinstance(value, int) else value or ()):
                labels[p] = name
    return labels
