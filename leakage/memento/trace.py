"""The Memento trace: a value type, its rendering to text and token ids, and OpenMementos JSONL IO.

    prompt <think> [<|block_start|> block <|block_end|> <|summary_start|> memento <|summary_end|>]* </think> answer

Segments may be text (`str`), token ids (`list[int]`) or `Named` pieces of text. Rendering to ids
tokenises each segment (each piece) on its own and places the marker ids between them, so
`parse_spans` recovers every segment exactly, and `render` reports where every named piece landed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, Union

from leakage.config import BLOCK_END, BLOCK_START, SUMMARY_END, SUMMARY_START, THINK_END, THINK_START
from leakage.io import atomic_write_jsonl, read_text
from leakage.memento.spans import MarkerIds, SpanKind, as_marker_ids, parse_spans

@dataclass(frozen=True)
class Named:
    """A text segment built from pieces, some named: `Named(("digits/0", "1 2 3"), (None, "="), ("sum/0", "6"))`.

    Each piece is tokenised on its own and the pieces' text is joined with single spaces. Rendering a
    trace reports each named piece's token positions (`MementoTrace.render`): tasks declare the
    sub-spans analyses need (sums, passcodes, targets) as data instead of offset arithmetic.
    """

    pieces: tuple[tuple[str | None, str], ...]

    def __init__(self, *pieces: tuple[str | None, str]):
        object.__setattr__(self, "pieces", tuple(pieces))

    @property
    def text(self) -> str:
        return " ".join(text for _, text in self.pieces)


Segment = Union[str, Sequence[int], Named]


@dataclass
class Rendered:
    """Token ids of a trace and the positions of its named pieces (name -> positions, in order)."""

    ids: list[int]
    parts: dict[str, list[int]]


@dataclass
class MementoTrace:
    """A complete Memento response: prompt, (block, memento) pairs, answer."""

    prompt: Segment
    blocks: list[tuple[Segment, Segment]]
    answer: Segment = ""

    def to_text(self) -> str:
        """Render as text (text segments only), markers inline with no added whitespace."""
        parts = [_text(self.prompt, "prompt"), THINK_START]
        for i, (block, memento) in enumerate(self.blocks):
            parts += [BLOCK_START, _text(block, f"block {i}"), BLOCK_END,
                      SUMMARY_START, _text(memento, f"memento {i}"), SUMMARY_END]
        parts += [THINK_END, _text(self.answer, "answer")]
        return "".join(parts)

    def to_ids(self, tokenizer, eos: bool = False) -> list[int]:
        """Render as token ids; each text segment is tokenised on its own.

        Raises if a segment contains a marker or a word the tokenizer maps to its unknown token.
        """
        return self.render(tokenizer, eos).ids

    def render(self, tokenizer, eos: bool = False) -> Rendered:
        """Token ids (as `to_ids`) and the positions of every named piece of `Named` segments.

        A name used twice is an error (names are how analyses find the pieces).
        """
        m = as_marker_ids(tokenizer)
        segments = [self.prompt, *(s for pair in self.blocks for s in pair), self.answer]
        encoded = _encode_texts(tokenizer, [text for s in segments for text in
                                            ([t for _, t in s.pieces] if isinstance(s, Named) else [s])])
        ids: list[int] = []
        parts: dict[str, list[int]] = {}

        def add(segment: Segment, where: str) -> None:
            if not isinstance(segment, Named):
                ids.extend(_encode(tokenizer, segment, where, m, encoded))
                return
            for name, text in segment.pieces:
                piece = _encode(tokenizer, text, f"{where}, piece {name or text!r}", m, encoded)
                if name is not None:
                    if name in parts:
                        raise ValueError(f"{where}: the piece name {name!r} is used twice in one trace")
                    parts[name] = list(range(len(ids), len(ids) + len(piece)))
                ids.extend(piece)

        add(self.prompt, "prompt")
        ids.append(m.think_start)
        for i, (block, memento) in enumerate(self.blocks):
            ids.append(m.block_start)
            add(block, f"block {i}")
            ids += [m.block_end, m.summary_start]
            add(memento, f"memento {i}")
            ids.append(m.summary_end)
        ids.append(m.think_end)
        add(self.answer, "answer")
        if eos:
            ids.append(tokenizer.eos_token_id)
        return Rendered(ids=ids, parts=parts)

    @classmethod
    def from_ids(cls, ids: Sequence[int], tokenizer, as_text: bool = True,
                 prompt_len: int | None = None) -> "MementoTrace":
        """Parse ids back into a trace; a trailing EOS is dropped. Segments are decoded to text if `as_text`.

        Raises `MalformedTraceError` for malformed streams and `ValueError` for unfinished traces or
        tokens outside any segment (they would otherwise be silently lost).
        """
        ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
        eos = getattr(tokenizer, "eos_token_id", None)
        if ids and eos is not None and ids[-1] == eos:
            ids = ids[:-1]
        spans = parse_spans(ids, tokenizer, prompt_len=prompt_len)
        if spans.think_end is None:
            where = spans.open_block.index if spans.open_block else None
            raise ValueError(f"unfinished trace: no </think> (open block: {where})")
        m = as_marker_ids(tokenizer)
        for pos, kind in enumerate(spans.kinds):
            if kind == SpanKind.OTHER and ids[pos] not in m.all_ids:
                raise ValueError(f"token {ids[pos]} at position {pos} lies outside any block or memento")

        def segment(lo: int, hi: int) -> Segment:
            piece = ids[lo:hi]
            return tokenizer.decode(piece) if as_text else piece

        blocks = [(segment(b.block_start + 1, b.block_end), segment(b.summary_start + 1, b.summary_end))
                  for b in spans.blocks]
        return cls(prompt=segment(0, spans.prompt_len), blocks=blocks,
                   answer=segment(spans.think_end + 1, len(ids)))


def _text(segment: Segment, where: str) -> str:
    if isinstance(segment, Named):
        return segment.text
    if not isinstance(segment, str):
        raise TypeError(f"{where} is token ids; render it with to_ids, or decode it first")
    return segment


def unknown_words(tokenizer, text: str, ids: Sequence[int] | None = None) -> list[str]:
    """Words of `text` the tokenizer maps to its unknown token (they would be silently lost)."""
    unk = tokenizer.unk_token_id
    ids = tokenizer.encode(text, add_special_tokens=False) if ids is None else ids
    if unk is None or unk not in ids or (tokenizer.unk_token or "") in text:
        return []
    return [w for w in text.split() if unk in tokenizer.encode(w, add_special_tokens=False)]


def _encode_texts(tokenizer, segments: Sequence[Segment]) -> dict[str, list[int]]:
    """{text: token ids} of the distinct text segments among `segments` (token-id segments are skipped), from one
    batched call of the tokenizer: each text tokenised on its own, as `tokenizer.encode` would, without special tokens."""
    texts = list(dict.fromkeys(s for s in segments if isinstance(s, str)))
    return dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}


def _encode(tokenizer, segment: Segment, where: str, markers: MarkerIds, encoded: dict[str, list[int]]) -> list[int]:
    """The ids of one segment (text: its entry in `encoded`, from `_encode_texts`), checked for unknown words and
    format markers."""
    if not isinstance(segment, str):
        ids = list(segment)
    else:
        ids = list(encoded[segment])
        bad = unknown_words(tokenizer, segment, ids)
        if bad:
            raise ValueError(f"{where}: words not in the tokenizer's vocabulary: {bad[:5]}")
    for offset, token_id in enumerate(ids):
        if token_id in markers.all_ids:
            raise ValueError(f"{where}: contains the format marker id {token_id} at offset {offset}")
    return ids


# ---------------------------------------------------------------------------------------------
# OpenMementos records: {"problem", "answer", "segments": [{"type", "block_idx", "text"}], ...}

SEGMENT_TYPES = ("block", "summary", "answer")


@dataclass
class OpenMementosRecord:
    """One OpenMementos-style record. `extra` keeps every other field (and the key order) verbatim."""

    problem: str
    answer: str
    segments: list[dict]
    extra: dict = field(default_factory=dict)
    key_order: tuple[str, ...] = ()  # field order of the source record, re-emitted as read

    @classmethod
    def from_dict(cls, obj: dict, where: str = "record") -> "OpenMementosRecord":
        for key in ("problem", "segments"):
            if key not in obj:
                raise ValueError(f"{where}: missing field {key!r}")
        _validate_segments(obj["segments"], where)
        extra = {k: v for k, v in obj.items() if k not in ("problem", "answer", "segments")}
        return cls(problem=obj["problem"], answer=obj.get("answer", ""), segments=obj["segments"],
                   extra=extra, key_order=tuple(obj))

    def to_dict(self) -> dict:
        values = {"problem": self.problem, "answer": self.answer, "segments": self.segments, **self.extra}
        order = [k for k in self.key_order if k in values] + [k for k in values if k not in self.key_order]
        return {k: values[k] for k in order}

    def to_trace(self) -> MementoTrace:
        """Pair each block with its summary; the answer segment (if any) becomes the trace answer."""
        blocks, pending = [], None
        answer = ""
        for seg in self.segments:
            if seg["type"] == "block":
                pending = seg["text"]
            elif seg["type"] == "summary":
                blocks.append((pending, seg["text"]))
                pending = None
            else:
                answer = seg["text"]
        return MementoTrace(prompt=self.problem, blocks=blocks, answer=answer)

    @classmethod
    def from_trace(cls, trace: MementoTrace, answer: str = "", **extra) -> "OpenMementosRecord":
        """Blocks numbered from 1 as in OpenMementos; the answer segment has block_idx 0."""
        segments = []
        for i, (block, memento) in enumerate(trace.blocks, start=1):
            segments += [{"type": "block", "block_idx": i, "text": _text(block, f"block {i}")},
                         {"type": "summary", "block_idx": i, "text": _text(memento, f"memento {i}")}]
        if trace.answer:
            segments.append({"type": "answer", "block_idx": 0, "text": _text(trace.answer, "answer")})
        return cls(problem=_text(trace.prompt, "prompt"), answer=answer, segments=segments, extra=extra)


def _validate_segments(segments, where: str) -> None:
    if not isinstance(segments, list):
        raise ValueError(f"{where}: 'segments' must be a list")
    open_block = None
    for i, seg in enumerate(segments):
        at = f"{where}, segment {i}"
        if not isinstance(seg, dict) or seg.get("type") not in SEGMENT_TYPES:
            raise ValueError(f"{at}: type must be one of {SEGMENT_TYPES}, got {seg!r:.80}")
        if not isinstance(seg.get("text"), str):
            raise ValueError(f"{at}: 'text' must be a string")
        if seg["type"] == "block":
            if open_block is not None:
                raise ValueError(f"{at}: block {seg.get('block_idx')} starts before block {open_block} has a summary")
            open_block = seg.get("block_idx")
        elif seg["type"] == "summary":
            if open_block is None:
                raise ValueError(f"{at}: summary {seg.get('block_idx')} has no preceding block")
            if seg.get("block_idx") != open_block:
                raise ValueError(f"{at}: summary block_idx {seg.get('block_idx')} != block {open_block}")
            open_block = None
        elif open_block is not None:
            raise ValueError(f"{at}: answer while block {open_block} has no summary")
    if open_block is not None:
        raise ValueError(f"{where}: block {open_block} has no summary")


def read_openmementos(path: str | Path) -> list[OpenMementosRecord]:
    """Read OpenMementos records from JSONL (one per line) or JSON (one object or a list).

    Errors name the file and line (JSONL) or the record index (JSON).
    """
    path = Path(path)
    text = read_text(path)
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
        objs = obj if isinstance(obj, list) else [obj]
        return [OpenMementosRecord.from_dict(o, f"{path}, record {i}") for i, o in enumerate(objs)]
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
        records.append(OpenMementosRecord.from_dict(obj, f"{path}, line {lineno}"))
    return records


def write_openmementos(records: Iterable[OpenMementosRecord], path: str | Path) -> Path:
    """Write records as JSONL atomically (no partial file on error)."""
    return atomic_write_jsonl(path, [r.to_dict() for r in records])
