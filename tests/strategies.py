"""Hypothesis strategies for random well-formed Memento token streams, with fixed marker ids (no tokenizer)."""

from hypothesis import strategies as st

from leakage.memento.spans import MarkerIds

MARKERS = MarkerIds(block_start=100, block_end=101, summary_start=102, summary_end=103, think_start=104,
                    think_end=105)
WORD = st.integers(min_value=0, max_value=9)


@st.composite
def memento_streams(draw, max_blocks: int = 4, allow_unfinished: bool = True, markers: MarkerIds = MARKERS,
                    words=WORD) -> list[int]:
    """prompt <think> [bs r* be (gap)? ss m* se (gap)?]* (</think> answer | an unfinished tail)."""
    m = markers
    WORD = words
    ids = draw(st.lists(WORD, max_size=3)) + [m.think_start]
    for _ in range(draw(st.integers(0, max_blocks))):
        ids += [m.block_start, *draw(st.lists(WORD, max_size=4)), m.block_end]
        ids += draw(st.lists(WORD, max_size=1))  # text between <|block_end|> and <|summary_start|>
        ids += [m.summary_start, *draw(st.lists(WORD, max_size=3)), m.summary_end]
        ids += draw(st.lists(WORD, max_size=1))
    tail = draw(st.sampled_from(["answer", "open_block", "open_summary", "thinking"] if allow_unfinished
                                else ["answer"]))
    if tail == "answer":
        ids += [m.think_end, *draw(st.lists(WORD, max_size=2))]
    elif tail == "open_block":
        ids += [m.block_start, *draw(st.lists(WORD, max_size=3))]
    elif tail == "open_summary":
        ids += [m.block_start, *draw(st.lists(WORD, max_size=3)), m.block_end, m.summary_start,
                *draw(st.lists(WORD, max_size=2))]
    return ids
