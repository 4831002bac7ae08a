"""Synthetic tasks: contents, positions, passcode injection and label-unique splits."""

import pytest

from leakage.engine.model import build_tokenizer
from leakage.training.tasks import TaskConfig, make_example, passcode_split, recall_text_only_accuracy


@pytest.fixture(scope="module")
def tokenizer():
    from leakage.engine.model import build_model

    return build_model("tiny")[1]


@pytest.mark.parametrize("little_endian", [True, False])
def test_digits_example_layout(tokenizer, little_endian):
    config = TaskConfig(little_endian_sums=little_endian)
    e = make_example(config, tokenizer, seed=0, index=3)
    decode = lambda positions: [int(tokenizer.decode([e.ids[p]])) for p in positions]  # noqa: E731
    written = lambda value: [int(c) for c in f"{value:03d}"][::-1 if little_endian else 1]  # noqa: E731
    running = 0
    for i in range(config.n_blocks):
        assert len(e.block_digits[i]) == 5
        running += sum(e.block_digits[i])
        assert e.running_sums[i] == running % 1000
        assert decode(e.sum_positions[i]) == written(running % 1000)
        assert decode(e.memento_positions[i]) == decode(e.sum_positions[i]), "memento i is running sum i"
    assert e.answer == written(running % 1000) and decode(e.answer_positions) == e.answer
    assert e.ids[-1] == tokenizer.eos_token_id
    assert e.prompt_len == 2  # "sum ?"


def test_short_block_curriculum_mixes_block_lengths(tokenizer):
    config = TaskConfig(short_block_rate=0.5)
    lengths = [len(d) for i in range(40) for d in make_example(config, tokenizer, 0, i).block_digits]
    assert set(lengths) == {1, 2, 3, 4, 5}
    assert 0.35 < lengths.count(5) / len(lengths) < 0.65
    e = make_example(config, tokenizer, 0, 1)
    for digits, positions in zip(e.block_digits, e.sum_positions):  # positions follow each block's length
        assert tokenizer.decode([e.ids[positions[0] - 1]]) == "="
    recall = make_example(TaskConfig(task="recall", short_block_rate=0.5), tokenizer, 0, 2)
    assert recall.recall[1] < len(recall.block_digits[recall.recall[0]])


def test_passcode_enters_no_memento_and_positions_are_exact(tokenizer):
    e = make_example(TaskConfig(passcode_block=1), tokenizer, seed=0, index=0)
    digits = [int(tokenizer.decode([e.ids[p]])) for p in e.passcode_positions]
    assert int("".join(map(str, digits))) == e.passcode
    assert tokenizer.decode([e.ids[e.passcode_positions[0] - 1]]) == "passcode"
    all_memento = {p for ps in e.memento_positions for p in ps}
    assert not set(e.passcode_positions) & all_memento
    # the passcode sits inside block 1, after its running sum
    assert e.sum_positions[1][-1] < e.passcode_positions[0] < e.memento_positions[1][0]
    # and changing the passcode changes no memento: same digits, different passcode -> same sums
    assert e.running_sums == [sum(sum(d) for d in e.block_digits[:i + 1]) % 1000 for i in range(10)]


def test_examples_are_deterministic_and_splits_label_unique(tokenizer):
    config = TaskConfig()
    assert make_example(config, tokenizer, 5, 7).ids == make_example(config, tokenizer, 5, 7).ids
    assert make_example(config, tokenizer, 5, 7).ids != make_example(config, tokenizer, 5, 8).ids
    train = {make_example(config, tokenizer, 0, i, "train").passcode for i in range(300)}
    val = {make_example(config, tokenizer, 0, i, "val").passcode for i in range(300)}
    assert not train & val
    assert all(passcode_split(p) == "val" for p in val) and all(passcode_split(p) == "train" for p in train)


def test_recall_example_asks_for_a_block_digit(tokenizer):
    e = make_example(TaskConfig(task="recall"), tokenizer, seed=1, index=2)
    block, digit = e.recall
    assert tokenizer.decode(e.ids[:e.prompt_len]) == f"recall block {block} digit {digit} ?"
    assert e.answer == [e.block_digits[block][digit]]


def test_passcode_example_asks_for_the_passcode_that_no_memento_holds(tokenizer):
    config = TaskConfig(task="passcode", passcode_block=3)
    e = make_example(config, tokenizer, seed=2, index=5)
    assert tokenizer.decode(e.ids[:e.prompt_len]) == "passcode ?"
    assert e.answer == [int(c) for c in f"{e.passcode:05d}"]
    assert [e.ids[p] for p in e.answer_positions] == [e.ids[p] for p in e.passcode_positions]
    assert e.memento_positions[3][0] > e.passcode_positions[-1], "the passcode sits in block 3"
    # every memento is its running sum, a function of the block digits alone
    for i, positions in enumerate(e.memento_positions):
        running = sum(sum(d) for d in e.block_digits[:i + 1]) % 1000
        assert [int(tokenizer.decode([e.ids[p]])) for p in positions] == [int(c) for c in f"{running:03d}"][::-1]


def test_text_only_recall_baseline_is_exact_for_small_cases():
    # one digit per block: the sum *is* the digit
    assert recall_text_only_accuracy(1) == pytest.approx(1.0)
    # two digits: brute force over all 100 pairs
    best = 0
    for total in range(19):
        counts = [sum(1 for a in range(10) for b in range(10) if a + b == total and a == v) for v in range(10)]
        best += max(counts)
    assert recall_text_only_accuracy(2) == pytest.approx(best / 100)
    assert 0.1 < recall_text_only_accuracy(5) < 0.2


def test_bad_task_configs_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        TaskConfig(task="sorting")
    with pytest.raises(ValueError, match="passcode_block"):
        TaskConfig(passcode_block=12)
    with pytest.raises(ValueError, match="n_blocks"):
        TaskConfig(task="recall", n_blocks=11)
    with pytest.raises(ValueError, match="needs a passcode_block"):
        TaskConfig(task="passcode", passcode_block=None)
    with pytest.raises(ValueError, match="short_block_rate"):
        TaskConfig(short_block_rate=1.5)
    build_tokenizer()  # the vocabulary covers every task word


def test_gist_mementos_are_inserted_placeholders_the_loss_never_sees(tokenizer):
    from leakage.config import EvictionConfig
    from leakage.training.evaluate import model_written
    from leakage.training.tasks import GIST_WORD
    from leakage.training.train import MementoCollator, TaskDataset

    text = TaskConfig(task="passcode", n_blocks=3, passcode_block=1)
    gist = TaskConfig(task="passcode", n_blocks=3, passcode_block=1, gist_tokens=2)
    e, g = make_example(text, tokenizer, 4, 1), make_example(gist, tokenizer, 4, 1)
    assert g.block_digits == e.block_digits and g.passcode == e.passcode and g.answer == e.answer
    assert all(tokenizer.decode([g.ids[p] for p in ps]) == f"{GIST_WORD} {GIST_WORD}" for ps in g.memento_positions)
    assert e.inserted == [] and model_written(e) >= {p for ps in e.memento_positions for p in ps}
    # the decoder writes each block's summary delimiters and gists; the model writes sums and the answer
    marker = {tokenizer.convert_tokens_to_ids(t) for t in ("<|summary_start|>", "<|summary_end|>")}
    gists = {p for ps in g.memento_positions for p in ps}
    assert set(g.inserted) == gists | {p for p, t in enumerate(g.ids) if t in marker}
    assert not model_written(g) & set(g.inserted) and set(g.answer_positions) <= model_written(g)
    labels = MementoCollator(tokenizer, EvictionConfig())([TaskDataset(gist, tokenizer, 2, 4)[1]])["labels"][0]
    scored = {p for p in range(len(g.ids)) if labels[p] != -100}  # labels[p]: the token at p, predicted from p - 1
    assert not scored & set(g.inserted)
    assert set(g.answer_positions) | {p for ps in g.sum_positions for p in ps} <= scored
    with pytest.raises(ValueError, match="gist_tokens"):
        TaskConfig(gist_tokens=-1)
