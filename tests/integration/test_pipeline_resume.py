"""An interrupted multi-trace run resumes without redoing finished traces and writes the same bytes."""

import json

import pytest

from leakage.pipeline.compress import ExtractiveCompressor
from leakage.pipeline.run import CheckpointMismatchError, PipelineConfig, run_pipeline
from leakage.pipeline.scoring import RuleScorer
from leakage.pipeline.segment import SegmentConfig
from leakage.pipeline.tokenizer import corpus_texts, token_counter, train_stand_in_tokenizer
from tests.pipeline_data import synthetic_record, write_jsonl

CONFIG = PipelineConfig(segment=SegmentConfig(min_block_tokens=120, score_mean="blocks"))


class Interrupted(Exception):
    pass


class CountingScorer(RuleScorer):
    """The rule scorer, counting the traces it scores."""

    calls = 0

    def score_boundaries(self, sentences):
        type(self).calls += 1
        return super().score_boundaries(sentences)


def run(source, out, tokenizer, config=CONFIG, **kwargs):
    return run_pipeline(source, out, tokenizer=tokenizer, scorer=CountingScorer(),
                        compressor=ExtractiveCompressor(token_counter(tokenizer)), config=config, **kwargs)


def interrupted_then_resumed(source, tmp_path, tokenizer):
    """Uninterrupted output bytes, resumed output bytes, and what the resumed run reported per trace."""
    reference = tmp_path / "reference.jsonl"
    run(source, reference, tokenizer)

    def stop_after_first(index, trace_id, reused):
        if index == 0:
            raise Interrupted

    out = tmp_path / "resumed.jsonl"
    checkpoint = tmp_path / "resumed.jsonl.checkpoint"
    with pytest.raises(Interrupted):
        run(source, out, tokenizer, on_trace_done=stop_after_first)
    assert not out.exists()
    assert len(list(checkpoint.rglob("0*.json"))) == 1
    (checkpoint / "traces" / "00000" / ".00000001.json.tmp").write_text('{"partial')  # a crash mid-write
    CountingScorer.calls = 0
    seen = []
    summary = run(source, out, tokenizer, on_trace_done=lambda *event: seen.append(event))
    assert summary.complete and (summary.n_reused, summary.n_processed) == (1, summary.n_traces - 1)
    assert CountingScorer.calls == summary.n_traces - 1  # the finished trace was not redone
    assert not checkpoint.exists()
    return reference.read_bytes(), out.read_bytes(), seen


def test_resume_synthetic(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record(f"s{i}", i, n_paragraphs=20 + 5 * i) for i in range(3)])
    tokenizer = train_stand_in_tokenizer(corpus_texts([source]), vocab_size=512)
    reference, resumed, seen = interrupted_then_resumed(source, tmp_path, tokenizer)
    assert resumed == reference
    assert seen == [(0, "s0", True), (1, "s1", False), (2, "s2", False)]
    assert [json.loads(line)["task_id"] for line in reference.decode().splitlines()] == ["s0", "s1", "s2"]


def test_resume_with_the_fixture_trace(fixtures_dir, tmp_path):
    fixture = json.loads((fixtures_dir / "openthoughts_example_trace.jsonl").read_text().splitlines()[0])
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record("s0", 0), fixture, synthetic_record("s2", 2)])
    tokenizer = train_stand_in_tokenizer(corpus_texts([fixtures_dir / "openthoughts_example_trace.jsonl"]))
    reference, resumed, seen = interrupted_then_resumed(source, tmp_path, tokenizer)
    assert resumed == reference
    assert [event[1:] for event in seen] == [("s0", True), (fixture["task_id"], False), ("s2", False)]


def test_checkpoint_refuses_other_settings_and_redoes_changed_records(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record(f"s{i}", i) for i in range(2)])
    tokenizer = train_stand_in_tokenizer(corpus_texts([source]), vocab_size=512)
    out = tmp_path / "out.jsonl"
    partial = run(source, out, tokenizer, max_new_traces=1)
    assert not partial.complete and partial.n_processed == 1 and not out.exists()
    other = PipelineConfig(segment=SegmentConfig(min_block_tokens=100, score_mean="blocks"))
    with pytest.raises(CheckpointMismatchError, match="different settings"):
        run(source, out, tokenizer, config=other)
    # the user fixes (here: changes) the first record and adds one: only the unchanged work is reused
    write_jsonl(source, [synthetic_record("s0", 7), synthetic_record("s1", 1), synthetic_record("s2", 2)])
    summary = run(source, out, tokenizer)
    assert summary.complete and (summary.n_reused, summary.n_processed) == (0, 3)
    fresh = tmp_path / "fresh.jsonl"
    run(source, fresh, tokenizer)
    assert out.read_bytes() == fresh.read_bytes()


def test_checkpoint_cleanup_deletes_only_what_the_pipeline_wrote(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record("s0", 0)])
    tokenizer = train_stand_in_tokenizer(corpus_texts([source]), vocab_size=512)
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointMismatchError, match="holds files the pipeline did not write.*notes.txt"):
        run(source, tmp_path / "out.jsonl", tokenizer, checkpoint_dir=mine)
    assert (mine / "notes.txt").read_text() == "precious" and not (tmp_path / "out.jsonl").exists()
    with pytest.raises(CheckpointMismatchError, match="did not write"):  # '--checkpoint .': the input is there
        run(source, tmp_path / "out.jsonl", tokenizer, checkpoint_dir=tmp_path)
    assert source.is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(source, tmp_path / "out.jsonl", tokenizer, checkpoint_dir=empty).complete
    assert not empty.exists() and (tmp_path / "out.jsonl").is_file()  # it was ours, and left empty
    with pytest.raises(ValueError, match="is the input file"):
        run(source, source, tokenizer)
    assert source.read_text().startswith("{")


def test_a_corrupt_checkpoint_entry_names_its_file(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record(f"s{i}", i) for i in range(2)])
    tokenizer = train_stand_in_tokenizer(corpus_texts([source]), vocab_size=512)
    out = tmp_path / "out.jsonl"
    run(source, out, tokenizer, max_new_traces=1)
    entry = tmp_path / "out.jsonl.checkpoint" / "traces" / "00000" / "00000000.json"
    entry.write_text('{"trace_id": "s0", "rec')
    with pytest.raises(CheckpointMismatchError, match="00000000.json: corrupt checkpoint file"):
        run(source, out, tokenizer)
