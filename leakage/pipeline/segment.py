"""Exact segmentation of a sentence sequence into blocks.

Sentence i has `sizes[i]` tokens; boundary j lies between sentences j and j + 1 and has score
`scores[j]`. A segmentation into K blocks chooses K - 1 boundaries; every block holds at least
`min_block_tokens` tokens, and K lies in [min_blocks, max_blocks]. It maximises

    J = mean(scores of the chosen boundaries) - lambda * std(block sizes) / mean(block sizes)

with the population std (ddof 0). Convention for K = 1: the mean over no boundaries counts as 0 and a
single block has std 0, so J = 0. Ties (within 1e-12) go to fewer blocks, then to the higher score sum.

`score_mean="blocks"` divides the score sum by K instead of K - 1 (the first block counts as a
boundary of score 0), as the public reference implementation does. With the paper's "mean of the
chosen boundaries", J barely depends on K once a few top-scored boundaries exist, and two blocks split
at one top boundary near the middle usually win; dividing by K rewards more blocks.

Why the search is exact. With T = sum(sizes), S = sum of chosen scores and Q = sum of squared block
sizes, J = S / (K - 1) - lambda * sqrt(K * Q - T^2) / T for K >= 2 (S / K with "blocks"). For a fixed K,
J increases in S and decreases in Q, so the best K-block segmentation minimises Q among those with its
score sum S. Scores are multiples of 1/q (q <= 12: integer rule scores, halves from averaging two LLM
passes), so S takes few values, and a dynamic programme over (blocks k, prefix end i, score sum S) ->
min Q is exact (Q and S are both additive over blocks). Every (K, S) pair is then evaluated.
O(K_max * n^2 * |S|) integer work, vectorised over the previous block end and S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_SCORE_DENOMINATOR = 12
_INF = np.int64(2**62)
# The exact search refuses, up front, traces whose tables would need more memory or work than this:
# 4 GiB, 2.5e11 element operations (about 3 minutes at the 1.2e9/s measured on one core; a 32K-token
# trace of 1,500 sentences with 200-token blocks needs 1.5 GiB and 1.9e11).
MAX_TABLE_BYTES = 4 * 2**30
MAX_CELL_UPDATES = 250 * 10**9


def search_cost(n_sentences: int, k_max: int, u_max: int) -> tuple[int, int]:
    """(bytes of the DP tables, element operations) of the exact search: layer k holds (n + 1) x
    (1 + (k - 1) u_max) cells of int64 minimum plus int32 choice, and each cell scans up to n cuts."""
    cells = sum((n_sentences + 1) * (1 + (k - 1) * u_max) for k in range(1, k_max + 1))
    return 12 * cells, cells * n_sentences


class SegmentationError(ValueError):
    """No segmentation satisfies the constraints (e.g. the trace is shorter than one minimum block)."""


@dataclass(frozen=True)
class SegmentConfig:
    """lambda_: weight of the size-variation penalty (paper: 0.5). min_block_tokens: smallest block (paper: 200).

    min_blocks / max_blocks: range of K searched (max None: as many as min_block_tokens allows).
    score_mean: "boundaries" (sum / (K - 1), the paper's wording) or "blocks" (sum / K, the public
    reference implementation); see the module docstring.
    """

    lambda_: float = 0.5
    min_block_tokens: int = 200
    min_blocks: int = 1
    max_blocks: int | None = None
    score_mean: str = "boundaries"

    def __post_init__(self):
        if self.lambda_ < 0 or not math.isfinite(self.lambda_):
            raise ValueError(f"lambda_ must be a finite number >= 0, got {self.lambda_}")
        if self.min_block_tokens < 0:
            raise ValueError(f"min_block_tokens must be >= 0, got {self.min_block_tokens}")
        if self.min_blocks < 1 or (self.max_blocks is not None and self.max_blocks < self.min_blocks):
            raise ValueError(f"need 1 <= min_blocks <= max_blocks, got {self.min_blocks}, {self.max_blocks}")
        if self.score_mean not in ("boundaries", "blocks"):
            raise ValueError(f"score_mean must be 'boundaries' or 'blocks', got {self.score_mean!r}")


SEGMENT_PRESETS: dict[str, SegmentConfig] = {
    "paper": SegmentConfig(lambda_=0.5, min_block_tokens=200),
    "reference": SegmentConfig(lambda_=0.5, min_block_tokens=200, score_mean="blocks"),
}


@dataclass(frozen=True)
class Segmentation:
    """Blocks as sentence ranges: block b is sentences [starts[b], starts[b + 1]) (the last one runs to the end)."""

    starts: tuple[int, ...]
    block_sizes: tuple[int, ...]
    chosen_scores: tuple[float, ...]
    objective: float

    @property
    def n_blocks(self) -> int:
        return len(self.starts)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Indices of the chosen boundaries (boundary j lies between sentences j and j + 1)."""
        return tuple(s - 1 for s in self.starts[1:])

    def ranges(self, n_sentences: int) -> list[tuple[int, int]]:
        ends = (*self.starts[1:], n_sentences)
        return list(zip(self.starts, ends))


def segmentation_objective(block_sizes: Sequence[int], chosen_scores: Sequence[float], lambda_: float,
                           score_mean: str = "boundaries") -> float:
    """J for one segmentation (module docstring), K = 1 included."""
    k = len(block_sizes)
    if len(chosen_scores) != k - 1:
        raise ValueError(f"{k} blocks need {k - 1} chosen scores, got {len(chosen_scores)}")
    if k == 1:
        return 0.0
    total = sum(block_sizes)
    if total <= 0:
        raise ValueError("block sizes sum to 0: the size variation is undefined")
    spread = max(k * sum(s * s for s in block_sizes) - total * total, 0)
    divisor = k - 1 if score_mean == "boundaries" else k
    return sum(chosen_scores) / divisor - lambda_ * math.sqrt(spread) / total


def _score_units(scores: Sequence[float]) -> tuple[list[int], int]:
    """Scores as integers on the grid 1/q for the smallest q <= MAX_SCORE_DENOMINATOR that fits them all."""
    for index, s in enumerate(scores):
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"boundary score {index} is {s!r}; scores must be finite and >= 0")
    for q in range(1, MAX_SCORE_DENOMINATOR + 1):
        units = [round(s * q) for s in scores]
        if all(abs(u - s * q) < 1e-9 for u, s in zip(units, scores)):
            return units, q
    raise ValueError(f"boundary scores must be multiples of 1/q for some q <= {MAX_SCORE_DENOMINATOR} "
                     "(e.g. integers, or halves from averaging two passes); round them first")


def segment(sizes: Sequence[int], scores: Sequence[float], config: SegmentConfig = SegmentConfig()) -> Segmentation:
    """The segmentation maximising J (module docstring) over every number of blocks, exactly.

    Raises `SegmentationError` when no block layout meets `min_block_tokens` and the K range, or when
    the sizes sum to 0 (the size variation is undefined); the message gives the token total.
    Raises `ValueError` for malformed inputs.
    """
    n = len(sizes)
    if n == 0:
        raise SegmentationError("nothing to segment: no sentences")
    if len(scores) != n - 1:
        raise ValueError(f"{n} sentences need {n - 1} boundary scores, got {len(scores)}")
    if any(int(s) != s or s < 0 for s in sizes):
        raise ValueError("sentence sizes must be non-negative integers")
    units, q = _score_units(scores)
    m = config.min_block_tokens
    prefix = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    total = int(prefix[-1])
    if total < m or total == 0:
        raise SegmentationError(f"the text has {total} tokens, fewer than min_block_tokens={m} "
                                "(or none at all): not even one block fits")
    k_max = n if m == 0 else min(n, total // m)
    if config.max_blocks is not None:
        k_max = min(k_max, config.max_blocks)
    table_bytes, updates = search_cost(n, k_max, int(max(units, default=0)))
    if table_bytes > MAX_TABLE_BYTES or updates > MAX_CELL_UPDATES:
        raise SegmentationError(
            f"too large for the exact search: {n} sentences, {total} tokens, up to {k_max} blocks would need "
            f"{table_bytes / 2**30:.1f} GiB of tables and {updates:.1e} operations (limits "
            f"{MAX_TABLE_BYTES / 2**30:.0f} GiB, {MAX_CELL_UPDATES:.0e}); cap the blocks (--max-blocks) or raise "
            "--min-block-tokens")

    # cut_units[j] = score of a cut at prefix position j (between sentences j - 1 and j), j = 1..n-1.
    cut_units = np.zeros(n + 1, dtype=np.int64)
    cut_units[1:n] = units
    u_max = int(max(units, default=0))
    # Useful prefix ends: the end of the text, or positions leaving room for at least one more block.
    useful = np.flatnonzero((prefix >= m) & ((prefix[-1] - prefix >= m) | (np.arange(n + 1) == n)))

    # layers[k][i, S]: min sum of squared sizes over k blocks covering sentences [0, i) with score sum S.
    first = np.full((n + 1, 1), _INF, dtype=np.int64)
    first[useful, 0] = prefix[useful] ** 2
    layers, choices = [first], [None]
    for k in range(2, k_max + 1):
        prev = layers[-1]
        width = prev.shape[1] + u_max
        shifted = np.full((n + 1, width), _INF, dtype=np.int64)  # shifted[j, S] = prev[j, S - cut_units[j]]
        for value in np.unique(cut_units[1:n]):
            rows = np.flatnonzero(cut_units == value)
            rows = rows[(rows >= 1) & (rows <= n - 1)]
            shifted[rows, value:value + prev.shape[1]] = prev[rows]
        layer = np.full((n + 1, width), _INF, dtype=np.int64)
        choice = np.zeros((n + 1, width), dtype=np.int32)
        for i in useful:
            last_j = int(np.searchsorted(prefix, prefix[i] - m, side="right")) - 1  # P[i] - P[j] >= m
            last_j = min(last_j, i - 1)
            if last_j < 1:
                continue
            cand = shifted[1:last_j + 1] + ((prefix[i] - prefix[1:last_j + 1]) ** 2)[:, None]
            best = np.argmin(cand, axis=0)
            layer[i] = np.minimum(cand[best, np.arange(width)], _INF)
            choice[i] = best + 1
        if not (layer < _INF).any():  # no k-block prefix exists, so no larger k either
            break
        layers.append(layer)
        choices.append(choice)

    best_key, best_value = None, -math.inf
    if config.min_blocks == 1:
        best_key, best_value = (1, 0), 0.0
    for k in range(max(2, config.min_blocks), len(layers) + 1):
        row = layers[k - 1][n]
        divisor = k - 1 if config.score_mean == "boundaries" else k
        for s_units in range(row.shape[0] - 1, -1, -1):
            if row[s_units] >= _INF:
                continue
            spread = max(k * int(row[s_units]) - total * total, 0)
            value = s_units / q / divisor - config.lambda_ * math.sqrt(spread) / total
            if value > best_value + 1e-12:
                best_key, best_value = (k, s_units), value
    if best_key is None:
        raise SegmentationError(f"no segmentation of {total} tokens into {config.min_blocks} or more blocks "
                                f"of >= {m} tokens each")

    k, s_units = best_key
    starts, i = [], n
    while k > 1:
        j = int(choices[k - 1][i, s_units])
        starts.append(j)
        s_units -= int(cut_units[j])
        i, k = j, k - 1
    starts = (0, *reversed(starts))
    ends = (*starts[1:], n)
    block_sizes = tuple(int(prefix[e] - prefix[s]) for s, e in zip(starts, ends))
    chosen = tuple(float(scores[s - 1]) for s in starts[1:])
    return Segmentation(starts=starts, block_sizes=block_sizes, chosen_scores=chosen,
                        objective=segmentation_objective(block_sizes, chosen, config.lambda_, config.score_mean))
