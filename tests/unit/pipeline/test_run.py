"""Input parsing and the per-trace core (split -> score -> segment -> compress) on synthetic traces."""

import json

import pytest

from leakage.pipeline.compress import ExtractiveCompressor
from leakage.pipeline.run import (META_KEY, PipelineConfig, TraceError, parse_openthoughts, process_trace,
                                  read_openthoughts)
from leakage.pipeline.scoring import RuleScorer
from leakage.pipeline.segment import SegmentConfig
from leakage.pipeline.tokenizer import (load_tokenizer, span_token_counts, token_counter, tokenizer_fingerprint,
                                        train_stand_in_tokenizer)
from leakage.memento.trace import OpenMementosRecord
from tests.pipeline_data import synthetic_cot, synthetic_record, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    return train_stand_in_tokenizer([synthetic_cot(seed) for seed in range(5)], vocab_size=512)


@pytest.mark.parametrize("obj,message", [
    ({"problem": "p"}, "'cot' must be a string"),
    ({"cot": "<think>x</think>"}, "'problem' must be a string"),
    ({"cot": "no tags", "problem": "p"}, "must contain <think> ... </think>"),
    ({"cot": "<think>unclosed", "problem": "p"}, "must contain <think> ... </think>"),
    ({"cot": "preamble <think>x</think>", "problem": "p"}, "text before <think>"),
    ({"cot": "<think>  </think>answer", "problem": "p"}, "is empty"),
])
def test_bad_records_name_the_place_and_trace(obj, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_openthoughts({**obj, "task_id": "t-7"}, "in.jsonl, line 3", default_id="line 3")
    assert "in.jsonl, line 3 (trace t-7)" in str(err.value)


def test_parse_splits_reasoning_and_answer():
    raw = parse_openthoughts({"cot": "<think> a b </think>\n final", "problem": "p", "source": "s"}, "f", "line 1")
    assert (raw.trace_id, raw.thinking, raw.answer_text, raw.fields) == ("line 1", " a b ", "final", {"source": "s"})


def test_reader_names_lines_and_refuses_duplicate_ids(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"cot": "<think>x</think>", "problem": "p", "id": 1}\n\n{not json}\n')
    with pytest.raises(ValueError, match=r"in.jsonl, line 3: invalid JSON"):
        list(read_openthoughts(path))
    write_jsonl(path, [synthetic_record("a", 1), synthetic_record("b", 2), synthetic_record("a", 3)])
    with pytest.raises(ValueError, match="line 3: trace id 'a' already used on line 1"):
        list(read_openthoughts(path))


def test_process_trace_keeps_every_character_and_the_block_minimum(tokenizer):
    raw = parse_openthoughts(synthetic_record("t1", 11), "mem", "line 1")
    config = PipelineConfig(segment=SegmentConfig(min_block_tokens=150, score_mean="blocks"))
    record = process_trace(raw, tokenizer, RuleScorer(), ExtractiveCompressor(token_counter(tokenizer)), config)
    again = OpenMementosRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.to_dict() == record.to_dict()
    blocks = [s["text"] for s in record.segments if s["type"] == "block"]
    mementos = [s["text"] for s in record.segments if s["type"] == "summary"]
    assert len(blocks) == len(mementos) >= 2
    assert " ".join(" ".join(blocks).split()) == " ".join(raw.thinking.split())  # nothing lost, nothing added
    meta = record.extra[META_KEY]
    assert min(meta["block_tokens"]) >= 150
    assert all(len(tokenizer.encode(b, add_special_tokens=False)) >= n for b, n in zip(blocks, meta["block_tokens"]))
    assert all(len(m) < len(b) for b, m in zip(blocks, mementos))
    assert record.segments[-1] == {"type": "answer", "block_idx": 0, "text": "The answer is 42."}
    assert record.extra["task_id"] == "t1" and record.extra["domain"] == "math"


def test_process_trace_errors_name_the_trace(tokenizer):
    raw = parse_openthoughts(synthetic_record("short", 1, n_paragraphs=1), "in.jsonl, line 9", "line 9")
    with pytest.raises(TraceError, match=r"in.jsonl, line 9 \(trace short\): the text has \d+ tokens, fewer than"):
        process_trace(raw, tokenizer, RuleScorer(), ExtractiveCompressor())


def test_span_token_counts_bound_each_block_tokenised_alone(tokenizer):
    text = "alpha beta.\n\ngamma  delta \\( x \\) epsilon.\n\nzeta eta"
    starts = [0, text.index("gamma"), text.index("delta"), text.index("zeta")]
    counts = span_token_counts(text, starts, tokenizer)
    assert 0 < sum(counts) <= len(tokenizer.encode(text, add_special_tokens=False))
    ends = [*starts[1:], len(text)]
    for lo in range(len(starts)):  # every block of consecutive spans
        for hi in range(lo + 1, len(starts) + 1):
            block = text[starts[lo]:ends[hi - 1]].strip()
            assert sum(counts[lo:hi]) <= len(tokenizer.encode(block, add_special_tokens=False)), block


def test_a_saved_tokenizer_directory_loads_back_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)
    text = "x = 1 <|block_start|> y"
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_tokenizer(tmp_path / "missing")
