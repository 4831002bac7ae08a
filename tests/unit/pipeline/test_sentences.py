"""Sentence splitting: lossless tiling, atomic structures, the merge rules, the boundary-reduction report."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakage.pipeline.sentences import (REMOVAL_REASONS, SplitConfig, boundary_reduction, is_math_line, naive_split,
                                        protected_regions, split_sentences)
from tests.pipeline_data import synthetic_cot

PIECES = ("word", "Word", "alpha beta gamma", ". ", "! ", "? ", "\n", "\n\n", ":", " = ", "x + 1", "$x. y$",
          "\\(a. b\\)", "(", ")", "```\n", "    code. line\n", "$$", "\\[", "\\]", "e.g. ", "1. ", "Therefore ",
          "So ", "Wait. ", " ", "\t", "Dr. ", "\\begin{align}", "\\end{align}")
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


def starts_of(text, **kwargs):
    return split_sentences(text, **kwargs).starts


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_splits_tile_the_text_and_only_remove_naive_boundaries(text):
    naive = naive_split(text)
    split = split_sentences(text)
    for s in (naive, split):
        assert "".join(s.sentences) == text
        assert list(s.starts) == sorted(set(s.starts))
        for start in s.starts[1:]:
            assert text[start - 1].isspace() and not text[start].isspace()
    assert set(split.starts) <= set(naive.starts)
    assert split.n_boundaries + sum(split.removed.values()) == naive.n_boundaries
    assert set(split.removed) == set(REMOVAL_REASONS)
    for start, end, _ in protected_regions(text):
        assert not any(start < b < end for b in split.starts), (start, end)


def test_empty_and_single_sentence():
    assert split_sentences("").starts == ()
    assert split_sentences("One sentence without a break at all").sentences == ["One sentence without a break at all"]


def test_fenced_code_is_atomic():
    text = "Here is some code to run now.\n\n```python\nx = 1. y = 2.\nprint(x)\n```\n\nDone with the code now."
    sentences = split_sentences(text, SplitConfig(merge_colon=False)).sentences
    assert "```python\nx = 1. y = 2.\nprint(x)\n```\n\n" in sentences
    assert len(naive_split(text).sentences) == 7  # the naive splitter cuts the code into 5 pieces


def test_unclosed_fence_protects_nothing():
    text = "Start here ```never closed. Another sentence here now. Third one follows here."
    assert len(split_sentences(text).sentences) == 3


def test_indented_code_is_atomic_but_indented_list_items_are_not():
    code = "We run this snippet now:\n\n    a = 1. b = 2.\n    print(a)\n\nAnd that is the end of it."
    sentences = split_sentences(code, SplitConfig(merge_colon=False)).sentences
    assert [s.strip() for s in sentences] == ["We run this snippet now:", "a = 1. b = 2.\n    print(a)",
                                              "And that is the end of it."]
    items = "Items follow in a list now.\n\n    - first item has words\n    - second item has words"
    assert len(split_sentences(items).sentences) == 3


@pytest.mark.parametrize("math", ["$$\nx = 1. y = 2.\n$$", "\\[\nx = 1. \\\\\ny = 2.\n\\]",
                                  "\\begin{align}\nx &= 1. \\\\\ny &= 2.\n\\end{align}"])
def test_display_math_is_atomic(math):
    text = f"We now solve the system of equations.\n{math}\nThen we stop working on this now."
    sentences = split_sentences(text).sentences
    assert [s for s in sentences if "x" in s and "y" in s] == [math + "\n"]
    assert len(sentences) == 3


@pytest.mark.parametrize("inner", ["$a. b$", "\\(a. b\\)", "(see e.g. this. And that)", "[one. two]"])
def test_no_split_inside_inline_math_or_brackets(inner):
    text = f"We know the value {inner} is fine here. And this is the next sentence."
    assert split_sentences(text).sentences == [f"We know the value {inner} is fine here. ",
                                               "And this is the next sentence."]


def test_abbreviations_initials_and_enumerators_do_not_end_sentences():
    text = "Dr. Smith met J. Smith, e.g. at noon today. Then they left together.\n1. The first item is long enough"
    assert split_sentences(text).sentences == ["Dr. Smith met J. Smith, e.g. at noon today. ",
                                               "Then they left together.\n", "1. The first item is long enough"]
    assert split_sentences(text).removed["abbreviation"] == 4


def test_colon_merges_with_next():
    text = "The two equations are as follows:\n\nThe first one has three terms in it."
    assert len(split_sentences(text).sentences) == 1
    assert len(split_sentences(text, SplitConfig(merge_colon=False)).sentences) == 2


@pytest.mark.parametrize("word", ["Therefore", "Thus", "So", "Hence", "so"])
def test_continuation_words_merge_with_previous(word):
    text = f"We get a big number here today. {word} it is positive for sure."
    assert len(split_sentences(text).sentences) == 1
    assert split_sentences(text).removed["continuation"] == 1


def test_sorry_is_not_so():
    assert len(split_sentences("We get a big number here today. Sorry, it is negative for sure.").sentences) == 2


def test_consecutive_math_lines_merge():
    text = "We compute the value now.\nx = 1 + 2\ny = x * 3\nz = \\( y^2 \\)\nThat is all for the math here."
    sentences = split_sentences(text).sentences
    assert sentences == ["We compute the value now.\n", "x = 1 + 2\ny = x * 3\nz = \\( y^2 \\)\n",
                         "That is all for the math here."]
    assert split_sentences(text).removed["math"] == 2


def test_fragments_merge_into_the_next_sentence_and_the_last_into_the_previous():
    text = "Wait. Something is off with this step. Let me look. Okay."
    assert split_sentences(text).sentences == ["Wait. Something is off with this step. ", "Let me look. Okay."]
    counts = {"Wait.": 1}  # a custom token counter decides what a fragment is
    sizes = split_sentences(text, count_tokens=lambda s: counts.get(s.strip(), 10)).sentences
    assert sizes == ["Wait. Something is off with this step. ", "Let me look. ", "Okay."]
    assert len(split_sentences(text, SplitConfig(min_fragment_tokens=0)).sentences) == 4


@pytest.mark.parametrize("line,expected", [
    ("x = 1 + 2", True), ("= (16/3) α +16√2,", True), ("1. \\( \\frac{3}{4}t^2 - 6 = 0 \\)", True),
    ("$$x^2$$", True), ("Compute 16/3 α -12/3 α =4/3 α,", True),
    ("Multiply by 8 to make the coefficients align maybe.", False), ("Hmm, right.", False), ("", False),
    ("Coefficient of \\( t^2 \\) in Equation (1): \\( \\frac{3}{4} \\)", False),
])
def test_is_math_line(line, expected):
    assert is_math_line(line) is expected


def test_boundary_report_counts_every_removed_candidate():
    text = ("Let me add them:\n\n3 + 4 = 7\n\nTherefore the sum is 7. Wait. Let me check (it is 7. Yes).\n\n"
            "Alternatively, e.g. count on fingers.")
    report = boundary_reduction(text)
    assert report.naive_boundaries == naive_split(text).n_boundaries == 7
    assert report.removed == {"protected": 1, "abbreviation": 1, "colon": 1, "continuation": 1, "math": 0,
                              "fragment": 1}
    assert split_sentences(text).sentences == ["Let me add them:\n\n3 + 4 = 7\n\nTherefore the sum is 7. ",
                                               "Wait. Let me check (it is 7. Yes).\n\n",
                                               "Alternatively, e.g. count on fingers."]
    assert report.structured_boundaries == 2
    assert report.reduction_ratio == pytest.approx(3.5)
    assert report.to_dict()["reduction_ratio"] == pytest.approx(3.5)


def test_synthetic_trace_reduces_boundaries():
    text = synthetic_cot(0)
    report = boundary_reduction(text)
    assert report.structured_boundaries < report.naive_boundaries
    assert report.removed["protected"] > 0 and report.removed["colon"] > 0 and report.removed["continuation"] > 0
