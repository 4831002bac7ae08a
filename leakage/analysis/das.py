"""`leakage das`: distributed alignment search (DAS) on the retained KV cache — which directions of the
entries the cache still holds after the passcode block is evicted carry the passcode into the answer,
how many of them, and whether that is where a probe looks.

A *cell* is a layer, a KV head, keys or values, and a *site*: prefix positions the cache holds at the
passcode block's eviction step that were computed with the block in view (`erasure.leaked_positions`: its
closing delimiter and the memento), all of them (`leaked`) or those of one position kind (`memento`,
`block_end`, ...). An example's entries in a cell form one vector of F = positions x d_head features.
A `RotatedSubspace` holds k orthonormal directions of that space (torch's orthogonal parametrisation of
an F x k matrix B); its interchange intervention on a target and a source (the target's passcode twin:
`twins`) sets the target's component in the subspace to the source's,

    x_target + (x_source - x_target) B B^T,

writes it into the cache at the eviction step and recomputes every later query (`patching.suffix_logits`:
the live-cache edit of `patching`). B is trained (Adam, cross-entropy of the answer digits, teacher-forced
on the target's answer, against the *source's* digits) on twin pairs of training passcodes and scored on
the validation pairs: the interchange-intervention accuracy (IIA) is, per example, the share of the answer
digits where target and source differ whose argmax is the source's digit. It is read against three
references on the same pairs: the clean cache (how often the answer is the source's digit anyway), the
cell replaced whole (k = F: what any subspace of the cell can carry at most, up to interactions), and the
whole twin cache (every entry: what the channel carries at all).

Only cells whose whole-cell interchange moves the answer on the *training* pairs (IIA above the clean
rate by `DasConfig.min_effect`) get the k sweep; the choice never sees the validation pairs. On the top
cell (largest training whole-cell IIA) and its smallest carrying k (validation IIA at least
`DasConfig.carries` of the cell's whole interchange):

* placebos — the same interchange at other held positions (none computed with the block in view), a
  source that is an unrelated example with the target's own passcode, and noise of the interchange's norm
  in a random direction — each must leave the answer at its clean value;
* grafts (sufficiency) — from restart KV (every memento recomputed without its block: no channel), the
  memento run's values, keys, both, the top cell or only its DAS subspace put back at the site;
* angles — principal angles between the DAS subspace, the leading directions of a linear probe's weights
  and the LEACE subspace (`concept_erasure`) on the same cell's features of the training pairs, beside the
  angles of random subspaces of the same size (a distribution of `DasConfig.random_subspaces` draws).

Why not pyvene: its rotated-subspace interventions act on module outputs named in per-architecture maps
(pyvene 0.1.8: no Qwen3 map), and the cache holds keys after the key norm and RoPE, which no module
outputs; the intervention itself is these dozen lines. Intervals are 95% bootstraps over examples.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from scipy.linalg import subspace_angles
from torch import nn

from leakage.analysis.erasure import leace_eraser, leaked_positions, one_hot_digits
from leakage.analysis.patching import KV, PatchRun, answer_correct, patched_logits, suffix_logits
from leakage.analysis.probe import ProbeConfig, fit_probe
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish, finite_or_none
from leakage.analysis.ablation import restart
from leakage.analysis.twins import (CausalSpec, Progress, load_causal_model, passcode_pairs, passcode_run, run_name,
                                    with_passcode)
from leakage.engine.model import check_trained_task
from leakage.seeding import seeded
from leakage.stats import cluster_bootstrap_mean
from leakage.training.tasks import make_example

PARTS = ("keys", "values")
LogitsOf = Callable[[PatchRun, KV], torch.Tensor]
"""A differentiable map from a run and the cache at its eviction step to the logits at its queries (B, Q, V)."""


@dataclass(frozen=True)
class DasConfig:
    """What the search fits.

    ks: subspace sizes tried in every searched cell (sizes >= the cell's F are the whole cell).
    sites: `leaked` (every held position computed with the passcode block in view) and/or position kinds
        among them (`memento`, `block_end`, `summary_start`).
    n_train: twin pairs of training passcodes the subspaces are fitted on.
    steps: optimiser steps per subspace.
    batch_size: pairs per step.
    learning_rate: Adam's step size.
    min_effect: a cell is searched when its whole interchange lifts the training pairs' IIA this far above
        their clean rate.
    carries: a subspace carries the cell's channel when its validation IIA reaches this share of the whole
        cell's.
    random_subspaces: random subspaces in the angle baseline.
    """

    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    sites: tuple[str, ...] = ("leaked",)
    n_train: int = 1024
    steps: int = 120
    batch_size: int = 64
    learning_rate: float = 1e-2
    min_effect: float = 0.1
    carries: float = 0.9
    random_subspaces: int = 1000

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be subspace sizes >= 1, got {self.ks}")
        if not self.sites:
            raise ValueError("sites must name at least one site (leaked, or a position kind)")
        if self.n_train < 2 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"need n_train >= 2, steps >= 1, batch_size >= 1; got {self.n_train}, {self.steps}, "
                             f"{self.batch_size}")
        if not 0 < self.carries <= 1:
            raise ValueError(f"carries must lie in (0, 1], got {self.carries}")


@dataclass(frozen=True)
class DasSpec(CausalSpec):
    """What `leakage das` runs on: a passcode checkpoint (`CausalSpec`) and the search (`DasConfig`)."""

    das: DasConfig = DasConfig()


# -- cells and the intervention -----------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """Where a subspace lives: `which` (keys or values) of KV head `kv_head` in `layer`, at the prefix
    `positions` of the site named `site`."""

    layer: int
    kv_head: int
    which: str
    site: str
    positions: tuple[int, ...]

    def __post_init__(self):
        if self.which not in PARTS:
            raise ValueError(f"which must be keys or values, got {self.which!r}")
        if not self.positions:
            raise ValueError(f"site {self.site!r} holds no positions")


def site_features(kv: KV, cell: Cell) -> torch.Tensor:
    """(B, F = positions x d_head): the cell's entries of every example, position-major."""
    return getattr(kv, cell.which)[:, cell.layer, cell.kv_head][:, list(cell.positions)].flatten(1)


def with_site(kv: KV, cell: Cell, features: torch.Tensor) -> KV:
    """A copy of `kv` whose cell entries are `features` (B, F); differentiable in `features`."""
    tensor = getattr(kv, cell.which)
    edited = tensor.clone()
    edited[:, cell.layer, cell.kv_head, list(cell.positions)] = features.reshape(
        len(features), len(cell.positions), -1).to(tensor.dtype)
    return KV(edited, kv.values) if cell.which == "keys" else KV(kv.keys, edited)


class RotatedSubspace(nn.Module):
    """k orthonormal directions B (F, k) of a cell's feature space (torch's orthogonal parametrisation of
    an F x k matrix: its columns stay orthonormal as it trains), and the interchange through them."""

    def __init__(self, n_features: int, k: int, seed: int = 0):
        super().__init__()
        if not 1 <= k <= n_features:
            raise ValueError(f"a subspace of {n_features} features has 1..{n_features} dimensions, got k={k}")
        with seeded(seed):
            self.map = nn.utils.parametrizations.orthogonal(nn.Linear(k, n_features, bias=False))

    @property
    def basis(self) -> torch.Tensor:
        """(F, k), orthonormal columns."""
        return self.map.weight

    def forward(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """(B, F): `base` with its component in the subspace replaced by `source`'s."""
        basis = self.basis.to(base.dtype)
        return base + ((source - base) @ basis) @ basis.T


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters without gradients inside the block (restored after): only the subspace trains."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def source_correct(logits: torch.Tensor, run: PatchRun) -> torch.Tensor:
    """(B,) per example: the share of the answer digits where target and source differ whose argmax is
    the source's digit (logits (B, Q, V)); the interchange-intervention accuracy's unit."""
    differ = (run.answer[..., 0] != run.answer[..., 1]).float()
    hit = (logits.argmax(-1) == run.answer[..., 1]).float()
    return (hit * differ).sum(-1) / differ.sum(-1).clamp(min=1)


def fit_subspace(logits_of: LogitsOf, run: PatchRun, cell: Cell, k: int, config: DasConfig,
                 seed: int = 0) -> RotatedSubspace:
    """A k-dimensional subspace of `cell` trained so the interchange from `run.source` moves the answer to
    the source's digits (cross-entropy at every answer query, `config.steps` Adam steps on batches of
    `config.batch_size` pairs drawn epoch by epoch with `seed`)."""
    base, source = site_features(run.target, cell), site_features(run.source, cell)
    subspace = RotatedSubspace(base.shape[1], k, seed).to(base.device)  # initialised on the CPU: any device, one draw
    optimiser = torch.optim.Adam(subspace.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    order: list[torch.Tensor] = []
    for _ in range(config.steps):
        if not order:
            order = list(torch.randperm(len(base), generator=generator).split(config.batch_size))
        rows = order.pop(0)
        batch = run.subset(rows)
        logits = logits_of(batch, with_site(batch.target, cell, subspace(base[rows], source[rows])))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.answer[..., 1].flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return subspace.eval()


@torch.no_grad()
def intervened_logits(logits_of: LogitsOf, run: PatchRun, cell: Cell, features: torch.Tensor,
                      chunk: int = 256) -> torch.Tensor:
    """(B, Q, V): the run's logits with the cell's entries set to `features` (B, F), in chunks of rows."""
    out = []
    for start in range(0, len(run.ids), chunk):
        rows = torch.arange(start, min(start + chunk, len(run.ids)))
        part = run.subset(rows)
        out.append(logits_of(part, with_site(part.target, cell, features[rows])))
    return torch.cat(out)


def interchange(run: PatchRun, cell: Cell, subspace: RotatedSubspace | None) -> torch.Tensor:
    """(B, F): the cell's entries after the interchange from the source (None: the whole cell)."""
    base, source = site_features(run.target, cell), site_features(run.source, cell)
    if subspace is None:
        return source
    with torch.no_grad():
        return subspace(base, source)


# -- the search ----------------------------------------------------------------------------------------

def sites_of(run: PatchRun, positions: list[int], names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """{site name: positions}: `leaked` is every one of `positions`; another name, those of that kind."""
    kinds = {run.kinds[p] for p in positions}
    sites = {}
    for name in names:
        chosen = positions if name == "leaked" else [p for p in positions if run.kinds[p] == name]
        if not chosen:
            raise ValueError(f"site {name!r}: none of the leaked positions {positions} is of that kind; the kinds "
                             f"there are {sorted(kinds)} (or use leaked)")
        sites[name] = tuple(chosen)
    return sites


def _score(values: torch.Tensor, bootstrap: int, seed: int, **row) -> dict:
    """A result row: the mean of per-example `values` (B,) with its example-bootstrap 95% interval."""
    values = values.double().numpy()
    low, high = cluster_bootstrap_mean(values, np.arange(len(values)), bootstrap, seed)
    return {**row, "value": float(values.mean()), "ci95_low": low, "ci95_high": high, "n": len(values)}


def model_logits(model) -> LogitsOf:
    """The `LogitsOf` of a model: `patching.suffix_logits`, in batches the memory budget holds (gradients flow to
    the cache only when the model is `frozen`)."""
    return lambda run, kv: suffix_logits(model, run, kv)


@dataclass
class Search:
    """A DAS screen and its fits: the rows so far (references, every cell's whole interchange, the k sweep of
    the searched cells), the twin runs (training and validation pairs, and their examples), the fitted
    subspaces {cell: {k: subspace}} and each cell's whole-interchange effect on the training pairs."""

    frame: pd.DataFrame
    train: PatchRun
    val: PatchRun
    examples: list
    fitting: list
    subspaces: dict[Cell, dict[int, RotatedSubspace]]
    effect: dict[Cell, float]
    carries: float

    @property
    def top(self) -> Cell | None:
        """The searched cell whose whole interchange moves the training pairs most (None: none searched)."""
        return max(self.subspaces, key=self.effect.get) if self.subspaces else None

    def carrying_k(self, cell: Cell) -> int | None:
        """The cell's smallest carrying k, else its largest fitted k (None: the cell is smaller than every k)."""
        return smallest_carrying_k(self.frame, cell, self.carries) or max(self.subspaces[cell], default=None)

    def carrying(self, cell: Cell) -> RotatedSubspace | None:
        k = self.carrying_k(cell)
        return None if k is None else self.subspaces[cell][k]


def fit_cells(model, tokenizer, spec: DasSpec, log: Log = lambda _: None, progress: Progress = None) -> Search:
    """The references, every cell's whole interchange, and the k sweep of the cells whose whole interchange
    moves the training pairs by `min_effect` (module docstring)."""
    config, experiment, seed = spec.das, spec.experiment, spec.experiment.seed
    examples, twins, digits = passcode_pairs(spec.task, tokenizer, experiment.n, seed)
    val = passcode_run(model, tokenizer, examples, twins, digits, spec.eviction)
    fitting, fit_twins, fit_digits = passcode_pairs(spec.task, tokenizer, config.n_train, seed + 1, split="train")
    train = passcode_run(model, tokenizer, fitting, fit_twins, fit_digits, spec.eviction)
    if val.at != train.at or val.queries != train.queries:
        raise ValueError("training and validation pairs differ in layout; use fixed-length blocks")
    logits_of, boot = model_logits(model), experiment.bootstrap
    _, L, H, _, d = val.target.keys.shape
    sites = sites_of(val, leaked_positions(val, examples[0]), config.sites)
    rows, clean = [], {}
    for pairs, run in (("train", train), ("val", val)):
        clean[pairs] = source_correct(patched_logits(model, run, run.target), run)
        twin = source_correct(patched_logits(model, run, run.source), run)
        for reference, values in (("clean", clean[pairs]), ("twin_cache", twin)):
            rows.append(_score(values, boot, seed, experiment="reference", pairs=pairs, intervention=reference,
                               measure="iia"))
    cells = [Cell(layer, head, which, site, positions) for site, positions in sites.items()
             for which in PARTS for layer in range(L) for head in range(H)]
    log(f"das: {len(cells)} cells, {config.n_train} training / {experiment.n} validation pairs")
    subspaces: dict[Cell, dict[int, RotatedSubspace]] = {}
    effect: dict[Cell, float] = {}
    for cell in (progress(cells) if progress else cells):
        n_features = len(cell.positions) * d
        columns = dict(layer=cell.layer, kv_head=cell.kv_head, which=cell.which, site=cell.site,
                       n_features=n_features, experiment="das", intervention="interchange", measure="iia", pairs="val")
        whole = {pairs: source_correct(intervened_logits(logits_of, run, cell, interchange(run, cell, None)), run)
                 for pairs, run in (("train", train), ("val", val))}
        effect[cell] = float(whole["train"].mean() - clean["train"].mean())
        rows.append(_score(whole["val"], boot, seed, k=n_features, whole_cell=True, train_effect=effect[cell],
                           **columns))
        if effect[cell] < config.min_effect:
            continue
        subspaces[cell] = {}
        with frozen(model):
            for k in sorted({k for k in config.ks if k < n_features}):
                subspaces[cell][k] = fit_subspace(logits_of, train, cell, k, config, seed + k)
                iia = source_correct(intervened_logits(logits_of, val, cell,
                                                       interchange(val, cell, subspaces[cell][k])), val)
                rows.append(_score(iia, boot, seed, k=k, whole_cell=False, train_effect=effect[cell], **columns))
        log(f"  {cell.site} layer {cell.layer} head {cell.kv_head} {cell.which}: whole cell "
            f"{float(whole['val'].mean()):.3f}; " + ", ".join(f"k={r['k']}: {r['value']:.3f}"
                                                            for r in rows[len(rows) - len(subspaces[cell]):]))
    return Search(pd.DataFrame(rows), train, val, examples, fitting, subspaces, effect, config.carries)


def search(model, tokenizer, spec: DasSpec, log: Log = lambda _: None,
           progress: Progress = None) -> tuple[pd.DataFrame, Cell | None]:
    """Every row of the experiment (module docstring) and the top searched cell (None: no cell's whole
    interchange moved the training pairs' answer by `min_effect`)."""
    found = fit_cells(model, tokenizer, spec, log, progress)
    top = found.top
    subspace = found.carrying(top) if top is not None else None
    if subspace is None:  # nothing searched, or the top cell is smaller than every k: its whole interchange is all
        return found.frame, top
    log(f"top cell: {top.site} layer {top.layer} head {top.kv_head} {top.which}, k={subspace.basis.shape[1]}: "
        "placebos, grafts, angles")
    return pd.concat([found.frame, placebos(model, tokenizer, spec, found.val, found.examples, top, subspace),
                      grafts(model, tokenizer, spec, found.val, found.examples, top, subspace),
                      angles(found.train, found.fitting, top, subspace, spec.das.random_subspaces,
                             spec.experiment.seed)],
                     ignore_index=True), top


def _cell_rows(frame: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    return frame[(frame.experiment == "das") & (frame.layer == cell.layer) & (frame.kv_head == cell.kv_head) &
                 (frame.which == cell.which) & (frame.site == cell.site)]


def smallest_carrying_k(frame: pd.DataFrame, cell: Cell, carries: float) -> int | None:
    """The smallest fitted k whose validation IIA reaches `carries` of the whole cell's (None: none does)."""
    rows = _cell_rows(frame, cell)
    whole = rows[rows.whole_cell.astype(bool)].value.iloc[0]
    fitted = rows[~rows.whole_cell.astype(bool)].sort_values("k")
    reached = fitted[fitted.value >= carries * whole]
    return int(reached.k.iloc[0]) if len(reached) else None


# -- placebos, grafts, angles -----------------------------------------------------------------------------

def _cell_columns(cell: Cell, k: int) -> dict:
    return dict(layer=cell.layer, kv_head=cell.kv_head, which=cell.which, site=cell.site, k=k)


def unrelated_sources(model, tokenizer, spec: CausalSpec, examples) -> KV:
    """Prefix KV of other validation examples (other sums, other memento text) carrying each target's own
    passcode: a source whose interchange should leave the target's answer as it was."""
    seed = spec.experiment.seed + 2
    ids = [with_passcode(make_example(spec.task, tokenizer, seed, i, "val"), tokenizer, example.passcode_digits)
           for i, example in enumerate(examples)]
    return passcode_run(model, tokenizer, examples, ids, [e.passcode_digits for e in examples], spec.eviction).source


def placebo_cell(run: PatchRun, example, cell: Cell, rng: np.random.Generator) -> Cell | None:
    """`cell` moved to as many held positions drawn at random among those computed without the passcode block
    in view (`erasure.leaked_positions`: another leaked position carries the channel, so it is no placebo);
    None when there are too few."""
    leaked = set(leaked_positions(run, example))
    held = [p for p in run.held.all(0).nonzero().flatten().tolist() if p not in leaked]
    if len(held) < len(cell.positions):
        return None
    return replace(cell, positions=tuple(sorted(rng.choice(held, size=len(cell.positions), replace=False).tolist())))


def placebos(model, tokenizer, spec: CausalSpec, run: PatchRun, examples, cell: Cell,
             subspace: RotatedSubspace) -> pd.DataFrame:
    """The answer's accuracy on the target's own passcode (and the IIA) under the interchange and its
    placebos: `shuffled_positions` (the same interchange at other held positions, `placebo_cell`), `unrelated_source`
    (the source an unrelated example with the target's passcode) and `noise` (a random direction of the
    interchange's norm, per example), beside the clean cache."""
    logits_of, boot, seed = model_logits(model), spec.experiment.bootstrap, spec.experiment.seed
    k = subspace.basis.shape[1]
    base = site_features(run.target, cell)
    delta = interchange(run, cell, subspace) - base
    shuffled = placebo_cell(run, examples[0], cell, np.random.default_rng(seed))
    rows = []
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(base.shape, generator=generator, dtype=base.dtype).to(base.device)
    noise = noise * delta.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
    unrelated = run.with_source(unrelated_sources(model, tokenizer, spec, examples))
    cases = [("clean", run, cell, base), ("interchange", run, cell, base + delta),
             ("noise", run, cell, base + noise),
             ("unrelated_source", unrelated, cell, interchange(unrelated, cell, subspace))]
    if shuffled is not None:
        cases.append(("shuffled_positions", run, shuffled, interchange(run, shuffled, subspace)))
    for name, case, where, features in cases:
        logits = intervened_logits(logits_of, case, where, features)
        columns = dict(experiment="placebo", intervention=name, pairs="val", **_cell_columns(cell, k),
                       positions=" ".join(map(str, where.positions)))
        rows.append(_score(answer_correct(logits, case), boot, seed, measure="answer_accuracy", **columns))
        if name != "unrelated_source":  # its source's digits are the target's: no IIA
            rows.append(_score(source_correct(logits, case), boot, seed, measure="iia", **columns))
    return pd.DataFrame(rows)


def grafts(model, tokenizer, spec: CausalSpec, run: PatchRun, examples, cell: Cell,
           subspace: RotatedSubspace) -> pd.DataFrame:
    """Sufficiency: the answer's accuracy (the run's target digits) when the cache at the eviction step is
    restart KV (`ablation.restart`: every memento recomputed without its block) with parts of the memento
    run's KV (`run.target`) put back at the cell's positions: nothing, the values, the keys, both (every layer
    and head), the cell whole, or only its DAS subspace."""
    boot, seed = spec.experiment.bootstrap, spec.experiment.seed
    memento, restarted = run.target, restart(model, tokenizer, examples, run, spec.eviction)
    positions = list(cell.positions)
    with torch.no_grad():
        subspace_graft = subspace(site_features(restarted, cell), site_features(memento, cell))
    cases = {"restart": restarted, "values": restarted.replaced(memento, positions, keys=False),
             "keys": restarted.replaced(memento, positions, values=False),
             "keys_and_values": restarted.replaced(memento, positions),
             "cell": with_site(restarted, cell, site_features(memento, cell)),
             "das_subspace": with_site(restarted, cell, subspace_graft)}
    rows = []
    for name, kv in cases.items():
        logits = patched_logits(model, run, kv)
        rows.append(_score(answer_correct(logits, run), boot, seed, experiment="graft", intervention=name,
                           measure="answer_accuracy", pairs="val", positions=" ".join(map(str, positions)),
                           **_cell_columns(cell, subspace.basis.shape[1])))
    return pd.DataFrame(rows)


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    return u[:, s > s.max() * 1e-10]


def angles(run: PatchRun, examples, cell: Cell, subspace: RotatedSubspace, n_random: int, seed: int) -> pd.DataFrame:
    """Principal angles (degrees) between the DAS subspace (F, k) and, on the same cell's features of the
    training pairs' targets: the k leading left singular directions of a linear probe's weights mapped back
    to feature space, and the LEACE subspace; beside the same angles for `n_random` random k-dimensional
    subspaces (their 5th, 50th and 95th percentiles)."""
    das = subspace.basis.detach().double().cpu().numpy()
    k = das.shape[1]
    x = site_features(run.target, cell).double().cpu()
    labels = torch.tensor([e.passcode_digits for e in examples])
    groups = np.array([e.passcode for e in examples])
    probe = fit_probe(x.float(), labels, groups, ProbeConfig(kind="linear"), seed).probe
    weights = probe.projection.double() @ probe.net[-1].weight.detach().double().T  # (F, 10 x digits)
    probe_basis = _orthonormal(weights.numpy())[:, :k]
    leace = _orthonormal(leace_eraser(x, one_hot_digits(examples)).left.numpy())
    rng = np.random.default_rng(seed)
    rows = []
    for name, other in (("probe", probe_basis), ("leace", leace)):
        measured = np.degrees(subspace_angles(das, other))
        draws = np.array([np.degrees(subspace_angles(_orthonormal(rng.standard_normal((das.shape[0], other.shape[1]))),
                                                     das)) for _ in range(n_random)])
        for statistic, pick in (("smallest", np.min), ("mean", np.mean)):
            random = pick(draws, axis=1)
            rows.append({"experiment": "angle", "intervention": name, "measure": f"{statistic}_angle_degrees",
                         "value": float(pick(measured)), "random_p05": float(np.percentile(random, 5)),
                         "random_p50": float(np.percentile(random, 50)),
                         "random_p95": float(np.percentile(random, 95)),
                         "random_below": float((random <= pick(measured)).mean()), "n": n_random,
                         "other_dimensions": other.shape[1], **_cell_columns(cell, k)})
    return pd.DataFrame(rows)


# -- the runner ------------------------------------------------------------------------------------------

def headline(frame: pd.DataFrame, top: Cell | None, carries: float) -> dict:
    """The reference IIAs on validation pairs, the number of searched cells, and the top cell: its whole-cell
    IIA, IIA by k, smallest carrying k, and the placebos' and grafts' answer accuracies."""
    reference = frame[(frame.experiment == "reference") & (frame.pairs == "val")]
    out = {f"iia_{r.intervention}": float(r.value) for r in reference.itertuples()}
    searched = frame[(frame.experiment == "das") & ~frame.whole_cell.astype(bool)]
    out["cells_searched"] = int(len(searched[["layer", "kv_head", "which", "site"]].drop_duplicates()))
    if top is not None:
        rows = _cell_rows(frame, top)
        out["top_cell"] = {"layer": top.layer, "kv_head": top.kv_head, "which": top.which, "site": top.site,
                           "whole_iia": float(rows[rows.whole_cell.astype(bool)].value.iloc[0]),
                           "smallest_carrying_k": smallest_carrying_k(frame, top, carries),
                           "iia_by_k": {int(r.k): float(r.value) for r in rows.itertuples() if not r.whole_cell}}
        for experiment in ("placebo", "graft"):
            part = frame[(frame.experiment == experiment) & (frame.measure == "answer_accuracy")]
            out[experiment] = {r.intervention: finite_or_none(r.value) for r in part.itertuples()}
    return out


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: DasSpec, out: str | Path | None = None, *, command: str | None = None, log: Log | None = None,
        progress: Progress = None) -> Record:
    """The DAS experiment on a checkpoint (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_causal_model(spec)
    frame, top = search(model, tokenizer, spec, clock, progress)
    return finish(__name__, spec, headline(frame, top, spec.das.carries), frame, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """IIA against k per searched cell, with the references; placebos and grafts."""
    from leakage.plotting import plot_das

    return [plot_das(record.rows, beside(stem, ".png"), f"{run_name(record.spec.checkpoint)}: DAS on the retained KV")]
