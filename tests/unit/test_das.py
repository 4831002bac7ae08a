"""DAS on a constructed cache reader: the search finds a planted direction, and finds nothing where it is absent.

The constructed "model" answers one digit by reading one unit direction u of one KV head's values at a
two-position site: s = x . u, logits_j = -(s - SPACING j)^2. Every example's cell is Gaussian noise with u's
component set to SPACING x its passcode digit, so interchanging exactly span(u) moves the answer to the
source's digit. A learned unit direction b at angle t to u moves the read by (s_source - s_target) cos^2 t, which
rounds to the source's digit for every pair only while the largest gap, 9 SPACING, times sin^2 t stays below
half a spacing: sin^2 t < 1/18, t < 13.6 degrees (`MAX_ANGLE`). So a working search gives IIA 1 on every
example and an angle below that bound; the bounds follow from the construction, not from a run.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from leakage.analysis.das import (Cell, DasConfig, RotatedSubspace, fit_subspace, interchange, intervened_logits,
                                  placebo_cell, site_features, source_correct, with_site)
from leakage.analysis.patching import KV, PatchRun

SPACING = 3.0
MAX_ANGLE = math.degrees(math.asin(math.sqrt(1 / 18)))  # 13.6
L, H, T, D = 2, 2, 4, 8
SITE = (1, 2)  # the two site positions of the cell


def planted_direction(seed: int = 1) -> torch.Tensor:
    """A unit direction of the (positions x d_head) = 16-dimensional cell space."""
    u = torch.randn(len(SITE) * D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm()


def cache(digits: torch.Tensor, u: torch.Tensor, head: int, generator: torch.Generator) -> KV:
    """(B, L, H, T, D) keys and values of noise, with u's component of (layer 1, `head`)'s values at SITE
    set to SPACING x digit."""
    B = len(digits)
    keys = torch.randn(B, L, H, T, D, generator=generator, dtype=torch.float64)
    values = torch.randn(B, L, H, T, D, generator=generator, dtype=torch.float64)
    cell = values[:, 1, head][:, list(SITE)].flatten(1)  # (B, 16)
    cell = cell - (cell @ u)[:, None] * u + SPACING * digits.double()[:, None] * u
    values[:, 1, head, list(SITE)] = cell.view(B, len(SITE), D)
    return KV(keys, values)


def pairs(n: int, u: torch.Tensor, seed: int) -> PatchRun:
    """n target/source pairs whose digits differ, their caches coded at head 0."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 10, (n,), generator=generator)
    source = (target + torch.randint(1, 10, (n,), generator=generator)) % 10
    answer = torch.stack([target, source], -1)[:, None]  # (n, 1 query, 2)
    return PatchRun(ids=torch.zeros(n, T + 1, dtype=torch.long), mask=torch.ones(n, T + 1, T + 1, dtype=torch.bool),
                    at=T, queries=[T], answer=answer, target=cache(target, u, 0, generator),
                    source=cache(source, u, 0, generator), held=torch.ones(n, T, dtype=torch.bool),
                    kinds=["prompt"] * T)


def reader(u: torch.Tensor, head: int):
    """The constructed model: the answer digit read from direction u of (layer 1, `head`)'s values at SITE."""
    def logits_of(run: PatchRun, kv: KV) -> torch.Tensor:
        s = kv.values[:, 1, head][:, list(SITE)].flatten(1).to(u.dtype) @ u  # (B,)
        digits = torch.arange(10, dtype=s.dtype)
        return (-(s[:, None] - SPACING * digits) ** 2)[:, None].float()  # (B, 1, 10)
    return logits_of


CELL = Cell(layer=1, kv_head=0, which="values", site="planted", positions=SITE)
CONFIG = DasConfig(ks=(1,), n_train=256, steps=150, batch_size=64, learning_rate=2e-2)


def test_the_interchange_swaps_exactly_the_subspace():
    sub = RotatedSubspace(16, 3, seed=0)
    basis = sub.basis.detach()
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    base, source = torch.randn(5, 16), torch.randn(5, 16)
    out = sub(base, source).detach()
    assert torch.allclose(out @ basis, source @ basis, atol=1e-5)  # inside: the source's
    inside = basis @ basis.T
    assert torch.allclose(out - out @ inside, base - base @ inside, atol=1e-5)  # outside: the base's
    whole = RotatedSubspace(16, 16, seed=0)
    assert torch.allclose(whole(base, source).detach(), source, atol=1e-5)  # k = F: the whole cell


def test_with_site_writes_only_the_cell():
    run = pairs(4, planted_direction(), seed=0)
    features = torch.zeros(4, len(SITE) * D, dtype=torch.float64)
    edited = with_site(run.target, CELL, features)
    assert torch.equal(site_features(edited, CELL), features)
    changed = (edited.values != run.target.values).nonzero()[:, 1:4].unique(dim=0).tolist()
    assert all(layer == 1 and head == 0 and pos in SITE for layer, head, pos in changed)
    assert torch.equal(edited.keys, run.target.keys)


@pytest.mark.parametrize("seed", [0, 1])
def test_das_recovers_the_planted_direction(seed):
    u = planted_direction(seed + 1)
    logits_of = reader(u, head=0)
    train, val = pairs(CONFIG.n_train, u, seed=10 + seed), pairs(256, u, seed=20 + seed)
    assert source_correct(logits_of(val, val.target), val).max() == 0  # clean: the target's digit, always
    subspace = fit_subspace(logits_of, train, CELL, 1, CONFIG, seed)
    iia = source_correct(intervened_logits(logits_of, val, CELL, interchange(val, CELL, subspace)), val)
    angle = np.degrees(subspace_angles(subspace.basis.detach().double().numpy(), u[:, None].numpy())).max()
    assert iia.min() == 1.0, f"IIA {iia.mean():.3f}"
    assert angle < MAX_ANGLE, f"{angle:.1f} degrees from the planted direction"


def test_das_finds_nothing_where_the_direction_is_absent():
    """The model reads head 1, whose values carry no digit; DAS on head 0 (where the code is) cannot move
    the answer: IIA stays at the clean rate, 0, for a fitted subspace and for the whole cell alike."""
    u = planted_direction(1)
    logits_of = reader(u, head=1)
    train, val = pairs(CONFIG.n_train, u, seed=10), pairs(256, u, seed=20)
    clean = source_correct(logits_of(val, val.target), val)
    subspace = fit_subspace(logits_of, train, CELL, 1, CONFIG, 0)
    for features in (interchange(val, CELL, subspace), interchange(val, CELL, None)):
        iia = source_correct(intervened_logits(logits_of, val, CELL, features), val)
        assert torch.equal(iia, clean)


def test_the_shuffled_placebo_never_lands_on_a_position_computed_with_the_block_in_view():
    """Held prefix: positions 0..9, the passcode block from 4 on (so 4..9 are leaked). A one-kind site (8, 9)
    must move to positions among 0..3 on every draw; drawing among all held positions but the site's (the
    first version) lands on 4..7 on most draws."""
    T = 10
    run = PatchRun(ids=torch.zeros(1, T + 1, dtype=torch.long), mask=torch.ones(1, T + 1, T + 1, dtype=torch.bool),
                   at=T, queries=[T], answer=torch.zeros(1, 1, 2, dtype=torch.long), target=None, source=None,
                   held=torch.ones(1, T, dtype=torch.bool), kinds=["prompt"] * T)
    example = SimpleNamespace(passcode_positions=[4, 5])
    cell = Cell(layer=0, kv_head=0, which="values", site="memento", positions=(8, 9))
    moved = [placebo_cell(run, example, cell, np.random.default_rng(seed)).positions for seed in range(50)]
    assert all(len(m) == 2 and max(m) < 4 for m in moved)
    everything = Cell(0, 0, "values", "leaked", tuple(range(4, 9)))  # 5 positions, 4 unleaked: too few
    assert placebo_cell(run, example, everything, np.random.default_rng(0)) is None
