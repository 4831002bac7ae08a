"""Probes on planted and noise data: they find what is there, report chance when nothing is, never
split a passcode across train and validation, and the controls (control task, shuffled labels, MDL)
tell reading from memorising."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from leakage.analysis.probe import (ProbeConfig, control_labels, fit_probe, mdl_codelength, shuffled_labels,
                           split_groups, whitening)

N, D = 3000, 5
FAST = ProbeConfig(n_bootstrap=400)


def passcodes(n=N, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 10 ** D, size=n // 2).repeat(2)  # two traces per passcode: groups matter
    labels = torch.tensor([[int(c) for c in f"{code:05d}"] for code in codes])
    return labels, torch.as_tensor(codes)


def planted(labels, noise=0.2, extra=0, seed=0):
    """Features holding each digit one-hot, plus Gaussian noise, plus `extra` pure-noise columns."""
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(labels, 10).float().flatten(1)  # (N, 50)
    x = onehot + noise * torch.randn(onehot.shape, generator=g)
    return torch.cat([x, torch.randn(len(x), extra, generator=g)], 1) if extra else x


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_planted_labels_are_read_and_noise_is_chance(kind):
    labels, groups = passcodes()
    found = fit_probe(planted(labels), labels, groups, config=replace(FAST, kind=kind))  # Bayes-optimal: 99.8%
    assert found.accuracy > 0.95 and found.ci95[0] > 0.93 and len(found.per_digit) == D
    noise = fit_probe(torch.randn(N, 64, generator=torch.Generator().manual_seed(1)), labels, groups,
                      config=replace(FAST, kind=kind))
    assert noise.ci95[0] <= 0.1 <= noise.ci95[1] and noise.chance == 0.1


def test_no_passcode_on_both_sides_of_any_split():
    labels, groups = passcodes()
    result = fit_probe(planted(labels), labels, groups, config=replace(FAST, kind="linear"))
    val = set(groups[result.val_rows].tolist())
    rest = np.setdiff1d(np.arange(N), result.val_rows)
    assert not val & set(groups[rest].tolist())
    assert result.n_train + result.n_early_stop + result.n_val == N
    fit, held = split_groups(groups, 0.3, seed=4)
    assert not set(groups[fit].tolist()) & set(groups[held].tolist())
    with pytest.raises(ValueError, match="groups cannot be split"):
        split_groups(torch.zeros(10), 0.5, 0)


def test_control_task_and_shuffled_labels_are_at_chance_where_the_task_is_not():
    labels, groups = passcodes()
    x = planted(labels)
    task = fit_probe(x, labels, groups, config=replace(FAST, kind="mlp"))
    control = fit_probe(x, control_labels(groups, D, seed=3), groups, config=replace(FAST, kind="mlp"))
    shuffled = fit_probe(x, shuffled_labels(labels, groups, seed=3), groups, config=replace(FAST, kind="mlp"))
    # ~600 validation traces x 5 digits: chance +- 0.02 is more than 3 standard errors
    assert abs(control.accuracy - 0.1) < 0.02 and task.accuracy - control.accuracy > 0.8
    assert abs(shuffled.accuracy - 0.1) < 0.02
    assert (control_labels(groups, D, 3)[0] == control_labels(groups, D, 3)[1]).all()  # a function of the group


@pytest.mark.parametrize("kind", ["linear"])  # the MLP on 2,100 rows: see the whitening test below
def test_uninformative_features_cost_the_probe_little(kind):
    labels, groups = passcodes()
    alone = fit_probe(planted(labels, noise=1.0), labels, groups, config=replace(FAST, kind=kind))  # a weak signal ...
    diluted = fit_probe(planted(labels, noise=1.0, extra=50), labels, groups, config=replace(FAST, kind=kind))  # ... + noise
    assert 0.2 < alone.accuracy < 0.95  # the Bayes-optimal accuracy of this signal is about 0.3
    assert diluted.ci95[1] >= alone.accuracy - 0.03


def kv_like(labels, seed=0, scale=1e-3):
    """Features shaped like memento KV: 8 high-variance directions (the text) mixed into 256 redundant
    features, plus the digits one-hot in 50 directions of variance `scale`**2 (the leak)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(8 + 50, 256, generator=g)
    text = 30 * torch.randn(len(labels), 8, generator=g)
    leak = scale * (torch.nn.functional.one_hot(labels, 10).float().flatten(1) + 0.3 * torch.randn(len(labels), 50,
                                                                                                  generator=g))
    return torch.cat([text, leak], 1) @ mixing


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_whitening_finds_a_low_variance_signal_that_standardisation_drowns(kind):
    labels, groups = passcodes()
    x = kv_like(labels)
    whitened = fit_probe(x, labels, groups, config=replace(FAST, kind=kind))
    standardised = fit_probe(x, labels, groups, config=ProbeConfig(kind=kind, n_bootstrap=400, whiten=False))
    # Bayes-optimal on the leak: about 0.97; 2,100 training rows for 58 directions cost some of it
    assert whitened.accuracy > 0.8 and standardised.accuracy < whitened.accuracy - 0.3
    # more features (a second, uninformative copy of the text directions) cannot hide it
    more = torch.cat([x, kv_like(labels, seed=1, scale=0.0)], 1)
    assert fit_probe(more, labels, groups, config=replace(FAST, kind=kind)).ci95[1] >= whitened.accuracy - 0.03


def test_whitening_gives_identity_covariance_and_drops_rounding_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 40, generator=g)  # rank 6 in 40 features
    mean, projection = whitening(x, 10 * torch.finfo(torch.float32).eps)
    z = (x - mean) @ projection
    assert projection.shape == (40, 6)
    assert torch.allclose(torch.cov(z.T), torch.eye(6), atol=1e-3)
    assert whitening(torch.ones(10, 3), 1e-6)[1].shape == (3, 0)  # constant features: nothing to project on
    labels, groups = passcodes()
    constant = fit_probe(torch.ones(N, 8), labels, groups, config=replace(FAST, kind="mlp"))
    assert (constant.predictions == constant.predictions[0]).all() and constant.accuracy < 0.15  # one guess per digit


def test_mdl_separates_extractable_information_from_noise():
    labels, groups = passcodes()
    easy = mdl_codelength(planted(labels), labels, groups, config=replace(FAST, kind="linear"))
    noise = mdl_codelength(torch.randn(N, 50, generator=torch.Generator().manual_seed(2)), labels, groups,
                           config=replace(FAST, kind="linear"))
    assert easy.compression > 3 and 0.8 < noise.compression <= 1.0
    assert easy.uniform_bits == pytest.approx(noise.uniform_bits)


def test_bad_inputs_are_named():
    labels, groups = passcodes(100)
    with pytest.raises(ValueError, match="digits 0..9"):
        fit_probe(torch.randn(100, 4), labels + 10, groups)
    with pytest.raises(ValueError, match="must match"):
        fit_probe(torch.randn(99, 4), labels, groups)
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(torch.full((100, 4), float("nan")), labels, groups)
    with pytest.raises(ValueError, match="probe kind"):
        ProbeConfig(kind="forest")
