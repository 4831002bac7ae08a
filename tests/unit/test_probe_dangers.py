"""The probe's dangerous cases, each shown failing on the broken variant it exists to catch.

(a) Scoring rows never reach the fitted probe: arbitrary changes to the validation rows leave whitening,
    standardisation, early stopping and weights bit-identical. Broken variant: whitening fitted on every row.
(b) Label-free features whose variances fall to 1e-12, the regime where whitening amplifies rounding-level
    directions, read at chance on several probe seeds. Broken variant: validation rows drawn from the
    training rows. (The same on the restart KV of a trained model: tests/integration/test_leak_nulls.py.)
Bounds are binomial standard errors at the test's size (tests/bounds.py), not values seen in a run.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from leakage.analysis import probe
from leakage.analysis.probe import ProbeConfig, fit_probe
from tests.bounds import at_chance_on_seeds, probe_reads_at_chance

N, D = 2000, 5
CONFIG = ProbeConfig(n_bootstrap=200, max_epochs=40)


def passcodes(n=N, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 10 ** D, size=n // 2).repeat(2)  # two traces per passcode: groups matter
    return torch.tensor([[int(c) for c in f"{code:05d}"] for code in codes]), torch.as_tensor(codes)


def weak_signal(labels, seed=0):
    """One-hot digits under heavy noise (early stopping has something to decide) plus pure-noise columns."""
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(labels, 10).float().flatten(1)
    return torch.cat([onehot + 1.5 * torch.randn(onehot.shape, generator=g), torch.randn(len(labels), 20, generator=g)], 1)


def fitted(fit, features, labels, groups, config):
    result = fit(features, labels, groups, config, 0)
    return result.val_rows.tolist(), result.epochs, {k: v.clone() for k, v in result.probe.state_dict().items()}


def blind_to_scoring_rows(fit, config) -> bool:
    """Whether replacing the validation rows' features and labels by anything leaves the fitted probe (its
    split, its early-stopping epoch, its whitening or standardisation, its weights) bit-identical."""
    labels, groups = passcodes()
    x = weak_signal(labels)
    rows, epochs, state = fitted(fit, x, labels, groups, config)
    scrambled, relabelled = x.clone(), labels.clone()
    scrambled[rows] = 1000 * torch.randn(len(rows), x.shape[1], generator=torch.Generator().manual_seed(9))
    relabelled[rows] = (labels[rows] + 3) % 10
    rows2, epochs2, state2 = fitted(fit, scrambled, relabelled, groups, config)
    return rows == rows2 and epochs == epochs2 and all(torch.equal(state[k], state2[k]) for k in state)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("whiten", [True, False])
def test_scoring_rows_never_reach_the_fitted_probe(kind, whiten):
    assert blind_to_scoring_rows(fit_probe, replace(CONFIG, kind=kind, whiten=whiten))


def test_the_check_catches_whitening_fitted_on_every_row(monkeypatch):
    every_row = {}
    original = probe.whitening

    def leaky_fit(features, labels, groups, config, seed):
        every_row["x"] = torch.as_tensor(features).float()  # the bug: the validation rows shape the whitening
        return fit_probe(features, labels, groups, config, seed)

    monkeypatch.setattr(probe, "whitening", lambda x, resolution: original(every_row["x"], resolution))
    assert not blind_to_scoring_rows(leaky_fit, replace(CONFIG, kind="linear"))


def spectrum_features(n=N, dims=48, seed=0):
    """Gaussian features in a random basis whose standard deviations fall log-evenly from 1 to 1e-12."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dims, dims, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, -12, dims, dtype=torch.float64)
    return ((torch.randn(n, dims, generator=g, dtype=torch.float64) * scales) @ basis.T).float()


def null_reads(fit, config) -> list[tuple[bool, bool]]:
    """For probe seeds 0..2 on label-free features: (within 4 standard errors of chance, interval holds chance)."""
    labels, groups = passcodes()
    x = spectrum_features()
    reads = []
    for seed in range(3):
        result = fit(x, labels, groups, config, seed)
        reads.append(probe_reads_at_chance(result, groups, D))
    return reads


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_label_free_features_with_a_deep_spectrum_read_at_chance(kind):
    assert at_chance_on_seeds(null_reads(fit_probe, replace(CONFIG, kind=kind)))


def test_the_check_catches_validation_rows_the_probe_trained_on(monkeypatch):
    original = probe.split_groups

    def overlapping(groups, fraction, seed):  # the bug: "held-out" rows (validation, early stopping) taken
        rest, held = original(groups, fraction, seed)  # from the rows the probe trains on
        return np.arange(len(groups)), rest[:len(held)]

    monkeypatch.setattr(probe, "split_groups", overlapping)
    assert not at_chance_on_seeds(null_reads(fit_probe, replace(CONFIG, kind="mlp", dropout=0.0, max_epochs=60, patience=60)))
