"""Per-trace statistics and the vanilla-vs-memento KV simulation, on a hand-made record."""

import pytest

from leakage.engine.model import build_tokenizer
from leakage.pipeline.stats import block_frame, kv_compare, trace_stats
from leakage.pipeline.tokenizer import ensure_memento_markers
from leakage.memento.trace import OpenMementosRecord


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()  # word-level: one token per whitespace-separated word
    added = ensure_memento_markers(tok)
    assert set(added) == {"<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>"}
    assert ensure_memento_markers(tok) == []
    return tok


@pytest.fixture
def record():
    return OpenMementosRecord(problem="sum", answer="7", segments=[
        {"type": "block", "block_idx": 1, "text": "1 2 3 4"}, {"type": "summary", "block_idx": 1, "text": "1"},
        {"type": "block", "block_idx": 2, "text": "5 6"}, {"type": "summary", "block_idx": 2, "text": "1"},
        {"type": "answer", "block_idx": 0, "text": "7"}])


def test_trace_stats(record, tokenizer):
    stats = trace_stats(record, tokenizer, "t", "src")
    assert (stats.n_blocks, stats.block_tokens, stats.memento_tokens) == (2, (4, 2), (1, 1))
    assert (stats.block_chars, stats.memento_chars) == ((7, 3), (1, 1))
    assert stats.block_ratios == [0.25, 0.5] and stats.compression_ratio == pytest.approx(2 / 6)
    summary = stats.summary()
    assert summary["median_block_ratio"] == pytest.approx(0.375)
    assert summary["trace_compression_factor"] == pytest.approx(3)
    frame = block_frame([stats])
    assert list(frame["block_tokens"]) == [4, 2] and list(frame["block"]) == [1, 2]


def test_kv_compare_by_hand(record, tokenizer):
    # positions: 0 prompt | 1 <think> | 2 bs, 3-6 block, 7 be, 8 ss, 9 memento, 10 se
    #            | 11 bs, 12-13 block, 14 be, 15 ss, 16 memento, 17 se | 18 </think> | 19 answer
    c = kv_compare(record, tokenizer, "t")
    assert (c.tokens, c.prompt_tokens, c.n_blocks) == (20, 1, 2)
    assert c.vanilla.cached_tokens == list(range(1, 21))
    # block 1's 4 tokens leave when its <|summary_end|> is sampled, before step 10 (the engine's timing);
    # block 2's 2 before step 17
    assert c.memento.cached_tokens == [*range(1, 11), *range(7, 14), 12, 13, 14]
    assert (c.vanilla.peak, c.memento.peak) == (20, 14)
    assert (c.vanilla.auc, c.memento.auc) == (sum(range(2, 21)), sum(range(2, 11)) + sum(range(7, 14)) + 39)
    assert c.peak_ratio == pytest.approx(20 / 14)
    row = c.row("word-level")
    assert row["auc_ratio"] == pytest.approx(209 / 163, abs=1e-4) and row["tokenizer"] == "word-level"


def test_stats_refuse_records_without_blocks(tokenizer):
    empty = OpenMementosRecord(problem="sum", answer="", segments=[{"type": "answer", "block_idx": 0, "text": "7"}])
    with pytest.raises(ValueError, match="no blocks"):
        trace_stats(empty, tokenizer, "t")
