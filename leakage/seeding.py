"""Seeded blocks that leave the caller's random stream alone.

Some library code needs torch's global generator (module initialisation in `torch.nn`, dropout): it runs
inside `seeded(seed)`, which forks the CPU generator, seeds the fork, and restores the caller's state on
exit, so calling the library never changes what the caller's next random draw is. Code that can take an
explicit `torch.Generator` does so instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded with `seed`; restore the caller's state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
