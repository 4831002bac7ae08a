"""Offline end to end: OpenThoughts-style JSONL -> split -> score -> segment -> extractive compress ->
OpenMementos JSONL that the foundation's reader loads back; then stats and KV simulation, via the CLI."""

import csv
import json
import time

import pytest

from leakage.cli import main
from leakage.pipeline.compress import ExtractiveCompressor
from leakage.pipeline.run import PipelineConfig, read_openthoughts, run_pipeline
from leakage.pipeline.scoring import RuleScorer
from leakage.pipeline.segment import SegmentConfig, segment
from leakage.pipeline.sentences import split_sentences
from leakage.pipeline.stats import kv_compare
from leakage.pipeline.tokenizer import corpus_texts, span_token_counts, token_counter, train_stand_in_tokenizer
from leakage.memento.trace import read_openmementos
from tests.pipeline_data import synthetic_record, write_jsonl

FIXTURE_TRACE = "openthoughts_example_trace.jsonl"
MEMENTO_FIXTURES = ("memento_example_response.json", "memento_example_code.json", "memento_example_science.json")


@pytest.fixture(scope="module")
def fixture_tokenizer(fixtures_dir):
    return train_stand_in_tokenizer(corpus_texts(sorted(fixtures_dir.glob("*.json*"))))


def check_output(path, source, tokenizer, min_block_tokens):
    """The output loads with the foundation's reader and keeps every character of every trace's reasoning."""
    records = read_openmementos(path)
    raws = list(read_openthoughts(source))
    assert len(records) == len(raws)
    for raw, record in zip(raws, records):
        assert record.problem == raw.problem and record.extra["task_id"] == raw.trace_id
        blocks = [s["text"] for s in record.segments if s["type"] == "block"]
        mementos = [s["text"] for s in record.segments if s["type"] == "summary"]
        assert " ".join(" ".join(blocks).split()) == " ".join(raw.thinking.split())
        meta = record.extra["memento_pipeline"]
        assert len(meta["block_tokens"]) == len(blocks) and min(meta["block_tokens"]) >= min_block_tokens
        count = token_counter(tokenizer)
        assert all(count(b) >= n for b, n in zip(blocks, meta["block_tokens"]))  # sizes bound the blocks alone
        assert all(0 < count(m) < count(b) for b, m in zip(blocks, mementos))
        kv = kv_compare(record, tokenizer, raw.trace_id)
        assert kv.vanilla.peak == kv.tokens
        if len(blocks) > 1:
            assert kv.memento.peak < kv.vanilla.peak and kv.memento.auc < kv.vanilla.auc
    return records


@pytest.mark.parametrize("score_mean", ["boundaries", "blocks"])
def test_openthoughts_fixture_end_to_end(fixtures_dir, fixture_tokenizer, tmp_path, score_mean):
    config = PipelineConfig(segment=SegmentConfig(score_mean=score_mean))
    summary = run_pipeline(fixtures_dir / FIXTURE_TRACE, tmp_path / "out.jsonl", tokenizer=fixture_tokenizer,
                           scorer=RuleScorer(), compressor=ExtractiveCompressor(token_counter(fixture_tokenizer)),
                           config=config)
    assert summary.complete and summary.n_traces == 1 and not (tmp_path / "out.jsonl.checkpoint").exists()
    [record] = check_output(tmp_path / "out.jsonl", fixtures_dir / FIXTURE_TRACE, fixture_tokenizer, 200)
    assert len(record.to_trace().blocks) >= 2


def test_segmenting_the_36k_character_fixture_is_fast(fixtures_dir, fixture_tokenizer):
    [raw] = read_openthoughts(fixtures_dir / FIXTURE_TRACE)
    assert len(raw.thinking) > 35_000
    split = split_sentences(raw.thinking, count_tokens=token_counter(fixture_tokenizer))
    scores = RuleScorer().score_boundaries(split.sentences)
    sizes = span_token_counts(raw.thinking, split.starts, fixture_tokenizer)
    start = time.perf_counter()
    result = segment(sizes, scores, SegmentConfig())
    elapsed = time.perf_counter() - start
    assert len(split) > 300 and min(result.block_sizes) >= 200
    assert elapsed < 5.0, f"exact segmentation of {len(split)} sentences took {elapsed:.1f} s"


def test_cli_on_the_fixtures(fixtures_dir, tmp_path, capsys):
    corpus = [str(p) for p in sorted(fixtures_dir.glob("*.json*"))]
    tok = ["--tokenizer", "stand-in", "--stand-in-corpus", *corpus]
    report = tmp_path / "reduction.json"
    assert main(["data", "split", str(fixtures_dir / FIXTURE_TRACE), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    total = data["total"]
    assert total["naive_boundaries"] > total["structured_boundaries"] > 0
    assert data["traces"][0]["naive_boundaries"] == total["naive_boundaries"]
    assert sum(data["traces"][0]["removed"].values()) == total["naive_boundaries"] - total["structured_boundaries"]

    out = tmp_path / "mementos.jsonl"
    assert main(["data", "run", str(fixtures_dir / FIXTURE_TRACE), "--out", str(out), *tok]) == 0
    inputs = [str(out), *(str(fixtures_dir / name) for name in MEMENTO_FIXTURES)]
    assert main(["data", "stats", *inputs, *tok, "--csv", str(tmp_path / "stats.csv"),
                 "--plot", str(tmp_path / "stats.png")]) == 0
    rows = list(csv.DictReader((tmp_path / "stats.csv").open()))
    assert [r["source"] for r in rows] == ["mementos", *(n.removesuffix(".json") for n in MEMENTO_FIXTURES)]
    assert all(r["tokenizer"].startswith("stand-in-bpe-2048-") for r in rows)
    assert (tmp_path / "stats_blocks.csv").is_file() and (tmp_path / "stats.png").stat().st_size > 10_000

    kv_csv = tmp_path / "kv.csv"
    assert main(["data", "kv", *inputs[1:], *tok, "--csv", str(kv_csv), "--plot", str(tmp_path / "kv.png")]) == 0
    rows = list(csv.DictReader(kv_csv.open()))
    assert len(rows) == 3
    for row in rows:
        assert int(row["vanilla_peak"]) == int(row["tokens"]) > int(row["memento_peak"])
        assert float(row["peak_ratio"]) == pytest.approx(int(row["vanilla_peak"]) / int(row["memento_peak"]), abs=1e-4)
        assert float(row["auc_ratio"]) == pytest.approx(int(row["vanilla_auc"]) / int(row["memento_auc"]), abs=1e-4)
    assert (tmp_path / "kv.png").stat().st_size > 10_000
    assert "peak_ratio" in capsys.readouterr().out


def test_synthetic_end_to_end_through_the_cli(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record(f"s{i}", i, n_paragraphs=30) for i in range(2)])
    out = tmp_path / "out.jsonl"
    assert main(["data", "run", str(source), "--out", str(out), "--tokenizer", "stand-in", "--min-block-tokens", "120",
                 "--score-mean", "blocks"]) == 0
    tokenizer = train_stand_in_tokenizer(corpus_texts([source]))
    records = check_output(out, source, tokenizer, 120)
    assert all(len(r.to_trace().blocks) >= 2 for r in records)
    assert main(["data", "kv", str(out), "--tokenizer", "stand-in", "--stand-in-corpus", str(source),
                 "--csv", str(tmp_path / "kv.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "kv.csv").open()))) == 2
