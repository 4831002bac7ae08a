"""How many rows of a memento-masked forward fit a memory budget: one estimate for every batched pass
(capture, evaluation), so a real-size model on long traces takes smaller batches instead of running out.

    rows = rows_per_batch(model, longest, memory_mb=8192, most=64)
"""

from __future__ import annotations

from leakage.engine.views import hf_module

MEMORY_MB = 8192
"""The memory one batched forward may take by default."""


def forward_memory_bytes(model, length: int) -> int:
    """Bytes one row of `length` tokens takes in a memento-masked eager forward, at most: the boolean and
    additive masks (5 bytes a cell), each layer's attention scores and their softmax ((heads, T, T) twice,
    float32, freed layer by layer), the cache's keys and values of every layer, a few (T, d_model)
    activations and the last position's logits."""
    config = hf_module(model).config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads  # GPT-2 and kin: no grouped queries
    d_head = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (length ** 2 * (5 + 8 * heads) + length * 4 * (2 * config.num_hidden_layers * kv_heads * d_head
                                                          + 16 * config.hidden_size) + 4 * config.vocab_size)


def rows_per_batch(model, length: int, memory_mb: int = MEMORY_MB, most: int = 64) -> int:
    """Rows of `length` tokens one forward may take: `most` at most, and no more than `memory_mb` allows
    (`forward_memory_bytes`); raises `ValueError` when a single row needs more than the budget."""
    per_row = forward_memory_bytes(model, length)
    if per_row > memory_mb * 2 ** 20:
        raise ValueError(f"a sequence of {length} tokens needs about {per_row / 2 ** 20:,.0f} MB in one forward; the "
                         f"memory budget is {memory_mb:,} MB (raise memory_mb)")
    return max(1, min(most, memory_mb * 2 ** 20 // per_row))
