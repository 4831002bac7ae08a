"""Rule-based boundary scores and the LLM scorer's windowing (the HTTP path is in tests/integration)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leakage.pipeline.scoring import LLMScorerConfig, RuleScorer, render_window, windows_of
from leakage.pipeline.sentences import split_sentences
from tests.pipeline_data import synthetic_cot

score = RuleScorer().score_one


@pytest.mark.parametrize("previous,following,expected", [
    ("The two cases are:\n", "x is even and positive here.", 0),  # after ':'
    ("So the total is =\n", "42 in the end.", 0),  # after '='
    ("We add both sides,\n", "which gives the result.", 0),  # mid-sentence line break
    ("x = 1 + 2\n", "y = x * 3\n", 0),  # between math lines
    ("We found that x is 3. ", "Therefore y must be 9 as well.", 0),  # conclusion continues
    ("Suppose x is negative. ", "Then the square would be positive.", 0),  # assumption and its check
    ("The sum is 7.\n\n", "= 7 is what we have.", 0),  # next starts with an operator
    ("The sum is 7. ", "Wait, that cannot be right.", 3),
    ("The sum is 7.\n\n", "Alternatively, count on fingers.", 3),
    ("The sum is 7. ", "Let me check the addition again.", 3),
    ("The sum is 7.\n\n", "The product is 12 though.", 2),  # paragraph break after a complete sentence
    ("We have the sum\n\n", "Next, we find the product.", 2),  # paragraph break before a new step
    ("The sum is 7. ", "The product is 12 though.", 1),  # ordinary sentence boundary
    ("The sum is seven\n", "and the product is twelve", 0),  # line break inside a sentence
])
def test_rules(previous, following, expected):
    assert score(previous, following) == expected


def test_rule_scores_cover_every_boundary_of_a_trace():
    sentences = split_sentences(synthetic_cot(1)).sentences
    scores = RuleScorer().score_boundaries(sentences)
    assert len(scores) == len(sentences) - 1
    assert set(scores) <= {0, 1, 2, 3} and 3 in scores  # the synthetic trace has "Wait" and "Alternatively" pivots
    assert RuleScorer().score_boundaries(["one sentence only"]) == []


@given(n=st.integers(0, 200), size=st.integers(1, 40))
def test_windows_partition_the_boundaries(n, size):
    windows = windows_of(n, size)
    assert [j for w in windows for j in w] == list(range(n))
    assert all(1 <= len(w) <= size for w in windows)


def test_window_sizes_must_be_coprime():
    with pytest.raises(ValueError, match="coprime"):
        LLMScorerConfig(windows=(12, 8))
    assert LLMScorerConfig().windows == (16, 11)


def test_render_window_marks_exactly_the_window():
    sentences = ["A one. ", "B two. ", "C three. ", "D four."]
    text = render_window(sentences, range(1, 3))
    assert text == "B two.\n<<<BOUNDARY 1>>>\nC three.\n<<<BOUNDARY 2>>>\nD four."
