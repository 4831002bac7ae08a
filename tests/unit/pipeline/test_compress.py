"""The offline extractive compressor (the LLM compressor + judge loop is tested over HTTP in tests/integration)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakage.pipeline.compress import (ExtractiveCompressor, ExtractiveConfig, extractive_memento, extractive_selection,
                                       piece_score)
from leakage.pipeline.sentences import default_token_count
from tests.pipeline_data import synthetic_cot

BLOCK = ("Okay, let me think about what the question asks for here. It wants the total of two numbers. "
         "I remember that adding is easy when the numbers are small. Let me be careful with the carry digit though. "
         "The first number is 27 and the second is 15.\n"
         "27 + 15 = 42\n"
         "I wonder whether there is a trick in the problem statement, but it looks straightforward. "
         "Some people would count on their fingers, which works but is slow for numbers like these ones. "
         "Therefore the answer is 42.")


def test_keeps_equations_numbers_and_conclusions_within_budget():
    memento = extractive_memento(BLOCK)
    total = default_token_count(BLOCK)
    assert "27 + 15 = 42" in memento and "Therefore the answer is 42." in memento
    assert "fingers" not in memento and "wonder" not in memento
    assert default_token_count(memento) <= 0.20 * total
    assert extractive_memento(BLOCK) == memento  # deterministic


def test_pieces_keep_block_order():
    memento = extractive_memento(BLOCK, config=ExtractiveConfig(target_ratio=0.3, max_ratio=0.4))
    assert memento.index("27 + 15 = 42") < memento.index("Therefore the answer is 42.")


def test_piece_score():
    assert piece_score("x = 3", is_last=False) == 2 + 1
    assert piece_score("Therefore the answer is 42.", is_last=True) == 1 + 2 + 1
    assert piece_score("Some people count on fingers.", is_last=False) == 0


def test_a_single_long_piece_is_cut_at_clauses():
    block = "We note that " + ", ".join(f"item {i} is fine" for i in range(40)) + "."
    memento = extractive_memento(block)
    assert 0 < default_token_count(memento) <= 0.20 * default_token_count(block)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12),
       ratios=st.sampled_from([(0.1, 0.15), (0.15, 0.2), (0.3, 0.3)]))
def test_selection_is_extractive_greedy_and_bounded(seed, n, ratios):
    config = ExtractiveConfig(target_ratio=ratios[0], max_ratio=ratios[1])
    block = synthetic_cot(seed, n)
    pieces, chosen = extractive_selection(block, config=config)
    flat = " ".join(block.split())
    total = default_token_count(block)
    sizes = [default_token_count(p) for p in pieces]
    used = sum(sizes[i] for i in chosen)
    assert pieces and chosen == sorted(set(chosen))
    position = 0
    for piece in pieces:  # pieces are the block's text, in order
        position = flat.index(piece, position) + len(piece)
    assert used <= config.max_ratio * total or len(chosen) == 1
    # it stopped at the target, or nothing left would fit under the limit
    assert used >= config.target_ratio * total or all(
        used + sizes[i] > config.max_ratio * total for i in range(len(pieces)) if i not in chosen)


def test_compressor_and_config_validation():
    results = ExtractiveCompressor().compress_blocks([BLOCK, BLOCK])
    assert [r.memento for r in results] == [extractive_memento(BLOCK)] * 2
    assert all(r.passed is None and r.judge_scores == () for r in results)
    with pytest.raises(ValueError):
        ExtractiveConfig(target_ratio=0.3, max_ratio=0.2)
    with pytest.raises(ValueError, match="empty"):
        extractive_memento("   ")
