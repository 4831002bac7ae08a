"""Figure style and save helpers. Reads results; never runs a model."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from leakage.io import atomic_file  # noqa: E402
from leakage.kv import KVTrace  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically (temp file, then rename) and close it."""
    path = Path(path)
    try:
        with atomic_file(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_kv_sawtooth(traces: dict[str, KVTrace], path: str | Path, title: str = "") -> Path:
    """Cache size (tokens) against generated tokens for each named trace (paper Fig. 1 right / Fig. 5)."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, trace in traces.items():
        steps = range(1, len(trace.response_steps) + 1)
        ax.plot(steps, trace.response_steps, label=f"{name} (peak {trace.peak}, AUC {trace.auc:,})", lw=1.4)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("KV cache (tokens)")
    ax.set_title(title)
    ax.legend(frameon=False)
    return save_figure(fig, path)


def plot_training_curves(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Training loss (thin) and validation loss (markers) against step, one panel per stage.

    `records` are the lines of a run's metrics.jsonl (dicts with 'stage', 'step', 'loss' or 'eval_loss').
    """
    sns.set_theme(style="whitegrid", context="paper")
    stages = sorted({r["stage"] for r in records})
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        train = [(r["step"], r["loss"]) for r in records if r["stage"] == stage and _present(r.get("loss"))]
        val = [(r["step"], r["eval_loss"]) for r in records if r["stage"] == stage and _present(r.get("eval_loss"))]
        if train:
            ax.plot(*zip(*train), lw=1, label="train loss")
        if val:
            ax.plot(*zip(*val), "o-", ms=4, label="validation loss")
        ax.set_title(f"stage {stage}: " + ("full causal attention" if stage == 1 else "memento attention"))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / completion token)")
        ax.legend(frameon=False)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


def _present(value) -> bool:
    """Not missing: None and NaN (a table cell a record did not have) are missing."""
    return value is not None and value == value


def _ci_errors(rows: list[dict]) -> list[list[float]]:
    """Error-bar lengths [below, above] of each row's accuracy from its 95% interval."""
    return [[r["accuracy"] - r["ci95_low"] for r in rows], [r["ci95_high"] - r["accuracy"] for r in rows]]


def plot_probe_conditions(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Probe accuracy by condition, all layers (the paper's Fig. 10), with 95% intervals and chance,
    and accuracy against distance from the passcode block (Fig. 13, distance panel)."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    bars = [r for r in rows if r["layer"] == "all" and r.get("timing", "engine") == "engine"
            and not (r["condition"] == "masked" and r["distance"] != 1)]
    labels = [r["condition"] + ("" if r["condition"] not in ("masked", "direct") else f" d={r['distance']}")
              for r in bars]
    left.bar(range(len(bars)), [r["accuracy"] for r in bars], yerr=_ci_errors(bars), color="tab:blue", capsize=2)
    left.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    left.set_xticks(range(len(bars)), labels, rotation=45, ha="right", fontsize=7)
    left.set_ylabel("mean digit accuracy")
    left.legend(frameon=False)
    curve = sorted((r["distance"], r) for r in rows if r["layer"] == "all" and r["condition"] in
                   ("causal_control", "direct", "masked") and r.get("timing", "engine") == "engine")
    right.errorbar([d for d, _ in curve], [r["accuracy"] for _, r in curve], fmt="o-",
                   yerr=_ci_errors([r for _, r in curve]), label="ours")
    paper = [(r["distance"], r["paper_toy"]) for _, r in curve if r.get("paper_toy") == r.get("paper_toy")
             and r.get("paper_toy") is not None]
    if paper:
        right.plot(*zip(*paper), "s", color="tab:red", label="paper (toy)")
    right.axhline(0.1, color="grey", ls="--", lw=1)
    right.set_xlabel("distance from the passcode block (blocks; -1 = causal control)")
    right.set_ylabel("mean digit accuracy")
    right.legend(frameon=False)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_probe_layers(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Probe accuracy per layer, direct vs masked (the paper's Table 4 as a figure), with 95% intervals."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for condition, color in (("direct", "tab:green"), ("masked", "tab:blue")):
        points = sorted((int(r["layer"]), r) for r in rows if r["condition"] == condition
                        and str(r["layer"]).isdigit() and r.get("timing", "engine") == "engine")
        if points:
            ax.errorbar([x for x, _ in points], [r["accuracy"] for _, r in points], fmt="o-", color=color,
                        yerr=_ci_errors([r for _, r in points]), label=condition, capsize=2)
    ax.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    layers = sorted({int(r["layer"]) for r in rows if str(r["layer"]).isdigit()})
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean digit accuracy")
    ax.set_title(title)
    ax.legend(frameon=False)
    return save_figure(fig, path)
