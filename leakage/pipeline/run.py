"""Trace-level orchestration: OpenThoughts-style records in, OpenMementos-style records out.

Input, one JSON object per line: {"cot": "<think>reasoning</think>answer", "problem": ..., other fields}.
A trace's id is its `task_id` (else `id`, else "line N"). Output: OpenMementos records
{"problem", "answer", "segments": [block, summary, ..., answer], other input fields...,
"memento_pipeline": {how it was made}}, readable by `leakage.memento.trace.read_openmementos`.

`process_trace` is the pure per-trace core: split -> score -> segment -> compress.
`run_pipeline` runs it over a file with a checkpoint directory: each finished trace is written there at
once (temp file + rename, so a crash never leaves a partial file), a rerun skips finished traces, and
the output file is assembled from the checkpoint, in input order, only when every trace is done.

The checkpoint directory holds only what the pipeline writes (`manifest.json` with every setting, and
`traces/NNNNN/NNNNNNNN.json`, one per finished trace with the hash of its input record); a directory
holding anything else is refused, and cleaning up removes exactly those files, never the directory's
other contents. A finished trace is reused only while its input record is unchanged, so a run that
failed on a bad record resumes once the record is fixed; resuming with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from leakage.config import MEMENTO_TOKENS, THINK_END, THINK_START
from leakage.io import atomic_file, atomic_write_json, read_text_lines
from leakage.pipeline.compress import Compressor
from leakage.pipeline.llm import LLMError
from leakage.pipeline.scoring import BoundaryScorer
from leakage.pipeline.segment import SegmentConfig, segment
from leakage.pipeline.sentences import SplitConfig, naive_split, split_sentences
from leakage.pipeline.tokenizer import span_token_counts, token_counter, tokenizer_fingerprint, tokenizer_label
from leakage.memento.trace import OpenMementosRecord

CHECKPOINT_VERSION = 2
META_KEY = "memento_pipeline"


class TraceError(ValueError):
    """A trace could not be processed; the message names its file, line and id."""


class CheckpointMismatchError(ValueError):
    """A checkpoint directory belongs to another input or other settings."""


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the splitter and the segmenter (the scorer, compressor and tokenizer are passed in)."""

    split: SplitConfig = SplitConfig()
    segment: SegmentConfig = SegmentConfig()


@dataclass(frozen=True)
class RawTrace:
    """One input record: the reasoning between <think> and </think>, and what surrounds it."""

    trace_id: str
    problem: str
    thinking: str
    answer_text: str
    fields: dict = field(default_factory=dict)  # every other input field, verbatim
    where: str = "record"
    source_sha256: str = ""  # of the input record, to know when a checkpointed trace is stale


def parse_openthoughts(obj, where: str, default_id: str) -> RawTrace:
    """Validate one OpenThoughts-style object; errors name `where` and the trace id."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    trace_id = str(obj.get("task_id", obj.get("id", default_id)))
    at = f"{where} (trace {trace_id})"
    for key in ("cot", "problem"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"{at}: field {key!r} must be a string")
    cot = obj["cot"]
    start = cot.find(THINK_START)
    end = cot.find(THINK_END, start + len(THINK_START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"{at}: 'cot' must contain {THINK_START} ... {THINK_END}")
    if cot[:start].strip():
        raise ValueError(f"{at}: 'cot' has text before {THINK_START}: {cot[:start][:60]!r}")
    thinking = cot[start + len(THINK_START):end]
    if not thinking.strip():
        raise ValueError(f"{at}: the reasoning between {THINK_START} and {THINK_END} is empty")
    answer_text = cot[end + len(THINK_END):].strip()
    for name, text in (("problem", obj["problem"]), ("reasoning", thinking), ("answer", answer_text)):
        for marker in (*MEMENTO_TOKENS, THINK_START, THINK_END):
            if marker in text:
                raise ValueError(f"{at}: the {name} contains the format marker {marker!r} (character "
                                 f"{text.index(marker)}); raw chain-of-thought must be plain text")
    fields = {k: v for k, v in obj.items() if k not in ("cot", "problem")}
    source = hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return RawTrace(trace_id=trace_id, problem=obj["problem"], thinking=thinking, answer_text=answer_text,
                    fields=fields, where=where, source_sha256=source)


def read_openthoughts(path: str | Path) -> Iterator[RawTrace]:
    """Stream the records of a JSONL file (blank lines skipped); duplicate trace ids are an error."""
    path = Path(path)
    seen: dict[str, int] = {}
    for lineno, line in read_text_lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        raw = parse_openthoughts(obj, where, default_id=f"line {lineno}")
        if raw.trace_id in seen:
            raise ValueError(f"{where}: trace id {raw.trace_id!r} already used on line {seen[raw.trace_id]}")
        seen[raw.trace_id] = lineno
        yield raw


def process_trace(raw: RawTrace, tokenizer, scorer: BoundaryScorer, compressor: Compressor,
                  config: PipelineConfig = PipelineConfig()) -> OpenMementosRecord:
    """Split, score, segment and compress one trace; block sizes are in tokens of `tokenizer`.

    A sentence's size is its share of the tokens of the whole reasoning text (`span_token_counts`:
    whitespace-only tokens count for no sentence). Each block, tokenised on its own as the trace will
    be, is checked to hold at least `min_block_tokens` tokens. Errors are raised as `TraceError`
    naming the trace.
    """
    try:
        count = token_counter(tokenizer)
        split = split_sentences(raw.thinking, config.split, count)
        sentences = split.sentences
        scores = scorer.score_boundaries(sentences)
        if len(scores) != len(sentences) - 1:
            raise ValueError(f"the scorer returned {len(scores)} scores for {len(sentences) - 1} boundaries")
        sizes = span_token_counts(raw.thinking, split.starts, tokenizer)
        seg = segment(sizes, scores, config.segment)
        spans = split.spans
        blocks = [raw.thinking[spans[lo][0]:spans[hi - 1][1]].strip() for lo, hi in seg.ranges(len(sentences))]
        for i, block in enumerate(blocks, start=1):
            alone = count(block)
            if alone < config.segment.min_block_tokens:
                raise ValueError(f"block {i} has {alone} tokens tokenised on its own, fewer than min_block_tokens="
                                 f"{config.segment.min_block_tokens} ({seg.block_sizes[i - 1]} in the whole text)")
        results = compressor.compress_blocks(blocks, raw.problem)
    except ValueError as err:  # SegmentationError included
        raise TraceError(f"{raw.where} (trace {raw.trace_id}): {err}") from err
    except LLMError as err:
        raise LLMError(f"{raw.where} (trace {raw.trace_id}): {err}") from err

    segments = []
    for i, (block, result) in enumerate(zip(blocks, results), start=1):
        segments += [{"type": "block", "block_idx": i, "text": block},
                     {"type": "summary", "block_idx": i, "text": result.memento}]
    if raw.answer_text:
        segments.append({"type": "answer", "block_idx": 0, "text": raw.answer_text})
    meta = {
        "tokenizer": tokenizer_label(tokenizer), **scorer.describe(), **compressor.describe(),
        "lambda": config.segment.lambda_, "min_block_tokens": config.segment.min_block_tokens,
        "score_mean": config.segment.score_mean, "n_sentences": len(sentences),
        "naive_boundaries": naive_split(raw.thinking).n_boundaries, "block_tokens": list(seg.block_sizes),
        "chosen_boundary_scores": list(seg.chosen_scores), "objective": seg.objective,
    }
    if any(r.passed is not None for r in results):
        meta["judge_scores"] = [list(r.judge_scores) for r in results]
        meta["judge_passed"] = [r.passed for r in results]
    fields = dict(raw.fields)
    answer = fields.pop("answer", "")
    return OpenMementosRecord(problem=raw.problem, answer=answer if isinstance(answer, str) else json.dumps(answer),
                              segments=segments, extra={**fields, META_KEY: meta})


# ---------------------------------------------------------------------------------------------
# resumable runs


@dataclass(frozen=True)
class RunSummary:
    n_traces: int
    n_reused: int  # taken from the checkpoint
    n_processed: int  # processed in this call
    complete: bool  # the output file was written
    output: Path


_TRACE_FILE = re.compile(r"\d{8}\.json|\.\d{8}\.json.*\.tmp")  # a finished trace, or a crashed write of one
_SHARD_DIR = re.compile(r"\d{5}")
_MANIFEST = re.compile(r"manifest\.json|\.manifest\.json.*\.tmp")


def _trace_file(checkpoint: Path, index: int) -> Path:
    return checkpoint / "traces" / f"{index // 1000:05d}" / f"{index:08d}.json"


def _foreign_entries(checkpoint: Path) -> list[str]:
    """Entries of a checkpoint directory the pipeline did not write (relative paths)."""
    foreign = [e.name for e in checkpoint.iterdir() if e.name != "traces" and not _MANIFEST.fullmatch(e.name)]
    traces = checkpoint / "traces"
    if traces.is_dir():
        for shard in traces.iterdir():
            if not (shard.is_dir() and _SHARD_DIR.fullmatch(shard.name)):
                foreign.append(f"traces/{shard.name}")
                continue
            foreign += [f"traces/{shard.name}/{f.name}" for f in shard.iterdir() if not _TRACE_FILE.fullmatch(f.name)]
    elif traces.exists():
        foreign.append("traces")
    return sorted(foreign)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointMismatchError(f"{path}: corrupt checkpoint file ({err}); delete it and rerun") from None


def _open_checkpoint(checkpoint: Path, settings: dict) -> None:
    if checkpoint.exists():
        if not checkpoint.is_dir():
            raise CheckpointMismatchError(f"checkpoint {checkpoint} exists and is not a directory")
        foreign = _foreign_entries(checkpoint)
        if foreign:
            raise CheckpointMismatchError(
                f"checkpoint directory {checkpoint} holds files the pipeline did not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty directory")
    manifest = {"version": CHECKPOINT_VERSION, "written_by": "leakage data run", "settings": settings}
    path = checkpoint / "manifest.json"
    if path.is_file():
        old = _read_json(path)
        for key in ("version", "settings"):
            if old.get(key) != manifest[key]:
                raise CheckpointMismatchError(
                    f"checkpoint {checkpoint} was made with a different {key} "
                    f"({json.dumps(old.get(key))[:200]} vs now {json.dumps(manifest[key])[:200]}); "
                    "delete it or choose another checkpoint directory")
    else:
        atomic_write_json(path, manifest)


def _remove_checkpoint(checkpoint: Path) -> None:
    """Remove exactly the files the pipeline wrote, then each directory it made if it is left empty."""
    traces = checkpoint / "traces"
    if traces.is_dir():
        for shard in traces.iterdir():
            if shard.is_dir() and _SHARD_DIR.fullmatch(shard.name):
                for f in shard.iterdir():
                    if _TRACE_FILE.fullmatch(f.name):
                        f.unlink()
                _rmdir_if_empty(shard)
        _rmdir_if_empty(traces)
    for f in checkpoint.iterdir():
        if f.is_file() and _MANIFEST.fullmatch(f.name):
            f.unlink()
    _rmdir_if_empty(checkpoint)


def _rmdir_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        os.rmdir(path)


def _write_jsonl_stream(path: Path, lines: Iterator[str]) -> None:
    """Write lines to `path` via a temp file and an atomic rename (no partial output, bounded memory)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)


def run_pipeline(input_path: str | Path, output_path: str | Path, *, tokenizer, scorer: BoundaryScorer,
                 compressor: Compressor, config: PipelineConfig = PipelineConfig(),
                 checkpoint_dir: str | Path | None = None, keep_checkpoint: bool = False,
                 max_new_traces: int | None = None,
                 on_trace_done: Callable[[int, str, bool], None] | None = None) -> RunSummary:
    """Process every trace of `input_path` into `output_path`, resumably (module docstring).

    checkpoint_dir: default `<output>.checkpoint/`; its files are removed once the output is written
        unless `keep_checkpoint` (the directory too, if nothing else is in it).
    max_new_traces: stop after processing this many traces not yet in the checkpoint (no output yet).
    on_trace_done(index, trace_id, reused): called after each trace is safely in the checkpoint.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input {input_path} is not a file")
    if output_path.exists() and os.path.samefile(input_path, output_path):
        raise ValueError(f"--out {output_path} is the input file; writing it would destroy the input")
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else output_path.with_name(output_path.name + ".checkpoint")
    settings = {"config": asdict(config), "scorer": scorer.describe(), "compressor": compressor.describe(),
                "tokenizer": tokenizer_label(tokenizer), "tokenizer_vocab_sha256": tokenizer_fingerprint(tokenizer)}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they compare after a reload
    _open_checkpoint(checkpoint, settings)

    n_traces = n_reused = n_processed = 0
    for index, raw in enumerate(read_openthoughts(input_path)):
        n_traces += 1
        path = _trace_file(checkpoint, index)
        saved = _read_json(path) if path.is_file() else {}
        if saved.get("trace_id") == raw.trace_id and saved.get("source_sha256") == raw.source_sha256:
            n_reused += 1
            reused = True
        else:  # not done yet, or its input record changed since
            if max_new_traces is not None and n_processed >= max_new_traces:
                return RunSummary(n_traces, n_reused, n_processed, complete=False, output=output_path)
            record = process_trace(raw, tokenizer, scorer, compressor, config)
            atomic_write_json(path, {"index": index, "trace_id": raw.trace_id, "source_sha256": raw.source_sha256,
                                     "record": record.to_dict()})
            n_processed += 1
            reused = False
        if on_trace_done is not None:
            on_trace_done(index, raw.trace_id, reused)

    if n_traces == 0:
        _remove_checkpoint(checkpoint)
        raise ValueError(f"{input_path}: no traces (the file is empty or holds only blank lines)")

    def lines() -> Iterator[str]:
        for index in range(n_traces):
            record = _read_json(_trace_file(checkpoint, index))["record"]
            yield json.dumps(record, ensure_ascii=False) + "\n"

    _write_jsonl_stream(output_path, lines())
    if not keep_checkpoint:
        _remove_checkpoint(checkpoint)
    return RunSummary(n_traces, n_reused, n_processed, complete=True, output=output_path)
