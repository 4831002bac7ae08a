"""MementoTrace rendering and parsing (with a real HF tokenizer), and OpenMementos IO."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakage.engine.model import SYNTHETIC_WORDS, build_tokenizer, add_memento_tokens
from leakage.memento.spans import MalformedTraceError
from leakage.memento.trace import MementoTrace, OpenMementosRecord, read_openmementos, write_openmementos


@pytest.fixture(scope="module")
def tokenizer():
    from torch import nn

    tok = build_tokenizer()

    class Emb(nn.Module):  # the smallest module with resizable tied embeddings
        def __init__(self, n):
            super().__init__()
            self.emb = nn.Embedding(n, 4)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return None

        def resize_token_embeddings(self, n, mean_resizing=False):
            old = self.emb.weight.data
            self.emb = nn.Embedding(n, 4)
            self.emb.weight.data[: len(old)] = old

    add_memento_tokens(Emb(len(tok)), tok)
    return tok


words = st.lists(st.sampled_from(SYNTHETIC_WORDS), max_size=5).map(" ".join)


@settings(max_examples=100, deadline=None)
@given(prompt=words, blocks=st.lists(st.tuples(words, words), max_size=4), answer=words)
def test_render_parse_render_is_identity(tokenizer, prompt, blocks, answer):
    trace = MementoTrace(prompt=prompt, blocks=blocks, answer=answer)
    ids = trace.to_ids(tokenizer)
    back = MementoTrace.from_ids(ids, tokenizer)
    assert back == trace
    assert back.to_ids(tokenizer) == ids
    assert back.to_text() == trace.to_text()
    as_ids = MementoTrace.from_ids(ids, tokenizer, as_text=False)
    assert as_ids.to_ids(tokenizer) == ids


def test_eos_is_dropped_on_parse(tokenizer):
    trace = MementoTrace("sum", [("1 2", "3")], "3")
    ids = trace.to_ids(tokenizer, eos=True)
    assert ids[-1] == tokenizer.eos_token_id
    assert MementoTrace.from_ids(ids, tokenizer) == trace


def test_render_refuses_unknown_words_and_markers(tokenizer):
    with pytest.raises(ValueError, match="block 0: words not in the tokenizer's vocabulary: \\['banana'\\]"):
        MementoTrace("sum", [("1 banana", "3")]).to_ids(tokenizer)
    with pytest.raises(ValueError, match="memento 0: contains the format marker"):
        MementoTrace("sum", [("1", "3 <|block_end|>")]).to_ids(tokenizer)


def test_unfinished_trace_cannot_become_a_trace(tokenizer):
    ids = MementoTrace("sum", [("1 2", "3")], "3").to_ids(tokenizer)
    with pytest.raises(ValueError, match="unfinished"):
        MementoTrace.from_ids(ids[:8], tokenizer)
    with pytest.raises(MalformedTraceError, match="position"):
        MementoTrace.from_ids(ids[:3] + ids[2:], tokenizer)


FIXTURE_NAMES = ["memento_example_code.json", "memento_example_response.json", "memento_example_science.json"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_openmementos_fixtures_load_and_reemit_unchanged(fixtures_dir, tmp_path, name):
    source = fixtures_dir / name
    original = json.loads(source.read_text(encoding="utf-8"))
    (record,) = read_openmementos(source)
    assert record.to_dict() == original
    assert list(record.to_dict()) == list(original), "field order changed"
    out = write_openmementos([record], tmp_path / "out.jsonl")
    (again,) = read_openmementos(out)
    assert again.to_dict() == original
    trace = record.to_trace()
    assert len(trace.blocks) == sum(s["type"] == "block" for s in original["segments"])
    core = [{k: seg[k] for k in ("type", "block_idx", "text")} for seg in original["segments"]]
    assert OpenMementosRecord.from_trace(trace).segments == core


def test_openmementos_errors_name_file_and_line(tmp_path):
    good = {"problem": "p", "answer": "a", "segments": [{"type": "block", "block_idx": 1, "text": "x"},
                                                        {"type": "summary", "block_idx": 1, "text": "y"}]}
    bad = {"problem": "p", "segments": [{"type": "summary", "block_idx": 1, "text": "y"}]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="data.jsonl, line 2, segment 0: summary 1 has no preceding block"):
        read_openmementos(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        read_openmementos(path)


def test_write_leaves_no_partial_file(tmp_path):
    class Boom(OpenMementosRecord):
        def to_dict(self):
            raise RuntimeError("boom")

    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_openmementos([Boom("p", "a", [])], path)
    assert list(tmp_path.iterdir()) == []
