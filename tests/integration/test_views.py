"""HF, TransformerLens bridge and nnsight views of one model agree, with and without the memento mask."""

import torch
from transformers import DynamicCache

from leakage.hooks import collect_kv
from leakage.mask import additive_mask, memento_mask
from leakage.model import build_model
from leakage.trace import MementoTrace
from leakage.views import to_bridge, to_nnsight

TRACE = MementoTrace("what is the sum ?", [("1 2 3 = 6", "6"), ("4 5 = 1 5", "1 5"), ("7 = 2 2", "2 2")], "2 2")


def _batch(tokenizer):
    ids = torch.tensor([TRACE.to_ids(tokenizer)])
    mask = memento_mask(ids[0], tokenizer)[None]  # (1, T, T)
    return ids, mask


def test_bridge_wraps_the_same_module(tiny):
    model, _ = tiny
    bridge = to_bridge(model)
    assert bridge.original_model is model
    assert next(bridge.parameters()).data_ptr() == next(model.parameters()).data_ptr()


def test_three_views_agree_under_the_memento_mask():
    model, tokenizer = build_model("tiny", seed=4)  # never bridged: to_bridge swaps its attention modules
    ids, mask = _batch(tokenizer)
    attention = additive_mask(mask)  # HF eager attention adds a 4D mask: pass the additive form
    with torch.no_grad():
        hf = model(ids, attention_mask=attention).logits
        causal = model(ids).logits
        view = to_nnsight(model)
        with view.trace(ids, attention_mask=attention):
            nn_logits = view.output.logits.save()
        bridge = to_bridge(model)
        bridge_additive = bridge(ids, attention_mask=attention)
        bridge_bool = bridge(ids, attention_mask=mask[:, None])
    assert torch.allclose(hf, nn_logits, atol=1e-6, rtol=0)
    assert torch.allclose(hf, bridge_additive, atol=1e-6, rtol=0)
    assert torch.allclose(hf, bridge_bool, atol=1e-6, rtol=0)
    first_masked = int(mask[0].logical_not().tril().any(1).nonzero()[0])
    assert torch.allclose(hf[:, :first_masked], causal[:, :first_masked], atol=1e-6)
    assert (hf[:, first_masked:] - causal[:, first_masked:]).abs().max() > 1e-3, "mask had no effect"


def test_run_with_cache_exposes_cached_keys_and_values(tiny):
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, attention_mask=additive_mask(mask), past_key_values=cache, use_cache=True)
    positions = [3, 7, ids.shape[1] - 1]
    kv = collect_kv(to_bridge(model), ids, positions=positions, attention_mask=additive_mask(mask))
    L = model.config.num_hidden_layers
    assert kv.keys.shape == (L, 1, model.config.num_key_value_heads, len(positions), model.config.head_dim)
    for layer in range(L):
        assert torch.allclose(kv.keys[layer], cache.layers[layer].keys[:, :, positions], atol=1e-6)
        assert torch.allclose(kv.values[layer], cache.layers[layer].values[:, :, positions], atol=1e-6)


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
