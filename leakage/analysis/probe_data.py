"""Probe datasets: keys and values captured at named sites of many traces, with passcode labels.

A trace holds a passcode (5 digits by default) in block k that enters no memento text. Sites are named
relative to that block: `("memento", +1)` is the memento of block k+1 (retained after block k is
evicted: the "masked" condition), `("memento", 0)` block k's own memento ("direct"), `("memento", -1)`
the memento before block k ("causal control"), and any other retained part of block k (`block_start`,
`block_end`, `summary_start`, `summary_end`).

`capture_dataset` runs `leakage.engine.capture.capture` over the traces in batches (one masked forward per
batch) and keeps, per site, the keys and values of every layer at the site's positions:
(N, layer, position, 2 x kv_heads x d_head), keys then values, exactly as the cache holds them.
`KVDataset.features(site, layers, pooling)` flattens them for a probe: per-token concatenation by
default (pooling over a memento's tokens can hide the channel), or mean / last-token pooling.

Traces come from the synthetic tasks (`synthetic_traces`) or from any OpenMementos file with a
sentence "The passcode is d d d d d." inserted at the start of block k (`injected_traces`), tokenised
by the checkpoint's own tokenizer: the same code runs on any local HF checkpoint whose tokenizer has
the Memento tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from leakage import shards
from leakage.engine.capture import capture
from leakage.engine.memory import row_batches
from leakage.config import EvictionConfig
from leakage.memento.positions import Site, TracePositions, trace_positions
from leakage.memento.spans import parse_spans
from leakage.training.tasks import TaskConfig, make_example
from leakage.memento.trace import MementoTrace, Named, OpenMementosRecord


@dataclass(frozen=True)
class ProbeTrace:
    """One sequence to probe: ids, its named positions, the passcode block, digits and group (the passcode)."""

    ids: list[int]
    positions: TracePositions
    passcode_block: int
    digits: tuple[int, ...]

    @property
    def group(self) -> int:
        return int("".join(map(str, self.digits)))


def site_of(part: str, offset: int, passcode_block: int) -> Site:
    """The site `part` of block passcode_block + offset."""
    return Site(part, passcode_block + offset)


def site_name(part: str, offset: int) -> str:
    """'memento+1', 'block_end+0', 'memento-1': a site relative to the passcode block."""
    return f"{part}{offset:+d}"


def synthetic_traces(task: TaskConfig, tokenizer, n: int, seed: int = 0) -> list[ProbeTrace]:
    """`n` examples of a synthetic task (a passcode in `task.passcode_block`), alternating the task's
    train and validation passcode spaces; `fit_probe` then splits them by passcode (label-unique)."""
    if task.passcode_block is None:
        raise ValueError("probing needs a task with a passcode_block")
    out = []
    for i in range(n):
        e = make_example(task, tokenizer, seed, i, "train" if i % 2 else "val")
        digits = tuple(e.passcode_digits)
        out.append(ProbeTrace(ids=e.ids, positions=e.positions, passcode_block=task.passcode_block, digits=digits))
    return out


def injected_traces(records: Sequence[OpenMementosRecord], tokenizer, n: int, passcode_block: int = 1,
                    passcode_digits: int = 5, seed: int = 0, max_blocks: int | None = None) -> list[ProbeTrace]:
    """`n` traces cycling over `records`, each with a fresh random passcode sentence at the start of
    block `passcode_block` ("The passcode is d d d d d."), tokenised with `tokenizer`; with
    `max_blocks`, each trace keeps its first `max_blocks` blocks (then `</think>` and its answer)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        record = records[i % len(records)]
        trace = record.to_trace()
        if not 0 <= passcode_block < len(trace.blocks):
            raise ValueError(f"record {i % len(records)} has {len(trace.blocks)} blocks; no block {passcode_block}")
        digits = tuple(int(d) for d in rng.integers(0, 10, passcode_digits))
        blocks = list(trace.blocks)[:max_blocks]
        block, memento = blocks[passcode_block]
        blocks[passcode_block] = (Named((None, "The passcode is"), ("passcode", " ".join(map(str, digits))),
                                        (None, "."), (None, block)), memento)
        rendered = MementoTrace(trace.prompt, blocks, trace.answer).render(tokenizer)
        spans = parse_spans(rendered.ids, tokenizer)
        out.append(ProbeTrace(ids=rendered.ids, positions=trace_positions(spans, rendered.parts),
                              passcode_block=passcode_block, digits=digits))
    return out


@dataclass
class KVDataset:
    """Keys+values per site, (N, layer, position, 2 x kv_heads x d_head), zero-padded to the longest row,
    with labels and groups.

    sites: site name -> (part, offset). lengths[site]: (N,) tokens of the site in each trace. text[site]:
    the site tokens' input embeddings (N, position, d_model), what the memento *text* alone carries.
    labels (N, D) digits; groups (N,) passcodes.
    """

    sites: dict[str, tuple[str, int]]
    kv: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    labels: torch.Tensor
    groups: torch.Tensor
    config: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return next(iter(self.kv.values())).shape[1]

    def features(self, site: str, layers: Sequence[int] | None = None, pooling: str = "concat") -> torch.Tensor:
        """(N, F) probe features at `site`: the chosen layers' keys and values, per token concatenated
        (`concat`, which needs the site to have equal length in every trace), averaged over the site's
        tokens (`mean`) or the last token only (`last`)."""
        kv = self.kv[site] if layers is None else self.kv[site][:, list(layers)]  # (N, L, P, 2Hd)
        return _pool(kv, self.lengths[site], pooling, axis=2, site=site).flatten(1)

    def text_features(self, site: str, pooling: str = "concat") -> torch.Tensor:
        """(N, F) the input embeddings of the site's tokens: the text-only baseline."""
        return _pool(self.text[site], self.lengths[site], pooling, axis=1, site=site).flatten(1)


def _pool(tensor: torch.Tensor, lengths: torch.Tensor, pooling: str, axis: int, site: str) -> torch.Tensor:
    """Pool the (zero-padded) position axis of `tensor` (N, ..., P, ...) given each row's length."""
    if pooling == "concat":
        if (lengths != lengths[0]).any():
            raise ValueError(f"site {site} has {int(lengths.min())}..{int(lengths.max())} tokens across traces; "
                             "per-token concatenation needs equal lengths: use pooling mean or last")
        return tensor
    shape = [len(lengths)] + [1] * (tensor.dim() - 1)
    if pooling == "mean":
        return tensor.sum(axis, keepdim=True) / lengths.view(shape).to(tensor.dtype)
    if pooling == "last":
        index = (lengths - 1).view(shape).expand(*tensor.shape[:axis], 1, *tensor.shape[axis + 1:])
        return tensor.gather(axis, index)
    raise ValueError(f"pooling must be concat, mean or last, got {pooling!r}")


@torch.no_grad()
def capture_dataset(model, tokenizer, traces: Sequence[ProbeTrace], eviction: EvictionConfig,
                    sites: Sequence[tuple[str, int]], batch_size: int = 64, memory_mb: int | None = None,
                    progress: Callable[[int], None] | None = None) -> KVDataset:
    """Capture keys and values at `sites` ((part, offset from the passcode block)) of every trace,
    one masked forward per batch over the prefix that ends at the batch's last site position:
    `batch_size` rows at most, and no more than `memory_mb` MiB (None: `$LEAKAGE_MEMORY_MB`, else 8192) allow
    (`leakage.engine.memory.row_batches` of the longest trace); a single row that needs more is an error. Batches of 64
    keep a forward's activations in the CPU's caches: 1.7x the rate of batches of 256 on 10-block traces
    (`experiments/bench_capture.py`).
    Under `torchrun`, each process captures its share of the batches and every process gets the whole
    dataset (`leakage.shards`): the same batches, so the same numbers as one process."""
    names = {site_name(part, offset): (part, offset) for part, offset in sites}
    batches = [traces[rows] for rows in row_batches(model, max(len(t.ids) for t in traces), len(traces), memory_mb,
                                                      most=batch_size)]
    mine = []
    for index in shards.share(len(batches)):
        mine.append(_capture_batch(model, tokenizer, batches[index], eviction, names))
        if progress is not None:
            progress(len(batches[index]))
    captured = shards.gather(mine, len(batches))  # [(kv, lengths, text) per batch], in batch order
    kv, lengths, text = ({name: [batch[part][name] for batch in captured if name in batch[part]] for name in names}
                         for part in range(3))
    labels = torch.tensor([t.digits for t in traces], dtype=torch.long)
    groups = torch.tensor([t.group for t in traces], dtype=torch.long)
    return KVDataset(sites=names, kv=_concat_padded(kv, axis=2), lengths={k: torch.cat(v) for k, v in lengths.items()},
                     text=_concat_padded({k: v for k, v in text.items() if v}, axis=1), labels=labels, groups=groups,
                     config={"eviction": vars(eviction), "n_traces": len(traces)})


def _capture_batch(model, tokenizer, batch: Sequence[ProbeTrace], eviction: EvictionConfig,
                   names: dict[str, tuple[str, int]]) -> tuple[dict, dict, dict]:
    """One batch's (kv, lengths, text), each {site name: tensor}: keys+values (B, L, P, 2 x kv_heads x d_head),
    site lengths (B,), and the site tokens' input embeddings (B, P, d_model) when the model has them."""
    if any(t.passcode_block != batch[0].passcode_block for t in batch):
        raise ValueError("traces of one batch must hold the passcode in the same block")
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    wanted = {name: site_of(part, offset, batch[0].passcode_block) for name, (part, offset) in names.items()}
    got = capture(model, tokenizer, [t.ids for t in batch], eviction, wanted, positions=[t.positions for t in batch],
                  prefix_only=True, logits=False)
    kv, lengths, text = {}, {}, {}
    for name in names:
        valid = got.valid[name].cpu()  # (B, P); datasets live on the CPU, where probes train
        lengths[name] = valid.sum(1)
        keys, values = got.keys[name], got.values[name]  # (B, L, H, P, d), zero where not valid
        B, L, H, P, d = keys.shape
        kv[name] = torch.cat([keys.permute(0, 1, 3, 2, 4).reshape(B, L, P, H * d),
                              values.permute(0, 1, 3, 2, 4).reshape(B, L, P, H * d)], dim=-1).cpu()
        if embed is not None:
            ids = torch.tensor([[t.ids[p] for p in pos.clamp(min=0).tolist()] for t, pos in
                                zip(batch, got.positions[name])])
            text[name] = embed(ids.to(embed.weight.device)).cpu() * valid[..., None]
    return kv, lengths, text


def _concat_padded(chunks: dict[str, list[torch.Tensor]], axis: int) -> dict[str, torch.Tensor]:
    """Concatenate batches along rows, zero-padding their position axis to the longest."""
    out = {}
    for name, parts in chunks.items():
        P = max(p.shape[axis] for p in parts)
        padded = []
        for p in parts:
            pad = [0, 0] * (p.dim() - 1 - axis) + [0, P - p.shape[axis]]
            padded.append(torch.nn.functional.pad(p, pad))
        out[name] = torch.cat(padded)
    return out
