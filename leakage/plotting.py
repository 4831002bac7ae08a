"""Figure style and save helpers. Reads results; never runs a model, and imports nothing from the wings.

No backend is chosen here: notebooks draw inline, and scripts without a display get matplotlib's
non-interactive default. No global style either: every figure function draws inside `style()` (seaborn's
paper theme), which gives the caller's matplotlib settings back when the figure is saved; wrap your own
figures in `with plotting.style():` to match.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from leakage.io import atomic_file


@contextmanager
def style(name: str = "whitegrid") -> Iterator[None]:
    """seaborn's `paper` theme with axes style `name` for the figures drawn in the block; matplotlib's
    settings are restored on exit (`matplotlib.rc_context`)."""
    with plt.rc_context():
        sns.set_theme(style=name, context="paper")
        yield


def styled(name: str = "whitegrid"):
    """Decorator: the figure function draws (and saves) inside `style(name)`."""
    def wrap(draw):
        @functools.wraps(draw)
        def drawn(*args, **kwargs):
            with style(name):
                return draw(*args, **kwargs)
        return drawn
    return wrap


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically (temp file, then rename) and close it."""
    path = Path(path)
    try:
        with atomic_file(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


@styled()
def plot_kv_sawtooth(traces: dict, path: str | Path, title: str = "") -> Path:
    """Cache size (tokens) against generated tokens for each named `KVTrace` (paper Fig. 1 right / Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, trace in traces.items():
        steps = range(1, len(trace.response_steps) + 1)
        ax.plot(steps, trace.response_steps, label=f"{name} (peak {trace.peak}, AUC {trace.auc:,})", lw=1.4)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("KV cache (tokens)")
    ax.set_title(title)
    ax.legend(frameon=False)
    return save_figure(fig, path)


@styled()
def plot_training_curves(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Training loss (thin) and validation loss (markers) against step, one panel per stage.

    `records` are the lines of a run's metrics.jsonl (dicts with 'stage', 'step', 'loss' or 'eval_loss').
    """
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


FIG10_CONDITIONS = ("causal_control", "direct", "masked", "control_task", "shuffled_labels", "text_only",
                    "restart_kv", "restart_kv_direct", "random_init", "random_init_direct", "bf16", "bf16_direct")
"""The conditions drawn as bars in Fig. 10 (masked at d=1 only)."""


def probe_rows(table) -> list[dict]:
    """A probe CSV (as a DataFrame) back to the rows the plotting functions take: missing cells dropped,
    layers as ints or "all"."""
    rows = []
    for record in table.to_dict("records"):
        row = {k: v for k, v in record.items() if _present(v)}
        row["layer"] = row["layer"] if row["layer"] == "all" else int(row["layer"])
        rows.append(row)
    return rows


def _curve(ax, points: list[tuple], label: str, color: str, fmt: str = "o-") -> None:
    """Accuracy with 95% error bars against x, from (x, row) pairs (nothing drawn for none)."""
    points = sorted(points, key=lambda p: p[0])
    if points:
        ax.errorbar([x for x, _ in points], [r["accuracy"] for _, r in points], fmt=fmt, color=color,
                    yerr=_ci_errors([r for _, r in points]), label=label, capsize=2)


def _finish(ax, xlabel: str, title: str = "") -> None:
    """Chance line, axis labels, title and (when anything is labelled) the legend of one probe panel."""
    ax.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean digit accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7)


def _engine(rows: list[dict]) -> list[dict]:
    """Rows measured under the engine's timing (all but the `summary_end_sees_block` ones)."""
    return [r for r in rows if r.get("timing", "engine") == "engine"]


def _layer_panel(ax, rows: list[dict], title: str = "") -> None:
    """Direct vs masked d=1 accuracy per layer (the paper's Table 4)."""
    for condition, color in (("direct", "tab:green"), ("masked", "tab:blue")):
        _curve(ax, [(int(r["layer"]), r) for r in _engine(rows) if r["condition"] == condition
                    and str(r["layer"]).isdigit()], condition if condition == "direct" else "masked d=1", color)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, "layer", title)


def _distance_panel(ax, rows: list[dict], title: str = "") -> None:
    """All-layer accuracy against distance from the passcode block, with the paper's toy numbers."""
    engine = [r for r in _engine(rows) if r["layer"] == "all"]
    _curve(ax, [(r["distance"], r) for r in engine if r["condition"] in ("causal_control", "direct", "masked")],
           "ours", "tab:blue")
    paper = [(r["distance"], r["paper_toy"]) for r in engine if _present(r.get("paper_toy"))]
    if paper:
        ax.plot(*zip(*sorted(paper)), "s", color="tab:red", label="paper (toy)")
    _finish(ax, "distance from the passcode block (-1: causal control)", title)


@styled()
def plot_probe_conditions(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Probe accuracy by condition, all layers (the paper's Fig. 10), with 95% intervals and chance,
    and accuracy against distance from the passcode block (Fig. 13, distance panel)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    bars = [r for r in _engine(rows) if r["condition"] in FIG10_CONDITIONS and r["layer"] == "all"
            and not (r["condition"] == "masked" and r["distance"] != 1)]
    labels = [r["condition"] + ("" if r["condition"] not in ("masked", "direct") else f" d={r['distance']}")
              for r in bars]
    left.bar(range(len(bars)), [r["accuracy"] for r in bars], yerr=_ci_errors(bars), color="tab:blue", capsize=2)
    left.set_xticks(range(len(bars)), labels, rotation=45, ha="right", fontsize=7)
    _finish(left, "")
    _distance_panel(right, rows)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


@styled()
def plot_probe_layers(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Probe accuracy per layer, direct vs masked (the paper's Table 4 as a figure), with 95% intervals."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    _layer_panel(ax, rows, title)
    return save_figure(fig, path)


@styled()
def plot_probe_sweeps(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """The sweeps of one probing run (the paper's Fig. 13 and more), each with 95% intervals and chance:
    per layer (direct vs masked d=1), distance, training checkpoint (task accuracy beside), retained
    position kind, keep_last_n_blocks, and the leak spectrum. Panels without rows are left empty."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    _layer_panel(axes[0, 0], rows, "(a) layer")
    _distance_panel(axes[0, 1], rows, "(b) distance")
    ax = axes[0, 2]
    sweep = [r for r in rows if r["condition"] == "checkpoint"]
    _curve(ax, [(r["step"], r) for r in sweep if r["distance"] == 0], "direct", "tab:green")
    _curve(ax, [(r["step"], r) for r in sweep if r["distance"] == 1], "masked d=1", "tab:blue")
    if sweep:
        twin = ax.twinx()
        task = sorted({(r["step"], r["task_accuracy"], r["task_ci95_low"], r["task_ci95_high"]) for r in sweep})
        twin.errorbar([t[0] for t in task], [t[1] for t in task], fmt="^:", color="tab:orange",
                      yerr=[[t[1] - t[2] for t in task], [t[3] - t[1] for t in task]], label="task accuracy")
        twin.set_ylabel("task accuracy (teacher-forced)", color="tab:orange")
        twin.set_ylim(0, 1)
        twin.grid(False)
    _finish(ax, "training step (stage 1, then stage 2)", "(c) training checkpoint")
    ax = axes[1, 0]
    kinds = [r for r in rows if r["condition"].startswith("position:")]
    labels = [r["condition"].split(":")[1].replace("_", "_\n") +
              ("\n(sees block)" if r.get("timing") == "summary_end_sees_block" else "") for r in kinds]
    ax.bar(range(len(kinds)), [r["accuracy"] for r in kinds], yerr=_ci_errors(kinds), color="tab:purple", capsize=2)
    ax.set_xticks(range(len(kinds)), labels, fontsize=7)
    _finish(ax, "retained position of the passcode block", "(d) retained position kind")
    ax = axes[1, 1]
    keep = [r for r in rows if r["condition"] == "keep"]
    for n, color in zip(sorted({r["keep_last_n_blocks"] for r in keep}), ("tab:cyan", "tab:olive", "tab:brown")):
        _curve(ax, [(r["distance"], r) for r in keep if r["keep_last_n_blocks"] == n], f"keep {int(n)}", color)
    _curve(ax, [(r["distance"], r) for r in _engine(rows) if r["condition"] == "masked" and r["layer"] == "all"
                and r["distance"] <= 3], "keep 0", "tab:blue")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, "distance from the passcode block", "(e) keep_last_n_blocks")
    ax = axes[1, 2]
    for dtype, color in (("float32", "tab:blue"), ("bfloat16", "tab:red")):
        _curve(ax, [(r["relative_std_cutoff"], r) for r in rows if r["condition"] == "spectrum"
                    and r["dtype"] == dtype], dtype, color)
    ax.set_xscale("log")
    ax.invert_xaxis()
    _finish(ax, "directions kept: std >= this x the largest", "(f) leak spectrum, masked d=1")
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return save_figure(fig, path)


@styled("white")
def plot_patching(frame, path: str | Path, title: str = "") -> Path:
    """Normalised patching effect (0 = clean, 1 = corrupted) as heat maps: layer x KV head and layer x
    retained position kind, for keys, values and both (a `leakage.analysis.patch_maps.patching_maps` frame)."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for row, (experiment, column) in enumerate((("patch_layer_head", "kv_head"), ("patch_layer_kind", "kind"))):
        for ax, which in zip(axes[row], ("keys", "values", "both")):
            part = frame[(frame.experiment == experiment) & (frame.which == which)]
            part = part.assign(layer=part.layer.astype(int))
            if column == "kv_head":  # a CSV column shared with NaN reads back as float
                part = part.assign(kv_head=part.kv_head.astype(int))
            grid = part.pivot(index="layer", columns=column, values="effect")
            if column == "kind":
                grid = grid[list(dict.fromkeys(part[column]))]  # trace order, not alphabetical
            sns.heatmap(grid, ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", center=0, vmin=-1, vmax=1,
                        annot_kws={"fontsize": 7}, cbar=ax is axes[row, 2])
            ax.set_title(f"{which}: layer x {column.replace('_', ' ')}", fontsize=9)
            ax.tick_params(axis="x", labelrotation=30 if column == "kind" else 0, labelsize=7)
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return save_figure(fig, path)


@styled()
def plot_ablation(frame, path: str | Path, title: str = "") -> Path:
    """Answer digit accuracy with each layer's held KV (and all layers') replaced by each ablation source,
    with 95% intervals, the clean accuracy and chance (a `leakage.analysis.ablation.ablation_sweep` frame)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    part = frame[frame.experiment == "ablate_layer"]
    sources = list(dict.fromkeys(part.source))
    layers = list(dict.fromkeys(part.layer.astype(str)))
    width = 0.8 / len(sources)
    for i, source in enumerate(sources):
        rows = part[part.source == source].set_index(part[part.source == source].layer.astype(str)).loc[layers]
        x = [j + (i - (len(sources) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(x, rows.metric, width, yerr=[rows.metric - rows.metric_low, rows.metric_high - rows.metric],
               label=source + (" (contrast)" if source == "zero" else ""), capsize=2)
    ax.axhline(float(frame.clean.iloc[0]), color="black", lw=1, label="clean")
    ax.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(layers)), [f"layer {l}" if l != "all" else "all layers" for l in layers])
    ax.set_ylabel("answer digit accuracy (teacher-forced)")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


@styled()
def plot_erasure(frame, path: str | Path, title: str = "") -> Path:
    """Probe accuracy against answer accuracy as the erasure strength grows, LEACE vs a random subspace
    of the same rank (a `leakage.analysis.erasure.erasure_curve` frame): one curve linking probing and behaviour."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, color in (("leace", "tab:red"), ("random", "tab:grey")):
        rows = frame[frame.method == method].sort_values("strength")
        ax.errorbar(rows.probe_accuracy, rows.answer_accuracy, fmt="o-", color=color, label=method, capsize=2,
                    xerr=[rows.probe_accuracy - rows.probe_low, rows.probe_high - rows.probe_accuracy],
                    yerr=[rows.answer_accuracy - rows.answer_low, rows.answer_high - rows.answer_accuracy])
        for _, r in rows.iterrows():
            ax.annotate(f"{r.strength:g}", (r.probe_accuracy, r.answer_accuracy), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    ax.axhline(0.1, color="grey", ls="--", lw=1)
    ax.axvline(0.1, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("probe accuracy on the erased KV (passcode digits)")
    ax.set_ylabel("answer digit accuracy (teacher-forced)")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7)
    return save_figure(fig, path)


@styled()
def plot_capacity(frame, path: str | Path, title: str = "") -> Path:
    """Answer-digit accuracy and bits per passcode against the passcode's distance to the answer, under
    memento, restart and full-attention decoding (the rows of `leakage.analysis.capacity.run`)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, color in (("memento", "tab:blue"), ("restart", "tab:red"), ("full_attention", "tab:green")):
        rows = frame[frame.decoding == mode].sort_values("distance")
        left.errorbar(rows.distance, rows.accuracy, yerr=[rows.accuracy - rows.ci95_low, rows.ci95_high - rows.accuracy],
                      fmt="o-", color=color, label=mode.replace("_", " "), capsize=2)
        right.errorbar(rows.distance, rows.bits, yerr=[rows.bits - rows.bits_low, rows.bits_high - rows.bits],
                       fmt="o-", color=color, label=mode.replace("_", " "), capsize=2)
    left.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    right.axhline(0.0, color="grey", ls="--", lw=1)
    for ax, ylabel in ((left, "answer digit accuracy"), (right, "bits per passcode")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(frame.distance.unique()), [str(d) for d in sorted(frame.distance.unique())])
        ax.set_xlabel("mementos between the passcode block and the answer")
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


@styled()
def plot_benchmark(frame, path: str | Path, title: str = "") -> Path:
    """Leak against KV budget across eviction methods (rows of `leakage.analysis.benchmark.run`, one per method,
    or of several seeds with a `seed` column): the passcode answer and the probe's bits against the KV the
    method keeps (AUC over the response, as a share of full attention's), one marker per method and seed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    methods = list(dict.fromkeys(frame.method))
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    for method in methods:
        rows = frame[frame.method == method]
        left.errorbar(rows.kv_auc_share, rows.answer_accuracy, fmt="o", color=palette[method], label=method, alpha=0.8,
                      yerr=[rows.answer_accuracy - rows.answer_low, rows.answer_high - rows.answer_accuracy], capsize=2)
        right.plot(rows.kv_auc_share, rows.probe_bits, "o", color=palette[method], label=method, alpha=0.8)
    left.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    right.axhline(0.0, color="grey", ls="--", lw=1)
    for ax, ylabel in ((left, "answer digit accuracy on the evicted passcode"),
                       (right, "probe bits per passcode (retained KV)")):
        ax.set_xlabel("KV kept (AUC, share of full attention)")
        ax.set_ylabel(ylabel)
    left.legend(frameon=False, fontsize=7)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


@styled()
def plot_rl(metrics: list[dict], rows, path: str | Path, title: str = "") -> Path:
    """RL before/after in the style of the paper's Fig. 7: (a) maj@k against k after RL, the SFT model's
    as the base line; (b) RL training reward and greedy validation accuracy against step; (c) the
    implicit channel before/after (masked d=1 probe, restart drop). Panel (b) shows the reward, the share
    of answer digits right, on the training rollouts and on greedy validation decoding.

    `metrics`: the run's metrics.jsonl records; `rows`: `leakage.analysis.rl_analysis.analysis_rows` (a frame).
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    ax = axes[0]
    maj = rows[rows["metric"].str.startswith("maj@")]
    for checkpoint, style in (("before", "--"), ("after", "o-")):
        part = maj[maj["checkpoint"] == checkpoint].sort_values("k")
        ax.plot(part["k"], part["value"], style, ms=4, label=f"{'SFT (base)' if checkpoint == 'before' else 'RL'}")
        ax.fill_between(part["k"], part["ci95_low"], part["ci95_high"], alpha=0.15)
    ax.set_xlabel("k (samples, temperature 1)")
    ax.set_ylabel("maj@k (whole answer)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False)
    ax.set_title("(a) maj@k")
    ax = axes[1]
    train = [(r["step"], r["rollout/answer_digits"]) for r in metrics if _present(r.get("rollout/answer_digits"))]
    val = [(r["step"], r["val/answer_digits"]) for r in metrics if _present(r.get("val/answer_digits"))]
    if train:
        steps, values = zip(*train)
        window = max(1, len(values) // 20)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, values, lw=0.6, alpha=0.35, color="C0")
        ax.plot(steps, smooth, lw=1.5, color="C0", label=f"train rollouts, T=1 (mean of {window})")
    if val:
        ax.plot(*zip(*val), "o-", ms=4, color="C1", label="validation, greedy")
    ax.set_xlabel("RL step")
    ax.set_ylabel("answer digits right (the reward)")
    ax.legend(frameon=False)
    ax.set_title("(b) RL curves")
    ax = axes[2]
    wanted = [("probe_masked_d1", "probe masked d=1"), ("probe_direct", "probe direct"),
              ("restart_drop_answer_digits", "restart drop (answer)"), ("restart_drop_sums", "restart drop (sums)")]
    bars = rows[rows["metric"].isin([m for m, _ in wanted])].copy()
    bars["label"] = bars["metric"].map(dict(wanted))
    bars["error_low"] = bars["value"] - bars["ci95_low"]
    bars["error_high"] = bars["ci95_high"] - bars["value"]
    labels = [label for metric, label in wanted if metric in set(bars["metric"])]
    width = 0.38
    for i, checkpoint in enumerate(("before", "after")):
        part = bars[bars["checkpoint"] == checkpoint].set_index("label").reindex(labels)
        x = [j + (i - 0.5) * width for j in range(len(labels))]
        ax.bar(x, part["value"], width, yerr=[part["error_low"], part["error_high"]], capsize=2,
               label="SFT" if checkpoint == "before" else "RL")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("accuracy / drop")
    ax.legend(frameon=False)
    ax.set_title("(c) implicit channel before/after")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled()
def plot_probe_budget(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Probe accuracy against its training budget for each condition (left) and the bits each condition's
    features save the MDL code per passcode (right): the leak with and without a probe budget."""
    curves = [r for r in rows if r["condition"] == "curve"]
    bits = [r for r in rows if r["condition"] == "bits"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(dict.fromkeys(r["of"] for r in curves))
    colors = sns.color_palette("tab20", max(len(names), 1))
    for name, color in zip(names, colors):
        _curve(left, [(r["budget"], r) for r in curves if r["of"] == name], name, color)
    left.set_xscale("log")
    _finish(left, "probe-training traces (budget)", "accuracy by probe budget")
    if bits:
        order = sorted(bits, key=lambda r: -r["bits_leaked"])
        right.barh([r["of"] for r in order], [r["bits_leaked"] for r in order], color="tab:blue")
        right.axvline(0, color="grey", lw=1)
        right.set_xlabel(f"bits leaked per passcode (uniform code {order[0]['uniform_bits_per_passcode']:.1f} bits)")
        right.invert_yaxis()
        right.set_title("MDL: uniform minus online code length", fontsize=9)
    fig.suptitle(title, y=1.02, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


@styled()
def plot_precision_channel(frame, path: str | Path, title: str = "") -> Path:
    """The passcode channel at each precision (rows of `leakage.analysis.precision_channel.run`, with a `seed`
    column when several models are drawn): (a) used, the answer digits under memento and restart decoding;
    (b) present, the probe's accuracy at masked d=1 and at the retained delimiters; where measured, (c) used
    causally, the answer digits that follow the twin's passcode under its retained cache (patching), and (d)
    the probes' learning curves (median over models, one line per precision and site). One dot per model, a
    bar at the median."""
    order = list(dict.fromkeys(frame.precision))
    x = {name: i for i, name in enumerate(order)}
    patched = "patch_twin_cache" in set(frame.measure)
    curves = frame[frame.measure.str.startswith("curve_")]
    n_panels = 2 + patched + (len(curves) > 0)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 3.8))
    panels = [(axes[0], (("answer_memento", "memento decoding", "tab:blue"), ("answer_restart", "restart", "tab:red"))),
              (axes[1], (("probe_masked_d1", "probe, masked d=1", "tab:purple"),
                         ("probe_delimiters", "probe, retained delimiters", "tab:orange")))]
    if patched:
        panels.append((axes[2], (("patch_twin_cache", "patched with the twin's cache", "tab:green"),)))
    for ax, measures in panels:
        shifts = (-0.15, 0.15) if len(measures) == 2 else (0.0,)
        for shift, (measure, label, color) in zip(shifts, measures):
            rows = frame[frame.measure == measure]
            xs = [x[p] + shift for p in rows.precision]
            ax.scatter(xs, rows.accuracy, s=12, color=color, alpha=0.6, label=label)
            medians = rows.groupby("precision", sort=False).accuracy.median()
            ax.hlines(medians.values, [x[p] + shift - 0.12 for p in medians.index],
                      [x[p] + shift + 0.12 for p in medians.index], color=color, lw=2)
        ax.axhline(0.1, color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
        ax.set_ylim(0, 1.02)
        ax.legend(frameon=False, fontsize=7)
    axes[0].set_ylabel("answer digit accuracy")
    axes[0].set_title("used: the answer reads the channel", fontsize=9)
    axes[1].set_ylabel("probe accuracy (budget in the CSV)")
    axes[1].set_title("present: a probe reads the passcode", fontsize=9)
    if patched:
        axes[2].set_ylabel("answer digits that are the twin's")
        axes[2].set_title("used, causally: patching the twin's retained cache", fontsize=9)
    if len(curves):
        ax = axes[-1]
        palette = dict(zip(order, sns.color_palette("tab10", len(order))))
        for (precision, measure), rows in curves.groupby(["precision", "measure"], sort=False):
            medians = rows.groupby("budget").accuracy.median()
            ax.plot(medians.index, medians.values, "o-" if measure.endswith("delimiters") else "s--", ms=3, lw=1,
                    color=palette[precision], label=f"{precision}, {measure.removeprefix('curve_')}")
        ax.axhline(0.1, color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("probe-training traces")
        ax.set_ylabel("probe accuracy (median over models)")
        ax.set_title("learning curves", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(frameon=False, fontsize=6, ncol=2)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


@styled()
def plot_das(frame, path: str | Path, title: str = "") -> Path:
    """A `leakage.analysis.das` frame (one run, or several with a `seed` column): left, interchange accuracy
    (IIA) against the subspace size k in every searched cell (the whole cell at k = F), with the clean cache
    and the whole twin cache; right, the answer's accuracy under the placebos and the grafts onto restart KV."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2], "wspace": 0.55})
    runs = frame.groupby("seed") if "seed" in frame else [(None, frame)]
    palette = sns.color_palette("tab10")
    for (seed, rows), color in zip(runs, palette):
        das = rows[rows.experiment == "das"]
        searched = das[~das.whole_cell.astype(bool)][["layer", "kv_head", "which", "site"]].drop_duplicates()
        for cell in searched.itertuples(index=False):
            points = das[(das.layer == cell.layer) & (das.kv_head == cell.kv_head) & (das.which == cell.which) &
                         (das.site == cell.site)].sort_values("k")
            label = f"L{cell.layer:.0f} H{cell.kv_head:.0f} {cell.which}"
            label = label if seed is None else f"seed {seed}: {label}"
            errors = [points.value - points.ci95_low, points.ci95_high - points.value]
            left.errorbar(points.k, points.value, yerr=errors, fmt="o-", color=color, capsize=2, lw=1, ms=3, label=label)
        reference = rows[(rows.experiment == "reference") & (rows.pairs == "val")].set_index("intervention")
        left.axhline(reference.value["twin_cache"], color=color, ls=":", lw=1)
        left.axhline(reference.value["clean"], color=color, ls="--", lw=0.8)
    left.set_xscale("log", base=2)
    left.set_xlabel("subspace dimensions k (largest: the whole cell)")
    left.set_ylabel("interchange accuracy (source's digit)")
    if left.get_legend_handles_labels()[0]:
        left.legend(frameon=False, fontsize=6, ncol=2)
    left.set_title("dotted: whole twin cache; dashed: clean", fontsize=8)
    bars = frame[frame.experiment.isin(["placebo", "graft"]) & (frame.measure == "answer_accuracy")]
    if len(bars):
        bars = bars.assign(case=bars.experiment + ": " + bars.intervention)
        seeded = "seed" in bars
        sns.stripplot(data=bars, y="case", x="value", hue="seed" if seeded else None, ax=right, size=5,
                      palette="tab10" if seeded else None, legend=False)
        right.axvline(0.1, color="grey", ls="--", lw=1)
        right.set_xlim(0, 1.02)
        right.set_xlabel("answer digit accuracy (target's passcode)")
        right.set_ylabel("")
        right.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, y=1.02)
    return save_figure(fig, path)


@styled()
def plot_erasers(frame, path: str | Path, title: str = "") -> Path:
    """A `leakage.analysis.erasers` frame (one run, or several with a `seed` column): the passcode answer
    (left) and the probe's bits (right) against the running-sum accuracy, one point per eraser (per seed)."""
    rows = frame[frame.experiment == "eraser"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    palette = dict(zip(sorted(rows.eraser.unique()), sns.color_palette("tab10")))
    style = "seed" if "seed" in rows else None
    for ax, column, label in ((left, "answer_accuracy", "passcode answer digit accuracy"),
                              (right, "probe_bits", "probe: bits per passcode (budget in the CSV)")):
        sns.scatterplot(data=rows, x="sums_accuracy", y=column, hue="eraser", style=style, palette=palette, ax=ax,
                        s=45, legend=ax is left)
        ax.set_xlabel("running-sum digit accuracy after the eviction")
        ax.set_ylabel(label)
    left.axhline(0.1, color="grey", ls="--", lw=1)
    right.axhline(0.0, color="grey", ls="--", lw=1)
    if left.get_legend() is not None:
        sns.move_legend(left, "lower left", fontsize=6, frameon=False, ncol=2)
    fig.suptitle(title, y=1.02)
    return save_figure(fig, path)
