"""Hook names as data, and reading the KV cache's contents through TransformerLens hooks.

The HF `DynamicCache` holds, per layer, keys *after* QK-norm and RoPE and values after `v_proj`,
shaped (batch, kv_heads, pos, d_head). In the TransformerLens 4 bridge those are
`blocks.{i}.attn.hook_rot_k` and `blocks.{i}.attn.hook_v`, shaped (batch, pos, kv_heads, d_head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def key_hook(layer: int) -> str:
    """Post-RoPE keys, exactly as cached: (batch, pos, kv_heads, d_head)."""
    return f"blocks.{layer}.attn.hook_rot_k"


def value_hook(layer: int) -> str:
    """Values, exactly as cached: (batch, pos, kv_heads, d_head)."""
    return f"blocks.{layer}.attn.hook_v"


def resid_post_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def attn_pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def n_layers(bridge_or_model) -> int:
    config = getattr(bridge_or_model, "cfg", None) or bridge_or_model.config
    return getattr(config, "n_layers", None) or config.num_hidden_layers


@dataclass
class CachedKV:
    """Keys and values of every layer at chosen positions, in the HF cache layout.

    keys, values: (layers, batch, kv_heads, positions, d_head).
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor


@torch.no_grad()
def collect_kv(bridge, ids: torch.Tensor, positions=None, attention_mask: torch.Tensor | None = None,
               **forward_kwargs) -> CachedKV:
    """Run `bridge` once and return per-layer keys/values at `positions` (default: all).

    `ids` is [B, T]; `attention_mask` may be a memento mask [B, 1, T, T] (bool or additive).
    """
    L = n_layers(bridge)
    names = [key_hook(i) for i in range(L)] + [value_hook(i) for i in range(L)]
    _, cache = bridge.run_with_cache(ids, attention_mask=attention_mask, names_filter=lambda n: n in names,
                                     **forward_kwargs)
    T = ids.shape[-1]
    positions = torch.arange(T) if positions is None else torch.as_tensor(positions)
    keys = torch.stack([cache[key_hook(i)][:, positions].transpose(1, 2) for i in range(L)])  # (L, B, kv, P, d)
    values = torch.stack([cache[value_hook(i)][:, positions].transpose(1, 2) for i in range(L)])
    return CachedKV(keys=keys, values=values, positions=positions)
