"""Work split over the processes `torchrun` starts: each rank does a contiguous share of a list of work items,
and the results come back, in order, on every rank.

    python -m torch.distributed.run --nproc_per_node=2 tests/shard_capture.py runs/shards

Under `torchrun`, `capture_dataset` (the probe's keys and values) captures each rank's share of its batches,
and every rank receives the whole dataset, bit-identical to a single process's (whole batches move, never
rows of a batch: every forward is the one a single process runs; tested with gloo). Code after it runs on
every rank, and only rank 0 writes results (`leakage.analysis.record.finish`). Launching the `leakage`
command itself under `torchrun` is not yet tested (torchrun's own flags clash with `--n`).

Without `torchrun` (no `WORLD_SIZE`, or 1) there is one rank and nothing is exchanged. The process group
is joined on first use, with `backend()`: gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")


def world_size() -> int:
    """Processes `torchrun` started (its `WORLD_SIZE`; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without `torchrun`)."""
    return int(os.environ.get("RANK", "0"))


def backend() -> str:
    """The collective backend: NCCL on GPUs, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _process_group() -> None:
    """Join the process group `torchrun` describes, once."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend())


def share(n: int) -> range:
    """The indices of `n` work items this rank does: a contiguous share, ranks in order, the first
    `n % world` ranks taking one more (every rank gets a share, possibly empty)."""
    world, me = world_size(), rank()
    base, extra = divmod(n, world)
    start = me * base + min(me, extra)
    return range(start, start + base + (me < extra))


def gather(mine: Sequence[Item], n: int) -> list[Item]:
    """All `n` results, in item order, on every rank, from each rank's results of its `share(n)`.

    Raises ValueError when this rank's results do not match its share. Results travel pickled between
    the ranks of this run's own process group (never read from a file).
    """
    if len(mine) != len(share(n)):
        raise ValueError(f"rank {rank()} holds {len(mine)} results for its share of {len(share(n))} items")
    if world_size() <= 1:
        return list(mine)
    _process_group()
    pieces: list[list[Item] | None] = [None] * world_size()
    dist.all_gather_object(pieces, list(mine))
    return [item for piece in pieces for item in piece]
