"""The block tracker / parser: kinds, block spans, unfinished streams, malformed streams."""

import pytest
from hypothesis import given, settings

from leakage.memento.spans import MalformedTraceError, SpanKind, parse_spans
from tests.strategies import MARKERS, memento_streams

m = MARKERS
K = SpanKind


def test_kinds_and_block_indices():
    ids = [7, 8, m.think_start, m.block_start, 1, 2, m.block_end, 9, m.summary_start, 3, m.summary_end,
           m.think_end, 4]
    spans = parse_spans(ids, MARKERS)
    assert spans.prompt_len == 2 and spans.think_start == 2 and spans.think_end == 11
    assert spans.kinds == [K.PROMPT, K.PROMPT, K.OTHER, K.BLOCK_DELIM, K.BLOCK, K.BLOCK, K.BLOCK_DELIM, K.OTHER,
                           K.MEMENTO_DELIM, K.MEMENTO, K.MEMENTO_DELIM, K.OTHER, K.ANSWER]
    assert spans.block_index == [-1, -1, -1, 0, 0, 0, 0, -1, 0, 0, 0, -1, -1]
    (b,) = spans.blocks
    assert (b.block_start, b.block_end, b.summary_start, b.summary_end) == (3, 6, 8, 10)
    assert b.masked_range(False) == (4, 6) and b.masked_range(True) == (3, 7)
    assert spans.open_block is None


@settings(max_examples=200, deadline=None)
@given(ids=memento_streams())
def test_random_streams_parse_consistently(ids):
    spans = parse_spans(ids, MARKERS)
    assert len(spans) == len(ids)
    for b in spans.blocks:
        assert spans.kinds[b.block_start] == K.BLOCK_DELIM and spans.block_index[b.block_start] == b.index
        if b.block_end is not None:
            assert all(spans.kinds[p] == K.BLOCK for p in range(b.block_start + 1, b.block_end))
        if b.summary_end is not None:
            assert all(spans.kinds[p] == K.MEMENTO for p in range(b.summary_start + 1, b.summary_end))
    complete = [b.is_complete for b in spans.blocks]
    assert complete == sorted(complete, reverse=True), "only the last block may be unfinished"


def test_unfinished_block_is_open():
    spans = parse_spans([m.think_start, m.block_start, 1, 2], MARKERS)
    assert spans.open_block is spans.blocks[0] and spans.open_block.block_end is None
    spans = parse_spans([m.think_start, m.block_start, 1, m.block_end, m.summary_start, 3], MARKERS)
    assert spans.open_block.summary_start == 4 and not spans.open_block.is_complete


def test_stream_may_start_in_the_response():
    spans = parse_spans([m.block_start, 1, m.block_end, m.summary_start, 2, m.summary_end], MARKERS)
    assert spans.prompt_len == 0 and spans.blocks[0].is_complete


def test_explicit_prompt_len():
    spans = parse_spans([5, 6, m.block_start, 1], MARKERS, prompt_len=2)
    assert spans.prompt_len == 2 and spans.kinds[:2] == [K.PROMPT, K.PROMPT] and spans.open_block


MALFORMED = {
    "block that never closes": ([m.think_start, m.block_start, 1, m.think_end], 3, "never closed"),
    "summary without closed block": ([m.think_start, m.summary_start], 1, "without a preceding closed block"),
    "summary inside open block": ([m.think_start, m.block_start, 1, m.summary_start], 3, "never closed"),
    "nested blocks": ([m.think_start, m.block_start, 1, m.block_start], 3, "nested"),
    "second summary": ([m.think_start, m.block_start, m.block_end, m.summary_start, m.summary_end, m.summary_start],
                       5, "second summary for block 0"),
    "block_end without block": ([m.think_start, m.block_end], 1, "no open block"),
    "summary_end without summary": ([m.think_start, m.block_start, m.block_end, m.summary_end], 3, "no open summary"),
    "block without summary": ([m.think_start, m.block_start, m.block_end, m.block_start], 3, "has no summary"),
    "marker in the answer": ([m.think_start, m.think_end, 1, m.block_start], 3, "after </think>"),
    "marker in plain prompt": ([1, m.block_start, m.think_start], 1, "in the prompt"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_streams_name_the_position(name):
    ids, position, message = MALFORMED[name]
    with pytest.raises(MalformedTraceError, match=message) as err:
        parse_spans(ids, MARKERS)
    assert err.value.position == position
    assert f"position {position}" in str(err.value)


def test_special_token_in_plain_prompt_with_explicit_length():
    with pytest.raises(MalformedTraceError, match="position 1.*plain prompt"):
        parse_spans([1, m.summary_end, 2, m.think_start], MARKERS, prompt_len=3)
    spans = parse_spans([1, m.summary_end, 2, m.think_start], MARKERS, prompt_len=3, plain_prompt=False)
    assert spans.kinds[:3] == [K.PROMPT] * 3 and not spans.blocks


def test_batch_ids_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        parse_spans([[1, 2]], MARKERS)
