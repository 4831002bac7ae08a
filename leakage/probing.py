"""The passcode probe experiment: conditions and controls at one probe, per layer, as result rows.

For one checkpoint and one set of traces (a passcode in block k), `probe_conditions` captures keys and
values once per model and eviction spec, then fits the same probe under every condition:

* direct: the memento of block k (it saw the passcode);
* masked d: the memento of block k+d, after block k left the cache (d = 1 .. blocks - k - 1);
* causal control: the memento of block k-1, computed before the passcode existed (must be chance);
* shuffled labels, and the control task (Hewitt & Liang) at masked d=1, with selectivity and, for both
  the task and its control, the MDL online codelength (Voita & Titov);
* text only: the memento tokens' input embeddings, what the memento text carries (masked d=1);
* random init: the same architecture untrained (is the leak architectural?), masked d=1;
* restart KV: the same traces with `restart=True` (memento KV recomputed without its block), masked d=1;
* retained position kinds of block k: `block_start`, `block_end` (kept under `mask_delimiters=False`),
  `summary_start`, `summary_end` (under both `summary_end_sees_block` settings).
Each row carries the layer (or "all"), the probe's accuracy with its 95% interval, chance, and the
paper's number where the paper reports one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from leakage.config import EvictionConfig, ProbeExperiment
from leakage.probe import ProbeConfig, control_labels, fit_probe, mdl_codelength, shuffled_labels
from leakage.probe_data import KVDataset, ProbeTrace, capture_dataset, site_name

PAPER_TOY = {  # the paper's toy transformer (facts: ../shared/reference/memento-facts.md)
    ("masked", 1, "all"): 0.249, ("masked", 1, "last"): 0.262, ("masked", 1, "first"): 0.131,
    ("masked", 2, "all"): 0.214,
}
PAPER_QWEN3_8B = {"direct": 0.652, "masked": 0.267}
POSITION_KINDS = ("block_start", "block_end", "summary_start", "summary_end")


def _row(condition: str, result, layer="all", distance=None, site="", **extra) -> dict:
    paper = PAPER_TOY.get((condition, distance, layer))
    return {"condition": condition, "distance": distance, "site": site, "layer": layer, **result.as_dict(),
            "paper_toy": paper, **extra}


def probe_conditions(model, tokenizer, traces: list[ProbeTrace], experiment: ProbeExperiment,
                     eviction: EvictionConfig = EvictionConfig(), random_model=None,
                     probe: ProbeConfig | None = None, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Every condition of the module docstring as result rows (see `_row`)."""
    probe = probe or ProbeConfig(kind=experiment.kind)
    k = experiment.passcode_block
    distances = list(range(1, experiment.n_blocks - k))
    memento_sites = [("memento", d) for d in [-1, 0, *distances] if k + d >= 0]
    sites = memento_sites + [(part, 0) for part in POSITION_KINDS]

    def fit(dataset: KVDataset, site: str, layers=None, labels=None):
        features = dataset.features(site, layers, experiment.pooling)
        return fit_probe(features, dataset.labels if labels is None else labels, dataset.groups, experiment.kind,
                         experiment.seed, probe)

    log(f"capturing {len(traces)} traces ({eviction})")
    main = capture_dataset(model, tokenizer, traces, eviction, sites)
    rows = []
    for d in [-1, 0, *distances]:
        if k + d < 0:
            continue
        condition = "causal_control" if d < 0 else "direct" if d == 0 else "masked"
        rows.append(_row(condition, fit(main, site_name("memento", d)), distance=d, site=f"memento@{k + d}"))
        log(f"  {condition} d={d}: {rows[-1]['accuracy']:.3f}")
    if experiment.per_layer:
        for d in (0, 1):
            for layer in range(main.n_layers):
                name = "direct" if d == 0 else "masked"
                rows.append(_row(name, fit(main, site_name("memento", d), [layer]), layer=layer, distance=d,
                                 site=f"memento@{k + d}"))
    masked = site_name("memento", 1)
    task = rows[[r["condition"] for r in rows].index("masked")]
    controls = control_labels(main.groups, main.labels.shape[1], experiment.seed)
    control = fit(main, masked, labels=controls)
    rows.append(_row("control_task", control, distance=1, site=f"memento@{k + 1}",
                     selectivity=task["accuracy"] - control.accuracy))
    if experiment.mdl:
        log("  MDL codelengths (masked d=1, and its control task)")
        for row, labels in ((task, main.labels), (rows[-1], controls)):
            mdl = mdl_codelength(main.features(masked, None, experiment.pooling), labels, main.groups,
                                 experiment.kind, experiment.seed, probe)
            row.update(mdl_online_bits=mdl.online_bits, mdl_uniform_bits=mdl.uniform_bits,
                       mdl_compression=mdl.compression)
    rows.append(_row("shuffled_labels", fit(main, masked, labels=shuffled_labels(main.labels, main.groups,
                                                                                 experiment.seed)),
                     distance=1, site=f"memento@{k + 1}"))
    text = fit_probe(main.text_features(masked, experiment.pooling), main.labels, main.groups, experiment.kind,
                     experiment.seed, probe)
    rows.append(_row("text_only", text, distance=1, site=f"memento@{k + 1}"))
    for part in POSITION_KINDS:
        rows.append(_row(f"position:{part}", fit(main, site_name(part, 0)), distance=0, site=f"{part}@{k}",
                         timing="engine"))
    log("capturing with the summary_end_sees_block timing")
    late = capture_dataset(model, tokenizer, traces, replace(eviction, summary_end_sees_block=True),
                           [("summary_end", 0), ("memento", 1)])
    rows.append(_row("position:summary_end", fit(late, site_name("summary_end", 0)), distance=0,
                     site=f"summary_end@{k}", timing="summary_end_sees_block"))
    rows.append(_row("masked", fit(late, masked), distance=1, site=f"memento@{k + 1}", timing="summary_end_sees_block"))
    log("capturing restart KV")
    restart = capture_dataset(model, tokenizer, traces, replace(eviction, restart=True), [("memento", 0), ("memento", 1)])
    rows.append(_row("restart_kv", fit(restart, masked), distance=1, site=f"memento@{k + 1}"))
    rows.append(_row("restart_kv_direct", fit(restart, site_name("memento", 0)), distance=0, site=f"memento@{k}"))
    if random_model is not None:
        log("capturing the untrained model")
        untrained = capture_dataset(random_model, tokenizer, traces, eviction, [("memento", 1)])
        rows.append(_row("random_init", fit(untrained, masked), distance=1, site=f"memento@{k + 1}"))
    return rows
