"""mask == evict: eviction decoding on a physically compacted cache equals one dense masked forward."""

from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakage.engine.capture import capture
from leakage.config import EvictionConfig, ModelPreset
from leakage.engine.decode import generate, spans_of, teacher_force
from leakage.memento.positions import BLOCK_PARTS
from leakage.memento.schedule import eviction_schedule
from leakage.memento.spans import parse_spans
from leakage.memento.kv import simulate_kv, uniform_trace_peaks
from leakage.memento.mask import additive_mask, memento_mask
from leakage.engine.model import build_model
from leakage.training.train import MementoCollator
from leakage.memento.spans import MarkerIds
from leakage.memento.trace import MementoTrace
from tests.strategies import memento_streams

CONFIGS = [EvictionConfig(keep_last_n_blocks=keep, mask_delimiters=delim, restart=restart, summary_end_sees_block=late)
           for keep in (-1, 0, 1, 2) for delim in (False, True) for restart in (False, True) for late in (False, True)
           if not (restart and keep == -1)]  # the engine's timing and the earlier one (summary_end_sees_block)
# two random models of different shapes (GQA 4/2 and MHA 2/2)
MODELS = {
    "tiny": build_model("tiny", seed=11),
    "other": build_model(ModelPreset(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_head=32, d_mlp=128), seed=5),
}
TOKENIZER = MODELS["tiny"][1]
MARKERS = MarkerIds.from_tokenizer(TOKENIZER)
WORDS = st.integers(5, 40)  # ordinary synthetic-vocabulary ids


@contextmanager
def favour(model, token_id: int, then: int | None = None):
    """Temporarily add a large bias to one token's logit (a forward hook on the LM head); with `then`,
    to `token_id` in the first forward only and to `then` in every later one."""
    calls = []

    def bias(module, inputs, output):
        output[..., token_id if then is None or not calls else then] += 1e4
        calls.append(1)
        return output

    handle = model.lm_head.register_forward_hook(bias)
    try:
        yield
    finally:
        handle.remove()


def dense_logits(model, ids, config):
    mask = memento_mask(ids, TOKENIZER, eviction=config)
    with torch.no_grad():
        return model(torch.tensor([ids]), attention_mask=additive_mask(mask)).logits[0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
        mask = memento_mask(ids, TOKENIZER, eviction=config)
        attended = result.sequences[b].attended
        for q in range(len(ids)):  # the cache held exactly what the mask lets query q see
            assert attended[q] == mask[q].nonzero().flatten().tolist(), f"row {b}, query {q}"
        assert result.sequences[b].kv.cached_tokens == simulate_kv(ids, TOKENIZER, config).cached_tokens



@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(memento_streams(max_blocks=3, markers=MARKERS, words=WORDS).filter(lambda r: len(r) > 1),
                     min_size=1, max_size=3),
       config=st.sampled_from(CONFIGS), for_answer=st.booleans(), model_name=st.sampled_from(sorted(MODELS)))
def test_training_batch_computes_every_prediction_eviction_decoding_makes(rows, config, for_answer, model_name):
    """The collator's unrolled forward (restart: memento written with its block visible, then recomputed)
    gives, for every token, the logits the decoder predicted it from: its first computation."""
    config = EvictionConfig(**{**config.__dict__, "keep_last_block_for_answer": for_answer})
    model, _ = MODELS[model_name]
    first = {}  # (row, position) -> the logits the decoder chose token position + 1 from

    def keep_first(step, cache):
        for b, positions in enumerate(step.positions):
            for i, p in enumerate(positions):
                first.setdefault((b, p), step.logits[b, i].clone())

    teacher_force(model, TOKENIZER, rows, config, on_step=keep_first)
    prompt_lens = [parse_spans(r, TOKENIZER, strict=False).prompt_len for r in rows]
    batch = MementoCollator(TOKENIZER, config)([{"input_ids": r, "prompt_len": n} for r, n in zip(rows, prompt_lens)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    for b, (ids, n) in enumerate(zip(rows, prompt_lens)):
        trained = (batch["labels"][b, 1:] != -100).nonzero().flatten()  # rows whose logits are scored
        logical = batch["position_ids"][b, trained].tolist()
        assert sorted(logical) == list(range(max(n - 1, 0), len(ids) - 1))  # every target exactly once
        for row, p in zip(trained.tolist(), logical):
            assert batch["labels"][b, row + 1] == ids[p + 1]
            assert (logits[b, row] - first[(b, p)]).abs().max() < 1e-4, f"row {b}, position {p}"


def test_gist_compression_evicts_as_it_masks_and_the_decoder_writes_the_gists():
    """LightThinker-style gist mementos under Memento's eviction: physical eviction equals the dense masked
    forward, and free-running decoding inserts the gist tokens whatever the model would have written."""
    from leakage.training.evaluate import free_run
    from leakage.training.tasks import TaskConfig, make_example

    model, _ = MODELS["tiny"]
    task = TaskConfig(task="passcode", n_blocks=3, passcode_block=1, gist_tokens=3)
    examples = [make_example(task, TOKENIZER, 0, i, "val") for i in range(2)]
    config = EvictionConfig()
    result = teacher_force(model, TOKENIZER, [e.ids for e in examples], config,
                          prompt_len=[e.prompt_len for e in examples])
    for b, e in enumerate(examples):
        assert (result.logits[b, :len(e.ids)] - dense_logits(model, e.ids, config)).abs().max() < 1e-4
        gist = examples[b].memento_positions[1]
        mask = memento_mask(e.ids, TOKENIZER, eviction=config)
        block = e.passcode_positions
        assert mask[gist[-1], block].all() and not mask[e.answer_positions[0], block].any()
    decoded = free_run(model, TOKENIZER, examples, config)
    for e, ids in zip(examples, decoded):
        assert [ids[p] for p in e.inserted] == [e.ids[p] for p in e.inserted]


ROWS = [MementoTrace("sum", [("1 2 3", "6"), ("4 5", "9"), ("7", "1 6")], "1 6").to_ids(TOKENIZER),
        MementoTrace("what", [("1", "1 2"), ("4 5 6 7", "9")], "9").to_ids(TOKENIZER)]


def test_live_cache_after_each_step_holds_what_the_schedule_keeps():
    model, _ = MODELS["tiny"]
    for config in CONFIGS:
        schedules = [eviction_schedule(parse_spans(ids, TOKENIZER), config) for ids in ROWS]
        seen = []

        def check(step, cache):
            for b, positions in enumerate(step.positions):
                if not positions:
                    continue
                p = positions[-1]
                held = [k for k in range(p + 1)
                        if not any(e.start <= k < e.end and e.trigger <= p for e in schedules[b].evictions)]
                assert cache.positions(b) == held, (config, b, p)
                seen.append(p)

        teacher_force(model, TOKENIZER, ROWS, config, on_step=check)
        assert len(seen) == 2 + sum(len(r) - 1 for r in ROWS)  # the prefill of each row, then every step


def test_on_step_reads_and_writes_the_cache_by_logical_position():
    model, _ = MODELS["tiny"]
    ids = ROWS[0]
    spans = parse_spans(ids, TOKENIZER)
    memento = list(range(spans.blocks[0].summary_start + 1, spans.blocks[0].summary_end))
    evicted = spans.blocks[0].block_start + 1
    patched_at = spans.blocks[0].summary_end

    def zero_memento_values(step, cache):
        if step.positions[0] and step.positions[0][-1] == patched_at:
            with pytest.raises(KeyError, match=f"logical position {evicted}"):
                cache.keys(0)[0, 0, [evicted]]  # evicted before the summary_end was fed
            for layer in range(cache.n_layers):
                cache.values(layer)[0, :, memento] = torch.zeros(2, len(memento), 32)
                assert cache.values(layer)[0, 1, memento].abs().max() == 0
                assert cache.values(layer)[0, 1, memento[0]].shape == (32,)

    clean = teacher_force(model, TOKENIZER, ids, EvictionConfig()).logits[0]
    patched = teacher_force(model, TOKENIZER, ids, EvictionConfig(), on_step=zero_memento_values).logits[0]
    assert torch.equal(clean[:patched_at + 1], patched[:patched_at + 1])  # the edit acts on later steps only
    assert (clean[patched_at + 1:] - patched[patched_at + 1:]).abs().max() > 1e-4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(memento_streams(max_blocks=3, markers=MARKERS, words=WORDS, allow_unfinished=False),
                     min_size=1, max_size=3),
       config=st.sampled_from([c for c in CONFIGS if c.evicts]), for_answer=st.booleans())
def test_captured_kv_equals_what_the_decoder_cache_holds(rows, config, for_answer):
    """capture (one masked forward) == the eviction decoder's final keys/values at every site."""
    config = EvictionConfig(**{**config.__dict__, "keep_last_block_for_answer": for_answer})
    model, _ = MODELS["tiny"]
    final = [{} for _ in rows]  # row -> position -> (keys, values) (L, kv_heads, d_head), last computed

    def snapshot(step, cache):
        for b, positions in enumerate(step.positions):
            for p in positions:
                final[b][p] = (torch.stack([cache.keys(layer)[b, :, p] for layer in range(cache.n_layers)]),
                               torch.stack([cache.values(layer)[b, :, p] for layer in range(cache.n_layers)]))

    teacher_force(model, TOKENIZER, rows, config, on_step=snapshot)
    n_blocks = min(len(parse_spans(r, TOKENIZER).blocks) for r in rows)
    sites = ["prompt", "think_start", "answer"] + [f"{part}@{k}" for k in range(n_blocks) for part in BLOCK_PARTS]
    captured = capture(model, TOKENIZER, rows, config, sites)
    for site in captured.sites:
        for b in range(len(rows)):
            for i, p in enumerate(captured.positions[site][b].tolist()):
                if p < 0:
                    continue
                keys, values = final[b][p]
                assert torch.allclose(captured.keys[site][b, :, :, i], keys, atol=1e-5), (site, b, p)
                assert torch.allclose(captured.values[site][b, :, :, i], values, atol=1e-5), (site, b, p)
    early = ["prompt", "think_start"] + [f"{part}@0" for part in BLOCK_PARTS if n_blocks]  # a prefix's forward
    prefix = capture(model, TOKENIZER, rows, config, early, prefix_only=True)
    assert prefix.logits.shape[1] < captured.logits.shape[1]
    for site in prefix.sites:
        assert torch.equal(prefix.positions[site], captured.positions[site])
        assert torch.allclose(prefix.keys[site], captured.keys[site], atol=1e-5)
        assert torch.allclose(prefix.values[site], captured.values[site], atol=1e-5)


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
    for delim, late in ((False, False), (True, False), (False, True)):
        config = EvictionConfig(mask_delimiters=delim, summary_end_sees_block=late)
        vanilla_peak, memento_peak = uniform_trace_peaks(prompt, n, b, m, a, mask_delimiters=delim,
                                                         summary_end_sees_block=late)
        measured = teacher_force(model, TOKENIZER, ids, config).sequences[0].kv
        simulated = simulate_kv(ids, TOKENIZER, config)
        assert measured.peak == simulated.peak == memento_peak
        assert simulate_kv(ids, TOKENIZER, EvictionConfig(keep_last_n_blocks=-1)).peak == vanilla_peak == len(ids)
        assert vanilla_peak / measured.peak == pytest.approx(vanilla_peak / memento_peak)


def test_bridge_and_hf_decode_identically_and_hooks_fire():
    from leakage.engine.views import to_bridge

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
    from leakage.engine.views import to_nnsight

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
    one = TOKENIZER.convert_tokens_to_ids("1")
    with favour(model, MARKERS.block_start, then=one):  # a block opens, then fills with "1"s, then the cap
        out = generate(model, TOKENIZER, [MARKERS.think_start], EvictionConfig(max_block_tokens=4),
                       max_new_tokens=7, stop_at_eos=False)
    seq = out.sequences[0]
    assert seq.ids[1] == MARKERS.block_start and seq.ids[2:6] == [one] * 4
    assert seq.ids[6] == MARKERS.block_end and seq.forced_block_ends == [6]
    assert spans_of(seq, TOKENIZER).blocks[0].block_end == 6
    with favour(model, MARKERS.block_start, then=MARKERS.summary_start):  # markers do not count (the engine's rule)
        out = generate(model, TOKENIZER, [MARKERS.think_start], EvictionConfig(max_block_tokens=2),
                       max_new_tokens=6, stop_at_eos=False)
    assert out.sequences[0].forced_block_ends == []


def test_max_new_tokens_zero_generates_nothing():
    model, _ = MODELS["tiny"]
    out = generate(model, TOKENIZER, [MARKERS.think_start], max_new_tokens=0)
    assert out.tokens == [[]]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, TOKENIZER, [MARKERS.think_start], max_new_tokens=-1)


def test_malformed_generation_is_recorded_not_raised():
    model, _ = MODELS["tiny"]
    with favour(model, MARKERS.summary_start):  # a summary with no block, again and again
        out = generate(model, TOKENIZER, [[MARKERS.think_start], [MARKERS.think_start, 7]], max_new_tokens=4,
                       stop_at_eos=False)
    for seq in out.sequences:
        assert len(seq.malformed) >= 3 and "without a preceding closed block" in seq.malformed[0][1]
        spans = spans_of(seq, TOKENIZER)
        assert not spans.blocks
