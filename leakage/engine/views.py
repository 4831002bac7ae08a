"""Three views of one model: the HF module itself, a TransformerLens 4 bridge, and an nnsight wrapper.

Views never change what the model computes, and share its parameters (no weight copy): an edit of a
weight through one view is seen by the others, and a memento mask passed as `attention_mask` means
the same thing in all three. Heavy imports happen inside the functions.

Every question of the form "which view is this, and how do I run it?" is answered here: `is_bridge`,
`is_nnsight`, `hf_module` (the HF module under any view), `vocab_size`, `check_token_ids`, `input_device`
(where a forward's inputs go) and `step_forward` (one decode-step forward for any view). Code elsewhere asks these functions and never
inspects a view's type itself.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

Forward = Callable[[torch.Tensor, object, torch.Tensor, torch.Tensor], torch.Tensor]
"""(input_ids (B, q), cache, additive mask (B, 1, q, S+q), position_ids (B, q)) -> logits (B, q, V)."""


def is_nnsight(model) -> bool:
    return any(cls.__name__ == "NNsight" for cls in type(model).__mro__)


def is_bridge(model) -> bool:
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)


def hf_module(model):
    """The underlying HF module of an HF model, a TransformerBridge or an NNsight wrapper."""
    if is_bridge(model):
        return model.original_model
    if is_nnsight(model):
        return model._module
    return model


def step_forward(model, intervention: Callable | None = None) -> Forward:
    """One decode-step forward for any of the three model views."""
    if is_nnsight(model):
        def nnsight_forward(ids, cache, mask, positions):
            with model.trace(ids, past_key_values=cache, attention_mask=mask, position_ids=positions,
                             use_cache=True):
                if intervention is not None:
                    intervention(model)
                logits = model.output.logits.save()
            return logits
        return nnsight_forward
    if intervention is not None:
        raise ValueError("intervention= needs an nnsight.NNsight view; use bridge hooks for a TransformerBridge")
    if is_bridge(model):  # returns logits directly
        return lambda ids, cache, mask, positions: model(ids, past_key_values=cache, attention_mask=mask,
                                                         position_ids=positions, use_cache=True)
    return lambda ids, cache, mask, positions: model(ids, past_key_values=cache, attention_mask=mask,
                                                     position_ids=positions, use_cache=True).logits


def input_device(model) -> torch.device:
    """Where a forward's inputs go: the device of the model's input embeddings. For a model on one device that is
    its device; under `device_map="auto"` it is the first layers' device, and accelerate's hooks move the
    activations between devices from there."""
    return hf_module(model).get_input_embeddings().weight.device


def vocab_size(model) -> int:
    """Rows of the model's input embedding: the token ids it can take."""
    return hf_module(model).get_input_embeddings().num_embeddings


def check_token_ids(rows: Sequence[Sequence[int]], size: int, positions: Sequence[Sequence[int]] | None = None) -> None:
    """Raise naming the row and position of the first token id outside 0..size-1 (instead of an
    IndexError deep in the embedding)."""
    for b, row in enumerate(rows):
        for i, token in enumerate(row):
            if not 0 <= token < size:
                where = positions[b][i] if positions is not None else i
                raise ValueError(f"row {b}, position {where}: token id {token} is outside the model's vocabulary "
                                 f"(0..{size - 1})")


def architecture_name(model) -> str:
    """The HF architecture string (e.g. 'Qwen3ForCausalLM') the bridge adapter is chosen by."""
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    return names[0]


def to_bridge(model):
    """A TransformerLens 4 `TransformerBridge` over `model`'s parameters (shared; works offline).

    Hook names follow TransformerLens (`blocks.{i}.attn.hook_rot_k`, ...); see `leakage.engine.hooks`.

    Building a bridge replaces a module's attention layers, in place, by TransformerLens components
    (the same function, tested to 1e-6) and switches it to eager attention. So the bridge is built over
    a *structural copy* of `model`: new module objects holding the very same parameter tensors, so
    `model` itself keeps computing exactly what it did. Plain HF eager attention *adds* a 4D
    `attention_mask` to the scores, so always pass masks to the HF module in additive form
    (`leakage.memento.mask.additive_mask`); the bridge also accepts bool masks.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    shared = {id(p): p for p in model.parameters()}  # deepcopy's memo: parameters are reused, not copied
    clone = copy.deepcopy(model, memo=shared)
    return build_bridge_from_module(clone, architecture_name(clone), hf_config=clone.config)


def to_nnsight(model):
    """An `nnsight.NNsight` wrapper over `model`: `with view.trace(ids, attention_mask=...):`."""
    from nnsight import NNsight

    return NNsight(model)
