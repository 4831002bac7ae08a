"""Trace-level orchestration: OpenThoughts-style records in, OpenMementos-style records out.

Input, one JSON object per line: {"cot": "<think>reasoning</think>answer", "problem": ..., other fields}.
A trace's id is its `task_id` (else `id`, else "line N"). Output: OpenMementos records
{"problem", "answer", "segments": [block, summary, ..., answer], other input fields...,
"memento_pipeline": {how it was made}}, readable by `leakage.trace.read_openmementos`.

`process_trace` is the pure per-trace core: split -> score -> segment -> compress.
`run_pipeline` runs it over a file with a checkpoint directory: each finished trace is written there at
once (temp file + rename, so a crash never leaves a partial file), a rerun skips finished traces, and
the output file is assembled from the checkpoint, in input order, only when every trace is done. A
checkpoint records the input's hash and every setting; resuming with different ones is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from leakage.config import THINK_END, THINK_START
from leakage.io import atomic_file, atomic_write_json
from leakage.pipeline.compress import Compressor
from leakage.pipeline.llm import LLMError
from leakage.pipeline.scoring import BoundaryScorer
from leakage.pipeline.segment import SegmentConfig, segment
from leakage.pipeline.sentences import SplitConfig, naive_split, split_sentences
from leakage.pipeline.tokenizer import span_token_counts, token_counter, tokenizer_fingerprint, tokenizer_label
from leakage.trace import OpenMementosRecord

CHECKPOINT_VERSION = 1
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
    fields = {k: v for k, v in obj.items() if k not in ("cot", "problem")}
    return RawTrace(trace_id=trace_id, problem=obj["problem"], thinking=thinking,
                    answer_text=cot[end + len(THINK_END):].strip(), fields=fields, where=where)


def read_openthoughts(path: str | Path) -> Iterator[RawTrace]:
    """Stream the records of a JSONL file (blank lines skipped); duplicate trace ids are an error."""
    path = Path(path)
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _trace_file(checkpoint: Path, index: int) -> Path:
    return checkpoint / "traces" / f"{index // 1000:05d}" / f"{index:08d}.json"


def _open_checkpoint(checkpoint: Path, input_path: Path, settings: dict) -> None:
    manifest = {"version": CHECKPOINT_VERSION, "input": str(input_path), "input_sha256": _sha256_file(input_path),
                "settings": settings}
    path = checkpoint / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("version", "input_sha256", "settings"):
            if old.get(key) != manifest[key]:
                raise CheckpointMismatchError(
                    f"checkpoint {checkpoint} was made with a different {key.replace('_', ' ')} "
                    f"({json.dumps(old.get(key))[:200]} vs now {json.dumps(manifest[key])[:200]}); "
                    "delete it or choose another checkpoint directory")
    else:
        atomic_write_json(path, manifest)


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

    checkpoint_dir: default `<output>.checkpoint/`; removed once the output is written unless
        `keep_checkpoint`.
    max_new_traces: stop after processing this many traces not yet in the checkpoint (no output yet).
    on_trace_done(index, trace_id, reused): called after each trace is safely in the checkpoint.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else output_path.with_name(output_path.name + ".checkpoint")
    settings = {"config": asdict(config), "scorer": scorer.describe(), "compressor": compressor.describe(),
                "tokenizer": tokenizer_label(tokenizer), "tokenizer_vocab_sha256": tokenizer_fingerprint(tokenizer)}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they compare after a reload
    _open_checkpoint(checkpoint, input_path, settings)

    n_traces = n_reused = n_processed = 0
    for index, raw in enumerate(read_openthoughts(input_path)):
        n_traces += 1
        path = _trace_file(checkpoint, index)
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("trace_id") != raw.trace_id:
                raise CheckpointMismatchError(f"{path} holds trace {saved.get('trace_id')!r}, input has "
                                              f"{raw.trace_id!r} at {raw.where}")
            n_reused += 1
            reused = True
        else:
            if max_new_traces is not None and n_processed >= max_new_traces:
                return RunSummary(n_traces, n_reused, n_processed, complete=False, output=output_path)
            record = process_trace(raw, tokenizer, scorer, compressor, config)
            atomic_write_json(path, {"index": index, "trace_id": raw.trace_id, "record": record.to_dict()})
            n_processed += 1
            reused = False
        if on_trace_done is not None:
            on_trace_done(index, raw.trace_id, reused)

    def lines() -> Iterator[str]:
        for index in range(n_traces):
            record = json.loads(_trace_file(checkpoint, index).read_text(encoding="utf-8"))["record"]
            yield json.dumps(record, ensure_ascii=False) + "\n"

    _write_jsonl_stream(output_path, lines())
    if not keep_checkpoint:
        shutil.rmtree(checkpoint)
    return RunSummary(n_traces, n_reused, n_processed, complete=True, output=output_path)
