"""HF, TransformerLens bridge and nnsight views of one model agree, share parameters, and never mutate it."""

import torch

from leakage.engine.capture import capture
from leakage.config import EvictionConfig
from leakage.engine.hooks import key_hook, value_hook
from leakage.memento.mask import additive_mask, memento_mask
from leakage.engine.model import build_model
from leakage.memento.trace import MementoTrace
from leakage.engine.views import to_bridge, to_nnsight

TRACE = MementoTrace("what is the sum ?", [("1 2 3 = 6", "6"), ("4 5 = 1 5", "1 5"), ("7 = 2 2", "2 2")], "2 2")
SITES = {"memento": "memento@1", "block_end": "block_end@0", "summary_end": "summary_end@1", "answer": "answer"}


def _batch(tokenizer):
    ids = torch.tensor([TRACE.to_ids(tokenizer)])
    mask = memento_mask(ids[0], tokenizer)[None]  # (1, T, T)
    return ids, mask


def test_views_share_parameters_and_leave_the_model_unchanged():
    model, tokenizer = build_model("tiny", seed=4)
    ids, mask = _batch(tokenizer)
    attention = additive_mask(mask)
    attention_modules = [type(layer.self_attn) for layer in model.model.layers]
    with torch.no_grad():
        before = model(ids, attention_mask=attention).logits
        bridge, view = to_bridge(model), to_nnsight(model)
        after = model(ids, attention_mask=attention).logits
    assert torch.equal(before, after), "building the views changed what the HF module computes"
    assert [type(layer.self_attn) for layer in model.model.layers] == attention_modules
    assert bridge.original_model is not model and view._module is model
    ours = {id(p) for p in model.parameters()}
    theirs = {id(p) for p in bridge.original_model.parameters()}
    assert theirs == ours, "the bridge copied parameters instead of sharing them"
    with torch.no_grad():  # a weight edit through one view is seen by the others
        model.model.layers[0].mlp.down_proj.weight.mul_(0.5)
        edited = model(ids, attention_mask=attention).logits
        assert torch.allclose(bridge(ids, attention_mask=attention), edited, atol=1e-6, rtol=0)
    assert (edited - before).abs().max() > 1e-4


def test_three_views_agree_under_the_memento_mask():
    model, tokenizer = build_model("tiny", seed=4)
    ids, mask = _batch(tokenizer)
    attention = additive_mask(mask)  # HF eager attention adds a 4D mask: pass the additive form
    bridge, view = to_bridge(model), to_nnsight(model)
    with torch.no_grad():
        hf = model(ids, attention_mask=attention).logits
        causal = model(ids).logits
        with view.trace(ids, attention_mask=attention):
            nn_logits = view.output.logits.save()
        bridge_additive = bridge(ids, attention_mask=attention)
        bridge_bool = bridge(ids, attention_mask=mask[:, None])
    assert torch.allclose(hf, nn_logits, atol=1e-6, rtol=0)
    assert torch.allclose(hf, bridge_additive, atol=1e-6, rtol=0)
    assert torch.allclose(hf, bridge_bool, atol=1e-6, rtol=0)
    first_masked = int(mask[0].logical_not().tril().any(1).nonzero()[0])
    assert torch.allclose(hf[:, :first_masked], causal[:, :first_masked], atol=1e-6)
    assert (hf[:, first_masked:] - causal[:, first_masked:]).abs().max() > 1e-3, "mask had no effect"


def test_capture_agrees_across_views_and_with_bridge_hooks():
    model, tokenizer = build_model("tiny", seed=4)
    rows = [TRACE.to_ids(tokenizer), TRACE.to_ids(tokenizer)[:-1]]  # ragged: the second row is shorter
    config = EvictionConfig()
    activations = ("keys", "values", "resid_pre", "pattern")
    hf = capture(model, tokenizer, rows, config, SITES, activations)
    bridge = to_bridge(model)
    for other in (capture(bridge, tokenizer, rows, config, SITES, activations),
                  capture(to_nnsight(model), tokenizer, rows, config, SITES, activations)):
        assert torch.allclose(hf.logits[0], other.logits[0], atol=1e-5, rtol=0)
        for kind in activations:
            for site in SITES:
                assert torch.allclose(getattr(hf, kind)[site], getattr(other, kind)[site], atol=1e-6, rtol=0), \
                    (kind, site)
    # the bridge's own KV hooks show the same numbers as the cache capture reads
    ids = torch.tensor(rows[:1])
    mask = additive_mask(memento_mask(ids[0], tokenizer, eviction=config))
    names = [key_hook(i) for i in range(4)] + [value_hook(i) for i in range(4)]
    with torch.no_grad():
        _, acts = bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names)
    positions = hf.positions["memento"][0]
    for layer in range(4):
        hooked_k = acts[key_hook(layer)][0, positions].transpose(0, 1)  # (kv_heads, P, d_head)
        hooked_v = acts[value_hook(layer)][0, positions].transpose(0, 1)
        assert torch.allclose(hooked_k, hf.keys["memento"][0, layer], atol=1e-6)
        assert torch.allclose(hooked_v, hf.values["memento"][0, layer], atol=1e-6)


def test_nnsight_intervention_changes_the_output(tiny):
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer)
    view = to_nnsight(model)
    with torch.no_grad():
        with view.trace(ids, attention_mask=additive_mask(mask)):
            view.model.layers[1].self_attn.v_proj.output[:] = 0
            patched = view.output.logits.save()
        clean = model(ids, attention_mask=additive_mask(mask)).logits
    assert (patched - clean).abs().max() > 1e-3


def test_capture_without_logits_stops_after_the_last_layers_keys_and_values_and_reads_the_same_numbers():
    model, tokenizer = build_model("tiny", seed=4)
    rows = [TRACE.to_ids(tokenizer), TRACE.to_ids(tokenizer)[:-1]]
    last = model.model.layers[-1]
    calls = {"mlp": 0, "k_proj": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
        return hook

    handles = [last.mlp.register_forward_hook(count("mlp")), last.self_attn.k_proj.register_forward_hook(count("k_proj"))]
    full = capture(model, tokenizer, rows, EvictionConfig(), SITES)
    assert calls == {"mlp": 1, "k_proj": 1}
    kv_only = capture(model, tokenizer, rows, EvictionConfig(), SITES, logits=False)
    for handle in handles:
        handle.remove()
    assert calls == {"mlp": 1, "k_proj": 2}, "the last layer's MLP ran although no logits were asked for"
    assert kv_only.logits is None and full.logits is not None
    for site in SITES:  # the same operations on the same inputs: bit-identical
        assert torch.equal(kv_only.keys[site], full.keys[site]) and torch.equal(kv_only.values[site], full.values[site])
    # other activations need the whole forward: no early stop, no logits
    with_resid = capture(model, tokenizer, rows, EvictionConfig(), SITES, ("keys", "values", "resid_pre"), logits=False)
    assert with_resid.logits is None and torch.equal(with_resid.keys["memento"], full.keys["memento"])
