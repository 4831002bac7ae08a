"""Statistics of Memento traces: per-trace block/memento sizes, distribution plots, KV simulation.

Sizes are measured on each segment tokenised on its own (as `MementoTrace.to_ids` does), in tokens of
the given tokenizer. Compression ratio = memento tokens / block tokens (per block, and per trace over
all blocks); the paper reports medians of 0.16-0.23 per block and about 6x per trace.

KV simulation replays `MementoTrace.to_ids(tokenizer)` through `leakage.memento.kv.simulate_kv` twice: vanilla
(`keep_last_n_blocks=-1`, nothing evicted) and Memento (`keep_last_n_blocks=0`, each block evicted once
its memento closes). Peak and AUC are over the response (after the prompt); ratio = vanilla / memento.
Plot functions import matplotlib/seaborn lazily and write files atomically (`leakage.plotting.save_figure`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from leakage.config import EVICTION_PRESETS
from leakage.memento.kv import KVTrace, simulate_kv
from leakage.pipeline.tokenizer import token_counter
from leakage.plotting import styled
from leakage.memento.trace import OpenMementosRecord, read_openmementos

VANILLA = EVICTION_PRESETS["vanilla"]
MEMENTO = EVICTION_PRESETS["memento"]


@dataclass(frozen=True)
class TraceStats:
    """Sizes of one trace's blocks and mementos (chars and tokens), in block order."""

    trace_id: str
    source: str
    block_chars: tuple[int, ...]
    block_tokens: tuple[int, ...]
    memento_chars: tuple[int, ...]
    memento_tokens: tuple[int, ...]

    @property
    def n_blocks(self) -> int:
        return len(self.block_tokens)

    @property
    def block_ratios(self) -> list[float]:
        """memento tokens / block tokens, per block."""
        return [m / b for m, b in zip(self.memento_tokens, self.block_tokens)]

    @property
    def compression_ratio(self) -> float:
        """All memento tokens / all block tokens of the trace."""
        return sum(self.memento_tokens) / sum(self.block_tokens)

    def summary(self) -> dict:
        return {
            "trace_id": self.trace_id, "source": self.source, "n_blocks": self.n_blocks,
            "block_tokens_total": sum(self.block_tokens), "memento_tokens_total": sum(self.memento_tokens),
            "block_tokens_mean": statistics.fmean(self.block_tokens),
            "block_chars_mean": statistics.fmean(self.block_chars),
            "memento_tokens_mean": statistics.fmean(self.memento_tokens),
            "memento_chars_mean": statistics.fmean(self.memento_chars),
            "median_block_ratio": statistics.median(self.block_ratios),
            "trace_compression_ratio": self.compression_ratio,
            "trace_compression_factor": 1 / self.compression_ratio,
        }


def record_id(record: OpenMementosRecord, fallback: str) -> str:
    return str(record.extra.get("task_id", record.extra.get("id", fallback)))


def trace_stats(record: OpenMementosRecord, tokenizer, trace_id: str, source: str = "") -> TraceStats:
    """Block and memento sizes of one record; raises if it has no block or an empty block."""
    count = token_counter(tokenizer)
    trace = record.to_trace()
    if not trace.blocks:
        raise ValueError(f"trace {trace_id}: no blocks")
    blocks = [b for b, _ in trace.blocks]
    mementos = [m for _, m in trace.blocks]
    block_tokens = tuple(count(b) for b in blocks)
    if min(block_tokens) == 0:
        raise ValueError(f"trace {trace_id}: block {block_tokens.index(0) + 1} is empty")
    return TraceStats(trace_id=trace_id, source=source, block_chars=tuple(len(b) for b in blocks),
                      block_tokens=block_tokens, memento_chars=tuple(len(m) for m in mementos),
                      memento_tokens=tuple(count(m) for m in mementos))


def labelled_records(paths: Sequence[str | Path], labels: Sequence[str] | None = None):
    """Yield (record, trace id, source label, file) for every record of OpenMementos files (label default:
    stem). A file without records is an error naming it."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} files: give one label per file")
    for k, path in enumerate(paths):
        path = Path(path)
        label = labels[k] if labels else path.stem
        records = read_openmementos(path)
        if not records:
            raise ValueError(f"{path}: no records (an empty file?)")
        for i, record in enumerate(records):
            fallback = path.stem if len(records) == 1 else f"{path.stem}:{i}"
            yield record, record_id(record, fallback), label, path


def _each_record(paths, labels, measure):
    """`measure(record, trace_id, label)` for every record; its errors name the file and trace."""
    out = []
    for record, trace_id, label, path in labelled_records(paths, labels):
        try:
            out.append(measure(record, trace_id, label))
        except ValueError as err:
            raise ValueError(f"{path}, trace {trace_id}: {err}") from err
    return out


def stats_of_files(paths: Sequence[str | Path], tokenizer, labels: Sequence[str] | None = None) -> list[TraceStats]:
    """`trace_stats` for every record of OpenMementos files; `source` is the file's label (default: stem)."""
    return _each_record(paths, labels, lambda record, trace_id, label: trace_stats(record, tokenizer, trace_id, label))


def block_frame(stats: Sequence[TraceStats]):
    """One row per block: trace_id, source, block (1-based), block/memento chars and tokens, ratio."""
    import pandas as pd

    rows = []
    for s in stats:
        for i in range(s.n_blocks):
            rows.append({"trace_id": s.trace_id, "source": s.source, "block": i + 1,
                         "block_chars": s.block_chars[i], "block_tokens": s.block_tokens[i],
                         "memento_chars": s.memento_chars[i], "memento_tokens": s.memento_tokens[i],
                         "ratio": s.block_ratios[i]})
    return pd.DataFrame(rows)


@styled()
def plot_pipeline_stats(stats: Sequence[TraceStats], path: str | Path, caption: str = "") -> Path:
    """Fig. 3 / Fig. 6 style panels: blocks per trace, block tokens, memento tokens, memento vs block size."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from leakage.plotting import save_figure

    frame = block_frame(stats)
    per_trace = [{"source": s.source, "n_blocks": s.n_blocks} for s in stats]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    ax = axes[0, 0]
    sources = list(dict.fromkeys(s.source for s in stats))
    names = [p["source"] for p in per_trace]
    sns.barplot(x=names, y=[p["n_blocks"] for p in per_trace], hue=names, ax=ax, legend=False, order=sources,
                hue_order=sources, errorbar=None)
    ax.set(title="blocks per trace", xlabel="", ylabel="blocks")
    ax.tick_params(axis="x", rotation=20)
    sns.histplot(frame, x="block_tokens", hue="source", hue_order=sources, multiple="stack", bins=20, ax=axes[0, 1])
    axes[0, 1].set(title="block size", xlabel="block tokens")
    sns.histplot(frame, x="memento_tokens", hue="source", hue_order=sources, multiple="stack", bins=20, ax=axes[1, 0])
    axes[1, 0].set(title="memento size", xlabel="memento tokens")
    ax = axes[1, 1]
    sns.scatterplot(frame, x="block_tokens", y="memento_tokens", hue="source", hue_order=sources, ax=ax)
    top = frame["block_tokens"].max() * 1.05
    for ratio in (0.05, 0.1, 0.2):
        ax.plot([0, top], [0, ratio * top], ls="--", lw=0.8, color="grey")
        ax.annotate(f"{ratio:g}", (top, ratio * top), fontsize=7, color="grey")
    ax.set(title="memento vs block size (dashed: ratio 0.05, 0.1, 0.2)", xlabel="block tokens", ylabel="memento tokens")
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if caption else 0, 1, 1))
    return save_figure(fig, path, dpi=130)


# ---------------------------------------------------------------------------------------------
# KV simulation


@dataclass(frozen=True)
class KVComparison:
    """Cache size per step of one trace, vanilla vs Memento; `tokens` is the full sequence length."""

    trace_id: str
    source: str
    tokens: int
    prompt_tokens: int
    n_blocks: int
    vanilla: KVTrace
    memento: KVTrace

    @property
    def peak_ratio(self) -> float:
        return self.vanilla.peak / self.memento.peak

    @property
    def auc_ratio(self) -> float:
        return self.vanilla.auc / self.memento.auc

    def row(self, tokenizer_name: str) -> dict:
        return {"trace_id": self.trace_id, "source": self.source, "n_blocks": self.n_blocks, "tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens, "vanilla_peak": self.vanilla.peak,
                "memento_peak": self.memento.peak, "peak_ratio": round(self.peak_ratio, 4),
                "vanilla_auc": self.vanilla.auc, "memento_auc": self.memento.auc,
                "auc_ratio": round(self.auc_ratio, 4), "tokenizer": tokenizer_name}


def kv_compare(record: OpenMementosRecord, tokenizer, trace_id: str, source: str = "") -> KVComparison:
    """Simulate the KV cache of one record's trace (prompt = its problem), vanilla vs Memento."""
    trace = record.to_trace()
    ids = trace.to_ids(tokenizer)
    prompt_tokens = len(tokenizer.encode(trace.prompt, add_special_tokens=False))
    vanilla = simulate_kv(ids, tokenizer, VANILLA, prompt_len=prompt_tokens)
    memento = simulate_kv(ids, tokenizer, MEMENTO, prompt_len=prompt_tokens)
    return KVComparison(trace_id=trace_id, source=source, tokens=len(ids), prompt_tokens=prompt_tokens,
                        n_blocks=len(trace.blocks), vanilla=vanilla, memento=memento)


def kv_of_files(paths: Sequence[str | Path], tokenizer, labels: Sequence[str] | None = None) -> list[KVComparison]:
    """`kv_compare` for every record of OpenMementos files."""
    return _each_record(paths, labels, lambda record, trace_id, label: kv_compare(record, tokenizer, trace_id, label))


@styled()
def plot_kv(comparisons: Sequence[KVComparison], path: str | Path, caption: str = "") -> Path:
    """Cache size vs generated tokens, vanilla vs Memento, one panel per trace (the sawtooth)."""
    import matplotlib.pyplot as plt

    from leakage.plotting import save_figure

    n = len(comparisons)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for ax, c in zip(axes.flat, comparisons):
        steps = range(1, len(c.vanilla.response_steps) + 1)
        ax.plot(steps, c.vanilla.response_steps, label=f"vanilla (peak {c.vanilla.peak:,})", color="tab:grey")
        ax.plot(steps, c.memento.response_steps, label=f"memento (peak {c.memento.peak:,})", color="tab:blue")
        name = c.trace_id if c.source == c.trace_id else f"{c.source}: {c.trace_id}"
        ax.set(title=f"{name}\n{c.n_blocks} blocks; peak {c.peak_ratio:.2f}x, AUC {c.auc_ratio:.2f}x lower",
               xlabel="generated tokens", ylabel="KV cache (tokens)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if caption else 0, 1, 1))
    return save_figure(fig, path, dpi=130)
