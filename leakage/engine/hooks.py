"""TransformerLens hook names as data, in one place.

The HF `DynamicCache` holds, per layer, keys *after* QK-norm and RoPE and values after `v_proj`,
shaped (batch, kv_heads, pos, d_head). In the TransformerLens 4 bridge those are
`blocks.{i}.attn.hook_rot_k` and `blocks.{i}.attn.hook_v`, shaped (batch, pos, kv_heads, d_head).
`leakage.engine.capture` reads activations at named positions through any view.
"""

from __future__ import annotations


def key_hook(layer: int) -> str:
    """Post-RoPE keys, exactly as cached: (batch, pos, kv_heads, d_head)."""
    return f"blocks.{layer}.attn.hook_rot_k"


def value_hook(layer: int) -> str:
    """Values, exactly as cached: (batch, pos, kv_heads, d_head)."""
    return f"blocks.{layer}.attn.hook_v"


def resid_pre_hook(layer: int) -> str:
    """The residual stream entering a layer: (batch, pos, d_model)."""
    return f"blocks.{layer}.hook_resid_pre"


def attn_pattern_hook(layer: int) -> str:
    """Attention probabilities: (batch, heads, query pos, key pos)."""
    return f"blocks.{layer}.attn.hook_pattern"
