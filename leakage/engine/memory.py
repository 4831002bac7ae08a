"""How many rows of a memento-masked forward fit a memory budget: one estimate for every batched pass
(capture, evaluation, patching), so a real-size model on long traces takes smaller batches instead of
running out.

    rows = rows_per_batch(model, longest, memory_mb=None, most=64)   # None: $LEAKAGE_MEMORY_MB, else 8192
    batches = row_batches(model, longest, n_rows, most=64)            # slices of consecutive rows, one per forward

The budget is in MiB. `LEAKAGE_MEMORY_MB` sets it for every runner and verb at once (as `LEAKAGE_DEVICE_MAP`
sets the device): `LEAKAGE_MEMORY_MB=60000 leakage probe CKPT ...` on an 80 GB GPU.
"""

from __future__ import annotations

import os

from leakage.engine.views import hf_module

MEMORY_MB = 8192
"""The memory one batched forward may take when neither the caller nor `MEMORY_VARIABLE` says."""
MEMORY_VARIABLE = "LEAKAGE_MEMORY_MB"


def memory_budget(memory_mb: int | None = None) -> int:
    """The budget in MiB: `memory_mb`, else `$LEAKAGE_MEMORY_MB`, else `MEMORY_MB`."""
    if memory_mb is not None:
        return memory_mb
    text = os.environ.get(MEMORY_VARIABLE, "").strip()
    if not text:
        return MEMORY_MB
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"${MEMORY_VARIABLE}={text!r}: expected a whole number of MiB") from None
    if value < 1:
        raise ValueError(f"${MEMORY_VARIABLE}={text!r}: the memory budget must be at least 1 MiB")
    return value


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


def rows_per_batch(model, length: int, memory_mb: int | None = None, most: int = 64) -> int:
    """Rows of `length` tokens one forward may take: `most` at most, and no more than the budget (`memory_budget`)
    allows (`forward_memory_bytes`); raises `ValueError` when a single row needs more than the budget."""
    budget = memory_budget(memory_mb)
    per_row = forward_memory_bytes(model, length)
    if per_row > budget * 2 ** 20:
        raise ValueError(f"a sequence of {length} tokens needs about {per_row / 2 ** 20:,.0f} MB in one forward; the "
                         f"memory budget is {budget:,} MB (raise memory_mb or ${MEMORY_VARIABLE})")
    return max(1, min(most, budget * 2 ** 20 // per_row))


def row_batches(model, length: int, n_rows: int, memory_mb: int | None = None, most: int | None = None) -> list[slice]:
    """The batches, in order, that `n_rows` rows of up to `length` positions take through a forward: slices of
    consecutive rows (they index a list or a tensor; `PatchRun.subset` takes them), each `most` rows at most
    (None: all of them) and no more than `rows_per_batch` allows; none for no rows."""
    if n_rows < 1:
        return []
    size = rows_per_batch(model, length, memory_mb, most=min(most or n_rows, n_rows))
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]
