"""The erasers of `leakage erasers` on constructed caches: each edits only the leaked positions, and each
does what it claims there (LEACE leaves no linear covariance with the passcode on the rows it was fitted
on; the DAS eraser sets the subspace's component to the mean and leaves the rest; mean and resample copy
what they name; restart hands back the restart cache)."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from leakage.analysis.das import Cell, RotatedSubspace, site_features
from leakage.analysis.erasers import Examples, ReplacementConfig, fit_erasers, fit_replacement
from leakage.analysis.erasure import kv_features, one_hot_digits
from leakage.analysis.patching import KV, PatchRun

B, L, H, T, D = 300, 2, 2, 6, 4
POSITIONS = [3, 4]


def examples(seed: int) -> Examples:
    """Random caches whose values at POSITIONS carry the passcode's digits linearly, with a twin and restart KV."""
    generator = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (B, 5), generator=generator)
    kv = [KV(torch.randn(B, L, H, T, D, generator=generator, dtype=torch.float64),
             torch.randn(B, L, H, T, D, generator=generator, dtype=torch.float64)) for _ in range(3)]
    code = torch.randn(5, L, H, len(POSITIONS), D, generator=generator, dtype=torch.float64)
    target = kv[0]
    target.values[:, :, :, POSITIONS] += torch.einsum("bk,klhpd->blhpd", digits.double(), code)
    run = PatchRun(ids=torch.zeros(B, T + 1, dtype=torch.long), mask=torch.ones(B, T + 1, T + 1, dtype=torch.bool),
                   at=T, queries=[T], answer=torch.zeros(B, 1, 2, dtype=torch.long), target=target, source=kv[1],
                   held=torch.ones(B, T, dtype=torch.bool), kinds=["prompt"] * T)
    return Examples([SimpleNamespace(passcode_digits=row.tolist()) for row in digits], run, kv[2])


CELL = Cell(layer=1, kv_head=0, which="values", site="leaked", positions=tuple(POSITIONS))


@pytest.fixture(scope="module")
def fitted():
    data = examples(0)
    return data, fit_erasers(data, POSITIONS, {CELL: RotatedSubspace(len(POSITIONS) * D, 2, seed=0)}, seed=0)


def outside(kv: KV) -> torch.Tensor:
    keep = [p for p in range(T) if p not in POSITIONS]
    return torch.cat([kv.keys[:, :, :, keep].flatten(), kv.values[:, :, :, keep].flatten()])


@pytest.mark.parametrize("name", ["none", "leace", "random", "das", "mean", "resample"])
def test_an_eraser_touches_only_the_leaked_positions(fitted, name):
    data, erasers = fitted
    other = examples(1)
    assert torch.equal(outside(erasers[name](other)), outside(other.run.target))


def test_leace_leaves_no_covariance_with_the_passcode_where_it_was_fitted(fitted):
    data, erasers = fitted
    erased = erasers["leace"](data)
    z = one_hot_digits(data.examples)
    for layer in range(L):
        before, after = (kv_features(kv, layer, POSITIONS) for kv in (data.run.target, erased))
        cov = lambda x: ((x - x.mean(0)).T @ (z - z.mean(0)) / (B - 1)).abs().max()
        assert cov(before) > 0.1  # the planted code
        assert cov(after) < 1e-8 * cov(before)


def test_the_das_eraser_sets_the_subspace_to_the_mean_and_keeps_the_rest(fitted):
    data, erasers = fitted
    subspace = RotatedSubspace(len(POSITIONS) * D, 2, seed=0)
    basis = subspace.basis.detach().double()
    erased = site_features(erasers["das"](data), CELL)
    original = site_features(data.run.target, CELL)
    mean = original.mean(0)
    assert torch.allclose(erased @ basis, (mean @ basis).expand(B, -1), atol=1e-6)
    rest = lambda x: x - x @ basis @ basis.T
    assert torch.allclose(rest(erased), rest(original), atol=1e-6)


def test_mean_resample_and_restart_copy_what_they_name(fitted):
    data, erasers = fitted
    mean, resample = erasers["mean"](data), erasers["resample"](data)
    for part in ("keys", "values"):
        at = lambda kv: getattr(kv, part)[:, :, :, POSITIONS]
        assert torch.allclose(at(mean), at(data.run.target).mean(0, keepdim=True).expand(B, -1, -1, -1, -1))
        assert torch.equal(at(resample), at(data.run.source))
    assert erasers["restart"](data) is data.restart
    assert np.isfinite(kv_features(erasers["random"](data), 0, POSITIONS).numpy()).all()


def planted_twins(seed: int, code: torch.Tensor) -> PatchRun:
    """Random caches whose values at POSITIONS carry a passcode through `code`; each source is its target's
    twin (identical but for another passcode)."""
    generator = torch.Generator().manual_seed(seed)
    base = KV(torch.randn(B, L, H, T, D, generator=generator, dtype=torch.float64),
              torch.randn(B, L, H, T, D, generator=generator, dtype=torch.float64))

    def coded(digits: torch.Tensor) -> KV:
        kv = base.clone()
        kv.values[:, :, :, POSITIONS] += torch.einsum("bk,klhpd->blhpd", digits.double(), code)
        return kv

    digits = [torch.randint(0, 10, (B, 5), generator=generator) for _ in range(2)]
    return PatchRun(ids=torch.zeros(B, T + 1, dtype=torch.long), mask=torch.ones(B, T + 1, T + 1, dtype=torch.bool),
                    at=T, queries=[T], answer=torch.zeros(B, 1, 2, dtype=torch.long), target=coded(digits[0]),
                    source=coded(digits[1]), held=torch.ones(B, T, dtype=torch.bool), kinds=["prompt"] * T)


def test_the_learned_replacement_makes_twins_identical_and_keeps_what_the_task_reads():
    """The task reads only keys at the leaked positions; the passcode lives only in values there, so a map that
    removes every twin difference and keeps every answer exists (the mean-ablating projection onto the code's
    span). The learned map removes 90% of the twins' difference on pairs it never saw and keeps 95% of the
    answers there; the mean eraser, the replacement's W = I end, loses them (about chance, 1/10)."""
    code = torch.randn(5, L, H, len(POSITIONS), D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    readout = torch.randn(L * H * len(POSITIONS) * D, 10, generator=torch.Generator().manual_seed(10),
                          dtype=torch.float64)
    keys = lambda kv: torch.cat([kv.keys[:, layer][:, :, POSITIONS].flatten(1) for layer in range(L)], 1)
    logits_of = lambda run, kv: (keys(kv) @ readout)[:, None]

    def sums_of(run: PatchRun) -> PatchRun:
        labels = logits_of(run, run.target).argmax(-1)
        return replace(run, answer=torch.stack([labels, labels], -1))

    fitting, held_out = planted_twins(0, code), planted_twins(1, code)
    replacement = fit_replacement(logits_of, sums_of(fitting), fitting, POSITIONS,
                                  ReplacementConfig(replacement_steps=1000), seed=0)
    with torch.no_grad():
        assert replacement.twin_gap(held_out.target, held_out.source) < 0.1  # from 1 with no edit
        accuracy = lambda kv: (logits_of(held_out, kv).argmax(-1) == sums_of(held_out).answer[..., 0]).double().mean()
        assert accuracy(replacement(held_out.target)) > 0.95
        mean = held_out.target.replaced(KV(held_out.target.keys.mean(0, keepdim=True),
                                           held_out.target.values.mean(0, keepdim=True)), POSITIONS)
        assert accuracy(mean) < 0.3
