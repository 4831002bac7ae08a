"""Probes that read digit labels from features, with the controls that make a probe's accuracy mean something.

    result = fit_probe(features, labels, groups, ProbeConfig(kind="mlp"), seed=0)
    result.accuracy, result.ci95, result.chance, result.per_digit

* `features` (N, F) float, `labels` (N, D) int digits 0-9 (the passcode), `groups` (N,) int: rows that
  share a group (a passcode) are never split between train and validation (label-unique splits).
* The split: `val_fraction` of the groups for validation; of the rest, `early_stop_fraction` of the
  groups decide early stopping. Validation is touched once, at the end.
* Probes: the paper's MLP (hidden 512 and 256, a 128 bottleneck, one 10-way head per digit) or a
  linear probe (one 10-way softmax per digit), AdamW, early stopping on the held-out part of train.
* Features are whitened first (`whiten`, the default): centred, projected on their principal
  components (fit rows only) and each component scaled to unit variance, dropping components whose
  standard deviation is below `resolution_ulps` units of float32's resolution relative to the largest
  (rounding noise). Keys and values are highly redundant (22,000 memento KV vectors of
  1,536 numbers span ~6 effective dimensions), and the information a probe looks for may sit in a
  direction of tiny variance: per-feature standardisation (`whiten=False`) leaves a handful of
  high-variance directions (the memento text) to drown it, and blows up near-constant features'
  rounding noise to unit variance besides. Whitening gives every direction the features actually vary
  in the same scale, so adding features (more layers) cannot hide a signal the fewer had.
* Accuracy is the mean digit accuracy on validation; its 95% interval is a percentile bootstrap over
  validation traces, resampled by group: the digits of one trace, and traces sharing a passcode,
  move together (they are not independent draws).
* `control_labels` (Hewitt & Liang): the same probe on labels that are a fixed random function of the
  group; `selectivity` = task accuracy - control accuracy. A probe that memorises does well on both.
* `mdl_codelength` (Voita & Titov): the online codelength of the labels given the features, in bits,
  beside the uniform code's; compression = uniform / online. Information that is easy to extract
  compresses well; a memorising probe does not.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from leakage.seeding import seeded
from leakage.stats import cluster_bootstrap_mean

N_CLASSES = 10  # digits
MIN_VALIDATION_GROUPS = 4  # a bootstrap interval over fewer held-out passcodes is no interval
FLOAT32_EPS = torch.finfo(torch.float32).eps
COVARIANCE_MAX_FEATURES = 16_384
"""Whitening eigendecomposes the F x F covariance up to this many features (float64: 2 GiB), and the rows'
N x N Gram matrix beyond it when the rows are fewer."""


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is trained.

    kind: mlp (the paper's) or linear.
    hidden: MLP hidden sizes (the paper: 512, 256, then a 128 bottleneck).
    whiten: whiten the features (module docstring); False: standardise each feature.
    resolution_ulps: whitening keeps the components whose standard deviation exceeds this many units
        of float32's resolution (`torch.finfo(torch.float32).eps`) times the largest one's. Features
        stored at a lower precision (bf16) keep the same cutoff: their rounding noise is independent
        of the labels, so the directions it dominates can hide a signal but never fake one.
    learning_rate: AdamW step size.
    weight_decay: AdamW's decoupled weight decay. (An L2 penalty coupled to Adam's normalised step
        drives every weight to zero when the data's gradient is weak: exactly the weak-leak case.)
    dropout: dropout after each hidden layer of the MLP.
    batch_size: rows per step.
    max_epochs: passes over the training rows at most.
    patience: epochs without improvement of the early-stopping loss before stopping.
    val_fraction: share of groups held out for validation.
    early_stop_fraction: share of the remaining groups that decide early stopping.
    n_bootstrap: bootstrap resamples of validation rows for the 95% interval.
    matmul_dtype: dtype of the network's matrix products: float32, or bfloat16 (autocast: the inputs are
        whitened in float32 first, so every direction reaches the network at unit scale; weights, optimizer
        and loss stay float32). On this project's 2-core AMX CPU a sweep-sized fit took 18% less time
        (`experiments/bench_probe_fit.py`): the products are under half of a fit's time.
    """

    kind: str = "mlp"
    hidden: tuple[int, ...] = (512, 256, 128)
    whiten: bool = True
    resolution_ulps: float = 10.0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.1
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 6
    val_fraction: float = 0.2
    early_stop_fraction: float = 0.1
    n_bootstrap: int = 1000
    matmul_dtype: str = "float32"

    @property
    def relative_std_cutoff(self) -> float:
        """Whitening drops the components whose standard deviation is below this times the largest's."""
        return self.resolution_ulps * FLOAT32_EPS

    def __post_init__(self):
        if self.kind not in ("mlp", "linear"):
            raise ValueError(f"probe kind must be 'mlp' or 'linear', got {self.kind!r}")
        if not 0 < self.val_fraction < 1 or not 0 < self.early_stop_fraction < 1:
            raise ValueError("val_fraction and early_stop_fraction must lie strictly between 0 and 1")
        if self.matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"matmul_dtype must be float32 or bfloat16, got {self.matmul_dtype!r}")


PROBE_PRESETS: dict[str, ProbeConfig] = {
    "mlp": ProbeConfig(),  # the paper's probe
    "mlp-bf16": ProbeConfig(matmul_dtype="bfloat16"),  # the paper's probe, its matrix products in bfloat16
    # the paper's network, trained in half the time: batches of 1,024 (2e-3), patience 3, bfloat16 products
    # (the digits sweep on 2 cores: 878 s against 1,075 s; docs/results.md compares its 63 rows with the paper's)
    "mlp-fast": ProbeConfig(batch_size=1024, learning_rate=2e-3, patience=3, matmul_dtype="bfloat16"),
    "linear": ProbeConfig(kind="linear"),
    "smoke": ProbeConfig(kind="linear", whiten=False, max_epochs=5),  # seconds: tests and smoke runs (no F x F eigh)
}


def probe_preset(name: str) -> ProbeConfig:
    """A probe preset by name; the error lists the presets that exist."""
    try:
        return PROBE_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown probe preset {name!r}; choose one of {sorted(PROBE_PRESETS)}") from None


@dataclass
class ProbeResult:
    """A fitted probe's validation scores.

    accuracy: mean digit accuracy on validation; ci95: its bootstrap interval over validation rows;
    chance: 1/10; per_digit: accuracy of each digit position; loss: validation cross-entropy (nats
    per digit); epochs: epochs trained (best epoch by early stopping); n_*: rows in each part.
    """

    kind: str
    accuracy: float
    ci95: tuple[float, float]
    chance: float
    per_digit: list[float]
    loss: float
    epochs: int
    n_train: int
    n_early_stop: int
    n_val: int
    seed: int
    predictions: np.ndarray = field(repr=False, default=None)  # (n_val, D) predicted digits
    val_rows: np.ndarray = field(repr=False, default=None)  # indices of the validation rows
    probe: nn.Module = field(repr=False, default=None)  # the fitted probe: whitening buffers and weights

    def as_dict(self) -> dict:
        return {"kind": self.kind, "accuracy": self.accuracy, "ci95_low": self.ci95[0], "ci95_high": self.ci95[1],
                "chance": self.chance, "per_digit": self.per_digit, "loss": self.loss, "epochs": self.epochs,
                "n_train": self.n_train, "n_early_stop": self.n_early_stop, "n_val": self.n_val, "seed": self.seed}


def split_groups(groups: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (rest, held out): `fraction` of the distinct groups, drawn with `seed`, are held out."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_out = max(1, int(round(fraction * len(unique))))
    if n_out >= len(unique):
        raise ValueError(f"{len(unique)} groups cannot be split {1 - fraction:.0%}/{fraction:.0%}: "
                         "need more distinct groups (passcodes)")
    held = np.isin(groups, rng.choice(unique, size=n_out, replace=False))
    return np.flatnonzero(~held), np.flatnonzero(held)


def whitening(x: torch.Tensor, resolution: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (F,), projection (F, K)) such that (x - mean) @ projection has identity covariance on `x`
    (N, F): its principal components with standard deviation above `resolution` times the largest one
    (K = 0 when `x` is constant: a probe on nothing, which can only learn the label frequencies).
    Computed in float64 from the eigendecomposition of the covariance (F x F), or, when that matrix would
    not fit (F > `COVARIANCE_MAX_FEATURES`: a real-size model's keys and values) and the rows are fewer
    than the features, of the rows' Gram matrix (N x N), which has the same nonzero eigenvalues, each
    component being the centred rows mapped through its Gram eigenvector. float64 resolves the
    eigenvalues far below `resolution`**2 of the largest. The decomposition of the same rows is reused
    (`principal_components`)."""
    mean, std, vectors = principal_components(x)
    keep = std > max(resolution * float(std.max()), torch.finfo(torch.float64).tiny)
    return mean.float(), (vectors[:, keep] / std[keep]).float()


_COMPONENTS: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
COMPONENTS_KEPT, COMPONENTS_KEPT_BYTES = 64, 2 ** 30
"""Decompositions `principal_components` keeps (at most, and at most this many bytes besides the newest), by the
content of their rows: the probes of one run that fit the same rows (a task, its control task and shuffled
labels, the leak spectrum's cutoffs) decompose them once."""


def forget_components() -> None:
    """Drop the decompositions `principal_components` keeps (a benchmark's cold start)."""
    _COMPONENTS.clear()


def principal_components(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (F,), std (C,), vectors (F, C)) of the rows `x` (N, F), float64: the principal components' standard
    deviations and directions (`whitening`). The last `COMPONENTS_KEPT` results (within `COMPONENTS_KEPT_BYTES`)
    are kept by a digest of `x`'s bytes, shape and dtype: a repeated call with the same rows returns the same
    tensors without recomputing."""
    x = x.detach().cpu().contiguous()
    digest = hashlib.blake2b(x.view(torch.uint8).reshape(-1).numpy().data if x.numel() else b"", digest_size=32)
    digest.update(repr((tuple(x.shape), x.dtype)).encode())
    key = digest.digest()
    if key in _COMPONENTS:
        _COMPONENTS.move_to_end(key)
        return _COMPONENTS[key]
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    n = max(1, len(x) - 1)
    if x.shape[1] <= max(len(x), COVARIANCE_MAX_FEATURES):
        variance, vectors = torch.linalg.eigh(centred.T @ centred / n)
    else:  # centred = U S V^T: the Gram matrix's eigenvectors U give V = centred^T U / S
        variance, rows = torch.linalg.eigh(centred @ centred.T / n)
        vectors = centred.T @ rows / (variance.clamp_min(0) * n).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    _COMPONENTS[key] = mean, variance.clamp_min(0).sqrt(), vectors
    size = lambda: sum(v.element_size() * v.numel() for entry in _COMPONENTS.values() for v in entry)
    while len(_COMPONENTS) > 1 and (len(_COMPONENTS) > COMPONENTS_KEPT or size() > COMPONENTS_KEPT_BYTES):
        _COMPONENTS.popitem(last=False)
    return _COMPONENTS[key]


def standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (F,), scale (F,)): per-feature standardisation."""
    return x.mean(0), 1 / x.std(0).clamp_min(1e-6)


class _Probe(nn.Module):
    """Whiten (a projection (F, K)) or standardise (a scale (F,)), then a linear map or an MLP, to D heads
    of 10 logits: (N, F) -> (N, D, 10)."""

    def __init__(self, n_digits: int, config: ProbeConfig, mean: torch.Tensor, projection: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("projection", projection)
        layers: list[nn.Module] = []
        width = projection.shape[-1]
        if config.kind == "mlp" and width > 0:
            for size in config.hidden:
                layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(config.dropout)]
                width = size
        layers.append(nn.Linear(width, n_digits * N_CLASSES) if width > 0 else _Bias(n_digits * N_CLASSES))
        self.net = nn.Sequential(*layers)
        self.n_digits = n_digits
        self.bf16 = config.matmul_dtype == "bfloat16"

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) features -> (N, K) whitened (or standardised) inputs of the net."""
        centred = x - self.mean
        return centred @ self.projection if self.projection.dim() == 2 else centred * self.projection

    def logits(self, projected: torch.Tensor) -> torch.Tensor:
        with torch.autocast(projected.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(projected)
        return out.float().view(len(projected), self.n_digits, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.project(x))


class _Bias(nn.Module):
    """The probe on zero features: logits that are the same for every row (the label frequencies)."""

    def __init__(self, n_out: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)


def _check(features: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple:
    """Validated (features float32, labels (N, D) long, groups (N,)), on the CPU (probes train there, wherever the
    model that made the features runs)."""
    features = torch.as_tensor(features).detach().float().cpu()
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    groups = torch.as_tensor(groups).cpu()
    if features.dim() != 2:
        raise ValueError(f"features must be (N, F), got shape {tuple(features.shape)}")
    if labels.dim() == 1:
        labels = labels[:, None]
    if labels.dim() != 2 or len(labels) != len(features) or groups.shape != (len(features),):
        raise ValueError(f"labels (N, D) and groups (N,) must match features' N={len(features)}: got "
                         f"{tuple(labels.shape)} and {tuple(groups.shape)}")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise ValueError(f"labels must be digits 0..9, got values in [{int(labels.min())}, {int(labels.max())}]")
    if not torch.isfinite(features).all():
        raise ValueError("features hold NaN or inf")
    return features, labels, groups


def _train(features, labels, fit_rows, stop_rows, config: ProbeConfig, seed: int) -> tuple[_Probe, int]:
    """Train on `fit_rows`, keep the state with the lowest loss on `stop_rows`; returns (probe, best epoch).
    Initialisation and dropout draw from torch's generator seeded with `seed` (`seeded`: the caller's
    random stream is left as it was)."""
    with seeded(seed):
        return _fit(features, labels, fit_rows, stop_rows, config, seed)


def _fit(features, labels, fit_rows, stop_rows, config: ProbeConfig, seed: int) -> tuple[_Probe, int]:
    x_fit = features[fit_rows]
    mean, projection = (whitening(x_fit, config.relative_std_cutoff) if config.whiten
                        else standardisation(x_fit))
    probe = _Probe(labels.shape[1], config, mean, projection)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state, best_epoch, waited = math.inf, None, 0, 0
    z_fit, y_fit = probe.project(x_fit), labels[fit_rows]  # projected once: the net trains on (n, K)
    z_stop, y_stop = probe.project(features[stop_rows]), labels[stop_rows]
    for epoch in range(1, config.max_epochs + 1):
        probe.train()
        for batch in torch.randperm(len(z_fit), generator=generator).split(config.batch_size):
            logits = probe.logits(z_fit[batch])
            loss = nn.functional.cross_entropy(logits.reshape(-1, N_CLASSES), y_fit[batch].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        probe.eval()
        loss = _loss(probe.logits, z_stop, y_stop)
        if loss < best_loss - 1e-4:
            best_loss, best_epoch, waited = loss, epoch, 0
            best_state = {k: v.clone() for k, v in probe.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                break
    probe.load_state_dict(best_state)
    return probe.eval(), best_epoch


@torch.no_grad()
def _loss(logits_of, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> float:
    """Cross-entropy (nats) of `y` given `x`, with `logits_of` an eval-mode probe (features) or its
    `logits` (projected inputs)."""
    logits = torch.cat([logits_of(chunk) for chunk in x.split(4096)])
    return float(nn.functional.cross_entropy(logits.reshape(-1, N_CLASSES), y.reshape(-1), reduction=reduction))


def training_subset(rest: np.ndarray, groups, budget: int, seed: int) -> np.ndarray:
    """`budget` rows of the training part `rest`, taken group by group in a seeded random order of groups (a
    smaller budget's rows are a subset of a larger one's); raises when the part holds fewer rows."""
    if budget > len(rest):
        raise ValueError(f"a probe budget of {budget} training traces needs more: the training part holds {len(rest)}")
    groups = np.asarray(groups)[rest]
    unique = np.unique(groups)
    order = np.random.default_rng([seed, 2]).permutation(len(unique))
    rank = np.empty(len(unique), dtype=int)
    rank[order] = np.arange(len(unique))
    by_rank = np.argsort(rank[np.searchsorted(unique, groups)], kind="stable")
    return np.sort(rest[by_rank[:budget]])


def fit_probe(features, labels, groups, config: ProbeConfig = ProbeConfig(), seed: int = 0,
              budget: int | None = None) -> ProbeResult:
    """Train a probe (`config`: its kind and training) on a label-unique split and score it on validation
    (module docstring). `budget`: train (and early-stop) on only this many traces of the training part,
    the validation part unchanged, for a learning curve."""
    features, labels, groups = _check(features, labels, groups)
    rest, val_rows = split_groups(groups, config.val_fraction, seed)
    if budget is not None:
        rest = training_subset(rest, groups, budget, seed)
    held_out = len(np.unique(np.asarray(groups[val_rows])))
    if held_out < MIN_VALIDATION_GROUPS:
        raise ValueError(f"{held_out} validation passcodes ({len(features)} rows, {len(np.unique(np.asarray(groups)))} "
                         f"passcodes, val_fraction {config.val_fraction}): an interval needs at least "
                         f"{MIN_VALIDATION_GROUPS}; use more traces")
    fit_part, stop_part = split_groups(groups[rest], config.early_stop_fraction, seed + 1)
    fit_rows, stop_rows = rest[fit_part], rest[stop_part]
    probe, epochs = _train(features, labels, fit_rows, stop_rows, config, seed)
    with torch.no_grad():
        logits = torch.cat([probe(chunk) for chunk in features[val_rows].split(4096)])
    predictions = logits.argmax(-1).numpy()
    correct = predictions == labels[val_rows].numpy()  # (n_val, D)
    ci95 = cluster_bootstrap_mean(correct, np.asarray(groups[val_rows]), config.n_bootstrap, seed)
    return ProbeResult(kind=config.kind, accuracy=float(correct.mean()), ci95=ci95,
                       chance=1 / N_CLASSES, per_digit=correct.mean(0).tolist(),
                       loss=float(nn.functional.cross_entropy(logits.reshape(-1, N_CLASSES),
                                                              labels[val_rows].reshape(-1))),
                       epochs=epochs, n_train=len(fit_rows), n_early_stop=len(stop_rows), n_val=len(val_rows),
                       seed=seed, predictions=predictions, val_rows=val_rows, probe=probe)


def control_labels(groups, n_digits: int, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang's control task: each group gets fixed random digits, (N, n_digits). The probe can
    only learn them by memorising groups, so on validation groups (never seen) it is at chance."""
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    table = np.random.default_rng(seed).integers(0, N_CLASSES, size=(len(unique), n_digits))
    return torch.as_tensor(table[inverse], dtype=torch.long)


def shuffled_labels(labels, groups, seed: int = 0) -> torch.Tensor:
    """Labels permuted across groups (a group keeps one label set, now another group's): no relation to
    the features remains, the groups' structure does."""
    labels = torch.as_tensor(labels)
    groups = np.asarray(groups)
    unique, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    return labels[first][order][inverse]


@dataclass
class MDLResult:
    """Online codelength (bits) of the training labels given the features, and the uniform code's."""

    online_bits: float
    uniform_bits: float
    portions: list[float]
    block_bits: list[float]
    rows: int = 0  # label sets (passcodes) transmitted

    @property
    def compression(self) -> float:
        return self.uniform_bits / self.online_bits

    @property
    def bits_per_passcode(self) -> float:
        """Online code length of one row's labels (a passcode: D digits), in bits."""
        return self.online_bits / self.rows

    @property
    def bits_leaked(self) -> float:
        """Uniform minus online bits per passcode: what the features save the code, a budget-free leak measure
        (log2 10 per digit at most; about 0 when the features carry nothing)."""
        return (self.uniform_bits - self.online_bits) / self.rows

    def as_dict(self) -> dict:
        return {"online_bits": self.online_bits, "uniform_bits": self.uniform_bits, "compression": self.compression,
                "portions": self.portions, "block_bits": self.block_bits, "rows": self.rows,
                "bits_per_passcode": self.bits_per_passcode, "bits_leaked": self.bits_leaked}


MDL_PORTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
"""Voita & Titov's timestamps: the share of the (shuffled) training rows transmitted after each block."""


def mdl_codelength(features, labels, groups, config: ProbeConfig = ProbeConfig(), seed: int = 0,
                   portions: tuple[float, ...] = MDL_PORTIONS) -> MDLResult:
    """Online (prequential) codelength of the labels of the training part of `fit_probe`'s split.

    The rows are shuffled; the first block is sent with the uniform code (log2 10 bits per digit); each
    later block [t_i, t_i+1) is sent with a probe trained on the rows before t_i (early stopping on a
    tenth of them, by group), costing its cross-entropy in bits, or with the uniform code where that is
    shorter, plus one bit per block saying which (a valid two-part code: a probe fitted on a few dozen
    rows that predicts confidently and wrongly cannot make the total longer than the uniform code's by
    more than a bit per block).
    """
    features, labels, groups = _check(features, labels, groups)
    rest, _ = split_groups(groups, config.val_fraction, seed)  # never look at validation rows
    rows = rest[np.random.default_rng(seed).permutation(len(rest))]
    n, digits = len(rows), labels.shape[1]
    cuts = sorted({max(1, int(round(p * n))) for p in portions} | {n})
    uniform = n * digits * math.log2(N_CLASSES)
    block_bits = [cuts[0] * digits * math.log2(N_CLASSES)]
    for start, end in zip(cuts[:-1], cuts[1:]):
        seen = rows[:start]
        uniform_block = (end - start) * digits * math.log2(N_CLASSES)
        if len(np.unique(np.asarray(groups[seen]))) >= 4:
            fit_part, stop_part = split_groups(groups[seen], 0.1, seed)
            probe, _ = _train(features, labels, seen[fit_part], seen[stop_part], config, seed)
            nats = _loss(probe, features[rows[start:end]], labels[rows[start:end]], reduction="sum")
            block_bits.append(1 + min(nats / math.log(2), uniform_block))
        else:  # too few rows to hold any out: the uniform code
            block_bits.append(uniform_block)
    return MDLResult(online_bits=float(sum(block_bits)), uniform_bits=uniform,
                     portions=[c / n for c in cuts], block_bits=block_bits, rows=n)
