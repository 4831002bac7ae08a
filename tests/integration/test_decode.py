"""mask == evict: eviction decoding on a physically compacted cache equals one dense masked forward."""

from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakage.config import EvictionConfig, ModelPreset
from leakage.decode import generate, spans_of, teacher_force
from leakage.kv import simulate_kv, uniform_trace_peaks
from leakage.mask import additive_mask, memento_mask
from leakage.model import build_model
from leakage.spans import MarkerIds
from leakage.trace import MementoTrace
from tests.strategies import memento_streams

CONFIGS = [EvictionConfig(keep_last_n_blocks=keep, mask_delimiters=delim, restart=restart)
           for keep in (-1, 0, 1, 2) for delim in (False, True) for restart in (False, True)
           if not (restart and keep == -1)]
# two random models of different shapes (GQA 4/2 and MHA 2/2)
MODELS = {
    "tiny": build_model("tiny", seed=11),
    "other": build_model(ModelPreset(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_head=32, d_mlp=128), seed=5),
}
TOKENIZER = MODELS["tiny"][1]
MARKERS = MarkerIds.from_tokenizer(TOKENIZER)
WORDS = st.integers(5, 40)  # ordinary synthetic-vocabulary ids


@contextmanager
def favour(model, token_id: int):
    """Temporarily add a large bias to one token's logit (a forward hook on the LM head)."""

    def bias(module, inputs, output):
        output[..., token_id] += 1e4
        return output

    handle = model.lm_head.register_forward_hook(bias)
    try:
        yield
    finally:
        handle.remove()


def dense_logits(model, ids, config):
    mask = memento_mask(ids, TOKENIZER, **config.mask_kwargs())
    with torch.no_grad():
        return model(torch.tensor([ids]), attention_mask=additive_mask(mask)).logits[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(memento_streams(max_blocks=3, markers=MARKERS, words=WORDS).filter(lambda r: len(r) > 1),
                     min_size=1, max_size=3),
       config=st.sampled_from(CONFIGS), for_answer=st.booleans(), model_name=st.sampled_from(sorted(MODELS)))
def test_teacher_forced_eviction_equals_dense_masked_forward(rows, config, for_answer, model_name):
    config = EvictionConfig(**{**config.__dict__, "keep_last_block_for_answer": for_answer})
    model, _ = MODELS[model_name]
    result = teacher_force(model, TOKENIZER, rows, config, record_cache=True)
    for b, ids in enumerate(rows):
        dense = dense_logits(model, ids, config)
        assert (result.logits[b, :len(ids)] - dense).abs().max() < 1e-4
        mask = memento_mask(ids, TOKENIZER, **config.mask_kwargs())
        attended = result.sequences[b].attended
        for q in range(len(ids)):  # the cache held exactly what the mask lets query q see
            assert attended[q] == mask[q].nonzero().flatten().tolist(), f"row {b}, query {q}"
        assert result.sequences[b].kv.cached_tokens == simulate_kv(ids, TOKENIZER, config).cached_tokens


def test_cache_after_each_step_is_what_the_next_query_sees():
    model, _ = MODELS["tiny"]
    rows = [MementoTrace("sum", [("1 2 3", "6"), ("4 5", "9"), ("7", "1 6")], "1 6").to_ids(TOKENIZER),
            MementoTrace("what", [("1", "1 2"), ("4 5 6 7", "9")], "9").to_ids(TOKENIZER)]
    for config in CONFIGS:
        result = teacher_force(model, TOKENIZER, rows, config, record_cache=True)
        for ids, seq in zip(rows, result.sequences):
            # restart re-encodes retained entries but holds the same positions as normal decoding
            mask = memento_mask(ids, TOKENIZER, **{**config.mask_kwargs(), "restart": False})
            for t in range(seq.prompt_len - 1, len(ids) - 1):
                assert seq.cache_after[t] == mask[t + 1, :t + 1].nonzero().flatten().tolist(), (config, t)


def test_vanilla_cache_grows_by_one_and_memento_cache_shrinks():
    model, _ = MODELS["tiny"]
    ids = MementoTrace("sum", [("1 2 3 4 5", "6"), ("4 5 6 7", "9")], "9").to_ids(TOKENIZER)
    vanilla = teacher_force(model, TOKENIZER, ids, EvictionConfig(keep_last_n_blocks=-1)).sequences[0].kv
    memento = teacher_force(model, TOKENIZER, ids, EvictionConfig()).sequences[0].kv
    assert vanilla.cached_tokens == list(range(1, len(ids) + 1))
    assert memento.peak < vanilla.peak and memento.auc < vanilla.auc


def test_peak_kv_ratio_on_ten_block_trace_matches_analytic_value():
    prompt, n, b, m, a = 3, 10, 12, 3, 2
    trace = MementoTrace(" ".join(["sum"] * prompt), [(" ".join(["7"] * b), " ".join(["3"] * m))] * n,
                         " ".join(["3"] * a))
    ids = trace.to_ids(TOKENIZER)
    model, _ = MODELS["tiny"]
    for delim in (False, True):
        config = EvictionConfig(mask_delimiters=delim)
        vanilla_peak, memento_peak = uniform_trace_peaks(prompt, n, b, m, a, mask_delimiters=delim)
        measured = teacher_force(model, TOKENIZER, ids, config).sequences[0].kv
        simulated = simulate_kv(ids, TOKENIZER, config)
        assert measured.peak == simulated.peak == memento_peak
        assert simulate_kv(ids, TOKENIZER, EvictionConfig(keep_last_n_blocks=-1)).peak == vanilla_peak == len(ids)
        assert vanilla_peak / measured.peak == pytest.approx(vanilla_peak / memento_peak)


def test_bridge_and_hf_decode_identically_and_hooks_fire():
    from leakage.views import to_bridge

    model, _ = build_model("tiny", seed=11)  # its own copy: to_bridge swaps the attention modules in place
    prompt = MementoTrace("sum", [("1 2", "3")], "3").to_ids(TOKENIZER)[:4]
    calls = []

    def count(tensor, hook):
        calls.append(hook.name)

    hf = generate(model, TOKENIZER, prompt, EvictionConfig(), max_new_tokens=12, temperature=0.8, seed=3)
    tf_hf = teacher_force(model, TOKENIZER, hf.sequences[0].ids, EvictionConfig(), prompt_len=4)
    bridge = to_bridge(model)
    with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_k", count)]):
        br = generate(bridge, TOKENIZER, prompt, EvictionConfig(), max_new_tokens=12, temperature=0.8, seed=3)
    assert hf.tokens == br.tokens
    assert len(calls) == len(br.cache_slots), "hook fires once per forward"
    tf_br = teacher_force(bridge, TOKENIZER, hf.sequences[0].ids, EvictionConfig(), prompt_len=4)
    assert (tf_hf.logits - tf_br.logits).abs().max() < 1e-5


def test_nnsight_intervention_runs_every_step():
    from leakage.views import to_nnsight

    model, _ = MODELS["tiny"]
    view = to_nnsight(model)
    prompt = [TOKENIZER.convert_tokens_to_ids("sum"), MARKERS.think_start]
    steps = []

    def zero_values(v):
        steps.append(1)
        v.model.layers[0].self_attn.v_proj.output[:] = 0

    clean = generate(model, TOKENIZER, prompt, EvictionConfig(), max_new_tokens=8, stop_at_eos=False)
    plain = generate(view, TOKENIZER, prompt, EvictionConfig(), max_new_tokens=8, stop_at_eos=False)
    patched = generate(view, TOKENIZER, prompt, EvictionConfig(), max_new_tokens=8, stop_at_eos=False,
                       intervention=zero_values)
    assert plain.tokens == clean.tokens
    assert len(steps) == len(patched.cache_slots) == 8
    ids = patched.sequences[0].ids
    with torch.no_grad():
        tf_clean = teacher_force(model, TOKENIZER, ids, EvictionConfig(), prompt_len=2).logits
        tf_patched = teacher_force(view, TOKENIZER, ids, EvictionConfig(), prompt_len=2,
                                   intervention=zero_values).logits
    assert (tf_clean - tf_patched).abs().max() > 1e-3


def test_generate_batch_ragged_matches_single_sequences():
    model, _ = MODELS["tiny"]
    prompts = [[TOKENIZER.convert_tokens_to_ids("sum"), MARKERS.think_start, MARKERS.block_start],
               [MARKERS.think_start]]
    config = EvictionConfig(max_block_tokens=3)
    batch = generate(model, TOKENIZER, prompts, config, max_new_tokens=30)
    for b, prompt in enumerate(prompts):
        single = generate(model, TOKENIZER, prompt, config, max_new_tokens=30)
        assert single.tokens[0] == batch.tokens[b]
        assert single.sequences[0].kv.cached_tokens == batch.sequences[b].kv.cached_tokens


def test_sampling_is_seeded_and_eos_stops():
    model, _ = MODELS["tiny"]
    prompt = [MARKERS.think_start]
    a = generate(model, TOKENIZER, prompt, max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    b = generate(model, TOKENIZER, prompt, max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    c = generate(model, TOKENIZER, prompt, max_new_tokens=15, temperature=1.0, seed=8)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    eos = TOKENIZER.eos_token_id
    with favour(model, eos):  # EOS is the argmax everywhere: greedy decoding must stop after one token
        stopped = generate(model, TOKENIZER, prompt, max_new_tokens=15)
    assert stopped.tokens == [[eos]]


def test_max_block_tokens_forces_block_end():
    model, _ = MODELS["tiny"]
    with favour(model, MARKERS.block_start):  # one real block start, then nested ones read as reasoning
        out = generate(model, TOKENIZER, [MARKERS.think_start], EvictionConfig(max_block_tokens=4),
                       max_new_tokens=8, stop_at_eos=False)
    seq = out.sequences[0]
    assert seq.ids[6] == MARKERS.block_end and seq.forced_block_ends == [6]
    assert spans_of(seq, TOKENIZER).blocks[0].block_end == 6


def test_malformed_generation_is_recorded_not_raised():
    model, _ = MODELS["tiny"]
    with favour(model, MARKERS.summary_start):  # a summary with no block, again and again
        out = generate(model, TOKENIZER, [[MARKERS.think_start], [MARKERS.think_start, 7]], max_new_tokens=4,
                       stop_at_eos=False)
    for seq in out.sequences:
        assert len(seq.malformed) >= 3 and "without a preceding closed block" in seq.malformed[0][1]
        spans = spans_of(seq, TOKENIZER)
        assert not spans.blocks
