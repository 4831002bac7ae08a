"""Three views of one model: the HF module itself, a TransformerLens 4 bridge, and an nnsight wrapper.

Views never change what the model computes, and share its parameters (no weight copy): an edit of a
weight through one view is seen by the others, and a memento mask passed as `attention_mask` means
the same thing in all three. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import copy


def architecture_name(model) -> str:
    """The HF architecture string (e.g. 'Qwen3ForCausalLM') the bridge adapter is chosen by."""
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    return names[0]


def to_bridge(model):
    """A TransformerLens 4 `TransformerBridge` over `model`'s parameters (shared; works offline).

    Hook names follow TransformerLens (`blocks.{i}.attn.hook_rot_k`, ...); see `leakage.hooks`.

    Building a bridge replaces a module's attention layers, in place, by TransformerLens components
    (the same function, tested to 1e-6) and switches it to eager attention. So the bridge is built over
    a *structural copy* of `model`: new module objects holding the very same parameter tensors, so
    `model` itself keeps computing exactly what it did. Plain HF eager attention *adds* a 4D
    `attention_mask` to the scores, so always pass masks to the HF module in additive form
    (`leakage.mask.additive_mask`); the bridge also accepts bool masks.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    shared = {id(p): p for p in model.parameters()}  # deepcopy's memo: parameters are reused, not copied
    clone = copy.deepcopy(model, memo=shared)
    return build_bridge_from_module(clone, architecture_name(clone), hf_config=clone.config)


def to_nnsight(model):
    """An `nnsight.NNsight` wrapper over `model`: `with view.trace(ids, attention_mask=...):`."""
    from nnsight import NNsight

    return NNsight(model)
