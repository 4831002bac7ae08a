"""Probes on planted and noise data: they find what is there, report chance when nothing is, never
split a passcode across train and validation, and the controls (control task, shuffled labels, MDL)
tell reading from memorising."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from leakage.analysis.probe import (ProbeConfig, control_labels, fit_probe, mdl_codelength, probe_preset,
                                    shuffled_labels, split_groups, whitening)
from tests.bounds import Z, at_chance, band, probe_reads_at_chance, standard_error

N, D = 3000, 5
FAST = ProbeConfig(n_bootstrap=400)
# What "a probe that learns" means here, a specification and not a bound from a run: fitted on 2,100 rows it
# reaches within 10 points of the Bayes-optimal accuracy. Above the Bayes band is never allowed (it would mean
# labels reached the features or the scoring rows reached the fit).
ALLOWANCE = 0.10


def bayes_rate(noise: float) -> float:
    """Bayes-optimal accuracy on one digit of `planted(noise=...)`: the true class's feature (mean 1) beats
    the nine others (mean 0), all with Gaussian noise of std `noise`: integral of phi(z) Phi(z + 1/noise)^9."""
    integrand = lambda z: stats.norm.pdf(z) * stats.norm.cdf(z + 1 / noise) ** 9
    return integrate.quad(integrand, -np.inf, np.inf)[0]


def learns(accuracy: float, bayes: float, n: int) -> bool:
    """Within ALLOWANCE below the binomial band of the Bayes rate on `n` outcomes, never above it."""
    low, high = band(bayes, n)
    return low - ALLOWANCE <= accuracy <= high


def units(result, groups) -> int:
    """Independent outcomes behind a probe's accuracy: distinct held-out passcodes x digits."""
    return len(np.unique(np.asarray(groups)[result.val_rows])) * len(result.per_digit)


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
    found = fit_probe(planted(labels), labels, groups, config=replace(FAST, kind=kind))
    assert learns(found.accuracy, bayes_rate(0.2), units(found, groups)) and len(found.per_digit) == D
    noise = fit_probe(torch.randn(N, 64, generator=torch.Generator().manual_seed(1)), labels, groups,
                      config=replace(FAST, kind=kind))
    assert probe_reads_at_chance(noise, groups, D)[0] and noise.chance == 0.1


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
    assert learns(task.accuracy, bayes_rate(0.2), units(task, groups))
    assert at_chance(control.accuracy, units(control, groups)) and at_chance(shuffled.accuracy, units(shuffled, groups))
    assert (control_labels(groups, D, 3)[0] == control_labels(groups, D, 3)[1]).all()  # a function of the group


@pytest.mark.parametrize("kind", ["linear"])  # the MLP on 2,100 rows: see the whitening test below
def test_uninformative_features_cost_the_probe_little(kind):
    labels, groups = passcodes()
    alone = fit_probe(planted(labels, noise=1.0), labels, groups, config=replace(FAST, kind=kind))  # a weak signal ...
    diluted = fit_probe(planted(labels, noise=1.0, extra=50), labels, groups, config=replace(FAST, kind=kind))  # ... + noise
    # a weak signal (Bayes 34.1%): read above chance, never above the Bayes band
    n = units(alone, groups)
    assert not at_chance(alone.accuracy, n) and alone.accuracy > 0.1 and learns(alone.accuracy, bayes_rate(1.0), n)
    # 50 pure-noise columns cost no more than the noise of comparing two accuracies on the same rows
    assert diluted.accuracy >= alone.accuracy - Z * np.sqrt(2) * standard_error(alone.accuracy, n)


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
    # the leak's Bayes rate is that of the one-hot under noise 0.3 (94.2%); standardised, it drowns to chance
    n = units(whitened, groups)
    assert learns(whitened.accuracy, bayes_rate(0.3), n) and at_chance(standardised.accuracy, n)
    # more features (a second, uninformative copy of the text directions) cannot hide it
    more = fit_probe(torch.cat([x, kv_like(labels, seed=1, scale=0.0)], 1), labels, groups,
                     config=replace(FAST, kind=kind))
    assert more.accuracy >= whitened.accuracy - Z * np.sqrt(2) * standard_error(whitened.accuracy, n)


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
    assert (constant.predictions == constant.predictions[0]).all()  # one guess per digit
    assert at_chance(constant.accuracy, units(constant, groups))


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


def test_whitening_with_more_features_than_rows_takes_the_same_components_from_the_gram_matrix(monkeypatch):
    import leakage.analysis.probe as probe

    monkeypatch.setattr(probe, "COVARIANCE_MAX_FEATURES", 100)  # the Gram path at a size the test can check
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(30, 8, generator=g) @ torch.randn(8, 200, generator=g)).double()  # rank 8, F = 200 > N = 30
    mean, projection = whitening(x, 10 * torch.finfo(torch.float32).eps)  # the Gram path
    assert projection.shape == (200, 8)
    z = (x.float() - mean) @ projection
    assert torch.allclose(torch.cov(z.T), torch.eye(8), atol=1e-3)
    centred = x - x.mean(0)  # the covariance path's components, computed here directly
    variance, vectors = torch.linalg.eigh(centred.T @ centred / 29)
    expected = (vectors[:, -8:] / variance[-8:].sqrt()).float()
    assert torch.allclose(projection.abs(), expected.abs(), atol=1e-4)  # the same components, up to sign


def test_a_repeated_decomposition_is_reused_and_equals_a_fresh_one(monkeypatch):
    """The probes of one run that fit the same rows share one eigendecomposition (the leak spectrum, a task and
    its controls): the same content gives the same tensors, any change in the rows a new decomposition; a
    cache keyed by shape alone (the broken variant) would hand the changed rows the old one."""
    from collections import OrderedDict

    import leakage.analysis.probe as probe

    monkeypatch.setattr(probe, "_COMPONENTS", OrderedDict())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 6, generator=g) @ torch.randn(6, 30, generator=g)
    cutoff = 10 * torch.finfo(torch.float32).eps
    first = whitening(x, cutoff)
    assert probe.principal_components(x.clone()) is probe.principal_components(x)  # by content, not identity
    changed = x.clone()
    changed[0, 0] += 1e-3
    assert not torch.equal(whitening(changed, cutoff)[0], first[0])
    monkeypatch.setattr(probe, "_COMPONENTS", OrderedDict())  # recomputed from nothing: the same numbers
    assert all(torch.equal(a, b) for a, b in zip(whitening(x, cutoff), first))
    for i in range(probe.COMPONENTS_KEPT + 1):  # at most COMPONENTS_KEPT kept, the oldest dropped first
        probe.principal_components(x + i)
    assert len(probe._COMPONENTS) == probe.COMPONENTS_KEPT


@pytest.mark.parametrize("preset", ["mlp-bf16", "mlp-fast"])
def test_a_bfloat16_probe_reads_the_low_variance_signal_the_float32_probe_reads(preset):
    """Whitening runs in float32 before the network, so products in bfloat16 see every direction at unit scale:
    the low-variance leak of `kv_like` is read to the same Bayes allowance, and noise stays at chance (also by
    `mlp-fast`, which trains the same network in larger batches with less patience)."""
    labels, groups = passcodes()
    config = replace(probe_preset(preset), n_bootstrap=FAST.n_bootstrap)
    assert config.matmul_dtype == "bfloat16"
    found = fit_probe(kv_like(labels), labels, groups, config=config)
    assert learns(found.accuracy, bayes_rate(0.3), units(found, groups))
    noise = fit_probe(torch.randn(N, 64, generator=torch.Generator().manual_seed(1)), labels, groups, config=config)
    assert probe_reads_at_chance(noise, groups, D)[0]
    with pytest.raises(ValueError, match="matmul_dtype"):
        ProbeConfig(matmul_dtype="float8")
