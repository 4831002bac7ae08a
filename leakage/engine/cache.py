"""KV surgery on HF `DynamicCache`s for batched decoding with per-sequence eviction.

A batched cache is a dense tensor per layer, keys/values (B, kv_heads, S, d_head). Sequences evict
different entries at different steps, so each row's entries are tracked by a `SlotTable`: which of
the S slots hold a real entry, and the logical position (the RoPE position it was computed at) of
each. Evicting *physically removes* entries: the row is compacted, and the tensors are re-cut to the
longest row, so memory shrinks with the longest surviving row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SlotTable:
    """valid: (B, S) bool — slot holds a real entry; positions: (B, S) long — its logical position."""

    valid: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def empty(cls, batch: int) -> "SlotTable":
        return cls(valid=torch.zeros(batch, 0, dtype=torch.bool), positions=torch.zeros(batch, 0, dtype=torch.long))

    @property
    def n_slots(self) -> int:
        return self.valid.shape[1]

    def counts(self) -> list[int]:
        """Real entries per row."""
        return self.valid.sum(1).tolist()

    def append(self, valid: torch.Tensor, positions: torch.Tensor) -> None:
        """Record q new slots per row, (B, q) each, appended at the end as the model's forward does."""
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)

    def row_positions(self, row: int) -> list[int]:
        """Sorted logical positions held by one row."""
        return sorted(self.positions[row][self.valid[row]].tolist())

    def select(self, row: int, lo: int, hi: int) -> torch.Tensor:
        """(S,) bool: the row's real slots whose logical position lies in [lo, hi)."""
        pos = self.positions[row]
        return self.valid[row] & (pos >= lo) & (pos < hi)


def cache_layers(cache) -> list:
    """The per-layer storage objects of a `DynamicCache` (each with `.keys`, `.values`)."""
    return list(cache.layers)


def compact(cache, table: SlotTable, drop: torch.Tensor) -> None:
    """Physically remove the slots in `drop` (B, S) and every padding slot, in place.

    Each row's surviving entries are moved to the front in their current order; the tensors are
    re-cut to the longest row. Rows shorter than that are padded with invalid slots.
    """
    keep = table.valid & ~drop  # (B, S)
    lengths = keep.sum(1)
    new_len = int(lengths.max()) if len(lengths) else 0
    # order[b] lists the kept slot indices first (stable), then the rest
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]  # (B, S')
    for layer in cache_layers(cache):
        B, H, _, D = layer.keys.shape
        index = order[:, None, :, None].expand(B, H, new_len, D).to(layer.keys.device)
        layer.keys = layer.keys.gather(2, index)
        layer.values = layer.values.gather(2, index)
    table.valid = torch.arange(new_len)[None, :] < lengths[:, None]
    table.positions = torch.where(table.valid, table.positions.gather(1, order), 0)


def attention_mask(table: SlotTable, new_valid: torch.Tensor, hidden: torch.Tensor | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask (B, 1, q, S + q) for q new tokens attending the cached slots plus each other.

    A real new token sees every real cached slot (except those in `hidden`, (B, S)) and the real new
    tokens up to itself; a padding token sees only itself, so no softmax row is empty.
    """
    B, q = new_valid.shape
    cached = table.valid if hidden is None else table.valid & ~hidden  # (B, S)
    causal = torch.ones(q, q, dtype=torch.bool).tril()  # (q, q)
    new = causal[None] & new_valid[:, None, :]  # (B, q, q): real new keys, causally
    own = torch.eye(q, dtype=torch.bool)[None].expand(B, q, q)
    new = torch.where(new_valid[:, :, None], new, own)
    old = cached[:, None, :].expand(B, q, table.n_slots) & new_valid[:, :, None]
    allowed = torch.cat([old, new], dim=2)  # (B, q, S + q)
    zeros = torch.zeros(allowed.shape, dtype=dtype)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class LogicalKV:
    """Keys or values of one layer of a live batched cache, indexed by *logical* position.

    `view[row, kv_head, positions]` reads (kv_head and positions may be ints, slices over heads, or
    sequences of positions) and `view[row, kv_head, positions] = tensor` writes in place, whatever
    physical slots the row's entries occupy after compaction. Asking for a position the row's cache
    does not hold (evicted, not yet computed) raises `KeyError` naming it.
    """

    def __init__(self, cache, table: SlotTable, layer: int, which: str):
        self.cache, self.table, self.layer, self.which = cache, table, layer, which

    def _tensor(self) -> torch.Tensor:  # (B, kv_heads, S, d_head); re-read: compaction replaces it
        return getattr(cache_layers(self.cache)[self.layer], self.which)

    def _index(self, key) -> tuple[int, object, torch.Tensor, bool]:
        if not isinstance(key, tuple) or len(key) != 3:
            raise IndexError("index a logical KV view as [row, kv_head, positions]")
        row, head, positions = key
        scalar = isinstance(positions, int)
        wanted = [positions] if scalar else list(positions)
        held = self.table.valid[row]
        slots = []
        for position in wanted:
            match = (held & (self.table.positions[row] == position)).nonzero().flatten()
            if len(match) == 0:
                raise KeyError(f"row {row} of the cache does not hold logical position {position} "
                               f"(evicted or not computed yet); it holds {self.table.row_positions(row)}")
            slots.append(int(match[0]))
        return row, head, torch.tensor(slots, dtype=torch.long), scalar

    def __getitem__(self, key) -> torch.Tensor:
        row, head, slots, scalar = self._index(key)
        tensor = self._tensor()
        out = tensor[row][head][..., slots.to(tensor.device), :]  # (..., P, d_head)
        return out[..., 0, :] if scalar else out

    def __setitem__(self, key, value: torch.Tensor) -> None:
        row, head, slots, scalar = self._index(key)
        target = self._tensor()[row][head]  # a view: writing into it writes the cache
        value = value.to(target.device)
        target[..., slots.to(target.device), :] = value.unsqueeze(-2) if scalar else value


class LiveCache:
    """The decoder's batched cache seen by logical position: what `Decoder.run`'s `on_step` receives.

    `keys(layer)` / `values(layer)` are `LogicalKV` views (post-RoPE keys and values, per KV head,
    exactly what attention reads); `positions(row)` lists the logical positions a row holds.
    """

    def __init__(self, cache, table: SlotTable):
        self.cache, self.table = cache, table

    @property
    def n_layers(self) -> int:
        return len(cache_layers(self.cache))

    def keys(self, layer: int) -> LogicalKV:
        return LogicalKV(self.cache, self.table, layer, "keys")

    def values(self, layer: int) -> LogicalKV:
        return LogicalKV(self.cache, self.table, layer, "values")

    def positions(self, row: int) -> list[int]:
        return self.table.row_positions(row)
