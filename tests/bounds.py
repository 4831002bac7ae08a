"""Test bounds derived from the binomial standard error at the test's own size, never from a run.

An accuracy measured on n independent binary outcomes with true rate p has standard error sqrt(p (1 - p) / n);
`Z` standard errors bound it with a two-sided miss probability below 1e-4 (Z = 4: 6.3e-5), so a test that
uses these bounds fails on a correct implementation about once in ten thousand runs, and on a broken one
whenever the break moves the accuracy by more than a few standard errors.
"""

import math

import numpy as np

Z = 4.0
CHANCE = 0.1


def standard_error(p: float, n: int) -> float:
    """Standard error of an accuracy with true rate `p` measured on `n` independent outcomes."""
    return math.sqrt(p * (1 - p) / n)


def band(p: float, n: int, z: float = Z) -> tuple[float, float]:
    """(p - z SE, p + z SE): where an accuracy with true rate `p` on `n` outcomes lands but once in 1e4 runs."""
    half = z * standard_error(p, n)
    return p - half, p + half


def at_chance(accuracy: float, n: int, chance: float = CHANCE) -> bool:
    """Whether `accuracy` on `n` outcomes is within Z standard errors of chance."""
    low, high = band(chance, n)
    return low <= accuracy <= high


def probe_reads_at_chance(result, groups, digits: int, chance: float = CHANCE) -> tuple[bool, bool]:
    """(within the band, interval holds chance) of a fitted probe (`ProbeResult`) on label-free features.

    The band: its accuracy within Z standard errors of chance at the size of its validation set in independent
    outcomes (distinct held-out passcodes x digits: rows that share a passcode are not independent). The
    interval: its own 95% interval holds chance, which a correct probe misses in 5% of seeds, so tests ask it
    of all but one of their seeds (of three: a correct probe fails that in under 1% of runs)."""
    units = len(np.unique(np.asarray(groups)[result.val_rows])) * digits
    low, high = result.ci95
    return at_chance(result.accuracy, units, chance), low <= chance <= high


def at_chance_on_seeds(reads: list[tuple[bool, bool]]) -> bool:
    """`probe_reads_at_chance` over several probe seeds: every band, and the interval on all but one seed."""
    return all(band for band, _ in reads) and sum(holds for _, holds in reads) >= len(reads) - 1
