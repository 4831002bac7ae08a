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
