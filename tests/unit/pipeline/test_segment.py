"""The segmenter is exact: it matches a brute-force search over every valid partition."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakage.pipeline.segment import (SEGMENT_PRESETS, SegmentationError, SegmentConfig, segment,
                                      segmentation_objective)


def brute_force(sizes, scores, config):
    """Max J over all partitions (numpy's population std, written independently of the DP)."""
    n, best = len(sizes), None
    if sum(sizes) == 0:
        return None  # no tokens: the size variation is undefined, segment() refuses
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            starts, ends = (0, *cuts), (*cuts, n)
            blocks = [sum(sizes[a:b]) for a, b in zip(starts, ends)]
            if min(blocks) < config.min_block_tokens or len(blocks) < config.min_blocks:
                continue
            if config.max_blocks is not None and len(blocks) > config.max_blocks:
                continue
            if len(blocks) == 1:
                value = 0.0
            else:
                chosen = [scores[c - 1] for c in cuts]
                mean = np.sum(chosen) / (len(chosen) if config.score_mean == "boundaries" else len(blocks))
                value = mean - config.lambda_ * np.std(blocks) / np.mean(blocks)
            best = value if best is None else max(best, value)
    return best


@st.composite
def problems(draw):
    n = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    scores = draw(st.lists(st.sampled_from([0, 0.5, 1, 1.5, 2, 2.5, 3]), min_size=n - 1, max_size=n - 1))
    min_blocks = draw(st.integers(1, 3))
    max_blocks = draw(st.one_of(st.none(), st.integers(min_blocks, 5)))
    config = SegmentConfig(lambda_=draw(st.sampled_from([0.0, 0.5, 1.7])), min_block_tokens=draw(st.integers(0, 60)),
                           min_blocks=min_blocks, max_blocks=max_blocks,
                           score_mean=draw(st.sampled_from(["boundaries", "blocks"])))
    return sizes, scores, config


@settings(max_examples=400, deadline=None)
@given(problem=problems())
def test_matches_brute_force_and_respects_the_constraints(problem):
    sizes, scores, config = problem
    expected = brute_force(sizes, scores, config)
    if expected is None:
        with pytest.raises(SegmentationError):
            segment(sizes, scores, config)
        return
    result = segment(sizes, scores, config)
    assert result.objective == pytest.approx(expected, abs=1e-9)
    assert result.starts[0] == 0 and list(result.starts) == sorted(set(result.starts))
    assert result.starts[-1] < len(sizes)
    ranges = result.ranges(len(sizes))
    assert result.block_sizes == tuple(sum(sizes[a:b]) for a, b in ranges)
    assert min(result.block_sizes) >= config.min_block_tokens
    assert config.min_blocks <= result.n_blocks <= (config.max_blocks or len(sizes))
    assert result.chosen_scores == tuple(scores[j] for j in result.boundaries)
    assert segmentation_objective(result.block_sizes, result.chosen_scores, config.lambda_,
                                  config.score_mean) == pytest.approx(result.objective, abs=1e-12)


def test_single_block_scores_zero_and_wins_only_without_a_positive_split():
    config = SegmentConfig(min_block_tokens=200)
    # one boundary of score 0: two blocks give 0 - 0.5 * CV(300, 500) = -0.125 < 0
    result = segment([300, 500], [0], config)
    assert result.n_blocks == 1 and result.objective == 0.0 and result.chosen_scores == ()
    result = segment([300, 500], [3], config)
    assert result.n_blocks == 2 and result.objective == pytest.approx(3 - 0.5 * 0.25)


def test_score_mean_conventions_differ_as_documented():
    sizes, scores = [100] * 10, [3] * 9
    # mean over chosen boundaries: every equal split scores 3, ties go to the fewest blocks
    assert segment(sizes, scores, SegmentConfig(min_block_tokens=200)).n_blocks == 2
    # sum / K rewards more blocks: 3 (K - 1) / K grows with K, up to 1000 / 200 = 5 blocks
    result = segment(sizes, scores, SegmentConfig(min_block_tokens=200, score_mean="blocks"))
    assert result.n_blocks == 5 and result.block_sizes == (200,) * 5 and result.objective == pytest.approx(3 * 4 / 5)


def test_too_short_raises_a_clear_error():
    with pytest.raises(SegmentationError, match="150 tokens, fewer than min_block_tokens=200"):
        segment([50, 100], [3], SegmentConfig(min_block_tokens=200))
    with pytest.raises(SegmentationError, match="3 or more blocks"):
        segment([300, 300], [3], SegmentConfig(min_block_tokens=200, min_blocks=3))


@pytest.mark.parametrize("scores,message", [([math.pi / 10], "multiples of 1/q"), ([-1], ">= 0"),
                                            ([math.nan], "finite"), ([1, 2], "need 1 boundary scores")])
def test_bad_scores_are_refused(scores, message):
    with pytest.raises(ValueError, match=message):
        segment([300, 300], scores)


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        SegmentConfig(lambda_=-1)
    with pytest.raises(ValueError):
        SegmentConfig(min_blocks=3, max_blocks=2)
    with pytest.raises(ValueError):
        SegmentConfig(score_mean="mean")


def test_thirds_are_on_the_grid():
    # K = 3: mean 1/2, CV 0. K = 2 at the 2/3 boundary: 2/3 - 1.0 * CV(200, 100) = 1/3.
    result = segment([100, 100, 100], [1 / 3, 2 / 3], SegmentConfig(lambda_=1.0, min_block_tokens=100))
    assert result.n_blocks == 3 and result.objective == pytest.approx(0.5)


def test_presets():
    assert SEGMENT_PRESETS["paper"] == SegmentConfig() == SegmentConfig(lambda_=0.5, min_block_tokens=200)
    assert SEGMENT_PRESETS["reference"].score_mean == "blocks"
