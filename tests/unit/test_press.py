"""kvpress presses at Memento's moments: physical eviction == its own masked forward, Memento's budget, and the
library's own ranking (StreamingLLM keeps the sinks and the most recent entries)."""

import pytest
import torch

from leakage.config import EvictionConfig
from leakage.engine.model import build_model
from leakage.engine.press import (PRESSES, PressMoment, make_press, masked_forward, press_forward, press_masks,
                                  press_moments)
from leakage.memento.kv import simulate_kv
from leakage.memento.spans import parse_spans
from leakage.training.tasks import TaskConfig, make_example

TASK = TaskConfig(task="passcode", n_blocks=3, passcode_block=1)


@pytest.fixture(scope="module")
def batch():
    """The tiny preset (random weights), 3 examples of one layout, their spans and Memento's moments."""
    model, tokenizer = build_model("tiny", seed=0)
    examples = [make_example(TASK, tokenizer, 0, i, "val") for i in range(3)]
    ids = torch.tensor([e.ids for e in examples])
    spans = parse_spans(examples[0].ids, tokenizer, prompt_len=examples[0].prompt_len)
    return model, tokenizer, examples, ids, spans, press_moments(spans)


@pytest.mark.parametrize("name", PRESSES)
def test_each_press_eviction_equals_its_own_masked_forward(batch, name):
    model, _, _, ids, _, moments = batch
    run = press_forward(model, ids, moments, make_press(name))
    assert (run.dropped_at < ids.shape[1]).any()  # it evicted something
    masked = masked_forward(model, ids, press_masks(run.dropped_at, model.config.num_attention_heads))
    torch.testing.assert_close(run.logits, masked, atol=2e-5, rtol=1e-4)
    causal = model(ids).logits  # the check has teeth: without the evictions the logits differ
    assert (causal - masked).abs().max() > 1e-3


@pytest.mark.parametrize("name", PRESSES)
def test_each_press_keeps_mementos_entry_count_in_every_layer_and_head(batch, name):
    model, tokenizer, examples, ids, _, moments = batch
    run = press_forward(model, ids, moments, make_press(name))
    T = ids.shape[1]
    memento = simulate_kv(examples[0].ids, tokenizer, EvictionConfig(), prompt_len=examples[0].prompt_len)
    for position in range(examples[0].prompt_len, T):
        held = position + 1 - (run.dropped_at <= position).sum(-1)  # (L, B, H)
        assert (held == memento.cached_tokens[position]).all(), position
    assert run.held.shape[-1] == memento.cached_tokens[-1]


def test_moments_are_mementos_evictions_with_its_cache_size(batch):
    _, tokenizer, examples, _, spans, moments = batch
    memento = simulate_kv(examples[0].ids, tokenizer, EvictionConfig(), prompt_len=examples[0].prompt_len)
    assert [m.before for m in moments] == [b.summary_end for b in spans.blocks]  # the engine: before <|summary_end|>
    for m in moments:
        assert m.keep == memento.cached_tokens[m.before] - 1  # what the cache holds before the query is fed
    halves = press_moments(spans, budget=0.5)
    assert [m.keep for m in halves] == [round(m.before / 2) for m in moments]
    with pytest.raises(ValueError, match="restart"):
        press_moments(spans, EvictionConfig(restart=True))
    with pytest.raises(ValueError, match="budget"):
        press_moments(spans, budget=1.5)


def test_streaming_llm_keeps_the_sinks_and_the_most_recent_entries(batch):
    """What kvpress's StreamingLLM score ranks first, at the first moment: positions 0..3 and the last ones."""
    model, _, _, ids, _, moments = batch
    first = moments[0]
    run = press_forward(model, ids, [first], make_press("streaming_llm"))
    dropped = (run.dropped_at == first.before).nonzero()[:, -1].unique()
    recent = first.keep - 4
    assert dropped.tolist() == list(range(4, first.before - recent))


def test_the_retained_view_zeroes_what_a_press_dropped(batch):
    model, _, _, ids, _, moments = batch
    run = press_forward(model, ids, moments, make_press("knorm"))
    positions = torch.arange(ids.shape[1])[None].expand(len(ids), -1)
    keys, values, present = run.retained(positions)
    T = ids.shape[1]
    assert torch.equal(present, (run.dropped_at == T).transpose(0, 1))
    assert (keys[~present] == 0).all() and (values[~present] == 0).all()
    assert (keys[present].abs().sum(-1) > 0).all()


def test_bad_moments_are_refused(batch):
    model, _, _, ids, _, _ = batch
    with pytest.raises(ValueError, match="increase"):
        press_forward(model, ids, [PressMoment(10, 5), PressMoment(10, 5)], make_press("knorm"))
    with pytest.raises(ValueError, match="exceeds"):
        press_forward(model, ids, [PressMoment(10, 20)], make_press("knorm"))
    with pytest.raises(ValueError, match="unknown press"):
        make_press("h2o")


def test_importing_kvpress_leaves_transformers_attention_functions_as_they_were():
    import subprocess
    import sys

    code = ("from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as A; before = dict(A.items()); "
            "from leakage.engine.press import make_press; make_press('knorm'); "
            "import kvpress; assert dict(A.items()) == before, 'changed'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["snapkv", "expected_attention"])
def test_a_llama_architecture_evicts_as_its_masked_forward_too(batch, name):
    """The presses that read the attention module's projections and rotary embedding, on another architecture
    (a tiny Llama built from its config, random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, _, ids, _, moments = batch
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                         attn_implementation="eager")).eval()
    run = press_forward(model, ids, moments, make_press(name))
    masked = masked_forward(model, ids, press_masks(run.dropped_at, 4))
    torch.testing.assert_close(run.logits, masked, atol=2e-5, rtol=1e-4)


def test_an_architecture_without_llama_attention_is_refused(batch):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer, _, ids, _, moments = batch
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="Llama-like attention"):
        press_forward(model, ids, moments, make_press("knorm"))
