"""Named positions: structural parts from the spans, task parts declared while rendering."""

import pytest

from leakage.memento.positions import BLOCK_PARTS, Site, part_labels, trace_positions
from leakage.memento.spans import parse_spans
from leakage.training.tasks import TaskConfig, make_example
from leakage.memento.trace import MementoTrace, Named
from tests.strategies import MARKERS

M = MARKERS
TWO = [7, M.think_start, M.block_start, 1, 2, M.block_end, M.summary_start, 3, M.summary_end,
       M.block_start, 4, M.block_end, 9, M.summary_start, 5, 6, M.summary_end, M.think_end, 6]


def test_every_part_is_named():
    positions = trace_positions(parse_spans(TWO, MARKERS))
    assert positions.select("prompt") == [0] and positions.select("think_start") == [1]
    assert [positions.select(Site(part, 0)) for part in BLOCK_PARTS] == [[2], [3, 4], [5], [6], [7], [8]]
    assert [positions.select(f"{part}@1") for part in BLOCK_PARTS] == [[9], [10], [11], [13], [14, 15], [16]]
    assert positions.select("memento@-1") == [14, 15]
    assert positions.select("think_end") == [17] and positions.select("answer") == [18]
    assert part_labels(positions)[12] == "other"  # between <|block_end|> and <|summary_start|>
    assert part_labels(positions)[:9] == ["prompt", "think_start", "block_start", "interior", "interior",
                                          "block_end", "summary_start", "memento", "summary_end"]


def test_missing_sites_are_named_errors():
    positions = trace_positions(parse_spans(TWO[:7], MARKERS))  # block 0's summary still open
    with pytest.raises(KeyError, match="summary_end@0: not produced"):
        positions.select("summary_end@0")
    with pytest.raises(KeyError, match="memento@3: the sequence has 1 blocks"):
        positions.select("memento@3")
    with pytest.raises(KeyError, match="passcode: no such part"):
        positions.select("passcode")
    with pytest.raises(ValueError, match="needs a block index"):
        Site("memento")


def test_named_pieces_land_where_the_render_says(tokenizer):
    trace = MementoTrace(Named(("q", "what is")), [(Named(("a", "1 2"), (None, "="), ("b", "3")), "3")],
                         Named(("ans", "3")))
    rendered = trace.render(tokenizer)
    assert rendered.ids == trace.to_ids(tokenizer) and trace.to_text().startswith("what is<think>")
    for name, text in (("q", "what is"), ("a", "1 2"), ("b", "3"), ("ans", "3")):
        assert tokenizer.decode([rendered.ids[p] for p in rendered.parts[name]]) == text
    with pytest.raises(ValueError, match="used twice"):
        MementoTrace("sum", [(Named(("a", "1")), Named(("a", "2")))]).render(tokenizer)


@pytest.mark.parametrize("task", ["digits", "recall", "passcode"])
def test_task_parts_are_checked_against_the_ids(tokenizer, task):
    for index in range(5):
        e = make_example(TaskConfig(task=task, short_block_rate=0.5), tokenizer, seed=0, index=index)
        words = lambda site: tokenizer.decode([e.ids[p] for p in e.positions.select(site)]).split()  # noqa: E731
        for i, digits in enumerate(e.block_digits):
            assert words(f"digits/{i}") == [str(d) for d in digits]
            assert words(f"sum/{i}") == words(Site("memento", i))
        assert words("passcode") == list(f"{e.passcode:05d}")
        assert words("answer_digits") == [str(d) for d in e.answer]
        if task == "recall":
            block, digit = e.recall
            assert words("recall_target") == [str(e.block_digits[block][digit])]
            assert e.answer == [e.block_digits[block][digit]]


@pytest.fixture(scope="module")
def tokenizer():
    from leakage.engine.model import build_model

    return build_model("tiny")[1]
